//! The `acontext` dialect: the Sandbox Worker API of a Python agent platform
//! (`CloudflareSandboxBackend`, httpx). Sandboxes are named by the client
//! (`POST /sandbox/create {sandbox_id}`) and addressed in the path; files travel as base64
//! in JSON. Clients send `keepalive_seconds` with most calls: it sets the sandbox's idle
//! keepalive from now, as the worker's `sleepAfter` did. Statuses are the ones the client
//! maps: `running`, `paused`, `error`. Errors answer `{"error": "..."}`; without the token,
//! 401 `{"error":"Unauthorized"}` on every route.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use sandpit_core::model::{CreateSandbox, ExecRequest, Sandbox, UpdateSandbox};
use sandpit_core::CoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    is_missing_entry, iso, read_all, seconds, write_all, AuthFailure, Body, CompatError, Dialect,
    Params,
};
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "acontext",
    router,
    public: &[],
    unauthorized,
};

const ENDPOINTS: [&str; 7] = [
    "POST /sandbox/create",
    "POST /sandbox/:id/kill",
    "GET /sandbox/:id",
    "POST /sandbox/:id/update",
    "POST /sandbox/:id/exec",
    "POST /sandbox/:id/download",
    "POST /sandbox/:id/upload",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/sandbox/create", post(create))
        .route("/sandbox/{id}", get(info))
        .route("/sandbox/{id}/kill", post(kill))
        .route("/sandbox/{id}/update", post(update))
        .route("/sandbox/{id}/exec", post(exec))
        .route("/sandbox/{id}/download", post(download))
        .route("/sandbox/{id}/upload", post(upload))
        .fallback(not_found)
}

fn unauthorized(_: AuthFailure) -> CompatError {
    CompatError::new(StatusCode::UNAUTHORIZED, "Unauthorized")
}

async fn not_found() -> CompatError {
    CompatError::new(StatusCode::NOT_FOUND, "Not found").and(
        json!({"message": "Sandbox Worker API (sandpit acontext dialect)", "endpoints": ENDPOINTS}),
    )
}

/// A sandbox as the client reads it.
fn view(s: &Sandbox) -> Json<Value> {
    let status = match s.status.as_str() {
        "sleeping" => "paused",
        "stopped" => "error",
        _ => "running",
    };
    Json(json!({
        "sandbox_id": s.id,
        "sandbox_status": status,
        "sandbox_created_at": iso(&s.created_at),
        "sandbox_expires_at": s.expires_at.as_deref().map(iso),
    }))
}

/// Counts as activity; a `keepalive_seconds` also becomes the sandbox's keepalive from now.
fn keep_alive(s: &AppState, id: &str, keepalive: Option<&Value>) -> Result<Sandbox, CoreError> {
    match seconds(keepalive) {
        Some(k) => s.manager.update(
            id,
            UpdateSandbox {
                keepalive_seconds: Some(k),
                ..UpdateSandbox::default()
            },
        ),
        None => s.manager.touch(id),
    }
}

#[derive(Deserialize)]
struct CreateBody {
    sandbox_id: Option<String>,
    keepalive_seconds: Option<Value>,
}

/// Creates the sandbox, or answers the existing one of that id (the worker's `getSandbox`
/// returned the same sandbox for the same id).
async fn create(
    State(s): State<AppState>,
    Body(req): Body<CreateBody>,
) -> Result<Json<Value>, CompatError> {
    let id = req
        .sandbox_id
        .filter(|id| !id.is_empty())
        .ok_or_else(|| CompatError::bad_request("sandbox_id is required"))?;
    let create = CreateSandbox {
        id: Some(id.clone()),
        keepalive_seconds: seconds(req.keepalive_seconds.as_ref()),
        ..CreateSandbox::default()
    };
    let sandbox = match s.manager.create(create).await {
        Err(CoreError::AlreadyExists(_)) => keep_alive(&s, &id, req.keepalive_seconds.as_ref())?,
        other => other?,
    };
    Ok(view(&sandbox))
}

async fn info(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let keepalive = params.get("keepalive_seconds").map(Value::String);
    Ok(view(&keep_alive(&s, &id, keepalive.as_ref())?))
}

