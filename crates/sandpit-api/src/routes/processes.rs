//! `/v1/sandboxes/{id}/processes`: background processes with logs, stdin, signals and waits.

use std::convert::Infallible;
use std::str::FromStr;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandpit_core::model::{Process, StartProcess};
use sandpit_core::SandboxManager;
use serde::Deserialize;

use crate::extract::{query_param, JsonBody};
use crate::openapi::{
    AgentErrors, ErrorBody, LogsQuery, PortReady, ProcessList, ProcessLogs, ProcessPath,
    SandboxPath,
};
use crate::shared::follow::{pause_follow, Follower};
use crate::shared::AppState;
use crate::ApiError;

/// Most log bytes returned by one call.
const LOG_PAGE: u64 = 1024 * 1024;
/// How often a followed log is checked for new output.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    operation_id = "start_process", params(SandboxPath), request_body = StartProcess,
    responses((status = 201, body = Process),
        (status = 400, description = "`bad_request` (neither or both of `command` and `argv`, env), \
            `invalid_id`, `invalid_path` (`cwd`), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 409, description = "`already_exists`: a process with this id exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<StartProcess>,
) -> Result<(StatusCode, Json<Process>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.manager.start_process(&id, req).await?),
    ))
}

/// Lists a sandbox's background processes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    operation_id = "list_processes", params(SandboxPath),
    responses((status = 200, body = ProcessList),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody), AgentErrors))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let processes = s.manager.list_processes(&id).await?;
    Ok(Json(serde_json::json!({ "processes": processes })))
}

/// A background process.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes",
    operation_id = "get_process", params(ProcessPath),
    responses((status = 200, body = Process),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody), AgentErrors))]
pub async fn get(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Json<Process>, ApiError> {
    Ok(Json(s.manager.get_process(&id, &pid).await?))
}

/// Kills a process's tree (SIGKILL) and forgets it and its logs.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes",
    operation_id = "remove_process", params(ProcessPath),
    responses((status = 204, description = "Removed"),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody), AgentErrors))]
pub async fn remove(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.manager.remove_process(&id, &pid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Text up to the last complete UTF-8 character, and how many bytes that took: a character
/// cut by the page end is left for the next read.
fn text_prefix(bytes: &[u8]) -> (String, u64) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), bytes.len() as u64),
        Err(e) if e.error_len().is_none() => {
            let n = e.valid_up_to();
            (String::from_utf8_lossy(&bytes[..n]).into_owned(), n as u64)
        }
        Err(_) => (
            String::from_utf8_lossy(bytes).into_owned(),
            bytes.len() as u64,
        ),
    }
}

fn offset(parts: &axum::http::request::Parts, name: &str) -> Result<u64, ApiError> {
    match query_param(parts, name) {
        None => Ok(0),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request("bad_request", format!("{name} must be a number"))),
    }
}

/// A process's output from the offsets: a page of JSON, or Server-Sent Events that follow it.
///
/// With `Accept: text/event-stream` the answer streams `stdout` and `stderr` events
/// `{"data", "offset"}`, then `exit` `{"exit_code"}` once the process has exited and its logs
/// are drained; a failure is an `error` event `{"code", "message"}`.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/logs", tag = "processes",
    operation_id = "process_logs", params(ProcessPath, LogsQuery),
    responses(
        (status = 200, description = "A page of output, or its events", content(
            (ProcessLogs = "application/json"),
            (String = "text/event-stream", example = "event: stdout\ndata: {\"data\":\"hi\\n\",\"offset\":3}\n\n"))),
        (status = 400, description = "`bad_request`: an offset is not a number", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody), AgentErrors))]
pub async fn logs(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let offsets = (
        offset(&parts, "stdout_offset")?,
        offset(&parts, "stderr_offset")?,
    );
    let follow = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if follow {
        // Fail before the stream starts when the process does not exist.
        s.manager.get_process(&id, &pid).await?;
        return Ok(follow_logs(s.manager.clone(), id, pid, offsets).into_response());
    }
    let chunk = s.manager.process_logs(&id, &pid, offsets, LOG_PAGE).await?;
    let (stdout, out_n) = text_prefix(&chunk.stdout);
    let (stderr, err_n) = text_prefix(&chunk.stderr);
    Ok(Json(serde_json::json!({
        "stdout": stdout,
        "stderr": stderr,
        "stdout_offset": offsets.0 + out_n,
        "stderr_offset": offsets.1 + err_n,
        "status": if chunk.running { "running" } else { "exited" },
        "exit_code": chunk.exit_code,
    }))
    .into_response())
}

