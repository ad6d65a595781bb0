//! The `e2b` dialect (`/compat/e2b`) at the wire level, for what the SDK tests
//! (tests/e2b/*.py) cannot provoke: the API key headers (`X-API-KEY`, the sandbox access
//! tokens) and their refusal, the error shapes of the control plane (`{"code": <status>,
//! "message"}`) and of Connect-RPC (`{"code": "not_found", ...}`, end-of-stream frames),
//! bad JSON and envelopes, a sandbox made here being an ordinary sandbox of `/v1`, and
//! tenants not reaching each other's sandboxes through the sandbox headers.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/compat/e2b";
const TOKEN: &str = "e2b-rust-test-token";

fn server() -> Server {
    Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        ..ServerOpts::default()
    })
}

fn p(path: &str) -> String {
    format!("{BASE}{path}")
}

/// A request with the SDK's control-plane key header (and no bearer).
fn api(server: &Server, method: Method, path: &str) -> reqwest::blocking::RequestBuilder {
    server.req_anon(method, &p(path)).header("X-API-KEY", TOKEN)
}

/// An envd request as the SDK sends it: the sandbox header and the access token.
fn envd(server: &Server, id: &str, path: &str, token: &str) -> reqwest::blocking::RequestBuilder {
    server
        .req_anon(Method::POST, &p(path))
        .header("E2b-Sandbox-Id", id)
        .header("E2b-Sandbox-Port", "49983")
        .header("X-Access-Token", token)
}

fn create(server: &Server) -> Value {
    let r = server.send(api(server, Method::POST, "/sandboxes").json(&json!({
        "templateID": "base", "timeout": 120, "metadata": {"k": "v"}
    })));
    r.expect(201);
    r.json()
}

/// The frames of a Connect stream answer: (flags, JSON).
fn frames(body: &[u8]) -> Vec<(u8, Value)> {
    let mut out = Vec::new();
    let mut rest = body;
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let msg = serde_json::from_slice(&rest[5..5 + len]).expect("frame JSON");
        out.push((rest[0], msg));
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "trailing bytes after the frames");
    out
}

fn envelope(v: &Value) -> Vec<u8> {
    let data = v.to_string().into_bytes();
    let mut out = vec![0];
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend(data);
    out
}