/// Deletes the sandbox; like the worker's `destroy()`, a sandbox already gone is a success.
async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, CompatError> {
    match s.manager.delete(&id).await {
        Ok(()) | Err(CoreError::NotFound(_)) => Ok(Json(json!({"success": true}))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct UpdateBody {
    keepalive_longer_by_seconds: Option<Value>,
}

/// Pushes the expiry out by `keepalive_longer_by_seconds` past where activity now puts it.
async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<UpdateBody>,
) -> Result<Json<Value>, CompatError> {
    let longer = seconds(req.keepalive_longer_by_seconds.as_ref())
        .ok_or_else(|| CompatError::bad_request("keepalive_longer_by_seconds is required"))?;
    let current = s.manager.touch(&id)?;
    // A sandbox that never expires stays so.
    let keepalive = match current.keepalive_seconds {
        0 => 0,
        k => k.saturating_add(longer),
    };
    let sandbox = s.manager.update(
        &id,
        UpdateSandbox {
            keepalive_seconds: Some(keepalive),
            ..UpdateSandbox::default()
        },
    )?;
    Ok(view(&sandbox))
}

#[derive(Deserialize)]
struct ExecBody {
    command: Option<String>,
    keepalive_seconds: Option<Value>,
}

async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<ExecBody>,
) -> Result<Json<Value>, CompatError> {
    let command = req
        .command
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| CompatError::bad_request("command is required"))?;
    keep_alive(&s, &id, req.keepalive_seconds.as_ref())?;
    let run = ExecRequest {
        command: Some(command),
        ..ExecRequest::default()
    };
    let r = s.manager.exec(&id, run).await?;
    Ok(Json(json!({
        "stdout": r.stdout,
        "stderr": r.stderr,
        "exit_code": r.exit_code,
    })))
}

#[derive(Deserialize)]
struct DownloadBody {
    file_path: Option<String>,
    keepalive_seconds: Option<Value>,
}

/// Always base64, whatever `encoding` asks for (the client decodes base64).
async fn download(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<DownloadBody>,
) -> Result<Json<Value>, CompatError> {
    let path = req
        .file_path
        .filter(|p| !p.is_empty())
        .ok_or_else(|| CompatError::bad_request("file_path is required"))?;
    keep_alive(&s, &id, req.keepalive_seconds.as_ref())?;
    let data = read_all(&s.manager, &id, &path)
        .await
        .map_err(|e| file_error(e, &path))?;
    Ok(Json(json!({
        "content": base64::engine::general_purpose::STANDARD.encode(data),
        "encoding": "base64",
    })))
}

#[derive(Deserialize)]
struct UploadBody {
    file_path: Option<String>,
    content: Option<String>,
    encoding: Option<String>,
    keepalive_seconds: Option<Value>,
}

/// Writes `content` (utf-8 text by default, or base64); parents are created, and an empty
/// file is allowed.
async fn upload(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<UploadBody>,
) -> Result<Json<Value>, CompatError> {
    let (Some(path), Some(content)) = (req.file_path.filter(|p| !p.is_empty()), req.content) else {
        return Err(CompatError::bad_request(
            "file_path and content are required",
        ));
    };
    let data = match req
        .encoding
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("utf-8" | "utf8") => content.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(content.trim())
            .map_err(|e| CompatError::bad_request(format!("content is not valid base64: {e}")))?,
        Some(other) => {
            return Err(CompatError::bad_request(format!(
                "encoding '{other}' is not supported: use \"utf-8\" or \"base64\""
            )))
        }
    };
    keep_alive(&s, &id, req.keepalive_seconds.as_ref())?;
    write_all(&s.manager, &id, &path, data)
        .await
        .map_err(|e| file_error(e, &path))?;
    Ok(Json(json!({"success": true})))
}

fn file_error(e: CoreError, path: &str) -> CompatError {
    if is_missing_entry(&e) {
        CompatError::new(StatusCode::NOT_FOUND, format!("File not found: {path}"))
    } else {
        e.into()
    }
}
