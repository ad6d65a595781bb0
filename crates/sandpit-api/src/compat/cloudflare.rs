//! The `cloudflare` dialect: the container-side HTTP API of the Cloudflare Sandbox SDK
//! (`@cloudflare/sandbox`), served per sandbox under `/compat/cloudflare/{id}/api/...`, so
//! that the SDK's `SandboxClient` built with `baseUrl: http://HOST/compat/cloudflare/{id}`
//! works unmodified. The sandbox `{id}` is made on first use (Cloudflare sandboxes are
//! addressed by a chosen name and exist on demand). Commands run in sandpit sessions
//! (`sessionId`, or the sandbox's `default` session) so `cd` and `export` persist; answers
//! carry `success` and `timestamp`; streams are SSE `data: {...}` frames; errors are the
//! SDK's `{code, message, context, httpStatus, timestamp}` objects, which it maps onto its
//! error classes (`FileNotFoundError`, `ProcessNotFoundError`, ...).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use futures::StreamExt;
use sandpit_core::model::{
    now_ms, CreateContext, CreateSession, Entry, EntryKind, ExecEvent, ExecRequest, GitClone,
    RunCode, StartProcess,
};
use sandpit_core::{CoreError, SandboxManager};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::{ensure_sandbox, iso_now, read_all, text, write_all, AuthFailure, CompatError};
use super::{Dialect, Lenient};
use crate::shared::sse::Utf8Carry;
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "cloudflare",
    router,
    public: &[],
    unauthorized,
};

/// The session commands run in when a request names none.
const DEFAULT_SESSION: &str = "default";
/// Most entries a recursive `list-files` walks.
const MAX_LIST_ENTRIES: usize = 10_000;
/// How often a followed process's logs are read.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// A page of process logs.
const LOG_PAGE: u64 = 1024 * 1024;
/// Bytes per `chunk` event of a streamed file.
const FILE_CHUNK: usize = 64 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/{id}/api/ping", get(ping))
        .route("/{id}/api/version", get(version))
        .route("/{id}/api/commands", get(commands))
        .route("/{id}/api/execute", post(execute))
        .route("/{id}/api/execute/stream", post(execute_stream))
        .route("/{id}/api/read", post(read))
        .route("/{id}/api/read/stream", post(read_stream))
        .route("/{id}/api/write", post(write))
        .route("/{id}/api/mkdir", post(mkdir))
        .route("/{id}/api/delete", post(delete_file))
        .route("/{id}/api/rename", post(rename))
        .route("/{id}/api/move", post(move_file))
        .route("/{id}/api/list-files", post(list_files))
        .route("/{id}/api/exists", post(exists))
        .route("/{id}/api/session/create", post(create_session))
        .route("/{id}/api/session/delete", post(delete_session))
        .route("/{id}/api/process/start", post(start_process))
        .route("/{id}/api/process/list", get(list_processes))
        .route("/{id}/api/process/kill-all", delete(kill_all))
        .route(
            "/{id}/api/process/{pid}",
            get(get_process).delete(kill_process),
        )
        .route("/{id}/api/process/{pid}/logs", get(process_logs))
        .route("/{id}/api/process/{pid}/stream", get(stream_logs))
        .route(
            "/{id}/api/contexts",
            post(create_context).get(list_contexts),
        )
        .route("/{id}/api/contexts/{cid}", delete(delete_context))
        .route("/{id}/api/execute/code", post(execute_code))
        .route("/{id}/api/git/checkout", post(git_checkout))
        .fallback(not_served)
}

// ---------------------------------------------------------------------------------------
// Errors

/// What a request was about: picks the SDK error code for a missing thing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Domain {
    File,
    Command,
    Process,
    Session,
    Context,
    Git,
}

/// An error object the SDK parses: `{code, message, context, httpStatus, timestamp,
/// operation?}`.
fn cf_error(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
    context: Value,
) -> CompatError {
    CompatError::with(
        status,
        json!({
            "code": code,
            "message": message.into(),
            "context": context,
            "httpStatus": status.as_u16(),
            "timestamp": iso_now(),
        }),
    )
}

fn validation(message: impl Into<String>) -> CompatError {
    cf_error(
        StatusCode::BAD_REQUEST,
        "VALIDATION_FAILED",
        message,
        json!({}),
    )
}

fn unauthorized(failure: AuthFailure) -> CompatError {
    let message = match failure {
        AuthFailure::Missing => {
            "missing bearer token: pass defaultHeaders: {Authorization: 'Bearer <token>'}"
        }
        AuthFailure::Wrong => "invalid bearer token",
    };
    cf_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message, json!({}))
}

/// Any other path: a clear error in the SDK's shape.
async fn not_served(uri: OriginalUri) -> CompatError {
    cf_error(
        StatusCode::NOT_FOUND,
        "UNKNOWN_ERROR",
        format!(
            "{} is not served by sandpit's cloudflare dialect (served: execute, files, \
             process, session, contexts, git/checkout, ping)",
            uri.path()
        ),
        json!({}),
    )
}