#[test]
fn keys_headers_and_refusals() {
    let server = server();
    // No key at all, and a wrong key: 401 in E2B's shape.
    let r = server.send(server.req_anon(Method::GET, &p("/v2/sandboxes")));
    r.expect(401);
    assert_eq!(r.json()["code"], 401);
    let r = server.send(
        server
            .req_anon(Method::GET, &p("/v2/sandboxes"))
            .header("X-API-KEY", "wrong"),
    );
    r.expect(401);
    assert!(r.json()["message"].as_str().is_some_and(|m| !m.is_empty()));
    // The SDK's Basic user header is not a key.
    let r = server.send(
        server
            .req_anon(Method::GET, &p("/v2/sandboxes"))
            .header("Authorization", "Basic dXNlcjo="),
    );
    r.expect(401);

    let sb = create(&server);
    let id = sb["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(sb["envdAccessToken"], TOKEN);
    assert_eq!(sb["trafficAccessToken"], TOKEN);
    assert_eq!(sb["templateID"], "base");
    assert!(sb["envdVersion"].as_str().is_some());
    // An ordinary sandbox: /v1 sees it.
    assert!(server.list_ids().contains(&id));
    // The access token authorizes envd calls; a wrong one does not.
    let list = json!({});
    let r = server.send(envd(&server, &id, "/process.Process/List", TOKEN).json(&list));
    r.expect(200);
    assert_eq!(r.json()["processes"], json!([]));
    let r = server.send(envd(&server, &id, "/process.Process/List", "nope").json(&list));
    r.expect(401);
    // A bearer token works too (curl users).
    let r = server.send(
        server
            .req(Method::GET, &p(&format!("/sandboxes/{id}")))
            .header("X-Unused", "1"),
    );
    r.expect(200);
    let d = r.json();
    assert_eq!(d["state"], "running");
    assert_eq!(d["metadata"], json!({"k": "v"}));
    server.delete_sandbox(&id);
}

#[test]
fn control_plane_errors() {
    let server = server();
    for (method, path) in [
        (Method::GET, "/sandboxes/nope"),
        (Method::DELETE, "/sandboxes/nope"),
        (Method::POST, "/sandboxes/nope/timeout"),
        (Method::POST, "/v2/sandboxes/nope/connect"),
    ] {
        let r = server.send(api(&server, method.clone(), path).json(&json!({"timeout": 10})));
        r.expect(404);
        let v = r.json();
        assert_eq!(v["code"], 404, "{method} {path}: {v}");
        assert!(
            v["message"].as_str().unwrap().contains("was not found"),
            "{v}"
        );
    }
    // Bad JSON, wrong types, a bad page token.
    let r = server.send(
        api(&server, Method::POST, "/v2/sandboxes")
            .header("content-type", "application/json")
            .body("{nope"),
    );
    r.expect(400);
    assert_eq!(r.json()["code"], 400);
    let r = server.send(api(&server, Method::POST, "/v2/sandboxes").json(&json!({"timeout": "x"})));
    r.expect(400);
    let r = server
        .send(api(&server, Method::POST, "/v2/sandboxes").json(&json!({"metadata": {"a": 1}})));
    r.expect(400);
    let r = server.send(api(&server, Method::GET, "/v2/sandboxes?nextToken=zz"));
    r.expect(400);
    let r = server.send(api(&server, Method::GET, "/v2/sandboxes?state=weird"));
    r.expect(400);
    let r = server.send(api(&server, Method::GET, "/no/such/route"));
    r.expect(404);
    assert_eq!(r.json()["code"], 404);
}

#[test]
fn connect_rpc_shapes() {
    let server = server();
    let id = create(&server)["sandboxID"].as_str().unwrap().to_string();

    // Unary: a missing file is not_found with HTTP 404; a missing sandbox is unavailable
    // "... was not found" (the SDK's SandboxNotRunningException); bad JSON invalid_argument.
    let r = server.send(
        envd(&server, &id, "/filesystem.Filesystem/Stat", TOKEN).json(&json!({"path": "/nope"})),
    );
    r.expect(404);
    assert_eq!(r.json()["code"], "not_found");
    let r = server.send(
        envd(&server, "gone", "/filesystem.Filesystem/Stat", TOKEN).json(&json!({"path": "/"})),
    );
    r.expect(503);
    let v = r.json();
    assert_eq!(v["code"], "unavailable");
    assert!(
        v["message"].as_str().unwrap().contains("was not found"),
        "{v}"
    );
    let r = server.send(
        envd(&server, &id, "/filesystem.Filesystem/Stat", TOKEN)
            .header("content-type", "application/json")
            .body("{bad"),
    );
    r.expect(400);
    assert_eq!(r.json()["code"], "invalid_argument");
    let r = server.send(envd(&server, &id, "/filesystem.Filesystem/Nope", TOKEN).json(&json!({})));
    r.expect(501);
    assert_eq!(r.json()["code"], "unimplemented");
    // Without the sandbox header.
    let r = server.send(
        server
            .req_anon(Method::POST, &p("/process.Process/List"))
            .header("X-Access-Token", TOKEN)
            .json(&json!({})),
    );
    r.expect(400);
    assert_eq!(r.json()["code"], "invalid_argument");

    // A stream: start, data, end event frames, then the end-of-stream frame `{}`.
    let start = json!({"process": {"cmd": "/bin/sh", "args": ["-c", "printf hi; exit 3"]}});
    let r = server.send(
        envd(&server, &id, "/process.Process/Start", TOKEN)
            .header("content-type", "application/connect+json")
            .body(envelope(&start)),
    );
    r.expect(200);
    assert_eq!(r.content_type, "application/connect+json");
    let f = frames(&r.body);
    let (last_flags, last) = f.last().unwrap();
    assert_eq!((*last_flags, last), (2, &json!({})), "{f:?}");
    assert!(
        f[0].1["event"]["start"]["pid"]
            .as_u64()
            .is_some_and(|p| p > 0),
        "{f:?}"
    );
    let data: String = f
        .iter()
        .filter_map(|(_, m)| m["event"]["data"]["stdout"].as_str())
        .collect();
    assert_eq!(data, "aGk=", "{f:?}"); // base64 of "hi"
    let end = &f[f.len() - 2].1["event"]["end"];
    assert_eq!(end["exitCode"], 3, "{f:?}");
    assert_eq!(end["exited"], true);

    // A stream refused: one end-of-stream frame with the error; a bad envelope too.
    let r = server.send(
        envd(&server, &id, "/process.Process/Start", TOKEN)
            .header("content-type", "application/connect+json")
            .body(envelope(&json!({"process": {}}))),
    );
    r.expect(200);
    let f = frames(&r.body);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].0, 2);
    assert_eq!(f[0].1["error"]["code"], "invalid_argument");
    let r = server.send(
        envd(&server, &id, "/process.Process/Start", TOKEN)
            .header("content-type", "application/connect+json")
            .body(vec![0, 0, 0, 0, 9, b'{']),
    );
    let f = frames(&r.body);
    assert_eq!(f[0].1["error"]["code"], "invalid_argument");
    // Signalling a pid that is not running: not_found (the SDK's kill() -> False).
    let r = server.send(
        envd(&server, &id, "/process.Process/SendSignal", TOKEN)
            .json(&json!({"process": {"pid": 999999}, "signal": "SIGNAL_SIGKILL"})),
    );
    r.expect(404);
    assert_eq!(r.json()["code"], "not_found");
    server.delete_sandbox(&id);
}

