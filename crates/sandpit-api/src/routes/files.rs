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
use crate::{ApiError, AppState};

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
#[derive(serde::Serialize)]
pub struct EntryView {
    name: String,
    path: String,
    #[serde(rename = "type")]
    kind: sandpit_core::model::EntryKind,
    size: u64,
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

pub async fn stat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    FilePath(path): FilePath,
) -> Result<Json<EntryView>, ApiError> {
    Ok(Json(s.manager.stat(&id, &path).await?.into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    path: String,
    #[serde(default = "yes")]
    parents: bool,
}

fn yes() -> bool {
    true
}

pub async fn mkdir(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<MkdirRequest>,
) -> Result<StatusCode, ApiError> {
    check_path(&req.path)?;
    s.manager.mkdir(&id, &req.path, req.parents).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    from: String,
    to: String,
}

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
