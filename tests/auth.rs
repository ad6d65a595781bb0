//! Bearer-token auth and the refusal to listen openly without one.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

fn with_token() -> Server {
    Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    })
}

/// Sends `method path` with an exact Authorization header (or none).
fn send_auth(server: &Server, method: Method, path: &str, auth: Option<&str>) -> Resp {
    let mut rb = server.req_anon(method.clone(), path);
    if method == Method::POST {
        rb = rb.json(&json!({}));
    }
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    server.send(rb)
}

#[test]
fn api_routes_need_the_token() {
    let server = with_token();
    let token = server.token.clone().unwrap();
    let id = server.new_sandbox();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("user:{token}")
        )
    );
    let wrong = format!("Bearer {token}x");
    let routes = [
        (Method::GET, "/v1/sandboxes".to_string()),
        (Method::POST, "/v1/sandboxes".to_string()),
        (Method::GET, format!("/v1/sandboxes/{id}")),
        (Method::DELETE, format!("/v1/sandboxes/{id}")),
        (Method::POST, format!("/v1/sandboxes/{id}/exec")),
        (Method::GET, Server::files_path(&id, "", "/workspace/x")),
        (Method::GET, "/metrics".to_string()),
    ];
    let bad: [Option<&str>; 5] = [
        None,
        Some(&wrong),
        Some(&basic),
        Some("Bearer "),
        Some(&token),
    ];
    for (method, path) in &routes {
        for auth in bad {
            let r = send_auth(&server, method.clone(), path, auth);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {}", r.text());
            r.expect_error(401, "unauthorized");
        }
    }
    // Nothing happened: still exactly one sandbox.
    assert_eq!(server.list_ids(), vec![id.clone()]);

    let ok = send_auth(
        &server,
        Method::GET,
        "/v1/sandboxes",
        Some(&format!("Bearer {token}")),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(server.run_ok(&id, "echo authed"), "authed\n");
}

#[test]
fn exec_without_token_does_not_run() {
    let server = with_token();
    let id = server.new_sandbox();
    let r = send_auth(
        &server,
        Method::POST,
        &format!("/v1/sandboxes/{id}/exec"),
        None,
    );
    r.expect_error(401, "unauthorized");
    server
        .send(
            server
                .req_anon(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
                .json(&json!({ "command": "touch /workspace/pwned" })),
        )
        .expect_error(401, "unauthorized");
    assert_eq!(
        server.exec(&id, "test -e /workspace/pwned").exit_code,
        1,
        "an unauthenticated exec ran"
    );
}

#[test]
fn health_is_open_without_token() {
    let server = with_token();
    let r = send_auth(&server, Method::GET, "/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ok");
}

#[test]
fn open_listen_without_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("0.0.0.0:{}", free_port());
    let data = dir.path().to_str().unwrap();
    let (status, output) = run_binary(
        &["serve", "--listen", &listen, "--data-dir", data],
        Duration::from_secs(10),
    )
    .expect("server listening on 0.0.0.0 without a token kept running");
    assert!(!status.success(), "exit {status}; output: {output}");
    assert!(!output.trim().is_empty(), "refused without a message");
}

#[test]
fn open_listen_with_insecure_starts() {
    let server = Server::start_with(ServerOpts {
        listen_host: Some("0.0.0.0".into()),
        args: vec!["--insecure".into()],
        ..Default::default()
    });
    let id = server.new_sandbox();
    assert_eq!(server.run_ok(&id, "echo open"), "open\n");
}

#[test]
fn open_listen_with_token_starts() {
    let server = Server::start_with(ServerOpts {
        listen_host: Some("0.0.0.0".into()),
        token: Some(unique("tok")),
        ..Default::default()
    });
    let r = send_auth(&server, Method::GET, "/v1/sandboxes", None);
    r.expect_error(401, "unauthorized");
    assert!(server.list_ids().is_empty());
}
