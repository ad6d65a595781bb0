//! Extractors that answer bad input in the API's error shape.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// A JSON body, whatever the Content-Type says (curl's `-d` sends a form type); an empty body
/// reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("request body is larger than {} bytes", crate::MAX_JSON_BODY),
                )
            } else {
                ApiError::bad_request("bad_request", e.body_text())
            }
        })?;
        let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(body)
            .map(JsonBody)
            .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))
    }
}

/// The `path` query parameter of file routes, checked to be absolute.
pub struct FilePath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for FilePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let path = query_param(parts, "path").ok_or_else(|| {
            ApiError::bad_request("invalid_path", "the 'path' query parameter is required")
        })?;
        check_path(&path)?;
        Ok(FilePath(path))
    }
}

/// One query parameter, percent-decoded.
pub fn query_param(parts: &Parts, name: &str) -> Option<String> {
    let q = parts.uri.query()?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Paths inside a sandbox must be absolute and free of NUL bytes.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!("path '{}' must be absolute", path.escape_debug()),
        ));
    }
    Ok(())
}
