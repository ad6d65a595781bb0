//! Bearer-token auth, compared in constant time.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

pub async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(expected) = &state.token {
        if !bearer_matches(req.headers(), expected) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong bearer token (Authorization: Bearer <token>)",
            ));
        }
    }
    Ok(next.run(req).await)
}

/// Whether the request's `Authorization: Bearer <token>` carries `expected` (constant time).
pub(crate) fn bearer_matches(headers: &HeaderMap, expected: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Query parameter that carries a port's public token.
pub(crate) const PORT_TOKEN_QUERY: &str = "sandpit_token";
/// Header that carries a port's public token.
pub(crate) const PORT_TOKEN_HEADER: &str = "x-sandpit-port-token";
/// Cookie set when the token came in the query, so a browser's follow-up requests pass.
pub(crate) const PORT_TOKEN_COOKIE: &str = "sandpit_port_token";

/// How a request to a sandbox's port got in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PortAccess {
    /// The server has no token, or the request carries the bearer token.
    Bearer,
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
    let Some(expected) = &state.token else {
        return Ok(PortAccess::Bearer);
    };
    if bearer_matches(&parts.headers, expected) {
        return Ok(PortAccess::Bearer);
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