/// A core error as the SDK's error object; `subject` (a path, process or context id) goes
/// into `context`.
fn core_error(domain: Domain, subject: &str, e: CoreError) -> CompatError {
    let message = e.to_string();
    let key = match domain {
        Domain::File => "path",
        Domain::Process => "processId",
        Domain::Session => "sessionId",
        Domain::Context => "contextId",
        Domain::Git => "repoUrl",
        Domain::Command => "command",
    };
    let context = json!({ key: subject });
    let (status, code) = match (e.code(), domain) {
        ("not_found", Domain::File | Domain::Command) => (404, "FILE_NOT_FOUND"),
        ("not_found", Domain::Process) => (404, "PROCESS_NOT_FOUND"),
        ("not_found", Domain::Context) => (404, "CONTEXT_NOT_FOUND"),
        ("not_found", Domain::Session) => (404, "SESSION_NOT_FOUND"),
        ("not_found", Domain::Git) => (404, "GIT_REPOSITORY_NOT_FOUND"),
        ("already_exists", Domain::Session) => (409, "SESSION_ALREADY_EXISTS"),
        ("already_exists", _) => (409, "FILE_EXISTS"),
        ("is_a_directory", _) => (400, "IS_DIRECTORY"),
        ("not_a_directory", _) => (400, "NOT_DIRECTORY"),
        ("not_empty", _) => (409, "RESOURCE_BUSY"),
        ("permission_denied", _) => (403, "PERMISSION_DENIED"),
        ("no_space", _) => (500, "NO_SPACE"),
        ("payload_too_large", _) => (413, "FILE_TOO_LARGE"),
        ("bad_request" | "invalid_id" | "invalid_path", Domain::Git) => (400, "INVALID_GIT_URL"),
        ("bad_request" | "invalid_id" | "invalid_path", _) => (400, "VALIDATION_FAILED"),
        ("git_failed", _) => git_code(&message),
        ("not_running", Domain::Context) => (500, "CODE_EXECUTION_ERROR"),
        ("not_running", Domain::Process) => (500, "PROCESS_ERROR"),
        ("timeout", _) => (500, "COMMAND_EXECUTION_ERROR"),
        ("quota_exceeded", _) => (429, "QUOTA_EXCEEDED"),
        ("not_supported", _) => (501, "NOT_SUPPORTED"),
        ("sandbox_unavailable", _) => (500, "INTERNAL_ERROR"),
        (_, Domain::Process) => (500, "PROCESS_ERROR"),
        (_, Domain::Command) => (500, "COMMAND_EXECUTION_ERROR"),
        (_, Domain::File) => (500, "FILESYSTEM_ERROR"),
        (_, _) => (500, "INTERNAL_ERROR"),
    };
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    cf_error(status, code, message, context)
}

/// The SDK's git error for git's own message.
fn git_code(message: &str) -> (u16, &'static str) {
    let m = message.to_ascii_lowercase();
    if m.contains("remote branch") || m.contains("could not find remote branch") {
        (404, "GIT_BRANCH_NOT_FOUND")
    } else if m.contains("authentication") || m.contains("could not read username") {
        (401, "GIT_AUTH_FAILED")
    } else if m.contains("not found") || m.contains("does not appear to be a git repository") {
        (404, "GIT_REPOSITORY_NOT_FOUND")
    } else if m.contains("could not resolve host") || m.contains("unable to connect") {
        (502, "GIT_NETWORK_ERROR")
    } else {
        (500, "GIT_CLONE_FAILED")
    }
}

/// The sandbox `{id}`, made on first use.
async fn sandbox(s: &AppState, id: &str) -> Result<(), CompatError> {
    if !sandpit_core::valid_id(id) {
        return Err(validation(format!(
            "invalid sandbox id '{id}': use 1-63 characters of A-Z, a-z, 0-9, '_' and '-'"
        )));
    }
    ensure_sandbox(&s.manager, id).await.map_err(|e| match e {
        CoreError::NotFound(_) => cf_error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_ERROR",
            format!("sandbox '{id}' does not exist"),
            json!({}),
        ),
        other => core_error(Domain::Command, "", other),
    })
}

type Answer = Result<Json<Value>, CompatError>;

/// `{success: true, timestamp, ...fields}`.
fn ok(fields: Value) -> Json<Value> {
    let mut body = json!({"success": true, "timestamp": iso_now()});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), fields) {
        b.extend(extra);
    }
    Json(body)
}

/// A required non-empty string field.
fn required<'a>(body: &'a Value, key: &str) -> Result<&'a str, CompatError> {
    text(body, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| validation(format!("{key} is required")))
}

/// `env` as a map of strings (undefined values are dropped by the SDK's JSON).
fn env_of(body: &Value, key: &str) -> Result<BTreeMap<String, String>, CompatError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Ok((k.clone(), other.to_string())),
            })
            .collect(),
        Some(_) => Err(validation(format!("{key} must be an object of strings"))),
    }
}

fn millis(body: &Value, key: &str) -> Option<u64> {
    body.get(key).and_then(Value::as_u64).filter(|n| *n > 0)
}

// ---------------------------------------------------------------------------------------
// Utility

async fn ping(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    Ok(ok(json!({"message": "pong"})))
}

async fn version(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    Ok(ok(
        json!({"version": format!("sandpit-{}", env!("CARGO_PKG_VERSION"))}),
    ))
}

/// The commands of a usual toolbox that the sandbox has on its PATH.
async fn commands(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    let probe = "for c in bash sh ls cat grep sed awk find git curl wget python3 node npm \
                 pip3 tar gzip unzip make gcc; do command -v \"$c\" >/dev/null && echo \"$c\"; done; true";
    let r = s
        .manager
        .exec(
            &id,
            ExecRequest {
                command: Some(probe.into()),
                ..ExecRequest::default()
            },
        )
        .await
        .map_err(|e| core_error(Domain::Command, "commands", e))?;
    let list: Vec<&str> = r.stdout.lines().filter(|l| !l.is_empty()).collect();
    Ok(ok(json!({"availableCommands": list, "count": list.len()})))
}

