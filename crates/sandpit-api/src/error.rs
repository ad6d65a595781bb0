//! API errors: a status code and `{"error": {"code", "message"}}`, counted by code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandpit_core::CoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> Self {
        let code = e.code();
        let status = match code {
            "not_found" | "snapshot_not_found" => StatusCode::NOT_FOUND,
            "storage_error" => StatusCode::BAD_GATEWAY,
            "already_exists" | "not_empty" | "not_running" => StatusCode::CONFLICT,
            "interrupted" => StatusCode::CONFLICT,
            "timeout" => StatusCode::REQUEST_TIMEOUT,

            "permission_denied" => StatusCode::FORBIDDEN,
            "payload_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "no_space" => StatusCode::INSUFFICIENT_STORAGE,
            "sandbox_unavailable" | "busy" => StatusCode::SERVICE_UNAVAILABLE,
            "internal" => StatusCode::INTERNAL_SERVER_ERROR,
            "not_supported" => StatusCode::NOT_IMPLEMENTED,
            "git_failed" => StatusCode::BAD_GATEWAY,
            "quota_exceeded" | "limit_reached" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("sandpit_http_errors_total", "code" => self.code).increment(1);
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}
