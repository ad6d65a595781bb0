//! Ports: reaching a TCP port inside a sandbox through the server. This module owns the
//! reverse proxy (HTTP with streamed bodies, and WebSocket or any other upgrade passed
//! through untouched) over a tunnel through the sandbox's agent, its two addressings
//! (path-based `/v1/sandboxes/{id}/ports/{port}/...` and host-based `{port}-{id}.{domain}`),
//! and the routes that make a port public with a token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hyper_util::rt::TokioIo;
use sandpit_core::{CoreError, SandboxManager};
use serde::Serialize;

use crate::auth::{self, PortAccess, PORT_TOKEN_COOKIE, PORT_TOKEN_HEADER, PORT_TOKEN_QUERY};
use crate::openapi::{AgentErrors, ErrorBody, PortPath, ProxyPath, SandboxPath};
use crate::{ApiError, AppState};

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

fn parse_port(port: &str) -> Result<u16, ApiError> {
    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("port '{port}' is not a port: use 1-65535"),
        )
    })
}

/// A port whose tunnel could not be opened: nothing listening is the sandbox's server's
/// problem (502), the rest keeps its own status.
fn tunnel_error(e: CoreError) -> ApiError {
    if e.code() == "not_running" {
        ApiError::new(StatusCode::BAD_GATEWAY, "bad_gateway", e.to_string())
    } else {
        e.into()
    }
}

fn bad_gateway(id: &str, port: u16, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
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
) -> Result<Response, ApiError> {
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
    parts.uri = Uri::try_from(path_and_query)
        .map_err(|e| ApiError::bad_request("bad_request", format!("request path: {e}")))?;
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
fn forwarded_query(query: Option<&str>) -> String {
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

/// Authorizes, proxies, and sets the port-token cookie when the token came in the query.
async fn serve(
    s: &AppState,
    id: &str,
    port: u16,
    path: &str,
    prefix: String,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let access = auth::port_access(s, &parts, id, port)?;
    let path_and_query = format!("{path}{}", forwarded_query(parts.uri.query()));
    let cookie_path = format!("{prefix}/");
    let req = Request::from_parts(parts, body);
    let target = Target {
        id,
        port,
        path_and_query,
        prefix,
    };
    // With an API key the proxy runs as its caller (another tenant's sandbox is not
    // found); a port token opens exactly this sandbox's port.
    let mut resp = match &access {
        PortAccess::Bearer(caller) => {
            sandpit_core::tenant::scope(caller.clone(), proxy(&s.manager, target, req)).await
        }
        _ => proxy(&s.manager, target, req).await,
    }?;
    if let PortAccess::PortTokenInQuery(token) = access {
        let cookie =
            format!("{PORT_TOKEN_COOKIE}={token}; Path={cookie_path}; HttpOnly; SameSite=Lax");
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    Ok(resp)
}

fn prefix(id: &str, port: u16) -> String {
    format!("/v1/sandboxes/{id}/ports/{port}")
}

/// Proxies a request to a port inside the sandbox (path-based): everything after
/// `/ports/{port}` is the path the sandbox's server sees, the query string is kept
/// (without `sandpit_token`).
///
/// Any method; a WebSocket (or other) upgrade is passed through. Needs the bearer token or
/// the port's public token (`?sandpit_token=`, header `X-Sandpit-Port-Token`, or the
/// cookie `sandpit_port_token` the first answer to a query token sets). `Authorization` and
/// the port token are not forwarded; hop-by-hop headers are dropped; `Host` is
/// `localhost:{port}`, and `X-Forwarded-Host`, `-Proto`, `-For` and `-Prefix` are added.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/v1/sandboxes/{id}/ports/{port}/{path}",
    tag = "ports", operation_id = "proxy_port_path",
    params(ProxyPath),
    responses((status = 200, description = "Whatever the sandbox's server answers, streamed"),
        (status = 101, description = "Switching Protocols: the upgrade is relayed"),
        (status = 400, description = "`bad_request`: the port is not 1-65535", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 502, description = "`bad_gateway`: nothing listens on the port, or it did not answer HTTP", body = ErrorBody),
        AgentErrors))]
pub async fn proxy_path(
    State(s): State<AppState>,
    Path((id, port, path)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let port = parse_port(&port)?;
    // The raw (still percent-encoded) path, not the decoded parameter.
    let pre = prefix(&id, port);
    let raw = req.uri().path();
    let rest = raw
        .strip_prefix(pre.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("/{path}"));
    serve(&s, &id, port, &rest, pre, req).await
}

/// Proxies a request for `/` of a port inside the sandbox (path-based); see
/// `proxy_port_path`.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/v1/sandboxes/{id}/ports/{port}/",
    tag = "ports", operation_id = "proxy_port_index",
    params(PortPath),
    responses((status = 200, description = "Whatever the sandbox's server answers, streamed"),
        (status = 101, description = "Switching Protocols: the upgrade is relayed"),
        (status = 400, description = "`bad_request`: the port is not 1-65535", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 502, description = "`bad_gateway`: nothing listens on the port", body = ErrorBody),
        AgentErrors))]
pub async fn proxy_index(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let port = parse_port(&port)?;
    serve(&s, &id, port, "/", prefix(&id, port), req).await
}

/// `/ports/{port}` without the slash: a browser's GET is redirected to `/ports/{port}/`
/// (so the page's relative links resolve under the port); other methods go to `/`.
#[utoipa::path(method(get, post, put, delete, patch, options), path = "/v1/sandboxes/{id}/ports/{port}",
    tag = "ports", operation_id = "proxy_port_root",
    params(PortPath),
    responses((status = 308, description = "GET and HEAD (authorized like the proxy): redirect to `.../ports/{port}/`, query kept"),
        (status = 200, description = "Other methods: what the sandbox's server answers for `/`"),
        (status = 400, description = "`bad_request`: the port is not 1-65535", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 502, description = "`bad_gateway`: nothing listens on the port", body = ErrorBody),
        AgentErrors))]
