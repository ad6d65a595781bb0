//! The `artifact` dialect: the Artifact Sandbox worker (`/sandbox /session /run /file`) and
//! its Python client (`SandboxManager` / `Sandbox` / `ExecutionSession`). The sandbox is
//! named by the `x-sandbox-id` header, else `?sandbox_id=`. Commands run in a session, the
//! client's `"default"` one unless it names another: sandpit's native sessions, so `cd` and
//! `export` persist. Files are shared by every session of a sandbox; paths are made absolute
//! and `//` collapsed, as the worker did. Errors answer `{"error": "..."}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body as HttpBody;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::StreamExt;
use sandpit_core::model::{now_ms, CreateSandbox, CreateSession, ExecRequest, UpdateSandbox};
use sandpit_core::CoreError;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::{
    basename, is_missing_entry, iso_now, read_all, text, write_all, AuthFailure, CompatError,
    Dialect, Lenient, Params,
};
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "artifact",
    router,
    public: &[],
    unauthorized,
};

/// The session commands run in when the client names none; sandpit creates it on first use.
const DEFAULT_SESSION: &str = "default";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandbox", post(create).delete(destroy))
        .route(
            "/session",
            post(create_session).get(get_session).delete(delete_session),
        )
        .route("/run", post(run).get(run_demo))
        .route("/run-script", post(run_script))
        .route("/file", get(read_file).put(write_file).delete(delete_file))
        .route("/mkdir", post(mkdir))
        .route("/exists", get(exists))
        .route("/rename", post(rename))
        .route("/move", post(move_file))
        .route("/mount-bucket", post(mount_bucket))
        .route("/unmount-bucket", delete(unmount_bucket))
        .fallback(not_found)
}

fn unauthorized(_: AuthFailure) -> CompatError {
    CompatError::new(
        StatusCode::UNAUTHORIZED,
        "Unauthorized: send Authorization: Bearer <token>",
    )
}

async fn not_found() -> CompatError {
    CompatError::new(StatusCode::NOT_FOUND, "Not found: try /run or /file")
}

/// The sandbox a request is about: `x-sandbox-id`, else `?sandbox_id=`.
pub struct Target(String);

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = CompatError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Ok(params) = Params::from_request_parts(parts, state).await;
        header_id(&parts.headers)
            .or_else(|| trimmed(params.get("sandbox_id")))
            .map(Target)
            .ok_or_else(|| {
                CompatError::bad_request(
                    "Missing sandbox id. Provide x-sandbox-id header or ?sandbox_id=",
                )
            })
    }
}