// ---------------------------------------------------------------------------------------
// Commands and sessions

/// The session a request names (`sessionId`), or the default one; a named session that does
/// not exist yet is made (the SDK's sessions exist on first use too).
async fn session_of(s: &AppState, id: &str, body: &Value) -> Result<String, CompatError> {
    let Some(sid) = text(body, "sessionId").filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_SESSION.to_string());
    };
    if sid == DEFAULT_SESSION {
        return Ok(sid.to_string());
    }
    match s.manager.get_session(id, sid).await {
        Ok(_) => Ok(sid.to_string()),
        Err(e) if super::is_missing_entry(&e) => {
            let req = CreateSession {
                id: Some(sid.to_string()),
                ..CreateSession::default()
            };
            match s.manager.create_session(id, req).await {
                Ok(_) => Ok(sid.to_string()),
                // Made meanwhile by another request.
                Err(e) if e.code() == "already_exists" => Ok(sid.to_string()),
                Err(e) => Err(core_error(Domain::Session, sid, e)),
            }
        }
        Err(e) => Err(core_error(Domain::Session, sid, e)),
    }
}

/// The command of an execute body, in its session.
async fn exec_request(s: &AppState, id: &str, body: &Value) -> Result<ExecRequest, CompatError> {
    if !body.is_object() {
        return Err(validation("body must be a JSON object"));
    }
    let command = text(body, "command")
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            cf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_COMMAND",
                "command is required",
                json!({}),
            )
        })?;
    Ok(ExecRequest {
        command: Some(command.to_string()),
        cwd: text(body, "cwd")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        env: env_of(body, "env")?,
        timeout_ms: millis(body, "timeoutMs"),
        session: Some(session_of(s, id, body).await?),
        ..ExecRequest::default()
    })
}

/// `POST /api/execute {command, sessionId?, timeoutMs?, env?, cwd?, background?}`:
/// `ExecResult`, or `ProcessStartResult` for `background: true`.
async fn execute(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    sandbox(&s, &id).await?;
    if body.get("background").and_then(Value::as_bool) == Some(true) {
        return start(&s, &id, &body).await;
    }
    let req = exec_request(&s, &id, &body).await?;
    let command = req.command.clone().unwrap_or_default();
    let session = req.session.clone();
    let r = s
        .manager
        .exec(&id, req)
        .await
        .map_err(|e| core_error(Domain::Command, &command, e))?;
    Ok(ok(json!({
        "success": r.exit_code == 0,
        "exitCode": r.exit_code,
        "stdout": r.stdout,
        "stderr": r.stderr,
        "command": command,
        "duration": r.duration_ms,
        "sessionId": session,
    })))
}

fn data_event(value: Value) -> Result<Event, Infallible> {
    Ok(Event::default().data(value.to_string()))
}

fn sse<S>(events: S) -> Response
where
    S: futures::Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

/// `POST /api/execute/stream`: SSE `start {command, pid}`, `stdout`/`stderr` `{data}`, then
/// `complete {exitCode, result}` or `error {error}`.
async fn execute_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Result<Response, CompatError> {
    sandbox(&s, &id).await?;
    let req = exec_request(&s, &id, &body).await?;
    let command = req.command.clone().unwrap_or_default();
    let session = req.session.clone();
    let rx = s
        .manager
        .exec_stream(&id, req)
        .await
        .map_err(|e| core_error(Domain::Command, &command, e))?;
    let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
    let (mut all_out, mut all_err) = (String::new(), String::new());
    let events = ReceiverStream::new(rx).filter_map(move |ev| {
        let event = match ev {
            Ok(ExecEvent::Started { pid }) => Some(json!({
                "type": "start", "command": command, "pid": pid,
                "sessionId": session, "timestamp": iso_now(),
            })),
            Ok(ExecEvent::Stdout(d)) => {
                let text = out.push(&d);
                all_out.push_str(&text);
                Some(json!({"type": "stdout", "data": text, "timestamp": iso_now()}))
            }
            Ok(ExecEvent::Stderr(d)) => {
                let text = err.push(&d);
                all_err.push_str(&text);
                Some(json!({"type": "stderr", "data": text, "timestamp": iso_now()}))
            }
            Ok(ExecEvent::Exited(st)) => Some(json!({
                "type": "complete", "exitCode": st.exit_code, "timestamp": iso_now(),
                "result": {
                    "success": st.exit_code == 0, "exitCode": st.exit_code,
                    "stdout": std::mem::take(&mut all_out), "stderr": std::mem::take(&mut all_err),
                    "command": command, "duration": st.duration_ms,
                    "timestamp": iso_now(), "sessionId": session,
                },
            })),
            Ok(ExecEvent::CodeResult(_)) => None,
            Err(e) => {
                Some(json!({"type": "error", "error": e.to_string(), "timestamp": iso_now()}))
            }
        };
        futures::future::ready(event.map(data_event))
    });
    Ok(sse(events))
}

