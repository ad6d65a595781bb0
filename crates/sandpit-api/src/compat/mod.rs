//! Dialects: the HTTP APIs of other sandbox workers, served on the same core so that their
//! existing clients work by changing one URL (`http://HOST:8787/compat/<dialect>`, or `/`
//! with `--root-dialect`). A sandbox made through a dialect is an ordinary sandbox, seen by
//! `/v1` and every other dialect.
//!
//! Each dialect module is a table of thin handlers. What they share lives here: the bearer
//! token checked as a layer and refused in the dialect's own shape, the `{"error": "..."}`
//! error every dialect speaks, lenient body and query extractors, and small helpers for
//! files and timestamps.

pub mod acontext;
pub mod agentpod;
pub mod artifact;
pub mod cloudflare;
pub mod e2b;
pub mod kapin;
pub mod rlm;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, OriginalUri, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use sandpit_core::model::{now_ms, rfc3339, CreateSandbox};
use sandpit_core::{CoreError, SandboxManager};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;

pub use crate::shared::caller::AuthFailure;
use crate::shared::status::status_of;
use crate::shared::AppState;

/// Largest request body a dialect accepts: file contents travel inside JSON (base64 grows
/// them by a third).
pub const MAX_BODY: usize = 64 * 1024 * 1024;
/// Largest file a dialect returns inside a JSON answer.
pub const MAX_INLINE_FILE: u64 = 48 * 1024 * 1024;

/// One served dialect.
pub struct Dialect {
    pub name: &'static str,
    /// Its routes, relative to where it is mounted.
    pub router: fn() -> axum::Router<AppState>,
    /// Paths (relative) that answer without the token.
    pub public: &'static [&'static str],
    /// Its answer when the token is missing or wrong.
    pub unauthorized: fn(AuthFailure) -> CompatError,
}

/// Every dialect sandpit serves.
pub const DIALECTS: [&Dialect; 7] = [
    &acontext::DIALECT,
    &artifact::DIALECT,
    &rlm::DIALECT,
    &kapin::DIALECT,
    &agentpod::DIALECT,
    &cloudflare::DIALECT,
    &e2b::DIALECT,
];
/// Dialects described in the source documents but not built yet.
const PLANNED: [&str; 0] = [];

pub(crate) fn find(name: &str) -> Option<&'static Dialect> {
    DIALECTS.into_iter().find(|d| d.name == name)
}

/// Checks a `--root-dialect` name; the error says which names exist.
pub fn validate_root_dialect(name: &str) -> Result<(), String> {
    if find(name).is_some() {
        return Ok(());
    }
    let served: Vec<&str> = DIALECTS.iter().map(|d| d.name).collect();
    if PLANNED.contains(&name) {
        return Err(format!(
            "--root-dialect '{name}': that dialect is not built yet; available: {}",
            served.join(", ")
        ));
    }
    Err(format!(
        "--root-dialect '{name}' is not a dialect; use one of: {}",
        served.join(", ")
    ))
}

impl Dialect {
    /// The dialect's routes behind its own token check.
    pub(crate) fn serve(&'static self, state: &AppState) -> axum::Router<AppState> {
        let router = (self.router)()
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                (state.clone(), self),
                authorize,
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY));
        // kapin sends CORS headers on every answer, its 401 and preflights included.
        if self.name == kapin::DIALECT.name {
            kapin::with_cors(router)
        } else {
            router
        }
    }
}

/// Every dialect under `/compat/<name>`, each with its own auth (outside the native layer).
pub(crate) fn routes(state: &AppState) -> axum::Router<AppState> {
    DIALECTS.into_iter().fold(axum::Router::new(), |router, d| {
        router.nest(&format!("/compat/{}", d.name), d.serve(state))
    })
}

/// The e2b dialect alone, for its own listener.
pub(crate) fn e2b_root(state: &AppState) -> axum::Router<AppState> {
    e2b::DIALECT.serve(state)
}

