//! Who a request is: the API key it carries (compared by hash, in constant time) names a
//! tenant or the admin, and the request then runs as that caller (see
//! `sandpit_core::tenant`). Dialect-agnostic: a refusal is an [`AuthFailure`] that the
//! native API and each dialect answer in their own shape. Also the port tokens' carriers
//! (query, header, cookie), which the port proxies read.

use std::future::Future;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use sandpit_core::tenant::{self, Caller, Keys};

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header at all.
    Missing,
    /// A header that does not carry the server's token.
    Wrong,
}

/// The caller a request's `Authorization: Bearer <key>` names; without any configured key
/// (open loopback mode) everyone is the admin.
pub fn caller_of(keys: &Keys, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
    if !keys.enabled() {
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
    keys.resolve(key).ok_or(AuthFailure::Wrong)
}

/// Runs a request's handler as `caller`; a quota refusal's 429 gets its `Retry-After`.
pub async fn run_as(caller: Caller, f: impl Future<Output = Response>) -> Response {
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
pub const PORT_TOKEN_QUERY: &str = "sandpit_token";
/// Header that carries a port's public token.
pub const PORT_TOKEN_HEADER: &str = "x-sandpit-port-token";
/// Cookie set when the token came in the query, so a browser's follow-up requests pass.
pub const PORT_TOKEN_COOKIE: &str = "sandpit_port_token";

/// The raw `sandpit_token` value of a query string (tokens need no decoding).
pub fn query_token(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(PORT_TOKEN_QUERY)?.strip_prefix('='))
}

/// Values of the port-token cookie in every `Cookie` header.
pub fn cookie_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
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
