//! The `e2b` dialect: what the unmodified E2B SDKs (`e2b`, `e2b-code-interpreter`) call,
//! so that `E2B_API_URL` and `E2B_SANDBOX_URL` pointed at `/compat/e2b` (or at the root of
//! `--e2b-listen`) make them run on sandpit. Three APIs share the one router, their paths
//! never overlap:
//! - the control plane (`/sandboxes`, `/v2/sandboxes`, ...: [`control`]), authorized by
//!   `X-API-KEY`;
//! - the in-sandbox daemon "envd" (Connect-RPC `process.Process` and
//!   `filesystem.Filesystem`, `/files`, `/health`: [`envd`] over the codec in [`connect`]);
//! - the code interpreter (`/execute`, `/contexts`: [`interpreter`]).
//!
//! Envd and interpreter requests name their sandbox in the `E2b-Sandbox-Id` header (and the
//! port, 49983 or 49999, in `E2b-Sandbox-Port`), as the SDK sends them to one sandbox URL.
//! They carry no API key: the create answer hands the caller's key back as the sandbox's
//! `envdAccessToken` and `trafficAccessToken`, which the SDK then sends as `X-Access-Token`
//! and `E2B-Traffic-Access-Token`; either header authorizes like `X-API-KEY`.
//! What E2B keeps beside the sandbox (template name, metadata) is stored with the sandbox
//! ([`Meta`], the store's per-sandbox dialect metadata): it survives a restart and goes
//! when the sandbox is deleted, by any route.

pub mod connect;
pub mod control;
pub mod envd;
pub mod interpreter;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use sandpit_core::tenant::Caller;
use sandpit_core::{CoreError, SandboxManager};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{AuthFailure, CompatError, Dialect};
use crate::shared::proxy::{proxy, Target};
use crate::shared::status::status_of;
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "e2b",
    router,
    public: &[],
    unauthorized,
};

/// The envd version sandpit answers as: new enough for the SDK's current code paths
/// (default user, stdin control, octet-stream uploads), below file metadata (0.6.2).
pub const ENVD_VERSION: &str = "0.5.7";
/// Port of envd inside an E2B sandbox.
pub const ENVD_PORT: u16 = 49983;
/// Port of the code interpreter inside an E2B sandbox.
pub const INTERPRETER_PORT: u16 = 49999;
/// Header naming the sandbox of an envd or interpreter request.
pub const SANDBOX_ID_HEADER: &str = "e2b-sandbox-id";
/// Header naming the port inside the sandbox.
pub const SANDBOX_PORT_HEADER: &str = "e2b-sandbox-port";

pub fn router() -> Router<AppState> {
    Router::new()
        // Control plane.
        .route("/sandboxes", post(control::create).get(control::list_v1))
        .route("/v2/sandboxes", post(control::create).get(control::list_v2))
        .route("/sandboxes/{id}", get(control::info).delete(control::kill))
        .route("/sandboxes/{id}/timeout", post(control::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(control::refresh))
        .route("/sandboxes/{id}/connect", post(control::connect))
        .route("/v2/sandboxes/{id}/connect", post(control::connect))
        .route("/sandboxes/{id}/pause", post(control::pause))
        .route("/sandboxes/{id}/resume", post(control::resume))
        .route("/sandboxes/{id}/metrics", get(control::metrics))
        // envd.
        .route("/health", get(envd::health))
        .route(
            "/files",
            get(envd::download)
                .post(envd::upload)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/process.Process/{method}", post(envd::process))
        .route("/filesystem.Filesystem/{method}", post(envd::filesystem))
        // Code interpreter.
        .route("/execute", post(interpreter::execute))
        .route(
            "/contexts",
            post(interpreter::create_context).get(interpreter::list_contexts),
        )
        .route("/contexts/{cid}", delete(interpreter::delete_context))
        .route(
            "/contexts/{cid}/restart",
            post(interpreter::restart_context),
        )
        .fallback(not_found)
}

/// Unknown paths: a request for another port of a sandbox (`E2b-Sandbox-Port` other than
/// envd's and the interpreter's, as `get_host(port)` URLs send when `E2B_SANDBOX_URL` is
/// set) goes to that port through sandpit's port proxy; anything else is a 404.
async fn not_found(
    axum::extract::State(s): axum::extract::State<AppState>,
    req: axum::extract::Request,
) -> Response {
    let port = req
        .headers()
        .get(SANDBOX_PORT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok())
        .filter(|p| *p != ENVD_PORT && *p != INTERPRETER_PORT && *p != 0);
    if let (Some(port), Some(id)) = (port, sandbox_of(req.headers())) {
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let target = Target {
            id: &id,
            port,
            path_and_query,
            prefix: String::new(),
        };
        return match proxy(&s.manager, target, req).await {
            Ok(r) => r,
            Err(e) => E2bError::new(e.status, e.message).into_response(),
        };
    }
    E2bError::new(
        StatusCode::NOT_FOUND,
        format!("no route {}", req.uri().path()),
    )
    .into_response()
}

fn unauthorized(failure: AuthFailure) -> CompatError {
    let message = match failure {
        AuthFailure::Missing => "missing API key (X-API-KEY header)",
        AuthFailure::Wrong => "invalid API key",
    };
    CompatError::with(
        StatusCode::UNAUTHORIZED,
        json!({"code": 401, "message": message}),
    )
}

/// Headers that carry a key: the control plane's, then the ones the SDK sends to a sandbox.
const KEY_HEADERS: [&str; 3] = ["x-api-key", "x-access-token", "e2b-traffic-access-token"];

/// The caller a request's key names: `X-API-KEY`, `X-Access-Token`,
/// `E2B-Traffic-Access-Token` or `Authorization: Bearer`. (The SDK's `Authorization: Basic
/// <user>:` on envd calls names a user inside the sandbox, not a key, and is ignored.)
pub(crate) fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
    if !state.keys.enabled() {
        return Ok(Caller::admin());
    }
    let mut given = false;
    for name in KEY_HEADERS {
        if let Some(v) = headers.get(name) {
            given = true;
            if let Some(c) = v.to_str().ok().and_then(|k| state.keys.resolve(k)) {
                return Ok(c);
            }
        }
    }
    match crate::shared::caller::caller_of(&state.keys, headers) {
        Err(AuthFailure::Missing) if given => Err(AuthFailure::Wrong),
        Err(AuthFailure::Wrong) if !bearer(headers) && !given => Err(AuthFailure::Missing),
        other => other,
    }
}

fn bearer(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer "))
}

/// The key the request was authorized with (handed back as the sandbox's access token), or
/// `None` on a server without keys.
pub(crate) fn request_key(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if !state.keys.enabled() {
        return None;
    }
    KEY_HEADERS
        .iter()
        .filter_map(|n| headers.get(*n))
        .chain(headers.get(axum::http::header::AUTHORIZATION))
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.strip_prefix("Bearer ").unwrap_or(v))
        .find(|k| state.keys.resolve(k).is_some())
        .map(str::to_string)
}

