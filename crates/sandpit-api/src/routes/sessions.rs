//! `/v1/sandboxes/{id}/sessions`: long-lived shells whose state persists between commands.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::{CreateSession, Session};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ErrorBody, SandboxPath, SessionList, SessionPath};
use crate::shared::AppState;
use crate::ApiError;

/// Starts a session: a long-lived shell.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/sessions", tag = "sessions",
    operation_id = "create_session", params(SandboxPath), request_body = CreateSession,
    responses((status = 201, body = Session),
        (status = 400, description = "`invalid_id`, `invalid_path` (`cwd`), `bad_request` (env), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 409, description = "`already_exists`: a session with this id exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateSession>,
) -> Result<(StatusCode, Json<Session>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.manager.create_session(&id, req).await?),
    ))
}

/// Lists a sandbox's sessions.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/sessions", tag = "sessions",
    operation_id = "list_sessions", params(SandboxPath),
    responses((status = 200, body = SessionList),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody), AgentErrors))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sessions = s.manager.list_sessions(&id).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

/// A session, with the shell's current directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/sessions/{sid}", tag = "sessions",
    operation_id = "get_session", params(SessionPath),
    responses((status = 200, body = Session),
        (status = 404, description = "`not_found`: no such sandbox or session", body = ErrorBody), AgentErrors))]
pub async fn get(
    State(s): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(s.manager.get_session(&id, &sid).await?))
}

/// Ends a session: the shell and everything it started are killed.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/sessions/{sid}", tag = "sessions",
    operation_id = "delete_session", params(SessionPath),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such sandbox or session", body = ErrorBody), AgentErrors))]
pub async fn delete(
    State(s): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete_session(&id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}
