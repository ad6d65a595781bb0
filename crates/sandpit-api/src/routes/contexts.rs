//! Code interpreter: `/v1/sandboxes/{id}/contexts` (stateful Python and JavaScript
//! interpreters) and `POST /v1/sandboxes/{id}/code` (run code, JSON or SSE).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandpit_core::model::{Context, CreateContext, RunCode};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ContextList, ContextPath, ErrorBody, RunResult, SandboxPath};
use crate::shared::sse::{event_stream, wants_sse};
use crate::shared::AppState;
use crate::ApiError;

/// Starts a code-interpreter context: a stateful interpreter.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/contexts", tag = "code",
    operation_id = "create_context", params(SandboxPath), request_body = CreateContext,
    responses((status = 201, body = Context),
        (status = 400, description = "`bad_request` (language, env, `context`), `invalid_id`, \
            `invalid_path` (`cwd`), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 409, description = "`already_exists`: a context with this id exists", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<CreateContext>,
) -> Result<(StatusCode, Json<Context>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(s.manager.create_context(&id, req).await?),
    ))
}

/// Lists a sandbox's contexts.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/contexts", tag = "code",
    operation_id = "list_contexts", params(SandboxPath),
    responses((status = 200, body = ContextList),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody), AgentErrors))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let contexts = s.manager.list_contexts(&id).await?;
    Ok(Json(serde_json::json!({ "contexts": contexts })))
}

/// A context.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/contexts/{cid}", tag = "code",
    operation_id = "get_context", params(ContextPath),
    responses((status = 200, body = Context),
        (status = 404, description = "`not_found`: no such sandbox or context", body = ErrorBody), AgentErrors))]
pub async fn get(
    State(s): State<AppState>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Context>, ApiError> {
    Ok(Json(s.manager.get_context(&id, &cid).await?))
}

/// Ends a context and its interpreter.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/contexts/{cid}", tag = "code",
    operation_id = "delete_context", params(ContextPath),
    responses((status = 204, description = "Deleted"),
        (status = 404, description = "`not_found`: no such sandbox or context", body = ErrorBody), AgentErrors))]
pub async fn delete(
    State(s): State<AppState>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    s.manager.delete_context(&id, &cid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces a context's interpreter with a fresh one (its state is lost), also after a crash.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/contexts/{cid}/restart", tag = "code",
    operation_id = "restart_context", params(ContextPath),
    responses((status = 200, body = Context),
        (status = 404, description = "`not_found`: no such sandbox or context", body = ErrorBody), AgentErrors))]
pub async fn restart(
    State(s): State<AppState>,
    Path((id, cid)): Path<(String, String)>,
) -> Result<Json<Context>, ApiError> {
    Ok(Json(s.manager.restart_context(&id, &cid).await?))
}

/// Runs code in a context: JSON once it has ended, or Server-Sent Events as it runs.
///
/// Without `context`, code runs in the sandbox's default context of its `language`, created on
/// first use. With `Accept: text/event-stream` the answer streams `start` `{"pid"}`, `stdout`
/// and `stderr` `{"data"}`, then `result` (the RunResult without `stdout`, `stderr` and
/// `truncated`), or an `error` event `{"code", "message"}`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/code", tag = "code", operation_id = "run_code",
    params(SandboxPath), request_body = RunCode,
    responses(
        (status = 200, description = "The run's outcome, or its events", content(
            (RunResult = "application/json"),
            (String = "text/event-stream", example = "event: stdout\ndata: {\"data\":\"hi\\n\"}\n\n"))),
        (status = 400, description = "`bad_request` (language), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or context", body = ErrorBody),
        (status = 409, description = "`not_running`: the context's interpreter died; restart it", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn run(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RunCode>,
) -> Result<Response, ApiError> {
    if wants_sse(&headers) {
        return Ok(event_stream(s.manager.run_code_stream(&id, req).await?));
    }
    Ok(Json(s.manager.run_code(&id, req).await?).into_response())
}
