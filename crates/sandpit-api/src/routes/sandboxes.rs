//! `/v1/sandboxes`: create, list, get, update, keepalive, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::{CreateSandbox, Sandbox, UpdateSandbox};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ErrorBody, SandboxList, SandboxPath};
use crate::shared::AppState;
use crate::ApiError;

/// Creates and starts a sandbox.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", operation_id = "create_sandbox",
    request_body = CreateSandbox,
    responses((status = 201, body = Sandbox),
        (status = 400, description = "`invalid_id`, `bad_request` (limits, env, network, allow), `invalid_json`", body = ErrorBody),
        (status = 409, description = "`already_exists`: the id is taken (by any tenant: the answer \
            is the same, and says nothing of whose it is)", body = ErrorBody),
        (status = 404, description = "`snapshot_not_found`: `restore` names a snapshot that \
            does not exist", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: a quota of the caller's tenant \
            (max_sandboxes, max_memory_mb, creations_per_minute) is used up; `Retry-After` \
            says when to retry", body = ErrorBody),
        (status = 501, description = "`not_supported`: `network: \"egress\"` on a server that cannot enforce it (rootless, slirp4netns missing)", body = ErrorBody),
        AgentErrors))]
pub async fn create(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<CreateSandbox>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    Ok((StatusCode::CREATED, Json(s.manager.create(req).await?)))
}

/// Lists sandboxes (not counted as activity).
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", operation_id = "list_sandboxes",
    responses((status = 200, body = SandboxList)))]
pub async fn list(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({"sandboxes": s.manager.list()}))
}

/// A sandbox (counts as activity).
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes", operation_id = "get_sandbox",
    params(SandboxPath),
    responses((status = 200, body = Sandbox),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody)))]
pub async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.get(&id)?))
}

/// Changes a sandbox's keepalive (its expiry is recomputed from now) and, with `limits`, the
/// memory, cpus, pids and open files of the running sandbox (through its cgroup; open files
/// apply to processes started from then on). The new limits are kept across restarts.
#[utoipa::path(patch, path = "/v1/sandboxes/{id}", tag = "sandboxes", operation_id = "update_sandbox",
    params(SandboxPath), request_body = UpdateSandbox,
    responses((status = 200, body = Sandbox),
        (status = 400, description = "`invalid_json`; `bad_request`: a limit out of range, or one \
            the kernel or host cannot change (the message says which)", body = ErrorBody),
        (status = 429, description = "`quota_exceeded`: more memory than the tenant's \
            max_memory_mb", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn update(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<UpdateSandbox>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.update(&id, req)?))
}

/// Marks activity: pushes `expires_at` out.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/keepalive", tag = "sandboxes",
    operation_id = "keepalive_sandbox", params(SandboxPath),
    responses((status = 200, body = Sandbox),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody)))]
pub async fn keepalive(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(s.manager.touch(&id)?))
}

/// Deletes a sandbox and everything running in it.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes", operation_id = "delete_sandbox",
    params(SandboxPath),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
