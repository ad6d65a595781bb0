//! The `acontext` dialect (`/compat/acontext`): the Sandbox Worker API of a Python agent
//! platform's `CloudflareSandboxBackend`. Replays the document's flows and checks each answer
//! field by field, the error and auth shapes, keepalive handling, and that its sandboxes are
//! ordinary sandboxes seen through `/v1`.

mod common;

use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/compat/acontext";

fn path(p: &str) -> String {
    format!("{BASE}{p}")
}

fn post(server: &Server, p: &str, body: &Value) -> Resp {
    server.request_json(Method::POST, &path(p), body)
}

/// A sandbox answer (`create`, `get`, `update`): its exact fields; returns (created, expires).
#[track_caller]
fn assert_info(v: &Value, id: &str) -> (f64, Option<f64>) {
    assert_keys(
        v,
        &[
            "sandbox_id",
            "sandbox_status",
            "sandbox_created_at",
            "sandbox_expires_at",
        ],
    );
    assert_eq!(v["sandbox_id"], id, "{v}");
    assert_eq!(v["sandbox_status"], "running", "{v}");
    let created = assert_iso_millis(&v["sandbox_created_at"]);
    assert!(
        (created - now_unix()).abs() < 120.0,
        "created_at far from now: {v}"
    );
    let expires = match &v["sandbox_expires_at"] {
        Value::Null => None,
        e => Some(assert_iso_millis(e)),
    };
    (created, expires)
}

#[track_caller]
fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn document_flow_end_to_end() {
    let server = Server::start();
    let id = unique("my-sandbox-id");

    // Create Sandbox, as the client sends it.
    let r = post(
        &server,
        "/sandbox/create",
        &json!({"sandbox_id": id, "keepalive_seconds": 1800, "additional_configs": {}}),
    );
    r.expect(200);
    assert!(r.content_type.starts_with("application/json"));
    let (_, expires) = assert_info(&r.json(), &id);
    let expires = expires.expect("a keepalive gives an expiry");
    assert!(
        (expires - now_unix() - 1800.0).abs() < 10.0,
        "expires_at is not now + 1800 s: {}",
        r.text()
    );

    // Get Sandbox Info (the client adds ?keepalive_seconds=).
    let r = server.request(
        Method::GET,
        &path(&format!("/sandbox/{id}?keepalive_seconds=1800")),
    );
    r.expect(200);
    assert_info(&r.json(), &id);

    // Execute Command.
    let r = post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "python3 --version"}),
    );
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["stdout", "stderr", "exit_code"]);
    assert!(
        v["stdout"].as_str().unwrap().starts_with("Python 3."),
        "{v}"
    );
    assert_eq!(v["stderr"], "");
    assert_eq!(v["exit_code"], 0);

    // Upload File (base64), then Download File.
    let r = post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": "/workspace/example.txt", "content": "SGVsbG8gV29ybGQ=", "encoding": "base64"}),
    );
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));
    let r = post(
        &server,
        &format!("/sandbox/{id}/download"),
        &json!({"file_path": "/workspace/example.txt", "encoding": "base64"}),
    );
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"content": "SGVsbG8gV29ybGQ=", "encoding": "base64"})
    );
    assert_eq!(
        server.get_file(&id, "/workspace/example.txt"),
        b"Hello World"
    );

    // Update Sandbox: the expiry moves out by the requested seconds.
    let before = server.sandbox(&id);
    let r = post(
        &server,
        &format!("/sandbox/{id}/update"),
        &json!({"keepalive_longer_by_seconds": 600}),
    );
    r.expect(200);
    let (_, after) = assert_info(&r.json(), &id);
    let before_exp = parse_utc(before["expires_at"].as_str().unwrap()).unwrap();
    let gained = after.unwrap() - before_exp;
    assert!(
        (590.0..=620.0).contains(&gained),
        "update moved the expiry by {gained} s, not ~600: {}",
        r.text()
    );

    // Kill Sandbox.
    let r = post(&server, &format!("/sandbox/{id}/kill"), &json!({}));
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));
    assert!(!server.list_ids().contains(&id));
}

#[test]
fn testing_section_curl_flow() {
    let server = Server::start();
    let id = unique("test-123");
    // curl -X POST .../sandbox/create -H "Content-Type: application/json" -d '{"sandbox_id": "test-123"}'
    let r = server.send(
        server
            .req(Method::POST, &path("/sandbox/create"))
            .header("Content-Type", "application/json")
            .body(format!(r#"{{"sandbox_id": "{id}"}}"#)),
    );
    r.expect(200);
    assert_info(&r.json(), &id);
    // curl -X POST .../sandbox/test-123/exec -d '{"command": "echo hello"}'
    let r = server.send(
        server
            .req(Method::POST, &path(&format!("/sandbox/{id}/exec")))
            .header("Content-Type", "application/json")
            .body(r#"{"command": "echo hello"}"#),
    );
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"stdout": "hello\n", "stderr": "", "exit_code": 0})
    );
    // A failing command keeps its own exit code and stderr.
    let r = post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "echo oops >&2; exit 3"}),
    );
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"stdout": "", "stderr": "oops\n", "exit_code": 3})
    );
}

