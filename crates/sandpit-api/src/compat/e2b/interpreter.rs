//! The E2B code interpreter (port 49999 of an E2B sandbox) on sandpit's interpreter:
//! `POST /execute` streams NDJSON events (`stdout`, `stderr` as the code writes them, then
//! `result`s with their MIME representations under E2B's names, `error`,
//! `number_of_executions` and `end_of_execution`), and `/contexts` creates, lists, deletes
//! and restarts contexts. Languages: `python` and `javascript` (`js`).

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use sandpit_core::model::{Context, CreateContext, ExecEvent, RunCode};
use sandpit_core::CoreError;
use serde_json::{json, Map, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::sandbox_of;
use crate::compat::{iso_now, Body as JsonBody};
use crate::shared::AppState;

/// sandpit's MIME keys and E2B's names for them.
const FORMATS: [(&str, &str); 10] = [
    ("text/plain", "text"),
    ("text/html", "html"),
    ("text/markdown", "markdown"),
    ("image/svg+xml", "svg"),
    ("image/png", "png"),
    ("image/jpeg", "jpeg"),
    ("application/pdf", "pdf"),
    ("text/latex", "latex"),
    ("application/json", "json"),
    ("application/javascript", "javascript"),
];

/// An interpreter error: plain text with a status, as the E2B server answers (the SDK reads
/// 404 as `NotFoundException`, 502 as a sandbox gone, the rest as `SandboxException`).
#[derive(Debug)]
pub struct InterpError(StatusCode, String);

impl IntoResponse for InterpError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn core(id: &str, e: CoreError) -> InterpError {
    if matches!(e, CoreError::NotFound(_)) {
        return InterpError(
            StatusCode::BAD_GATEWAY,
            format!("sandbox \"{id}\" was not found"),
        );
    }
    InterpError(crate::shared::status::status_of(e.code()), e.to_string())
}

fn sandbox(headers: &HeaderMap) -> Result<String, InterpError> {
    sandbox_of(headers).ok_or_else(|| {
        InterpError(
            StatusCode::BAD_REQUEST,
            "the E2b-Sandbox-Id header is required".into(),
        )
    })
}

fn language(v: Option<&Value>) -> Result<Option<String>, InterpError> {
    match v
        .and_then(Value::as_str)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") => Ok(None),
        Some("python" | "python3") => Ok(Some("python".into())),
        Some("js" | "javascript" | "node") => Ok(Some("javascript".into())),
        Some(other) => Err(InterpError(
            StatusCode::BAD_REQUEST,
            format!("language '{other}' is not supported: use python or javascript"),
        )),
    }
}

/// A sandpit result (`{mime: value, is_main_result}`) as E2B's `Result`.
fn result_event(r: &Value) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), "result".into());
    let mut extra = Map::new();
    if let Some(obj) = r.as_object() {
        for (k, v) in obj {
            if k == "is_main_result" {
                out.insert(k.clone(), v.clone());
            } else if let Some((_, name)) = FORMATS.iter().find(|(mime, _)| mime == k) {
                out.insert((*name).into(), v.clone());
            } else {
                extra.insert(k.clone(), v.clone());
            }
        }
    }
    if !extra.is_empty() {
        out.insert("extra".into(), Value::Object(extra));
    }
    Value::Object(out)
}

fn line(v: &Value) -> Result<Bytes, Infallible> {
    let mut s = v.to_string();
    s.push('\n');
    Ok(Bytes::from(s))
}

/// The closing events of a run from its `CodeResult`.
fn final_events(r: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = r["results"]
        .as_array()
        .map(|a| a.iter().map(result_event).collect())
        .unwrap_or_default();
    if r["timed_out"].as_bool() == Some(true) {
        out.push(json!({"type": "error", "name": "TimeoutError",
            "value": "the execution timed out", "traceback": ""}));
    } else if let Some(e) = r["error"].as_object() {
        out.push(json!({
            "type": "error",
            "name": e.get("name").cloned().unwrap_or_else(|| "Error".into()),
            "value": e.get("value").cloned().unwrap_or_else(|| "".into()),
            "traceback": e.get("traceback").cloned().unwrap_or_else(|| "".into()),
        }));
    }
    if let Some(n) = r["execution_count"].as_i64() {
        out.push(json!({"type": "number_of_executions", "execution_count": n}));
    }
    out
}