/// `POST /api/session/create {id, env?, cwd?}`.
async fn create_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    sandbox(&s, &id).await?;
    let sid = text(&body, "id")
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let req = CreateSession {
        id: sid.clone(),
        cwd: text(&body, "cwd")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        env: env_of(&body, "env")?,
    };
    let session = s
        .manager
        .create_session(&id, req)
        .await
        .map_err(|e| core_error(Domain::Session, sid.as_deref().unwrap_or_default(), e))?;
    Ok(ok(json!({
        "id": session.id,
        "message": format!("Session '{}' created", session.id),
        "data": {"id": session.id, "cwd": session.cwd, "createdAt": super::iso(&session.created_at)},
    })))
}

/// `POST /api/session/delete {sessionId}`: ends the session's shell; files stay.
async fn delete_session(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    sandbox(&s, &id).await?;
    let sid = required(&body, "sessionId")?;
    s.manager
        .delete_session(&id, sid)
        .await
        .map_err(|e| core_error(Domain::Session, sid, e))?;
    Ok(ok(json!({"sessionId": sid})))
}

// ---------------------------------------------------------------------------------------
// Files

/// `path`, required.
fn path_of(body: &Value) -> Result<&str, CompatError> {
    if !body.is_object() {
        return Err(validation("body must be a JSON object"));
    }
    required(body, "path")
}

/// A MIME type by extension (the SDK reports one; sandpit does not sniff content).
fn mime_of(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("txt" | "log" | "md" | "csv") => "text/plain",
        Some("html" | "htm") => "text/html",
        Some("css") => "text/css",
        Some("js" | "mjs" | "cjs") => "text/javascript",
        Some("ts") => "text/typescript",
        Some("json") => "application/json",
        Some("py") => "text/x-python",
        Some("sh") => "text/x-shellscript",
        Some("xml") => "application/xml",
        Some("yaml" | "yml") => "text/yaml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("pdf") => "application/pdf",
        Some("zip") => "application/zip",
        Some("gz" | "tgz") => "application/gzip",
        _ => "application/octet-stream",
    }
}

/// `POST /api/read {path, encoding?}`: text as UTF-8, anything else (or `encoding:
/// "base64"`) as base64.
async fn read(State(s): State<AppState>, Path(id): Path<String>, Lenient(body): Lenient) -> Answer {
    let path = path_of(&body)?;
    sandbox(&s, &id).await?;
    let data = read_all(&s.manager, &id, path)
        .await
        .map_err(|e| core_error(Domain::File, path, e))?;
    let size = data.len();
    let want_base64 = text(&body, "encoding") == Some("base64");
    let (content, encoding, binary) = match String::from_utf8(data) {
        Ok(t) if !want_base64 => (t, "utf-8", false),
        Ok(t) => (
            base64::engine::general_purpose::STANDARD.encode(t),
            "base64",
            false,
        ),
        Err(e) => (
            base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
            "base64",
            true,
        ),
    };
    Ok(ok(json!({
        "path": path, "content": content, "encoding": encoding,
        "isBinary": binary, "mimeType": mime_of(path), "size": size,
    })))
}

/// `POST /api/read/stream {path}`: SSE `metadata`, `chunk`s (text, or base64 of each chunk
/// for a binary file), then `complete {bytesRead}`.
async fn read_stream(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Result<Response, CompatError> {
    let path = path_of(&body)?.to_string();
    sandbox(&s, &id).await?;
    // The whole file decides whether it is text: it is read before the first event (files
    // returned this way are capped like `read`).
    let data = read_all(&s.manager, &id, &path)
        .await
        .map_err(|e| core_error(Domain::File, &path, e))?;
    let binary = std::str::from_utf8(&data).is_err();
    let mut events = vec![json!({
        "type": "metadata", "mimeType": mime_of(&path), "size": data.len(),
        "isBinary": binary, "encoding": if binary { "base64" } else { "utf-8" },
    })];
    if binary {
        for chunk in data.chunks(FILE_CHUNK) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            events.push(json!({"type": "chunk", "data": b64}));
        }
    } else {
        let mut carry = Utf8Carry::default();
        for chunk in data.chunks(FILE_CHUNK) {
            events.push(json!({"type": "chunk", "data": carry.push(chunk)}));
        }
    }
    events.push(json!({"type": "complete", "bytesRead": data.len()}));
    Ok(sse(futures::stream::iter(
        events.into_iter().map(data_event),
    )))
}

/// `POST /api/write {path, content, encoding?}`: parent directories are made.
async fn write(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let path = path_of(&body)?;
    let content = match body.get("content") {
        Some(Value::String(c)) => c.as_str(),
        None | Some(Value::Null) => "",
        Some(_) => return Err(validation("content must be a string")),
    };
    let data = match text(&body, "encoding") {
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| validation(format!("content is not valid base64: {e}")))?,
        None | Some("utf-8" | "utf8") => content.as_bytes().to_vec(),
        Some(other) => return Err(validation(format!("unknown encoding '{other}'"))),
    };
    sandbox(&s, &id).await?;
    write_all(&s.manager, &id, path, data)
        .await
        .map_err(|e| core_error(Domain::File, path, e))?;
    Ok(ok(json!({"path": path})))
}

/// `POST /api/mkdir {path, recursive?}`.
async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let path = path_of(&body)?;
    let recursive = body
        .get("recursive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    sandbox(&s, &id).await?;
    s.manager
        .mkdir(&id, path, recursive)
        .await
        .map_err(|e| core_error(Domain::File, path, e))?;
    Ok(ok(json!({"path": path, "recursive": recursive})))
}

