//! `POST /v1/sandboxes/{id}/exec`: buffered JSON, or Server-Sent Events when asked for.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandpit_core::model::{ExecRequest, ExecResult};

use crate::extract::JsonBody;
use crate::openapi::{AgentErrors, ErrorBody, SandboxPath};
use crate::shared::sse::{event_stream, wants_sse};
use crate::shared::AppState;
use crate::ApiError;

/// Runs a command: JSON once it has ended, or Server-Sent Events as it runs.
///
/// With `Accept: text/event-stream` the answer streams events: `start` `{"pid"}`, `stdout`
/// and `stderr` `{"data"}` as output is produced, then `exit` `{"exit_code", "duration_ms",
/// "timed_out"}` once the process has really exited; a sandbox failure mid-stream is an
/// `error` event `{"code", "message"}`. Comment lines keep the connection alive.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "exec", operation_id = "exec",
    params(SandboxPath), request_body = ExecRequest,
    responses(
        (status = 200, description = "The finished command, or its events", content(
            (ExecResult = "application/json"),
            (String = "text/event-stream", example = "event: start\ndata: {\"pid\":12}\n\n"))),
        (status = 400, description = "`bad_request` (neither or both of `command` and `argv`), \
            `invalid_path` (`cwd`), `invalid_id` (`session`), `invalid_json`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<ExecRequest>,
) -> Result<Response, ApiError> {
    if !wants_sse(&headers) {
        return Ok(Json(s.manager.exec(&id, req).await?).into_response());
    }
    Ok(event_stream(s.manager.exec_stream(&id, req).await?))
}
