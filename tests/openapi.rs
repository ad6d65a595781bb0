//! `GET /openapi.json`: the served OpenAPI document, open without a token, and true to the
//! running server (every documented operation is routed and guarded as the document says).

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn with_token() -> Server {
    Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    })
}

/// `GET /openapi.json` without any Authorization header; asserts 200 and JSON.
#[track_caller]
fn fetch_document(server: &Server) -> Value {
    let r = server.send(server.req_anon(Method::GET, "/openapi.json"));
    let text = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, 200, "GET /openapi.json without a token: {text}");
    assert!(
        r.content_type.starts_with("application/json"),
        "content type {:?}",
        r.content_type
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn document_is_served_without_a_token() {
    let server = with_token();
    let doc = fetch_document(&server);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi version {version:?}");
    for path in [
        "/health",
        "/metrics",
        "/openapi.json",
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/keepalive",
        "/v1/sandboxes/{id}/exec",
        "/v1/sandboxes/{id}/files",
        "/v1/sandboxes/{id}/files/list",
        "/v1/sandboxes/{id}/files/stat",
        "/v1/sandboxes/{id}/files/mkdir",
        "/v1/sandboxes/{id}/files/move",
        "/v1/sandboxes/{id}/sessions",
        "/v1/sandboxes/{id}/sessions/{sid}",
        "/v1/sandboxes/{id}/processes",
        "/v1/sandboxes/{id}/processes/{pid}",
        "/v1/sandboxes/{id}/processes/{pid}/logs",
        "/v1/sandboxes/{id}/processes/{pid}/stdin",
        "/v1/sandboxes/{id}/processes/{pid}/signal",
        "/v1/sandboxes/{id}/processes/{pid}/wait",
        "/v1/sandboxes/{id}/processes/{pid}/wait-port",
        "/v1/sandboxes/{id}/pty",
        "/v1/sandboxes/{id}/contexts",
        "/v1/sandboxes/{id}/contexts/{cid}",
        "/v1/sandboxes/{id}/contexts/{cid}/restart",
        "/v1/sandboxes/{id}/code",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is not documented");
    }
    let exec = &doc["paths"]["/v1/sandboxes/{id}/exec"]["post"]["responses"]["200"]["content"];
    assert!(exec["application/json"].is_object() && exec["text/event-stream"].is_object());
    let files = &doc["paths"]["/v1/sandboxes/{id}/files"];
    assert!(files["put"]["requestBody"]["content"]["application/octet-stream"].is_object());
    assert!(files["get"]["responses"]["200"]["content"]["application/octet-stream"].is_object());
    assert!(doc["paths"]["/v1/sandboxes/{id}/pty"]["get"]["responses"]["101"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer_auth"]["scheme"],
        "bearer"
    );
    // A token does no harm, and the API itself still wants one.
    assert_eq!(server.request(Method::GET, "/openapi.json").status, 200);
    server
        .send(server.req_anon(Method::GET, "/v1/sandboxes"))
        .expect_error(401, "unauthorized");
}

/// Every documented operation, called without a token and then with one on a sandbox that
/// does not exist: public operations answer, guarded ones answer 401; with the token each is
/// routed (no `route_not_found`, no `method_not_allowed`) and answers a documented status.
#[test]
fn every_documented_operation_is_routed_and_guarded_as_documented() {
    let server = with_token();
    let doc = fetch_document(&server);
    let global_security = doc["security"].clone();
    assert_eq!(global_security, json!([{"bearer_auth": []}]));
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let Ok(m) = Method::from_bytes(method.to_uppercase().as_bytes()) else {
                continue;
            };
            let url = concrete(path, op);
            let public = op["security"] == json!([]);
            let what = format!("{method} {url}");

            let anon = server.send(with_body(server.req_anon(m.clone(), &url), op));
            if public {
                assert_eq!(anon.status, 200, "{what} without a token");
            } else {
                assert_eq!(anon.status, 401, "{what} without a token");
                anon.expect_error(401, "unauthorized");
            }

            let answer = server.send(with_body(server.req(m, &url), op));
            let code = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            assert!(
                !matches!(
                    code.as_deref(),
                    Some("route_not_found" | "method_not_allowed")
                ),
                "{what} is not routed: {code:?}"
            );
            assert!(
                op["responses"][answer.status.to_string()].is_object(),
                "{what} answered {} ({code:?}), which the document does not list",
                answer.status
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} operations documented");
}

/// The path with its parameters filled in (a sandbox that does not exist) and the required
/// query parameters added.
fn concrete(path: &str, op: &Value) -> String {
    let mut url = path.replace("{id}", "no-such-sandbox");
    for name in ["sid", "pid", "cid"] {
        url = url.replace(&format!("{{{name}}}"), "x");
    }
    url = url.replace("{port}", "8000").replace("{path}", "x");
    assert!(!url.contains('{'), "unknown path parameter in {path}");
    let required: Vec<String> = op["parameters"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .filter_map(|p| p["name"].as_str())
                .map(|name| format!("{name}={}", enc("/tmp")))
                .collect()
        })
        .unwrap_or_default();
    if !required.is_empty() {
        url = format!("{url}?{}", required.join("&"));
    }
    url
}

/// A body for operations that take one: JSON that every request type refuses (nothing gets
/// created), or no bytes for raw uploads.
fn with_body(
    rb: reqwest::blocking::RequestBuilder,
    op: &Value,
) -> reqwest::blocking::RequestBuilder {
    let content = &op["requestBody"]["content"];
    if content["application/json"].is_object() {
        rb.json(&json!({"openapi_probe": true}))
    } else if content.is_object() {
        rb.body(Vec::new())
    } else {
        rb
    }
}