fn header_id(headers: &HeaderMap) -> Option<String> {
    trimmed(
        headers
            .get("x-sandbox-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    )
}

fn trimmed(v: Option<String>) -> Option<String> {
    v.map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// An id from the body's `sandboxId` or `id`.
fn body_id(body: &Value) -> Option<String> {
    ["sandboxId", "id"]
        .into_iter()
        .find_map(|k| trimmed(text(body, k).map(str::to_string)))
}

/// A path as the worker took it: trimmed, made absolute, `//` collapsed.
fn requested_path(path: Option<&str>) -> Option<String> {
    let t = path?.trim();
    if t.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(t.len() + 1);
    for c in format!("/{t}").chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    Some(out)
}

/// A missing sandbox in the worker's words; anything else as the core says it.
fn sandbox_error(e: CoreError) -> CompatError {
    match e {
        CoreError::NotFound(_) => CompatError::new(
            StatusCode::NOT_FOUND,
            "Sandbox not found or not initialized",
        ),
        e => e.into(),
    }
}

fn file_error(path: &str) -> impl Fn(CoreError) -> CompatError + '_ {
    move |e| {
        if is_missing_entry(&e) {
            CompatError::new(StatusCode::NOT_FOUND, format!("File not found: {path}"))
        } else {
            sandbox_error(e)
        }
    }
}

fn session_error(message: &'static str) -> impl Fn(CoreError) -> CompatError {
    move |e| {
        if is_missing_entry(&e) {
            CompatError::new(StatusCode::NOT_FOUND, message)
        } else {
            sandbox_error(e)
        }
    }
}

/// The `options` the worker understood, echoed back, and the keepalive they ask for:
/// `keepAlive: true` never expires, `sleepAfter` ("30s", "10m", "1h", "2d" or seconds) is the
/// idle keepalive.
fn sandbox_options(options: Option<&Value>) -> Result<(Value, Option<u64>), CompatError> {
    let Some(Value::Object(given)) = options else {
        return Ok((Value::Null, None));
    };
    let kept: serde_json::Map<String, Value> = given
        .iter()
        .filter(|(k, v)| match k.as_str() {
            "sleepAfter" => v.is_string() || v.is_number(),
            "keepAlive" | "normalizeId" => v.is_boolean(),
            "containerTimeouts" => v.is_object(),
            _ => false,
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let keepalive = if kept.get("keepAlive") == Some(&Value::Bool(true)) {
        Some(0)
    } else {
        match kept.get("sleepAfter") {
            Some(v) => Some(duration_seconds(v).ok_or_else(|| {
                CompatError::bad_request(
                    "options.sleepAfter must be a duration such as \"30s\", \"10m\", \"1h\" or a number of seconds",
                )
            })?),
            None => None,
        }
    };
    let echoed = if kept.is_empty() {
        Value::Null
    } else {
        Value::Object(kept)
    };
    Ok((echoed, keepalive))
}

fn duration_seconds(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let s = v.as_str()?.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// Creates the sandbox (id from the body's `sandboxId`/`id`, `?sandbox_id=` or the header;
/// generated when absent), or answers the existing one of that id.
async fn create(
    State(s): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let id = body_id(&body)
        .or_else(|| trimmed(params.get("sandbox_id")))
        .or_else(|| header_id(&headers));
    let (options, keepalive) = sandbox_options(body.get("options"))?;
    let req = CreateSandbox {
        id,
        keepalive_seconds: keepalive,
        ..CreateSandbox::default()
    };
    let sandbox = match s.manager.create(req).await {
        Err(CoreError::AlreadyExists(id)) => match keepalive {
            Some(k) => s.manager.update(
                &id,
                UpdateSandbox {
                    keepalive_seconds: Some(k),
                    ..UpdateSandbox::default()
                },
            )?,
            None => s.manager.touch(&id)?,
        },
        other => other?,
    };
    Ok(Json(
        json!({"sandboxId": sandbox.id, "created": true, "options": options}),
    ))
}

/// Destroys the sandbox named by the body, `?sandbox_id=` or the header.
async fn destroy(
    State(s): State<AppState>,
    params: Params,
    headers: HeaderMap,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let id = body_id(&body)
        .or_else(|| trimmed(params.get("sandbox_id")))
        .or_else(|| header_id(&headers))
        .ok_or_else(|| {
            CompatError::bad_request(
                "DELETE /sandbox requires sandbox_id param, id in body, or x-sandbox-id header",
            )
        })?;
    match s.manager.delete(&id).await {
        Ok(()) => Ok(Json(
            json!({"sandboxId": id, "destroyed": true, "existed": true}),
        )),
        Err(CoreError::NotFound(_)) => Err(CompatError::with(
            StatusCode::NOT_FOUND,
            json!({"sandboxId": id, "destroyed": false, "existed": false,
                "error": "Sandbox not found or already destroyed"}),
        )),
        Err(e) => Err(CompatError::from(e).and(json!({"sandboxId": id, "destroyed": false}))),
    }
}

/// Starts a session with its own `cwd` (created if missing) and `env`; an existing id
/// answers that session.
async fn create_session(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let sid = text(&body, "id").map(str::to_string);
    let cwd = text(&body, "cwd").map(str::to_string);
    let env: BTreeMap<String, String> = match body.get("env") {
        Some(Value::Object(vars)) => vars
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_string),
                )
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    if let Some(dir) = cwd.as_deref().filter(|d| d.starts_with('/')) {
        s.manager
            .mkdir(&id, dir, true)
            .await
            .map_err(sandbox_error)?;
    }
    let req = CreateSession {
        id: sid.clone(),
        cwd,
        env,
    };
    match s.manager.create_session(&id, req).await {
        Ok(session) => Ok(Json(
            json!({"success": true, "sessionId": session.id, "timestamp": iso_now()}),
        )),
        Err(e) if e.code() == "already_exists" => {
            let sid = sid.unwrap_or_default();
            Ok(Json(json!({
                "success": true,
                "sessionId": sid,
                "message": format!("Session '{sid}' already exists"),
                "timestamp": iso_now(),
            })))
        }
        Err(e) => Err(sandbox_error(e)),
    }
}

async fn get_session(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let sid = params
        .non_empty("id")
        .or_else(|| params.non_empty("sessionId"))
        .ok_or_else(|| {
            CompatError::bad_request("GET /session requires ?id= or ?sessionId= parameter")
        })?;
    let session = s
        .manager
        .get_session(&id, &sid)
        .await
        .map_err(session_error("Session not found"))?;
    Ok(Json(
        json!({"success": true, "sessionId": session.id, "timestamp": iso_now()}),
    ))
}

/// Ends a session (its shell and processes); files stay. The default session stays too.
async fn delete_session(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let sid = text(&body, "sessionId")
        .map(str::to_string)
        .or_else(|| params.non_empty("id"))
        .or_else(|| params.non_empty("sessionId"))
        .ok_or_else(|| {
            CompatError::bad_request("DELETE /session requires sessionId in body or ?id= parameter")
        })?;
    if sid == DEFAULT_SESSION {
        return Err(CompatError::bad_request(
            "Cannot delete the default session; DELETE /sandbox destroys the whole sandbox",
        ));
    }
    s.manager
        .delete_session(&id, &sid)
        .await
        .map_err(session_error("Session or sandbox not found"))?;
    Ok(Json(
        json!({"success": true, "sessionId": sid, "timestamp": iso_now()}),
    ))
}

/// Runs shell text in a session and answers the worker's result shape.
async fn run_in(
    s: &AppState,
    id: &str,
    session: Option<&str>,
    command: String,
) -> Result<Value, CompatError> {
    let req = ExecRequest {
        command: Some(command),
        session: Some(session.unwrap_or(DEFAULT_SESSION).to_string()),
        ..ExecRequest::default()
    };
    let r = s
        .manager
        .exec(id, req)
        .await
        .map_err(session_error("Session not found"))?;
    Ok(json!({
        "output": r.stdout,
        "error": r.stderr,
        "exitCode": r.exit_code,
        "success": r.exit_code == 0,
    }))
}

fn session_of(body: &Value) -> Option<&str> {
    text(body, "sessionId").filter(|s| !s.is_empty())
}

async fn run(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let command = text(&body, "command")
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            CompatError::bad_request("POST /run expects JSON body { \"command\": \"...\" }")
        })?;
    Ok(Json(
        run_in(&s, &id, session_of(&body), command.to_string()).await?,
    ))
}

/// The worker's connectivity check.
async fn run_demo(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let session = params.non_empty("sessionId");
    let command = "python3 -c \"print(2 + 2)\"".to_string();
    Ok(Json(run_in(&s, &id, session.as_deref(), command).await?))
}

/// Writes a script and runs it with its interpreter; a script without `path` goes to a
/// temporary file, removed afterwards.
async fn run_script(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    static SCRIPTS: AtomicU64 = AtomicU64::new(0);
    let script = text(&body, "script")
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            CompatError::bad_request(
                "POST /run-script expects JSON body { \"script\": \"...\", \"interpreter\": \"python3\" (optional), \"path\": \"/path/to/file\" (optional) }",
            )
        })?;
    let interpreter = text(&body, "interpreter").unwrap_or("python3");
    let given = requested_path(text(&body, "path"));
    let path = given.clone().unwrap_or_else(|| {
        let n = SCRIPTS.fetch_add(1, Ordering::Relaxed);
        format!("/workspace/script-{:x}-{n}.py", now_ms())
    });
    write_all(&s.manager, &id, &path, script.as_bytes().to_vec())
        .await
        .map_err(sandbox_error)?;
    let program = match interpreter {
        "python3" | "python" => "python3",
        "bash" | "sh" => "bash",
        "node" | "nodejs" => "node",
        other => other,
    };
    let quoted = format!("'{}'", path.replace('\'', "'\\''"));
    let result = run_in(&s, &id, session_of(&body), format!("{program} {quoted}")).await;
    if given.is_none() {
        let _ = s.manager.remove(&id, &path, false).await;
    }
    let mut result = result?;
    result["scriptPath"] = path.into();
    result["interpreter"] = interpreter.into();
    Ok(Json(result))
}