/// `POST /execute {code, context_id?, language?, env_vars?}`: NDJSON events.
pub async fn execute(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Response, InterpError> {
    let id = sandbox(&headers)?;
    let code = body
        .get("code")
        .and_then(Value::as_str)
        .ok_or_else(|| InterpError(StatusCode::BAD_REQUEST, "code is required".into()))?
        .to_string();
    if body
        .get("env_vars")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return Err(InterpError(
            StatusCode::BAD_REQUEST,
            "env_vars are not supported by sandpit's interpreter; set them in the code".into(),
        ));
    }
    let context = body
        .get("context_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    let language = language(body.get("language"))?;
    let rx = s
        .manager
        .run_code_stream(
            &id,
            RunCode {
                code,
                context,
                language,
                timeout_ms: None,
                locals: false,
            },
        )
        .await
        .map_err(|e| core(&id, e))?;
    let events = ReceiverStream::new(rx).flat_map(|ev| {
        let lines: Vec<Value> = match ev {
            Ok(ExecEvent::Stdout(d)) => vec![json!({"type": "stdout",
                "text": String::from_utf8_lossy(&d), "timestamp": iso_now()})],
            Ok(ExecEvent::Stderr(d)) => vec![json!({"type": "stderr",
                "text": String::from_utf8_lossy(&d), "timestamp": iso_now()})],
            Ok(ExecEvent::CodeResult(r)) => {
                let mut v = final_events(&r);
                v.push(json!({"type": "end_of_execution"}));
                v
            }
            Ok(_) => Vec::new(),
            Err(e) => vec![
                json!({"type": "error", "name": "SandboxError", "value": e.to_string(), "traceback": ""}),
                json!({"type": "end_of_execution"}),
            ],
        };
        futures::stream::iter(lines.into_iter().map(|l| line(&l)))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(events),
    )
        .into_response())
}

fn context_json(c: &Context) -> Value {
    json!({"id": c.id, "language": c.language, "cwd": c.cwd})
}

/// `POST /contexts {language?, cwd?}`.
pub async fn create_context(
    State(s): State<AppState>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Value>,
) -> Result<Json<Value>, InterpError> {
    let id = sandbox(&headers)?;
    let c = s
        .manager
        .create_context(
            &id,
            CreateContext {
                language: language(body.get("language"))?,
                cwd: body
                    .get("cwd")
                    .and_then(Value::as_str)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string),
                ..CreateContext::default()
            },
        )
        .await
        .map_err(|e| core(&id, e))?;
    Ok(Json(context_json(&c)))
}

/// `GET /contexts`.
pub async fn list_contexts(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, InterpError> {
    let id = sandbox(&headers)?;
    let list = s
        .manager
        .list_contexts(&id)
        .await
        .map_err(|e| core(&id, e))?;
    Ok(Json(Value::Array(list.iter().map(context_json).collect())))
}

/// `DELETE /contexts/{cid}`.
pub async fn delete_context(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(cid): Path<String>,
) -> Result<StatusCode, InterpError> {
    let id = sandbox(&headers)?;
    s.manager
        .delete_context(&id, &cid)
        .await
        .map_err(|e| core(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /contexts/{cid}/restart`.
pub async fn restart_context(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(cid): Path<String>,
) -> Result<StatusCode, InterpError> {
    let id = sandbox(&headers)?;
    s.manager
        .restart_context(&id, &cid)
        .await
        .map_err(|e| core(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_get_e2b_names() {
        let r = result_event(&json!({"text/plain": "2", "image/png": "AAA",
            "is_main_result": true, "application/x-custom": 1}));
        assert_eq!(r["type"], "result");
        assert_eq!(r["text"], "2");
        assert_eq!(r["png"], "AAA");
        assert_eq!(r["is_main_result"], true);
        assert_eq!(r["extra"]["application/x-custom"], 1);
    }

    #[test]
    fn a_run_ends_with_error_and_count() {
        let ev = final_events(&json!({"results": [], "execution_count": 3,
            "error": {"name": "ZeroDivisionError", "value": "division by zero", "traceback": "tb"}}));
        assert_eq!(ev[0]["type"], "error");
        assert_eq!(ev[0]["name"], "ZeroDivisionError");
        assert_eq!(
            ev[1],
            json!({"type": "number_of_executions", "execution_count": 3})
        );
    }
}
