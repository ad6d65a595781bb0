//! Snapshots (`/v1/sandboxes/{id}/snapshots`, `/v1/snapshots/{sid}`, `/restore`) and sleep
//! (`/v1/sandboxes/{id}/sleep`, `/wake`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::Sandbox;
use sandpit_core::snapshot::{CreateSnapshot, RestoreRequest, Snapshot};
use utoipa::{IntoParams, ToSchema};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ErrorBody, SandboxPath};
use crate::shared::AppState;
use crate::ApiError;

/// Documentation only: the answer of the snapshot list.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SnapshotList {
    /// Newest first.
    snapshots: Vec<Snapshot>,
}

/// Documentation only: the snapshot path parameter.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct SnapshotPath {
    /// Snapshot id.
    sid: String,
}

/// Archives the sandbox's files (default: all it wrote) into snapshot storage.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    operation_id = "create_snapshot", params(SandboxPath), request_body = CreateSnapshot,
    responses((status = 201, body = Snapshot),
        (status = 400, description = "`invalid_path`, `not_a_directory`, `bad_request` (name, excludes), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or path", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 502, description = "`storage_error`: the snapshot storage failed", body = ErrorBody),
        AgentErrors))]
pub async fn create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateSnapshot>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    let snap = s.manager.create_snapshot(&id, req).await?;
    Ok((StatusCode::CREATED, Json(snap)))
}

/// The sandbox's snapshots, newest first; also after the sandbox is gone.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    operation_id = "list_snapshots", params(SandboxPath),
    responses((status = 200, body = SnapshotList),
        (status = 400, description = "`invalid_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox and no snapshots of it", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let snaps = s.manager.list_snapshots(&id)?;
    Ok(Json(serde_json::json!({ "snapshots": snaps })))
}

/// A snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{sid}", tag = "snapshots",
    operation_id = "get_snapshot", params(SnapshotPath),
    responses((status = 200, body = Snapshot),
        (status = 404, description = "`snapshot_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(s.manager.get_snapshot(&sid)?))
}

/// Deletes a snapshot and its archive.
#[utoipa::path(delete, path = "/v1/snapshots/{sid}", tag = "snapshots",
    operation_id = "delete_snapshot", params(SnapshotPath),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "`snapshot_not_found`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody),
        (status = 502, description = "`storage_error`", body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete_snapshot(&sid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces the files under the snapshot's path with the snapshot's (default: the newest
/// snapshot of this sandbox). Processes keep running.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/restore", tag = "snapshots",
    operation_id = "restore_snapshot", params(SandboxPath), request_body = RestoreRequest,
    responses((status = 200, description = "The snapshot restored", body = Snapshot),
        (status = 400, description = "`bad_request` (a corrupt archive), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox; `snapshot_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 502, description = "`storage_error`", body = ErrorBody),
        AgentErrors))]
pub async fn restore(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<RestoreRequest>,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(s.manager.restore(&id, req).await?))
}

/// Puts the sandbox to sleep: its processes end and its memory is released; files stay.
/// Any later call on it (but `GET`) wakes it.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/sleep", tag = "sandboxes",
    operation_id = "sleep_sandbox", params(SandboxPath),
    responses((status = 200, body = Sandbox),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        AgentErrors))]
pub async fn sleep(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.sleep(&id).await?))
}

/// Wakes a sleeping sandbox (a running one stays as it is).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/wake", tag = "sandboxes",
    operation_id = "wake_sandbox", params(SandboxPath),
    responses((status = 200, body = Sandbox),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        AgentErrors))]
pub async fn wake(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.wake(&id).await?))
}