#[test]
fn files_and_health_errors() {
    let server = server();
    let id = create(&server)["sandboxID"].as_str().unwrap().to_string();
    let get = |sandbox: &str, q: &str| {
        server.send(
            server
                .req_anon(Method::GET, &p(&format!("/files{q}")))
                .header("E2b-Sandbox-Id", sandbox)
                .header("X-Access-Token", TOKEN),
        )
    };
    let r = get(&id, "?path=/workspace/none");
    r.expect(404);
    assert_eq!(r.json()["code"], 404);
    let r = get(&id, "");
    r.expect(400);
    let r = get("gone", "?path=/x");
    r.expect(502);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("was not found"));
    // Octet-stream upload, then download.
    let r = server.send(
        server
            .req_anon(Method::POST, &p("/files?path=/workspace/o.bin"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", TOKEN)
            .header("content-type", "application/octet-stream")
            .body(vec![1u8, 2, 3]),
    );
    r.expect(200);
    assert_eq!(
        r.json(),
        json!([{"name": "o.bin", "type": "file", "path": "/workspace/o.bin"}])
    );
    let r = get(&id, "?path=/workspace/o.bin");
    r.expect(200);
    assert_eq!(r.body, vec![1u8, 2, 3]);
    // A multipart form without a file.
    let r = server.send(
        server
            .req_anon(Method::POST, &p("/files?path=/workspace/x"))
            .header("E2b-Sandbox-Id", &id)
            .header("X-Access-Token", TOKEN)
            .header("content-type", "multipart/form-data; boundary=b")
            .body("--b--\r\n"),
    );
    r.expect(400);
    // Health: 204 while the sandbox lives, 502 "was not found" after.
    let health = |sandbox: &str| {
        server.send(
            server
                .req_anon(Method::GET, &p("/health"))
                .header("E2b-Sandbox-Id", sandbox)
                .header("X-Access-Token", TOKEN),
        )
    };
    health(&id).expect(204);
    server.delete_sandbox(&id);
    health(&id).expect(502);
}

#[test]
fn tenants_do_not_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tenants.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[tenants]]\nname = \"a\"\nkey_sha256 = \"{}\"\n[[tenants]]\nname = \"b\"\nkey_sha256 = \"{}\"\n",
            hash_key("key-a"),
            hash_key("key-b")
        ),
    )
    .unwrap();
    // The harness's token (the admin) cleans up after the test.
    let server = Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        args: vec!["--config".into(), cfg.display().to_string()],
        ..ServerOpts::default()
    });
    let r = server.send(
        server
            .req_anon(Method::POST, &p("/sandboxes"))
            .header("X-API-KEY", "key-a")
            .json(&json!({"templateID": "base"})),
    );
    r.expect(201);
    let sb = r.json();
    let id = sb["sandboxID"].as_str().unwrap();
    assert_eq!(sb["envdAccessToken"], "key-a");
    // Tenant b: 404 on the control plane, "not found" through the sandbox header.
    let r = server.send(
        server
            .req_anon(Method::GET, &p(&format!("/sandboxes/{id}")))
            .header("X-API-KEY", "key-b"),
    );
    r.expect(404);
    let r = server.send(
        server
            .req_anon(Method::POST, &p("/process.Process/List"))
            .header("E2b-Sandbox-Id", id)
            .header("X-Access-Token", "key-b")
            .json(&json!({})),
    );
    r.expect(503);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("was not found"));
    let r = server.send(
        server
            .req_anon(Method::GET, &p("/v2/sandboxes"))
            .header("X-API-KEY", "key-b"),
    );
    r.expect(200);
    assert_eq!(r.json(), json!([]));
    let r = server.send(
        server
            .req_anon(Method::DELETE, &p(&format!("/sandboxes/{id}")))
            .header("X-API-KEY", "key-a"),
    );
    r.expect(204);
}

/// The template name and metadata are stored with the sandbox: they survive a server
/// restart, and go when the sandbox is deleted through `/v1` (a new sandbox of that id has
/// none).
#[test]
fn metadata_survives_a_restart_and_goes_with_a_native_delete() {
    let mut server = server();
    let r = server.send(api(&server, Method::POST, "/sandboxes").json(&json!({
        "templateID": "my-template", "timeout": 120, "metadata": {"suite": "restart", "n": "1"}
    })));
    r.expect(201);
    let id = r.json()["sandboxID"].as_str().unwrap().to_string();
    assert_eq!(r.json()["templateID"], "my-template");
    server.restart();
    let r = server.send(api(&server, Method::GET, &format!("/sandboxes/{id}")));
    r.expect(200);
    let d = r.json();
    assert_eq!(d["templateID"], "my-template");
    assert_eq!(d["metadata"], json!({"suite": "restart", "n": "1"}));
    // The list's metadata filter reads it too.
    let r = server.send(api(
        &server,
        Method::GET,
        "/v2/sandboxes?metadata=suite%3Drestart",
    ));
    r.expect(200);
    let listed = r.json();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["sandboxID"].as_str())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    // Deleted through the native API, then made again under the same id through it.
    server.delete_sandbox(&id);
    server.create(&json!({"id": id}));
    let r = server.send(api(&server, Method::GET, &format!("/sandboxes/{id}")));
    r.expect(200);
    let d = r.json();
    assert_eq!(d["templateID"], "base");
    assert_eq!(d["metadata"], json!({}));
    let r = server.send(api(
        &server,
        Method::GET,
        "/v2/sandboxes?metadata=suite%3Drestart",
    ));
    r.expect(200);
    assert_eq!(r.json(), json!([]));
    server.delete_sandbox(&id);
}
