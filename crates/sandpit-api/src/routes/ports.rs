//! Ports: reaching a TCP port inside a sandbox through the server. This module owns the
//! reverse proxy (HTTP with streamed bodies, and WebSocket or any other upgrade passed
//! through untouched) over a tunnel through the sandbox's agent, its two addressings
//! (path-based `/v1/sandboxes/{id}/ports/{port}/...` and host-based `{port}-{id}.{domain}`),
//! and the routes that make a port public with a token.

use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::auth::{self, PortAccess};
use crate::openapi::{AgentErrors, ErrorBody, PortPath, ProxyPath, SandboxPath};
use crate::shared::caller::{PORT_TOKEN_COOKIE, PORT_TOKEN_QUERY};
use crate::shared::proxy::{forwarded_query, proxy, Target};
use crate::shared::AppState;
use crate::ApiError;

fn parse_port(port: &str) -> Result<u16, ApiError> {
    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("port '{port}' is not a port: use 1-65535"),
        )
    })
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
}