async fn authorize(
    State((state, dialect)): State<(AppState, &'static Dialect)>,
    req: Request,
    next: Next,
) -> Response {
    // Public paths answer without a key, as a caller that sees no sandbox.
    let caller = if state.keys.enabled() && dialect.public.contains(&req.uri().path()) {
        sandpit_core::tenant::Caller::nobody()
    } else {
        // e2b's SDK sends its key as X-API-KEY (or a sandbox access token), not a bearer.
        let found = if dialect.name == e2b::DIALECT.name {
            e2b::caller_of(&state, req.headers())
        } else {
            crate::shared::caller::caller_of(&state.keys, req.headers())
        };
        match found {
            Ok(caller) => caller,
            Err(failure) => return (dialect.unauthorized)(failure).into_response(),
        }
    };
    crate::shared::caller::run_as(caller, next.run(req)).await
}

async fn method_not_allowed(method: Method, uri: OriginalUri) -> CompatError {
    CompatError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// An error in the shape every dialect shares: a status and a JSON object with `error`.
#[derive(Debug)]
pub struct CompatError {
    pub status: StatusCode,
    pub body: Value,
}

impl CompatError {
    /// `{"error": message}`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self::with(status, serde_json::json!({ "error": message.into() }))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// Any JSON body.
    pub fn with(status: StatusCode, body: Value) -> Self {
        Self { status, body }
    }

    /// Adds fields to the body (e.g. `success: false`).
    pub fn and(mut self, fields: Value) -> Self {
        if let (Some(body), Value::Object(extra)) = (self.body.as_object_mut(), fields) {
            body.extend(extra);
        }
        self
    }

    /// The message, for dialects that put it elsewhere.
    pub fn message(&self) -> String {
        self.body["error"].as_str().unwrap_or_default().to_string()
    }
}

/// The core's errors keep the native status codes and carry the core's message.
impl From<CoreError> for CompatError {
    fn from(e: CoreError) -> Self {
        Self::new(status_of(e.code()), e.to_string())
    }
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::NOT_IMPLEMENTED {
            tracing::warn!(status = %self.status, body = %self.body, "dialect request failed");
        }
        (self.status, Json(self.body)).into_response()
    }
}

/// Whether the core error is a missing file or directory (not a missing sandbox).
pub fn is_missing_entry(e: &CoreError) -> bool {
    matches!(e, CoreError::Agent(_)) && e.code() == "not_found"
}

/// A JSON body, whatever the Content-Type says; an empty body reads as `{}`. Bad JSON is a
/// 400 in the dialect shape.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = CompatError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(Body)
            .map_err(|e| CompatError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A JSON body read the way a worker that tolerates anything reads it: a body that is not
/// JSON (or none) is `null`, and handlers pick the fields they understand.
pub struct Lenient(pub Value);

impl<S: Send + Sync> FromRequest<S> for Lenient {
    type Rejection = CompatError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        Ok(Lenient(
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, CompatError> {
    Bytes::from_request(req, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            CompatError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY} bytes"),
            )
        } else {
            CompatError::bad_request(e.body_text())
        }
    })
}

/// The query string's parameters, percent-decoded; never rejects.
pub struct Params(Option<String>);

impl Params {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<String> {
        let q = self.0.as_deref()?;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The first non-empty value of `name`.
    pub fn non_empty(&self, name: &str) -> Option<String> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Params(parts.uri.query().map(str::to_string)))
    }
}

/// A string field of a JSON object, if it is one.
pub fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A positive number of seconds, from a JSON number or a numeric string; 0 and anything
/// else are "not given", as the workers' `x ? ... : undefined` reads them.
pub fn seconds(v: Option<&Value>) -> Option<u64> {
    let n = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (n.is_finite() && n >= 1.0).then_some(n as u64)
}

/// Creates the sandbox `id` unless it exists: workers that make sandboxes on first use.
pub async fn ensure_sandbox(manager: &SandboxManager, id: &str) -> Result<(), CoreError> {
    match manager.touch(id) {
        Err(CoreError::NotFound(_)) => {}
        other => return other.map(drop),
    }
    let req = CreateSandbox {
        id: Some(id.to_string()),
        ..CreateSandbox::default()
    };
    match manager.create(req).await {
        Ok(_) => Ok(()),
        // Made meanwhile by the caller's tenant (fine), or held by another tenant (not found).
        Err(CoreError::AlreadyExists(_)) => manager.touch(id).map(drop),
        Err(e) => Err(e),
    }
}

/// A whole file, refused past `MAX_INLINE_FILE` (it goes into a JSON answer).
pub async fn read_all(
    manager: &SandboxManager,
    id: &str,
    path: &str,
) -> Result<Vec<u8>, CoreError> {
    let (size, rx) = manager.read_file(id, path).await?;
    if size > MAX_INLINE_FILE {
        return Err(CoreError::TooLarge(format!(
            "'{path}' is {size} bytes; files above {MAX_INLINE_FILE} bytes cannot be returned inline"
        )));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    let mut chunks = ReceiverStream::new(rx);
    while let Some(chunk) = chunks.next().await {
        data.extend_from_slice(&chunk?);
    }
    Ok(data)
}

/// Writes a whole file; parent directories are created.
pub async fn write_all(
    manager: &SandboxManager,
    id: &str,
    path: &str,
    data: Vec<u8>,
) -> Result<(), CoreError> {
    let body = futures::stream::iter([Ok::<_, CoreError>(Bytes::from(data))]);
    manager.write_file(id, path, body).await
}

/// ISO-8601 UTC with milliseconds and `Z`, as JavaScript's `toISOString()` writes it.
pub fn iso_millis(ms: i64) -> String {
    let secs = rfc3339(ms);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// A core timestamp (`...:SSZ`) in the `toISOString()` form.
pub fn iso(rfc3339: &str) -> String {
    format!("{}.000Z", rfc3339.trim_end_matches('Z'))
}

/// Now, in the `toISOString()` form.
pub fn iso_now() -> String {
    iso_millis(now_ms())
}

/// The last component of a path (`sandbox-file` for `/`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/')
        .find(|c| !c.is_empty())
        .unwrap_or("sandbox-file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_to_iso_string() {
        assert_eq!(iso_millis(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso("2023-11-14T22:13:20Z"), "2023-11-14T22:13:20.000Z");
    }

    #[test]
    fn seconds_read_like_the_workers() {
        assert_eq!(seconds(Some(&serde_json::json!(1800))), Some(1800));
        assert_eq!(seconds(Some(&serde_json::json!("60"))), Some(60));
        assert_eq!(seconds(Some(&serde_json::json!(0))), None);
        assert_eq!(seconds(Some(&serde_json::json!(null))), None);
        assert_eq!(seconds(None), None);
    }

    #[test]
    fn root_dialect_names() {
        for d in DIALECTS {
            assert!(validate_root_dialect(d.name).is_ok());
        }
        let e = validate_root_dialect("nope").unwrap_err();
        assert!(e.contains("acontext") && e.contains("rlm"), "{e}");
    }

    #[test]
    fn basenames() {
        assert_eq!(basename("/workspace/a.txt"), "a.txt");
        assert_eq!(basename("/workspace/dir/"), "dir");
        assert_eq!(basename("/"), "sandbox-file");
    }
}