/// `POST /api/delete {path}`: a file (or an empty directory).
async fn delete_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let path = path_of(&body)?;
    sandbox(&s, &id).await?;
    s.manager
        .remove(&id, path, false)
        .await
        .map_err(|e| core_error(Domain::File, path, e))?;
    Ok(ok(json!({"path": path})))
}

/// `POST /api/rename {oldPath, newPath}`.
async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let from = required(&body, "oldPath")?;
    let to = required(&body, "newPath")?;
    sandbox(&s, &id).await?;
    s.manager
        .rename(&id, from, to)
        .await
        .map_err(|e| core_error(Domain::File, from, e))?;
    Ok(ok(json!({"path": from, "newPath": to})))
}

/// `POST /api/move {sourcePath, destinationPath}`: like `mv`, into a destination that is a
/// directory.
async fn move_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let from = required(&body, "sourcePath")?;
    let dest = required(&body, "destinationPath")?;
    sandbox(&s, &id).await?;
    let to = match s.manager.stat(&id, dest).await {
        Ok(e) if e.kind == EntryKind::Dir => {
            format!("{}/{}", dest.trim_end_matches('/'), super::basename(from))
        }
        _ => dest.to_string(),
    };
    s.manager
        .rename(&id, from, &to)
        .await
        .map_err(|e| core_error(Domain::File, from, e))?;
    Ok(ok(json!({"path": from, "newPath": to})))
}

/// `rwxr-xr-x` for the permission bits.
fn mode_string(mode: u32) -> String {
    (0..9)
        .map(|i| {
            let bit = 1 << (8 - i);
            if mode & bit == 0 {
                '-'
            } else {
                ['r', 'w', 'x'][i % 3]
            }
        })
        .collect()
}

fn file_info(e: &Entry, root: &str) -> Value {
    let kind = match e.kind {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
        EntryKind::Other => "other",
    };
    let relative = e
        .path
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(&e.path)
        .trim_start_matches('/');
    json!({
        "name": e.name,
        "absolutePath": e.path,
        "relativePath": relative,
        "type": kind,
        "size": e.size,
        "modifiedAt": super::iso_millis(e.modified.saturating_mul(1000)),
        "mode": mode_string(e.mode),
        "permissions": {
            "readable": e.mode & 0o400 != 0,
            "writable": e.mode & 0o200 != 0,
            "executable": e.mode & 0o100 != 0,
        },
    })
}

/// `POST /api/list-files {path, options: {recursive?, includeHidden?}}`.
async fn list_files(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let path = path_of(&body)?;
    let options = match body.get("options") {
        None | Some(Value::Null) => Value::Null,
        Some(o @ Value::Object(_)) => o.clone(),
        Some(_) => return Err(validation("options must be an object")),
    };
    let recursive = options
        .get("recursive")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let hidden = options
        .get("includeHidden")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    sandbox(&s, &id).await?;
    let mut files = Vec::new();
    let mut pending = vec![path.to_string()];
    while let Some(dir) = pending.pop() {
        let entries = match s.manager.list_dir(&id, &dir).await {
            Ok(entries) => entries,
            Err(e) if dir == path => return Err(core_error(Domain::File, path, e)),
            // A subdirectory that went away or cannot be read is skipped.
            Err(_) => continue,
        };
        for e in entries {
            if !hidden && e.name.starts_with('.') {
                continue;
            }
            if files.len() >= MAX_LIST_ENTRIES {
                return Err(cf_error(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_FAILED",
                    format!("'{path}' holds more than {MAX_LIST_ENTRIES} entries; list a smaller directory"),
                    json!({"path": path}),
                ));
            }
            if recursive && e.kind == EntryKind::Dir {
                pending.push(e.path.clone());
            }
            files.push(file_info(&e, path));
        }
    }
    Ok(ok(
        json!({"path": path, "files": files, "count": files.len()}),
    ))
}

/// `POST /api/exists {path}`.
async fn exists(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let path = path_of(&body)?;
    sandbox(&s, &id).await?;
    let exists = match s.manager.stat(&id, path).await {
        Ok(_) => true,
        Err(e) if super::is_missing_entry(&e) => false,
        Err(e) => return Err(core_error(Domain::File, path, e)),
    };
    Ok(ok(json!({"path": path, "exists": exists})))
}

// ---------------------------------------------------------------------------------------
// Processes

/// The command line as the client gave it (`bash -c TEXT` shows as `TEXT`).
fn command_text(argv: &[String]) -> String {
    match argv {
        [shell, flag, text] if flag == "-c" && shell.ends_with("sh") => text.clone(),
        _ => argv.join(" "),
    }
}

/// The SDK's status: `running`, `completed` (exit 0), `killed` (by a signal) or `failed`.
fn status_of(p: &sandpit_core::model::Process) -> &'static str {
    match (p.status, p.exit_code) {
        ("running", _) => "running",
        (_, Some(0)) => "completed",
        // 128 + the signal, as the agent reports a process a signal ended.
        (_, Some(c)) if c > 128 => "killed",
        (_, None) => "killed",
        _ => "failed",
    }
}

fn process_json(p: &sandpit_core::model::Process) -> Value {
    json!({
        "id": p.id,
        "pid": p.pid,
        "command": command_text(&p.command),
        "status": status_of(p),
        "startTime": super::iso(&p.started_at),
        "endTime": p.exited_at.as_deref().map(super::iso),
        "exitCode": p.exit_code,
    })
}

