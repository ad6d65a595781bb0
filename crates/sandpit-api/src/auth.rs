//! The native API's auth: the bearer token as a layer (a refusal answers in the native
//! error shape), and the one exemption, a port's public token for that port's proxy. Who
//! a key names is `shared::caller`'s, the same for every dialect.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;

use crate::shared::caller::{caller_of, cookie_tokens, query_token, run_as, PORT_TOKEN_HEADER};
use crate::shared::AppState;
use crate::ApiError;

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = caller_of(&state.keys, req.headers()).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
    })?;
    Ok(run_as(caller, next.run(req)).await)
}

/// How a request to a sandbox's port got in.
#[derive(Debug)]
pub(crate) enum PortAccess {
    /// The server has no token, or the request carries an API key: it runs as its caller.
    Bearer(sandpit_core::tenant::Caller),
    /// The port's public token, in a header or cookie.
    PortToken,
    /// The port's public token, in the query string: the answer sets the cookie.
    PortTokenInQuery(String),
}

/// The one exemption from the bearer token: the public token of sandbox `id`'s `port`
/// opens that port's proxy and nothing else (the caller is the proxy of exactly that
/// sandbox and port; every other route sits behind [`require_token`]).
pub(crate) fn port_access(
    state: &AppState,
    parts: &axum::http::request::Parts,
    id: &str,
    port: u16,
) -> Result<PortAccess, ApiError> {
    if let Ok(caller) = caller_of(&state.keys, &parts.headers) {
        return Ok(PortAccess::Bearer(caller));
    }
    let valid = |t: &str| !t.is_empty() && state.manager.port_token_valid(id, port, t);
    if let Some(t) = query_token(parts.uri.query()) {
        if valid(t) {
            return Ok(PortAccess::PortTokenInQuery(t.to_string()));
        }
    }
    let header = parts
        .headers
        .get(PORT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    if header.is_some_and(valid) || cookie_tokens(&parts.headers).any(valid) {
        return Ok(PortAccess::PortToken);
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token (Authorization: Bearer <token>) or port token \
         (?sandpit_token=, X-Sandpit-Port-Token)",
    ))
}