/// Streams a process's logs from the offsets until it has exited and they are drained.
fn follow_logs(
    manager: std::sync::Arc<SandboxManager>,
    id: String,
    pid: String,
    offsets: (u64, u64),
) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let events = async_stream(manager, id, pid, offsets);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn async_stream(
    manager: std::sync::Arc<SandboxManager>,
    id: String,
    pid: String,
    offsets: (u64, u64),
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    // Task-locals do not cross `spawn`: the follower looks the sandbox up as the caller.
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        let _follower = Follower::new();
        let (mut out_off, mut err_off) = offsets;
        loop {
            let chunk = match manager
                .process_logs(&id, &pid, (out_off, err_off), LOG_PAGE)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    let data = serde_json::json!({"code": e.code(), "message": e.to_string()});
                    let _ = tx
                        .send(Event::default().event("error").data(data.to_string()))
                        .await;
                    return;
                }
            };
            let (out, out_n) = text_prefix(&chunk.stdout);
            let (err, err_n) = text_prefix(&chunk.stderr);
            out_off += out_n;
            err_off += err_n;
            for (name, text, off) in [("stdout", out, out_off), ("stderr", err, err_off)] {
                if !text.is_empty() {
                    let data = serde_json::json!({"data": text, "offset": off});
                    if tx
                        .send(Event::default().event(name).data(data.to_string()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let drained = out_n == 0 && err_n == 0;
            if !chunk.running && drained {
                let data = serde_json::json!({"exit_code": chunk.exit_code});
                let _ = tx
                    .send(Event::default().event("exit").data(data.to_string()))
                    .await;
                return;
            }
            if drained && !pause_follow(&tx, FOLLOW_EVERY).await {
                return;
            }
        }
    }));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StdinRequest {
    #[serde(default)]
    data: String,
    /// Close stdin after `data`.
    #[serde(default)]
    eof: bool,
}

/// Writes to a process's stdin.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    operation_id = "process_stdin", params(ProcessPath), request_body = StdinRequest,
    responses((status = 204, description = "Written"),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody),
        (status = 409, description = "`not_running`: the process exited or its stdin is closed", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn stdin(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(req): JsonBody<StdinRequest>,
) -> Result<StatusCode, ApiError> {
    s.manager
        .process_stdin(&id, &pid, req.data.as_bytes(), req.eof)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    #[schema(value_type = crate::openapi::Signal)]
    signal: serde_json::Value,
}

/// A signal by number or name (`SIGTERM`, `TERM`, `15`).
fn parse_signal(v: &serde_json::Value) -> Result<i32, ApiError> {
    let bad = || ApiError::bad_request("bad_request", format!("unknown signal {v}"));
    match v {
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(bad),
        serde_json::Value::String(s) => {
            if let Ok(n) = s.parse::<i32>() {
                return Ok(n);
            }
            let name = if s.starts_with("SIG") {
                s.clone()
            } else {
                format!("SIG{s}")
            };
            nix::sys::signal::Signal::from_str(&name.to_uppercase())
                .map(|sig| sig as i32)
                .map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// Signals a process's whole tree (its session, process group and their descendants).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    operation_id = "signal_process", params(ProcessPath), request_body = SignalRequest,
    responses((status = 204, description = "Sent"),
        (status = 400, description = "`bad_request`: unknown signal; `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody),
        (status = 409, description = "`not_running`: the process has exited", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn signal(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(req): JsonBody<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    let sig = parse_signal(&req.signal)?;
    s.manager.signal_process(&id, &pid, sig).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitRequest {
    #[schema(default = 30000)]
    timeout_ms: Option<u64>,
}

/// Waits for a process to exit; answers it still `running` if the timeout passed first.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/wait", tag = "processes",
    operation_id = "wait_process", params(ProcessPath), request_body = WaitRequest,
    responses((status = 200, body = Process),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn wait(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(req): JsonBody<WaitRequest>,
) -> Result<Json<Process>, ApiError> {
    let timeout = req.timeout_ms.unwrap_or(30_000);
    Ok(Json(s.manager.wait_process(&id, &pid, timeout).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitPortRequest {
    /// A TCP port inside the sandbox.
    port: u16,
    #[schema(default = 30000)]
    timeout_ms: Option<u64>,
}

/// Waits until a port inside the sandbox accepts connections.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/wait-port", tag = "processes",
    operation_id = "wait_port", params(ProcessPath), request_body = WaitPortRequest,
    responses((status = 200, body = PortReady),
        (status = 400, description = "`invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or process", body = ErrorBody),
        (status = 408, description = "`timeout`: the port did not open in time", body = ErrorBody),
        (status = 409, description = "`not_running`: the process exited first", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn wait_port(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    JsonBody(req): JsonBody<WaitPortRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let timeout = req.timeout_ms.unwrap_or(30_000);
    s.manager.wait_port(&id, &pid, req.port, timeout).await?;
    Ok(Json(serde_json::json!({"port": req.port, "ready": true})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal(&serde_json::json!("SIGTERM")).unwrap(), 15);
        assert_eq!(parse_signal(&serde_json::json!("kill")).unwrap(), 9);
        assert_eq!(parse_signal(&serde_json::json!(2)).unwrap(), 2);
        assert_eq!(parse_signal(&serde_json::json!("15")).unwrap(), 15);
        assert!(parse_signal(&serde_json::json!("SIGNOPE")).is_err());
    }

    #[test]
    fn text_prefix_keeps_cut_characters_for_later() {
        let b = "aé".as_bytes();
        assert_eq!(text_prefix(&b[..2]), ("a".to_string(), 1));
        assert_eq!(text_prefix(b), ("aé".to_string(), 3));
    }
}
