//! Health, metrics and the answers for unknown routes.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;

use crate::openapi::{ErrorBody, Health};
use crate::shared::AppState;
use crate::ApiError;

/// Liveness and version (no auth).
#[utoipa::path(get, path = "/health", tag = "ops", operation_id = "health",
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Prometheus metrics of the whole server: for admin keys only (they count every
/// tenant's sandboxes), so a tenant's key answers 403.
#[utoipa::path(get, path = "/metrics", tag = "ops", operation_id = "metrics",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain"),
        (status = 403, description = "`permission_denied`: a tenant's key that is not an admin's",
        body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if !sandpit_core::tenant::current().is_some_and(|c| c.admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "metrics cover every tenant: they need an admin key",
        ));
    }
    for (status, n) in state.manager.count_by_status() {
        metrics::gauge!("sandpit_sandboxes", "status" => status).set(n as f64);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    ))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}
