//! `/v1/sandboxes/{id}/git/clone`: clone a repository into the sandbox, or pull it.

use axum::extract::{Path, State};
use axum::Json;
use sandpit_core::model::{GitCheckout, GitClone};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ErrorBody, SandboxPath};
use crate::shared::AppState;
use crate::ApiError;

/// Clones `url` into `dir` (default `/workspace/<repository name>`), or, when `dir` holds a
/// repository already, fetches `branch` (or the remote's HEAD) and fast-forwards to it. git
/// runs inside the sandbox, so the repository must be reachable from it (`network: "egress"`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/git/clone", tag = "git", operation_id = "git_clone",
    params(SandboxPath), request_body = GitClone,
    responses((status = 200, body = GitCheckout),
        (status = 400, description = "`bad_request` (URL scheme, branch, dir), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 502, description = "`git_failed`: git's (redacted) error, e.g. unreachable, authentication failed, not a fast-forward", body = ErrorBody),
        AgentErrors))]
pub async fn clone(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<GitClone>,
) -> Result<Json<GitCheckout>, ApiError> {
    Ok(Json(s.manager.git_clone(&id, req).await?))
}
