//! The HTTP status of each of the core's error codes, one table for the native API and
//! every dialect (which keep the status and say the message in their own shape).

use axum::http::StatusCode;

/// The status that answers a core error whose code is `code`.
pub fn status_of(code: &str) -> StatusCode {
    match code {
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
    }
}
