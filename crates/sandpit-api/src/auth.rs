//! Bearer-token auth: the request's key (compared by hash, in constant time) names its
//! caller, a tenant or the admin, and the rest of the request runs as that caller (see
//! `sandpit_core::tenant`), so the core's one sandbox lookup enforces tenant isolation
//! for every route and dialect.

use std::future::Future;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use sandpit_core::tenant::{self, Caller};

use crate::compat::AuthFailure;
use crate::{ApiError, AppState};

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = caller_of(&state, req.headers()).map_err(|_| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )
    })?;
    Ok(run_as(caller, next.run(req)).await)
}

/// The caller a request's `Authorization: Bearer <key>` names; without any configured key
/// (open loopback mode) everyone is the admin.
pub(crate) fn caller_of(state: &AppState, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
    if !state.keys.enabled() {
        return Ok(Caller::admin());
    }
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(AuthFailure::Missing);
    };
    let key = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthFailure::Wrong)?;
    state.keys.resolve(key).ok_or(AuthFailure::Wrong)
}

/// Runs a request's handler as `caller`; a quota refusal's 429 gets its `Retry-After`.
pub(crate) async fn run_as(caller: Caller, f: impl Future<Output = Response>) -> Response {
    let retry = caller.clone();
    let mut resp = tenant::scope(caller, f).await;
    if resp.status() == StatusCode::TOO_MANY_REQUESTS {
        if let Some(n) = retry.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(n));
        }
    }
    resp
}

/// Query parameter that carries a port's public token.
pub(crate) const PORT_TOKEN_QUERY: &str = "sandpit_token";
/// Header that carries a port's public token.
pub(crate) const PORT_TOKEN_HEADER: &str = "x-sandpit-port-token";
/// Cookie set when the token came in the query, so a browser's follow-up requests pass.
pub(crate) const PORT_TOKEN_COOKIE: &str = "sandpit_port_token";

/// How a request to a sandbox's port got in.
#[derive(Debug)]
pub(crate) enum PortAccess {
    /// The server has no token, or the request carries an API key: it runs as its caller.
    Bearer(Caller),
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
    if let Ok(caller) = caller_of(state, &parts.headers) {
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

/// The raw `sandpit_token` value of a query string (tokens need no decoding).
pub(crate) fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(PORT_TOKEN_QUERY)?.strip_prefix('='))
}

/// Values of the port-token cookie in every `Cookie` header.
pub(crate) fn cookie_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == PORT_TOKEN_COOKIE).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_tokens_are_found_in_query_and_cookies() {
        assert_eq!(query_token(Some("a=1&sandpit_token=xyz&b")), Some("xyz"));
        assert_eq!(query_token(Some("sandpit_tokenx=1")), None);
        assert_eq!(query_token(None), None);
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            "a=1; sandpit_port_token=t1".parse().unwrap(),
        );
        h.append(header::COOKIE, "sandpit_port_token=t2".parse().unwrap());
        assert_eq!(cookie_tokens(&h).collect::<Vec<_>>(), ["t1", "t2"]);
    }
}
