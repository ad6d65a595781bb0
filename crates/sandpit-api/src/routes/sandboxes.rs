//! `/v1/sandboxes`: create, list, get, update, keepalive, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::{CreateSandbox, Sandbox, UpdateSandbox};

use crate::extract::JsonBody;
use crate::{ApiError, AppState};

pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.manager.create(req).await?)))
}

pub async fn list(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"sandboxes": s.manager.list()}))
}

pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.get(&id)?))
}

pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateSandbox>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.update(&id, req)?))
}

pub async fn keepalive(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.touch(&id)?))
}

pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