#[test]
fn files_round_trip_and_parents_are_created() {
    let server = Server::start();
    let id = unique("files");
    post(&server, "/sandbox/create", &json!({"sandbox_id": id})).expect(200);
    let bytes = pseudo_random_bytes(70_000, 7);
    let file = "/workspace/deep/er/blob.bin";
    let r = post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": file, "content": b64(&bytes), "encoding": "base64", "keepalive_seconds": 600}),
    );
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));
    // Download always answers base64, even when utf-8 is asked for.
    let r = post(
        &server,
        &format!("/sandbox/{id}/download"),
        &json!({"file_path": file, "encoding": "utf-8", "keepalive_seconds": 600}),
    );
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["content", "encoding"]);
    assert_eq!(v["encoding"], "base64");
    let got = base64::engine::general_purpose::STANDARD
        .decode(v["content"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, bytes);

    // Default encoding is utf-8 text.
    post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": "/workspace/t.txt", "content": "héllo\n"}),
    )
    .expect(200);
    assert_eq!(
        server.get_file(&id, "/workspace/t.txt"),
        "héllo\n".as_bytes()
    );

    // Empty files are accepted (the original worker refused them).
    let r = post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": "/workspace/empty", "content": "", "encoding": "utf-8"}),
    );
    r.expect(200);
    assert_eq!(server.get_file(&id, "/workspace/empty"), b"");
    let r = post(
        &server,
        &format!("/sandbox/{id}/download"),
        &json!({"file_path": "/workspace/empty"}),
    );
    r.expect(200);
    assert_eq!(r.json(), json!({"content": "", "encoding": "base64"}));
}

#[test]
fn error_shapes() {
    let server = Server::start();
    let id = unique("err");

    // Missing sandbox_id.
    post(&server, "/sandbox/create", &json!({}))
        .expect_dialect_error(400, "sandbox_id is required");
    post(&server, "/sandbox/create", &json!({"sandbox_id": ""}))
        .expect_dialect_error(400, "sandbox_id is required");
    post(&server, "/sandbox/create", &json!({"sandbox_id": id})).expect(200);

    // Missing command.
    post(&server, &format!("/sandbox/{id}/exec"), &json!({}))
        .expect_dialect_error(400, "command is required");
    post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": ""}),
    )
    .expect_dialect_error(400, "command is required");

    // Missing file, and missing fields of download and upload.
    post(
        &server,
        &format!("/sandbox/{id}/download"),
        &json!({"file_path": "/workspace/nope.txt"}),
    )
    .expect_dialect_error(404, "File not found: /workspace/nope.txt");
    post(&server, &format!("/sandbox/{id}/download"), &json!({}))
        .expect_dialect_error(400, "file_path is required");
    post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": "/workspace/a"}),
    )
    .expect_dialect_error(400, "file_path and content are required");
    let r = post(
        &server,
        &format!("/sandbox/{id}/upload"),
        &json!({"file_path": "/workspace/a", "content": "!!!", "encoding": "base64"}),
    );
    r.expect(400);
    assert!(r.json()["error"].as_str().unwrap().contains("base64"));
    post(&server, &format!("/sandbox/{id}/update"), &json!({}))
        .expect_dialect_error(400, "keepalive_longer_by_seconds is required");

    // An unknown sandbox is a 404 in the dialect's shape, not the native one.
    for r in [
        server.request(Method::GET, &path("/sandbox/ghost")),
        post(&server, "/sandbox/ghost/exec", &json!({"command": "true"})),
        post(
            &server,
            "/sandbox/ghost/download",
            &json!({"file_path": "/x"}),
        ),
        post(
            &server,
            "/sandbox/ghost/upload",
            &json!({"file_path": "/x", "content": "y"}),
        ),
        post(
            &server,
            "/sandbox/ghost/update",
            &json!({"keepalive_longer_by_seconds": 5}),
        ),
    ] {
        r.expect(404);
        let v = r.json();
        assert!(v["error"].is_string(), "not the dialect shape: {v}");
    }
    // Kill is idempotent, as the worker's destroy() was.
    let r = post(&server, "/sandbox/ghost/kill", &json!({}));
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));

    // Bad JSON and unknown routes.
    let r = server.send(
        server
            .req(Method::POST, &path("/sandbox/create"))
            .body("{not json"),
    );
    r.expect(400);
    assert!(r.json()["error"].is_string());
    let r = server.request(Method::GET, &path("/nowhere"));
    let v = r.expect_dialect_error(404, "Not found");
    assert!(v["endpoints"].is_array(), "{v}");
}