/// Writes text (`content`, empty when absent); parents are created. `length` counts UTF-16
/// units, as the worker's JavaScript did.
async fn write_file(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let path = requested_path(text(&body, "path")).ok_or_else(|| {
        CompatError::bad_request(
            "PUT /file expects JSON body { \"path\": \"...\", \"content\": \"...\" }",
        )
    })?;
    let content = text(&body, "content").unwrap_or_default();
    write_all(&s.manager, &id, &path, content.as_bytes().to_vec())
        .await
        .map_err(file_error(&path))?;
    Ok(Json(
        json!({"path": path, "length": content.encode_utf16().count()}),
    ))
}

/// `{path, content}`, or with `mode=download` the raw bytes as an attachment.
async fn read_file(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
) -> Result<Response, CompatError> {
    let path = requested_path(params.get("path").as_deref()).ok_or_else(|| {
        CompatError::bad_request("Provide a non-empty ?path=/your/file.txt value.")
    })?;
    if params.get("mode").as_deref() == Some("download") {
        let (size, rx) = s
            .manager
            .read_file(&id, &path)
            .await
            .map_err(file_error(&path))?;
        let body = HttpBody::from_stream(
            ReceiverStream::new(rx).map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
        );
        let disposition = HeaderValue::from_str(&format!(
            "attachment; filename=\"{}\"",
            basename(&path).replace(['"', '\\'], "_")
        ))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment; filename=\"sandbox-file\""));
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                ),
                (header::CONTENT_DISPOSITION, disposition),
                (header::CONTENT_LENGTH, HeaderValue::from(size)),
            ],
            body,
        )
            .into_response());
    }
    let data = read_all(&s.manager, &id, &path)
        .await
        .map_err(file_error(&path))?;
    Ok(Json(json!({"path": path, "content": String::from_utf8_lossy(&data)})).into_response())
}