pub async fn proxy_root(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let port = parse_port(&port)?;
    if matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        let (parts, body) = req.into_parts();
        auth::port_access(&s, &parts, &id, port)?;
        let req = Request::from_parts(parts, body);
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let to = format!("{}/{query}", req.uri().path());
        let mut resp = StatusCode::PERMANENT_REDIRECT.into_response();
        if let Ok(v) = HeaderValue::from_str(&to) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    serve(&s, &id, port, "/", prefix(&id, port), req).await
}

/// `{port}-{id}` of a Host under `domain` (any case; a `:port` suffix ignored).
fn host_target<'a>(host: &'a str, domain: &str) -> Option<(u16, &'a str)> {
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    let cut = host.len().checked_sub(domain.len() + 1)?;
    let (label, suffix) = (host.get(..cut)?, host.get(cut..)?);
    if !suffix.starts_with('.') || !suffix[1..].eq_ignore_ascii_case(domain) {
        return None;
    }
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    (!id.is_empty() && sandpit_core::valid_id(id)).then_some((port, id))
}

/// In front of every route: a request whose Host is `{port}-{id}.{ports_domain}` goes to
/// that sandbox's port whatever its path; every other request goes on to the routes.
pub async fn by_host(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(domain) = s.ports_domain.clone() else {
        return next.run(req).await;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let Some((port, id)) = host.as_deref().and_then(|h| host_target(h, &domain)) else {
        return next.run(req).await;
    };
    let id = id.to_string();
    let path = req.uri().path().to_string();
    match serve(&s, &id, port, &path, String::new(), req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A public port as listed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PublicPort {
    pub port: u16,
    pub created_at: String,
    /// Where the port is reached (host-based when the server has a `ports_domain`); add
    /// `?sandpit_token=<token>` to open it without the API token.
    pub url: String,
}

/// A port's new public token: shown once, only its hash is kept.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PortTokenView {
    pub port: u16,
    pub token: String,
    /// The port's address with the token in the query: a link to share.
    pub url: String,
    pub created_at: String,
}

fn public_url(s: &AppState, headers: &HeaderMap, id: &str, port: u16) -> String {
    let proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|p| *p == "https" || *p == "http")
        .unwrap_or("http");
    match &s.ports_domain {
        Some(domain) => format!("{proto}://{port}-{id}.{domain}/"),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            format!("{proto}://{host}{}/", prefix(id, port))
        }
    }
}

/// Makes a port public: a new random token (replacing the port's previous one) that opens
/// this sandbox's port, and nothing else, without the API token.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/port-tokens/{port}", tag = "ports",
    operation_id = "create_port_token", params(PortPath),
    responses((status = 201, body = PortTokenView),
        (status = 400, description = "`bad_request`: the port is not 1-65535", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn create_token(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<PortTokenView>), ApiError> {
    let port = parse_port(&port)?;
    let (token, created_at) = s.manager.create_port_token(&id, port)?;
    let url = format!(
        "{}?{PORT_TOKEN_QUERY}={token}",
        public_url(&s, &headers, &id, port)
    );
    let view = PortTokenView {
        port,
        token,
        url,
        created_at: sandpit_core::model::rfc3339(created_at),
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// Revokes a port's public token.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/port-tokens/{port}", tag = "ports",
    operation_id = "revoke_port_token", params(PortPath),
    responses((status = 204, description = "Revoked: the token no longer opens the port"),
        (status = 400, description = "`bad_request`: the port is not 1-65535", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox, or the port is not public", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Path((id, port)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let port = parse_port(&port)?;
    s.manager.revoke_port_token(&id, port)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the sandbox's public ports (their tokens are not retrievable).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/port-tokens", tag = "ports",
    operation_id = "list_port_tokens", params(SandboxPath),
    responses((status = 200, body = PublicPortList),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 500, description = "`internal`", body = ErrorBody)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let ports: Vec<PublicPort> = s
        .manager
        .port_tokens(&id)?
        .into_iter()
        .map(|(port, created_at)| PublicPort {
            port,
            created_at: sandpit_core::model::rfc3339(created_at),
            url: public_url(&s, &headers, &id, port),
        })
        .collect();
    Ok(Json(serde_json::json!({ "ports": ports })))
}

/// `{"ports": [PublicPort, ...]}`
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PublicPortList {
    ports: Vec<PublicPort>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_a_port_and_a_sandbox() {
        let d = "preview.example.com";
        assert_eq!(
            host_target("8000-sb-abc.preview.example.com", d),
            Some((8000, "sb-abc"))
        );
        assert_eq!(
            host_target("8000-x.Preview.Example.com:8787", d),
            Some((8000, "x"))
        );
        assert_eq!(
            host_target("8000-x.preview.example.com.", d),
            Some((8000, "x"))
        );
        assert_eq!(host_target("preview.example.com", d), None);
        assert_eq!(host_target("8000-x.evilpreview.example.com", d), None);
        assert_eq!(host_target("0-x.preview.example.com", d), None);
        assert_eq!(host_target("70000-x.preview.example.com", d), None);
        assert_eq!(host_target("x.preview.example.com", d), None);
        assert_eq!(host_target("8000-a.b.preview.example.com", d), None);
        assert_eq!(host_target("127.0.0.1:8787", d), None);
    }

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