#[test]
fn keepalive_seconds_sets_the_keepalive() {
    let server = Server::start();
    let id = unique("ka");
    let r = post(&server, "/sandbox/create", &json!({"sandbox_id": id}));
    r.expect(200);
    // Without keepalive_seconds the server default applies, and the answer says when it ends.
    let default = server.sandbox(&id)["keepalive_seconds"].as_u64().unwrap();
    assert!(default > 0);
    assert!(r.json()["sandbox_expires_at"].is_string());

    post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "true", "keepalive_seconds": 120}),
    )
    .expect(200);
    let sb = server.sandbox(&id);
    assert_eq!(sb["keepalive_seconds"], 120, "{sb}");
    let exp = parse_utc(sb["expires_at"].as_str().unwrap()).unwrap();
    assert!((exp - now_unix() - 120.0).abs() < 10.0, "{sb}");

    let r = server.request(
        Method::GET,
        &path(&format!("/sandbox/{id}?keepalive_seconds=300")),
    );
    r.expect(200);
    let (_, expires) = assert_info(&r.json(), &id);
    assert!((expires.unwrap() - now_unix() - 300.0).abs() < 10.0);
    assert_eq!(server.sandbox(&id)["keepalive_seconds"], 300);

    // Creating an existing id answers that sandbox (same creation time) with the new keepalive.
    let created = server.sandbox(&id)["created_at"].clone();
    let r = post(
        &server,
        "/sandbox/create",
        &json!({"sandbox_id": id, "keepalive_seconds": 900}),
    );
    r.expect(200);
    let (c, _) = assert_info(&r.json(), &id);
    assert_eq!(c, parse_utc(created.as_str().unwrap()).unwrap());
    assert_eq!(server.sandbox(&id)["keepalive_seconds"], 900);
    assert_eq!(server.list_ids(), vec![id]);
}

#[test]
fn sandboxes_are_shared_with_v1() {
    let server = Server::start();
    let id = unique("shared");
    post(&server, "/sandbox/create", &json!({"sandbox_id": id})).expect(200);
    assert_eq!(server.sandbox(&id)["status"], "running");
    assert!(server.list_ids().contains(&id));
    // Work done through the dialect is seen natively, and the other way round.
    post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "echo via-dialect > /workspace/d.txt"}),
    )
    .expect(200);
    assert_eq!(server.get_file(&id, "/workspace/d.txt"), b"via-dialect\n");
    let native = server.new_sandbox();
    let r = server.request(Method::GET, &path(&format!("/sandbox/{native}")));
    r.expect(200);
    assert_info(&r.json(), &native);
    // Kill through the dialect deletes the sandbox everywhere.
    post(&server, &format!("/sandbox/{id}/kill"), &json!({})).expect(200);
    server
        .request(Method::GET, &format!("/v1/sandboxes/{id}"))
        .expect_error(404, "not_found");
}

#[test]
fn token_is_required_in_the_dialect_shape() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let token = server.token.clone().unwrap();
    let id = unique("auth");
    let routes = [
        (Method::POST, "/sandbox/create".to_string()),
        (Method::GET, format!("/sandbox/{id}")),
        (Method::POST, format!("/sandbox/{id}/kill")),
        (Method::POST, format!("/sandbox/{id}/update")),
        (Method::POST, format!("/sandbox/{id}/exec")),
        (Method::POST, format!("/sandbox/{id}/download")),
        (Method::POST, format!("/sandbox/{id}/upload")),
        (Method::GET, "/unknown".to_string()),
    ];
    let wrong = format!("Bearer {token}x");
    for (method, p) in &routes {
        for auth in [
            None,
            Some(wrong.as_str()),
            Some("Bearer "),
            Some(token.as_str()),
        ] {
            let mut rb = server
                .req_anon(method.clone(), &path(p))
                .json(&json!({"sandbox_id": id, "command": "true"}));
            if let Some(a) = auth {
                rb = rb.header("Authorization", a);
            }
            let r = server.send(rb);
            assert_eq!(r.status, 401, "{method} {p} with {auth:?}: {}", r.text());
            assert_eq!(r.json(), json!({"error": "Unauthorized"}));
        }
    }
    assert!(
        server.list_ids().is_empty(),
        "a refused request created a sandbox"
    );
    // With the token everything works.
    post(&server, "/sandbox/create", &json!({"sandbox_id": id})).expect(200);
    let r = post(
        &server,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "echo ok"}),
    );
    r.expect(200);
    assert_eq!(r.json()["stdout"], "ok\n");
}

#[test]
fn root_dialect_acontext() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--root-dialect".into(), "acontext".into()],
        ..Default::default()
    });
    let id = unique("root");
    let r = server.request_json(Method::POST, "/sandbox/create", &json!({"sandbox_id": id}));
    r.expect(200);
    assert_info(&r.json(), &id);
    let r = server.request_json(
        Method::POST,
        &format!("/sandbox/{id}/exec"),
        &json!({"command": "echo at-root"}),
    );
    r.expect(200);
    assert_eq!(r.json()["stdout"], "at-root\n");
    // The prefixed mount and the native API are still there.
    server
        .request(Method::GET, &path(&format!("/sandbox/{id}")))
        .expect(200);
    assert_eq!(server.sandbox(&id)["id"], id);
    let health = server.request(Method::GET, "/health");
    health.expect(200);
    assert!(health.json()["version"].is_string(), "native /health wins");
}