async fn delete_file(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let path = requested_path(params.get("path").as_deref())
        .ok_or_else(|| CompatError::bad_request("DELETE /file requires ?path=/your/file.txt"))?;
    s.manager
        .remove(&id, &path, false)
        .await
        .map_err(file_error(&path))?;
    Ok(Json(json!({"path": path, "deleted": true})))
}

async fn mkdir(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    let path = requested_path(text(&body, "path")).ok_or_else(|| {
        CompatError::bad_request(
            "POST /mkdir expects JSON body { \"path\": \"/workspace/dir\", \"recursive\": true|false }",
        )
    })?;
    let recursive = body.get("recursive") == Some(&Value::Bool(true));
    s.manager
        .mkdir(&id, &path, recursive)
        .await
        .map_err(sandbox_error)?;
    let mut answer = json!({"success": true, "path": path, "recursive": recursive});
    if let Some(session) = session_of(&body) {
        answer["sessionId"] = session.into();
    }
    Ok(Json(answer))
}

async fn exists(
    State(s): State<AppState>,
    Target(id): Target,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let path = requested_path(params.get("path").as_deref()).ok_or_else(|| {
        CompatError::bad_request("GET /exists requires ?path=/workspace/file.txt")
    })?;
    let exists = match s.manager.stat(&id, &path).await {
        Ok(_) => true,
        Err(e) if is_missing_entry(&e) || e.code() == "not_a_directory" => false,
        Err(e) => return Err(sandbox_error(e)),
    };
    Ok(Json(json!({ "exists": exists })))
}

/// Moves `from` to `to` (parents of `to` are created) and answers `{success, from, to}`.
async fn relocate(
    s: &AppState,
    id: &str,
    body: &Value,
    keys: [[&str; 2]; 2],
    usage: &str,
) -> Result<Json<Value>, CompatError> {
    let pick = |names: [&str; 2]| requested_path(names.into_iter().find_map(|k| text(body, k)));
    let (Some(from), Some(to)) = (pick(keys[0]), pick(keys[1])) else {
        return Err(CompatError::bad_request(usage));
    };
    s.manager
        .rename(id, &from, &to)
        .await
        .map_err(file_error(&from))?;
    Ok(Json(json!({"success": true, "from": from, "to": to})))
}

async fn rename(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    relocate(
        &s,
        &id,
        &body,
        [["oldPath", "from"], ["newPath", "to"]],
        "POST /rename expects JSON body { \"oldPath\": \"/a.txt\", \"newPath\": \"/b.txt\" }",
    )
    .await
}

async fn move_file(
    State(s): State<AppState>,
    Target(id): Target,
    Lenient(body): Lenient,
) -> Result<Json<Value>, CompatError> {
    relocate(
        &s,
        &id,
        &body,
        [["sourcePath", "from"], ["destinationPath", "to"]],
        "POST /move expects JSON body { \"sourcePath\": \"/a.txt\", \"destinationPath\": \"/dir/a.txt\" }",
    )
    .await
}

async fn mount_bucket() -> CompatError {
    CompatError::new(
        StatusCode::NOT_IMPLEMENTED,
        "POST /mount-bucket is not supported by sandpit: sandboxes have no network access and no \
         FUSE, so S3/R2/GCS buckets cannot be mounted. Copy files in and out with PUT /file and \
         GET /file?mode=download instead.",
    )
}

async fn unmount_bucket() -> CompatError {
    CompatError::new(
        StatusCode::NOT_IMPLEMENTED,
        "DELETE /unmount-bucket is not supported by sandpit: buckets cannot be mounted (see \
         POST /mount-bucket).",
    )
}