/// `POST /api/process/start {command, processId?, sessionId?, env?, cwd?}`: a background
/// process, started in `cwd`, else the session's current directory, else `/workspace`.
async fn start_process(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    sandbox(&s, &id).await?;
    start(&s, &id, &body).await
}

async fn start(s: &AppState, id: &str, body: &Value) -> Answer {
    if !body.is_object() {
        return Err(validation("body must be a JSON object"));
    }
    let command = text(body, "command")
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| {
            cf_error(
                StatusCode::BAD_REQUEST,
                "INVALID_COMMAND",
                "command is required",
                json!({}),
            )
        })?;
    let mut cwd = text(body, "cwd")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    if cwd.is_none() {
        if let Some(sid) = text(body, "sessionId").filter(|v| !v.is_empty()) {
            cwd = s.manager.get_session(id, sid).await.ok().map(|x| x.cwd);
        }
    }
    let pid = text(body, "processId")
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    let req = StartProcess {
        id: pid.clone(),
        command: Some(command.to_string()),
        cwd,
        env: env_of(body, "env")?,
        ..StartProcess::default()
    };
    let p = s
        .manager
        .start_process(id, req)
        .await
        .map_err(|e| core_error(Domain::Process, pid.as_deref().unwrap_or_default(), e))?;
    // The SDK's `timeout` ("maximum execution time"): the process is killed once it passes.
    if let Some(ms) = millis(body, "timeoutMs").filter(|ms| *ms > 0) {
        kill_after(&s.manager, id, &p, Duration::from_millis(ms));
    }
    Ok(ok(
        json!({"processId": p.id, "pid": p.pid, "command": command}),
    ))
}

/// SIGKILL to process `p` (and its children) after `after`, if it is still that process and
/// still running; it then reads as `killed` (exit code 137).
fn kill_after(
    manager: &std::sync::Arc<SandboxManager>,
    id: &str,
    p: &sandpit_core::model::Process,
    after: Duration,
) {
    let (manager, id, proc_id, pid) = (manager.clone(), id.to_string(), p.id.clone(), p.pid);
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        tokio::time::sleep(after).await;
        match manager.get_process(&id, &proc_id).await {
            Ok(now) if now.pid == pid && now.status == "running" => {
                if let Err(e) = manager.signal_process(&id, &proc_id, 9).await {
                    tracing::debug!(sandbox = %id, process = %proc_id, error = %e, "timeout kill failed");
                }
            }
            _ => {}
        }
    }));
}

async fn list_processes(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    let list = s
        .manager
        .list_processes(&id)
        .await
        .map_err(|e| core_error(Domain::Process, "", e))?;
    let processes: Vec<Value> = list.iter().map(process_json).collect();
    Ok(ok(json!({"processes": processes})))
}

async fn get_process(State(s): State<AppState>, Path((id, pid)): Path<(String, String)>) -> Answer {
    sandbox(&s, &id).await?;
    let p = s
        .manager
        .get_process(&id, &pid)
        .await
        .map_err(|e| core_error(Domain::Process, &pid, e))?;
    Ok(ok(json!({"process": process_json(&p)})))
}

