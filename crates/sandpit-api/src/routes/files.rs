//! `/v1/sandboxes/{id}/files`: raw bytes in and out (streamed), plus list, stat, mkdir,
//! move and delete.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use sandpit_core::model::{rfc3339, Entry};
use sandpit_core::CoreError;
use serde::Deserialize;
use tokio_stream::wrappers::ReceiverStream;

use crate::extract::{check_path, query_param, FilePath, JsonBody};
use crate::openapi::{AgentErrors, DirListing, ErrorBody, FileQuery, RemoveQuery, SandboxPath};
use crate::shared::AppState;
use crate::ApiError;

/// Reads a file: its raw bytes.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files", operation_id = "read_file",
    params(SandboxPath, FileQuery),
    responses((status = 200, description = "The file's bytes", content(("application/octet-stream"))),
        (status = 400, description = "`invalid_path`, `is_a_directory`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or file", body = ErrorBody), AgentErrors))]
pub async fn read(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
) -> Result<Response, ApiError> {
    let (size, rx) = s.manager.read_file(&id, &path).await?;
    let body = Body::from_stream(
        ReceiverStream::new(rx).map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
        ],
        body,
    )
        .into_response())
}

/// Writes a file from the raw body (streamed); parent directories are created.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files", operation_id = "write_file",
    params(SandboxPath, FileQuery),
    request_body(description = "The file's bytes", content(("application/octet-stream"))),
    responses((status = 204, description = "Written"),
        (status = 400, description = "`invalid_path`, `is_a_directory`, `not_a_directory`, `bad_request`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: past the server's upload limit", body = ErrorBody),
        (status = 507, description = "`no_space`", body = ErrorBody), AgentErrors))]
pub async fn write(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let limit = s.max_upload_bytes;
    let mut seen: u64 = 0;
    let stream = req.into_body().into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(|e| CoreError::BadRequest(format!("reading upload: {e}")))?;
        seen += chunk.len() as u64;
        if seen > limit {
            return Err(CoreError::TooLarge(format!(
                "upload is larger than {limit} bytes"
            )));
        }
        Ok::<_, CoreError>(chunk)
    });
    s.manager.write_file(&id, &path, Box::pin(stream)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a file, or a directory (non-empty ones only with `recursive`).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files", operation_id = "remove_file",
    params(SandboxPath, RemoveQuery),
    responses((status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or file", body = ErrorBody),
        (status = 409, description = "`not_empty`: a non-empty directory without `recursive`", body = ErrorBody),
        AgentErrors))]
pub async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let (parts, _) = req.into_parts();
    let recursive = query_param(&parts, "recursive").is_some_and(|v| v == "true" || v == "1");
    s.manager.remove(&id, &path, recursive).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An entry as the API shows it.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = Entry)]
pub struct EntryView {
    name: String,
    path: String,
    #[serde(rename = "type")]
    #[schema(value_type = crate::openapi::EntryKind)]
    kind: sandpit_core::model::EntryKind,
    size: u64,
    /// Permission bits.
    mode: u32,
    modified_at: String,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        Self {
            name: e.name,
            path: e.path,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            modified_at: rfc3339(e.modified.saturating_mul(1000)),
        }
    }
}

/// Lists a directory.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", tag = "files", operation_id = "list_files",
    params(SandboxPath, FileQuery),
    responses((status = 200, body = DirListing),
        (status = 400, description = "`invalid_path`, `not_a_directory`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or directory", body = ErrorBody),
        AgentErrors))]
pub async fn list(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let entries: Vec<EntryView> = s
        .manager
        .list_dir(&id, &path)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(serde_json::json!({"path": path, "entries": entries})))
}

/// Describes a file (symlinks are not followed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", tag = "files", operation_id = "stat_file",
    params(SandboxPath, FileQuery),
    responses((status = 200, body = EntryView),
        (status = 400, description = "`invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox or file", body = ErrorBody),
        AgentErrors))]
pub async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
) -> Result<Json<EntryView>, ApiError> {
    Ok(Json(s.manager.stat(&id, &path).await?.into()))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    path: String,
    /// Create missing parents too.
    #[serde(default = "yes")]
    #[schema(default = true)]
    parents: bool,
}

fn yes() -> bool {
    true
}

/// Creates a directory.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files", operation_id = "mkdir",
    params(SandboxPath), request_body = MkdirRequest,
    responses((status = 204, description = "Created"),
        (status = 400, description = "`invalid_path`, `not_a_directory`, `invalid_json`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox, or a missing parent without `parents`", body = ErrorBody),
        (status = 409, description = "`already_exists`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 507, description = "`no_space`", body = ErrorBody), AgentErrors))]
pub async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MkdirRequest>,
) -> Result<StatusCode, ApiError> {
    check_path(&req.path)?;
    s.manager.mkdir(&id, &req.path, req.parents).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    from: String,
    to: String,
}

/// Moves or renames a file or directory.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/move", tag = "files", operation_id = "move_file",
    params(SandboxPath), request_body = MoveRequest,
    responses((status = 204, description = "Moved"),
        (status = 400, description = "`invalid_path`, `is_a_directory`, `not_a_directory`, `invalid_json`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox, or `from` is missing", body = ErrorBody),
        (status = 409, description = "`not_empty`: `to` is a non-empty directory", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody), AgentErrors))]
pub async fn rename(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MoveRequest>,
) -> Result<StatusCode, ApiError> {
    check_path(&req.from)?;
    check_path(&req.to)?;
    s.manager.rename(&id, &req.from, &req.to).await?;
    Ok(StatusCode::NO_CONTENT)
}
