//! `/v1/sandboxes/{id}/sessions`: long-lived shells whose state persists between commands.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::{CreateSession, Session};

use crate::extract::JsonBody;
use crate::{ApiError, AppState};

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

pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sessions = s.manager.list_sessions(&id).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

pub async fn get(
    State(s): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> Result<Json<Session>, ApiError> {
    Ok(Json(s.manager.get_session(&id, &sid).await?))
}

pub async fn delete(
    State(s): State<AppState>,
    Path((id, sid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete_session(&id, &sid).await?;
    Ok(StatusCode::NO_CONTENT)
}
