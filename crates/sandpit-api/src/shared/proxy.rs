//! The reverse proxy to a port inside a sandbox: HTTP with streamed bodies, and WebSocket
//! or any other upgrade passed through untouched, over a tunnel through the sandbox's
//! agent. The native port routes and the dialects' port addressings (e2b's, agentpod's)
//! all forward through [`proxy`]; each turns a [`ProxyError`] into its own error shape.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use sandpit_core::{CoreError, SandboxManager};

use super::caller::{PORT_TOKEN_COOKIE, PORT_TOKEN_HEADER, PORT_TOKEN_QUERY};
use super::status::status_of;

/// Why a request could not be proxied: a status, a native error code and a message.
#[derive(Debug)]
pub struct ProxyError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ProxyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<CoreError> for ProxyError {
    fn from(e: CoreError) -> Self {
        Self::new(status_of(e.code()), e.code(), e.to_string())
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus the ones sandpit
/// reads itself: the API token and the port token never reach the sandbox.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// A port whose tunnel could not be opened: nothing listening is the sandbox's server's
/// problem (502), the rest keeps its own status.
fn tunnel_error(e: CoreError) -> ProxyError {
    if e.code() == "not_running" {
        ProxyError::new(StatusCode::BAD_GATEWAY, "bad_gateway", e.to_string())
    } else {
        e.into()
    }
}

fn bad_gateway(id: &str, port: u16, e: impl std::fmt::Display) -> ProxyError {
    ProxyError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        format!("port {port} of sandbox '{id}' did not answer over HTTP: {e}"),
    )
}

/// Where a proxied request goes and how it was addressed.
pub struct Target<'a> {
    pub id: &'a str,
    pub port: u16,
    /// Path and query to send to the sandbox's server (origin form, `/...`).
    pub path_and_query: String,
    /// The path prefix the request came under (`X-Forwarded-Prefix`); empty for host-based.
    pub prefix: String,
}

/// Forwards `req` to `target`'s port inside the sandbox and answers with what the
/// sandbox's server answers, bodies streamed both ways. An upgrade (WebSocket or any other
/// protocol) that the server accepts with 101 is then relayed byte for byte until either
/// side closes. The caller has authorized the request.
pub async fn proxy(
    manager: &SandboxManager,
    target: Target<'_>,
    mut req: Request,
) -> Result<Response, ProxyError> {
    let Target {
        id,
        port,
        path_and_query,
        prefix,
    } = target;
    let (conn, busy) = manager.connect_port(id, port).await.map_err(tunnel_error)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
        .await
        .map_err(|e| bad_gateway(id, port, e))?;
    // The tunnel counts as activity for as long as it carries the exchange.
    let busy = Arc::new(busy);
    let held = busy.clone();
    tokio::spawn(async move {
        let _busy = held;
        let _ = connection.with_upgrades().await;
    });

    let upgrade = wants_upgrade(req.headers());
    let client_side = upgrade.then(|| hyper::upgrade::on(&mut req));
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (mut parts, body) = req.into_parts();
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        let a = parts.uri.authority()?;
        HeaderValue::from_str(a.as_str()).ok()
    });
    parts.uri = Uri::try_from(path_and_query).map_err(|e| {
        ProxyError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("request path: {e}"),
        )
    })?;
    parts.version = axum::http::Version::HTTP_11;
    forward_request_headers(&mut parts.headers, upgrade);
    add_forwarding(
        &mut parts.headers,
        port,
        original_host,
        client_addr,
        &prefix,
    );

    let mut resp = sender
        .send_request(axum::http::Request::from_parts(parts, body))
        .await
        .map_err(|e| bad_gateway(id, port, e))?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let Some(client_side) = client_side else {
            return Err(bad_gateway(
                id,
                port,
                "101 to a request that asked no upgrade",
            ));
        };
        let server_side = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _busy = busy;
            if let (Ok(client), Ok(server)) = (client_side.await, server_side.await) {
                let (mut client, mut server) = (TokioIo::new(client), TokioIo::new(server));
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, switched);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// `Host` as the sandbox's server expects it and `X-Forwarded-*` saying where the request
/// came from.
fn add_forwarding(
    h: &mut HeaderMap,
    port: u16,
    original_host: Option<HeaderValue>,
    client_addr: Option<std::net::IpAddr>,
    prefix: &str,
) {
    if let Ok(v) = HeaderValue::from_str(&format!("localhost:{port}")) {
        h.insert(header::HOST, v);
    }
    if let Some(host) = original_host {
        h.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert(
            HeaderName::from_static("x-forwarded-proto"),
            HeaderValue::from_static("http"),
        );
    }
    if let Some(ip) = client_addr {
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if !prefix.is_empty() {
        if let Ok(v) = HeaderValue::from_str(prefix) {
            h.insert(HeaderName::from_static("x-forwarded-prefix"), v);
        }
    }
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Drops hop-by-hop headers and those named by `Connection`; an upgrade keeps its
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let upgrade = keep_upgrade
        .then(|| h.get(header::UPGRADE).cloned())
        .flatten();
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(named.iter().map(String::as_str))
    {
        h.remove(name);
    }
    if let Some(u) = upgrade {
        h.insert(header::UPGRADE, u);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn forward_request_headers(h: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(h, upgrade);
    h.remove(header::AUTHORIZATION);
    h.remove(PORT_TOKEN_HEADER);
    // sandpit's own server side has answered `100 Continue` already.
    h.remove(header::EXPECT);
    // The port-token cookie is sandpit's; the sandbox's own cookies pass.
    let cookies: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split('=').next() != Some(PORT_TOKEN_COOKIE))
        .map(str::to_string)
        .collect();
    h.remove(header::COOKIE);
    if !cookies.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
}

/// The query without the port token.
pub fn forwarded_query(query: Option<&str>) -> String {
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && kv.split('=').next() != Some(PORT_TOKEN_QUERY))
        .collect();
    if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_token_and_hop_by_hop_headers_stay_behind() {
        assert_eq!(
            forwarded_query(Some("a=1&sandpit_token=t&b=%20c")),
            "?a=1&b=%20c"
        );
        assert_eq!(forwarded_query(Some("sandpit_token=t")), "");
        assert_eq!(forwarded_query(None), "");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("authorization", "Bearer secret"),
            ("x-sandpit-port-token", "t"),
            ("cookie", "a=1; sandpit_port_token=t; b=2"),
            ("accept", "*/*"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        forward_request_headers(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["cookie"], "a=1; b=2");
        assert_eq!(h["accept"], "*/*");
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(wants_upgrade(&h));
        forward_request_headers(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }
}
