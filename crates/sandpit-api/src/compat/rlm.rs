//! The `rlm` dialect: the RLM sandbox worker behind the `CloudflareREPL` Python client
//! (`/sandbox/exec`, `/sandbox/write`, `/sandbox/read`, `/sandbox/health`). A sandbox is
//! created on first use of its `sandbox_id` and keeps its files, so the REPL state the client
//! keeps in `/tmp` persists between calls. `/` and `/health` answer without the token; the
//! other routes refuse with `{"error":"Authorization header required"}` or
//! `{"error":"Invalid token"}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{any, get, post};
use axum::{Json, Router};
use sandpit_core::model::{now_ms, ExecRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    ensure_sandbox, is_missing_entry, read_all, write_all, AuthFailure, Body, CompatError, Dialect,
    Params,
};
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "rlm",
    router,
    public: &["/", "/health"],
    unauthorized,
};

/// The client waits up to 300 s for a run; a command may take that long.
const EXEC_TIMEOUT_MS: u64 = 300_000;

const ENDPOINTS: [&str; 5] = [
    "GET /health",
    "POST /sandbox/exec",
    "POST /sandbox/write",
    "GET /sandbox/read",
    "GET /sandbox/health",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", any(health))
        .route("/health", any(health))
        .route("/sandbox/exec", post(exec))
        .route("/sandbox/write", post(write))
        .route("/sandbox/read", get(read))
        .route("/sandbox/health", get(sandbox_health))
        .fallback(not_found)
}

fn unauthorized(failure: AuthFailure) -> CompatError {
    let message = match failure {
        AuthFailure::Missing => "Authorization header required",
        AuthFailure::Wrong => "Invalid token",
    };
    CompatError::new(StatusCode::UNAUTHORIZED, message)
}

async fn not_found() -> CompatError {
    CompatError::new(StatusCode::NOT_FOUND, "Not found").and(json!({ "endpoints": ENDPOINTS }))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "service": "rlm-sandbox", "timestamp": now_ms()}))
}

/// Paths not starting with `/` are taken from the sandbox's working directory.
fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/workspace/{path}")
    }
}

#[derive(Deserialize)]
struct ExecBody {
    sandbox_id: Option<String>,
    command: Option<String>,
}

async fn exec(
    State(s): State<AppState>,
    Body(req): Body<ExecBody>,
) -> Result<Json<Value>, CompatError> {
    let (Some(id), Some(command)) = (
        req.sandbox_id.filter(|i| !i.is_empty()),
        req.command.filter(|c| !c.is_empty()),
    ) else {
        return Err(CompatError::bad_request(
            "sandbox_id and command are required",
        ));
    };
    ensure_sandbox(&s.manager, &id).await?;
    let run = ExecRequest {
        command: Some(command),
        timeout_ms: Some(EXEC_TIMEOUT_MS.max(s.manager.config().default_timeout_ms)),
        ..ExecRequest::default()
    };
    let r = s.manager.exec(&id, run).await?;
    Ok(Json(json!({
        "stdout": r.stdout,
        "stderr": r.stderr,
        "exitCode": r.exit_code,
        "success": r.exit_code == 0,
    })))
}

#[derive(Deserialize)]
struct WriteBody {
    sandbox_id: Option<String>,
    path: Option<String>,
    content: Option<String>,
}

/// Writes text; an empty `content` makes an empty file.
async fn write(
    State(s): State<AppState>,
    Body(req): Body<WriteBody>,
) -> Result<Json<Value>, CompatError> {
    let (Some(id), Some(path), Some(content)) = (
        req.sandbox_id.filter(|i| !i.is_empty()),
        req.path.filter(|p| !p.is_empty()),
        req.content,
    ) else {
        return Err(CompatError::bad_request(
            "sandbox_id, path, and content are required",
        ));
    };
    let written = async {
        ensure_sandbox(&s.manager, &id).await?;
        write_all(&s.manager, &id, &absolute(&path), content.into_bytes()).await
    };
    written
        .await
        .map_err(|e| CompatError::from(e).and(json!({"success": false})))?;
    Ok(Json(json!({"success": true})))
}

async fn read(State(s): State<AppState>, params: Params) -> Result<Json<Value>, CompatError> {
    let (Some(id), Some(path)) = (params.non_empty("sandbox_id"), params.non_empty("path")) else {
        return Err(CompatError::bad_request(
            "sandbox_id and path query params are required",
        ));
    };
    let path = absolute(&path);
    let data = async {
        ensure_sandbox(&s.manager, &id).await?;
        read_all(&s.manager, &id, &path).await
    };
    let data = data.await.map_err(|e| {
        let error = if is_missing_entry(&e) {
            CompatError::new(StatusCode::NOT_FOUND, format!("File not found: {path}"))
        } else {
            CompatError::from(e)
        };
        error.and(json!({"content": "", "success": false}))
    })?;
    Ok(Json(
        json!({"content": String::from_utf8_lossy(&data), "success": true}),
    ))
}

/// Runs `python3 --version` in the sandbox (`health-check` unless one is named).
async fn sandbox_health(
    State(s): State<AppState>,
    params: Params,
) -> Result<Json<Value>, CompatError> {
    let id = params
        .non_empty("sandbox_id")
        .unwrap_or_else(|| "health-check".to_string());
    let run = async {
        ensure_sandbox(&s.manager, &id).await?;
        let req = ExecRequest {
            command: Some("python3 --version".to_string()),
            ..ExecRequest::default()
        };
        s.manager.exec(&id, req).await
    };
    let r = run.await.map_err(|e| {
        let e = CompatError::from(e);
        CompatError::with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"status": "unhealthy", "error": e.message()}),
        )
    })?;
    // Pythons before 3.4 print their version on stderr.
    let version = if r.stdout.trim().is_empty() {
        r.stderr.trim()
    } else {
        r.stdout.trim()
    };
    Ok(Json(json!({
        "status": "healthy",
        "python": version,
        "exitCode": r.exit_code,
    })))
}