/// The sandbox an envd or interpreter request is for (`E2b-Sandbox-Id`).
pub(crate) fn sandbox_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SANDBOX_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// What E2B keeps about a sandbox that sandpit's model has no field for, stored with the
/// sandbox (the store's `dialect_meta`, as JSON) and deleted with it by any route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub template_id: String,
    pub metadata: BTreeMap<String, String>,
}

impl Default for Meta {
    fn default() -> Self {
        Self {
            template_id: "base".into(),
            metadata: BTreeMap::new(),
        }
    }
}

/// The dialect's name in the store.
const META_DIALECT: &str = "e2b";

/// The sandbox's template and metadata (`base` and none when nothing was recorded).
pub(crate) fn meta_of(manager: &SandboxManager, id: &str) -> Meta {
    match manager.dialect_meta(id, META_DIALECT) {
        Ok(Some(data)) => serde_json::from_str(&data).unwrap_or_default(),
        Ok(None) | Err(_) => Meta::default(),
    }
}

/// Records the sandbox's template and metadata (nothing is written for the defaults).
pub(crate) fn set_meta(manager: &SandboxManager, id: &str, meta: &Meta) -> Result<(), CoreError> {
    if *meta == Meta::default() {
        return Ok(());
    }
    let data = serde_json::to_string(meta).map_err(|e| CoreError::Internal(e.to_string()))?;
    manager.set_dialect_meta(id, META_DIALECT, &data)
}

/// The error of E2B's REST APIs (control plane and envd's `/files`): `{"code": <status>,
/// "message"}`.
#[derive(Debug)]
pub struct E2bError {
    pub status: StatusCode,
    pub message: String,
}

impl E2bError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// A missing sandbox as E2B's API words it (the SDK looks for "was not found").
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("sandbox \"{id}\" was not found"),
        )
    }
}

impl From<CoreError> for E2bError {
    fn from(e: CoreError) -> Self {
        Self::new(status_of(e.code()), e.to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "e2b request failed");
        }
        (
            self.status,
            Json(json!({"code": self.status.as_u16(), "message": self.message})),
        )
            .into_response()
    }
}

/// A JSON body (`{}` when empty) whose refusal is in E2B's shape.
pub struct Json2b(pub serde_json::Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Json2b {
    type Rejection = E2bError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match super::Body::<serde_json::Value>::from_request(req, state).await {
            Ok(super::Body(v)) => Ok(Json2b(v)),
            Err(e) => Err(E2bError::new(e.status, e.message())),
        }
    }
}

/// A core error about sandbox `id`: a missing sandbox in E2B's words, the rest as the core
/// says.
pub(crate) fn core_error(id: &str, e: CoreError) -> E2bError {
    if matches!(e, CoreError::NotFound(_)) {
        E2bError::sandbox_not_found(id)
    } else {
        E2bError::from(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_header_is_read_trimmed() {
        let mut h = HeaderMap::new();
        assert_eq!(sandbox_of(&h), None);
        h.insert(SANDBOX_ID_HEADER, " abc ".parse().unwrap());
        assert_eq!(sandbox_of(&h).as_deref(), Some("abc"));
    }

    #[test]
    fn meta_round_trips_as_json_and_defaults_to_base() {
        assert_eq!(Meta::default().template_id, "base");
        let m = Meta {
            template_id: "t".into(),
            metadata: BTreeMap::from([("a".into(), "b".into())]),
        };
        let back: Meta = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