/// `DELETE /api/process/{pid}`: SIGTERM (an exited process answers success too).
async fn kill_process(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Answer {
    sandbox(&s, &id).await?;
    let p = s
        .manager
        .get_process(&id, &pid)
        .await
        .map_err(|e| core_error(Domain::Process, &pid, e))?;
    if p.status == "running" {
        s.manager
            .signal_process(&id, &pid, 15)
            .await
            .map_err(|e| core_error(Domain::Process, &pid, e))?;
    }
    Ok(ok(json!({"processId": pid, "signal": "SIGTERM"})))
}

/// `DELETE /api/process/kill-all`: SIGTERM to every running background process.
async fn kill_all(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    let list = s
        .manager
        .list_processes(&id)
        .await
        .map_err(|e| core_error(Domain::Process, "", e))?;
    let mut killed = 0;
    for p in list.iter().filter(|p| p.status == "running") {
        match s.manager.signal_process(&id, &p.id, 15).await {
            Ok(()) => killed += 1,
            Err(e) => tracing::debug!(sandbox = %id, process = %p.id, error = %e, "kill failed"),
        }
    }
    Ok(ok(json!({"cleanedCount": killed, "killedCount": killed})))
}

/// Everything a process has written so far (capped like a file read).
async fn all_logs(
    manager: &SandboxManager,
    id: &str,
    pid: &str,
) -> Result<(String, String), CoreError> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let chunk = manager
            .process_logs(id, pid, (out.len() as u64, err.len() as u64), LOG_PAGE)
            .await?;
        if chunk.stdout.is_empty() && chunk.stderr.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk.stdout);
        err.extend_from_slice(&chunk.stderr);
        if (out.len() + err.len()) as u64 > super::MAX_INLINE_FILE {
            return Err(CoreError::TooLarge(format!(
                "the logs of process '{pid}' are larger than {} bytes",
                super::MAX_INLINE_FILE
            )));
        }
    }
    Ok((
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

async fn process_logs(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Answer {
    sandbox(&s, &id).await?;
    s.manager
        .get_process(&id, &pid)
        .await
        .map_err(|e| core_error(Domain::Process, &pid, e))?;
    let (stdout, stderr) = all_logs(&s.manager, &id, &pid)
        .await
        .map_err(|e| core_error(Domain::Process, &pid, e))?;
    Ok(ok(
        json!({"processId": pid, "stdout": stdout, "stderr": stderr}),
    ))
}

/// `GET /api/process/{pid}/stream`: SSE `process_info`, `stdout`/`stderr` `{data}` from the
/// start, then `exit {exitCode}` once the process has exited and its logs are drained.
async fn stream_logs(
    State(s): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
) -> Result<Response, CompatError> {
    sandbox(&s, &id).await?;
    let p = s
        .manager
        .get_process(&id, &pid)
        .await
        .map_err(|e| core_error(Domain::Process, &pid, e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Value>(16);
    let manager = s.manager.clone();
    let first = json!({
        "type": "process_info", "processId": p.id, "command": command_text(&p.command),
        "status": status_of(&p), "timestamp": iso_now(),
    });
    // Task-locals do not cross `spawn`: the follower looks the sandbox up as the caller.
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        let _follower = crate::shared::follow::Follower::new();
        if tx.send(first).await.is_err() {
            return;
        }
        let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
        let mut offsets = (0u64, 0u64);
        loop {
            let chunk = match manager.process_logs(&id, &pid, offsets, LOG_PAGE).await {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(
                            json!({"type": "error", "processId": pid, "data": e.to_string(),
                            "error": e.to_string(), "timestamp": iso_now()}),
                        )
                        .await;
                    return;
                }
            };
            offsets.0 += chunk.stdout.len() as u64;
            offsets.1 += chunk.stderr.len() as u64;
            let drained = chunk.stdout.is_empty() && chunk.stderr.is_empty();
            for (name, data) in [
                ("stdout", out.push(&chunk.stdout)),
                ("stderr", err.push(&chunk.stderr)),
            ] {
                if !data.is_empty() {
                    let ev = json!({"type": name, "data": data, "processId": pid, "timestamp": iso_now()});
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
            if !chunk.running && drained {
                let code = chunk.exit_code;
                let text = match code {
                    Some(c) => format!("Process exited with code {c}"),
                    None => "Process was killed".to_string(),
                };
                let _ = tx
                    .send(json!({"type": "exit", "processId": pid, "exitCode": code,
                        "data": text, "timestamp": iso_now()}))
                    .await;
                return;
            }
            // A client that went away ends the follower even while nothing is written.
            if drained && !crate::shared::follow::pause_follow(&tx, FOLLOW_EVERY).await {
                return;
            }
        }
    }));
    Ok(sse(ReceiverStream::new(rx).map(data_event)))
}

// ---------------------------------------------------------------------------------------
// Code interpreter

fn language_of(body: &Value) -> Result<String, CompatError> {
    match text(body, "language").unwrap_or("python") {
        "python" | "python3" => Ok("python".into()),
        "javascript" | "js" => Ok("javascript".into()),
        other => Err(cf_error(
            StatusCode::BAD_REQUEST,
            "VALIDATION_FAILED",
            format!("language '{other}' is not available; use python or javascript"),
            json!({"language": other}),
        )),
    }
}

/// `POST /api/contexts {language?, cwd?, env_vars?}`.
async fn create_context(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let language = language_of(&body)?;
    sandbox(&s, &id).await?;
    let req = CreateContext {
        language: Some(language),
        cwd: text(&body, "cwd")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        env: env_of(&body, "env_vars")?,
        ..CreateContext::default()
    };
    let c = s
        .manager
        .create_context(&id, req)
        .await
        .map_err(|e| core_error(Domain::Context, "", e))?;
    Ok(ok(
        json!({"contextId": c.id, "language": c.language, "cwd": c.cwd}),
    ))
}

async fn list_contexts(State(s): State<AppState>, Path(id): Path<String>) -> Answer {
    sandbox(&s, &id).await?;
    let list = s
        .manager
        .list_contexts(&id)
        .await
        .map_err(|e| core_error(Domain::Context, "", e))?;
    let contexts: Vec<Value> = list
        .iter()
        .map(|c| json!({"id": c.id, "language": c.language, "cwd": c.cwd}))
        .collect();
    Ok(ok(json!({"contexts": contexts})))
}

async fn delete_context(
    State(s): State<AppState>,
    Path((id, cid)): Path<(String, String)>,
) -> Answer {
    sandbox(&s, &id).await?;
    s.manager
        .delete_context(&id, &cid)
        .await
        .map_err(|e| core_error(Domain::Context, &cid, e))?;
    Ok(ok(json!({"contextId": cid})))
}

/// One of sandpit's results (`{mime: data, is_main_result}`) as the SDK's `result` event.
fn result_event(r: &Value) -> Value {
    let mut data = r.clone();
    let main = data
        .as_object_mut()
        .and_then(|m| m.remove("is_main_result"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let pick = |mime: &str| data.get(mime).cloned().unwrap_or(Value::Null);
    json!({
        "type": "result",
        "text": pick("text/plain"), "html": pick("text/html"), "png": pick("image/png"),
        "jpeg": pick("image/jpeg"), "svg": pick("image/svg+xml"), "latex": pick("text/latex"),
        "markdown": pick("text/markdown"), "javascript": pick("application/javascript"),
        "json": pick("application/json"),
        "isMainResult": main, "data": data, "timestamp": now_ms(),
    })
}

/// `POST /api/execute/code {context_id, code, language?, timeout_ms?}`: SSE lines
/// `stdout`/`stderr` `{text}`, `result {text, html, png, ..., data}`, `error {ename,
/// evalue, traceback}`, then `execution_complete {execution_count}`.
async fn execute_code(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Result<Response, CompatError> {
    let code = match body.get("code") {
        Some(Value::String(c)) => c.clone(),
        _ => return Err(validation("code is required")),
    };
    let context = text(&body, "context_id")
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    sandbox(&s, &id).await?;
    if let Some(cid) = &context {
        s.manager
            .get_context(&id, cid)
            .await
            .map_err(|e| core_error(Domain::Context, cid, e))?;
    }
    let language = match context {
        Some(_) => None,
        None => Some(language_of(&body)?),
    };
    let req = RunCode {
        code,
        context: context.clone(),
        language,
        timeout_ms: millis(&body, "timeout_ms"),
        locals: false,
    };
    let cid = context.unwrap_or_default();
    let rx = s
        .manager
        .run_code_stream(&id, req)
        .await
        .map_err(|e| core_error(Domain::Context, &cid, e))?;
    let (mut out, mut err) = (Utf8Carry::default(), Utf8Carry::default());
    let events = ReceiverStream::new(rx).flat_map(move |ev| {
        let now = now_ms();
        let events: Vec<Value> = match ev {
            Ok(ExecEvent::Started { .. } | ExecEvent::Exited(_)) => vec![],
            Ok(ExecEvent::Stdout(d)) => {
                vec![json!({"type": "stdout", "text": out.push(&d), "timestamp": now})]
            }
            Ok(ExecEvent::Stderr(d)) => {
                vec![json!({"type": "stderr", "text": err.push(&d), "timestamp": now})]
            }
            Ok(ExecEvent::CodeResult(r)) => {
                let mut v: Vec<Value> = r["results"]
                    .as_array()
                    .map(|rs| rs.iter().map(result_event).collect())
                    .unwrap_or_default();
                if let Some(e) = r.get("error").filter(|e| e.is_object()) {
                    let traceback: Vec<&str> = e["traceback"]
                        .as_str()
                        .unwrap_or_default()
                        .lines()
                        .collect();
                    v.push(json!({
                        "type": "error",
                        "ename": e["name"].as_str().unwrap_or("Error"),
                        "evalue": e["value"].as_str().unwrap_or_default(),
                        "traceback": traceback, "timestamp": now,
                    }));
                }
                v.push(json!({"type": "execution_complete",
                    "execution_count": r["execution_count"], "timestamp": now}));
                v
            }
            Err(e) => vec![
                json!({"type": "error", "ename": e.code(), "evalue": e.to_string(),
                "traceback": [], "timestamp": now}),
            ],
        };
        // One event per line (the SDK reads this stream line by line).
        futures::stream::iter(events.into_iter().map(data_event))
    });
    Ok(sse(events))
}

// ---------------------------------------------------------------------------------------
// Git

/// `POST /api/git/checkout {repoUrl, branch?, targetDir?, depth?, timeoutMs?}`: clones
/// through sandpit's git (no local paths or `file://`; a token in the URL is used through a
/// credential helper and kept out of the checkout).
async fn git_checkout(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Answer {
    let url = required(&body, "repoUrl")?;
    let depth = match body.get("depth") {
        None | Some(Value::Null) => None,
        Some(d) => Some(
            d.as_u64()
                .filter(|n| *n > 0)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| validation("depth must be a positive integer"))?,
        ),
    };
    sandbox(&s, &id).await?;
    let req = GitClone {
        url: url.to_string(),
        branch: text(&body, "branch")
            .filter(|b| !b.is_empty())
            .map(str::to_string),
        depth,
        dir: text(&body, "targetDir")
            .filter(|d| !d.is_empty())
            .map(str::to_string),
        timeout_ms: millis(&body, "timeoutMs"),
        ..GitClone::default()
    };
    let c = s
        .manager
        .git_clone(&id, req)
        .await
        .map_err(|e| core_error(Domain::Git, url, e))?;
    Ok(ok(json!({
        "repoUrl": url, "branch": c.branch, "targetDir": c.dir, "commit": c.commit,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(0o755), "rwxr-xr-x");
        assert_eq!(mode_string(0o100644), "rw-r--r--");
        assert_eq!(mode_string(0), "---------");
    }

    #[test]
    fn shell_commands_show_as_given() {
        let argv = [
            "/bin/bash".to_string(),
            "-c".to_string(),
            "sleep 5".to_string(),
        ];
        assert_eq!(command_text(&argv), "sleep 5");
        assert_eq!(command_text(&["ls".to_string(), "-l".to_string()]), "ls -l");
    }

    #[test]
    fn missing_things_get_the_sdk_codes() {
        let c = core_error(Domain::File, "/x", CoreError::TooLarge("big".into()));
        assert_eq!(c.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(c.body["code"], "FILE_TOO_LARGE");
        assert_eq!(c.body["httpStatus"], 413);
        assert_eq!(c.body["context"]["path"], "/x");
        let c = core_error(Domain::Git, "x", CoreError::BadRequest("url: no".into()));
        assert_eq!(c.body["code"], "INVALID_GIT_URL");
        assert_eq!(
            git_code("fatal: Remote branch nope not found").1,
            "GIT_BRANCH_NOT_FOUND"
        );
    }
}
