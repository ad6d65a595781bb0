//! The `agentpod` dialect (`/compat/agentpod`): AgentPod's sandbox worker. Replays the
//! document's curl flows (health, create, message) and the worker's other routes (get,
//! delete, sync, wake after delete, the OpenCode proxy over HTTP and WebSocket), checks the
//! shapes field by field, the error cases (404 plain text, 401, bad bodies, 502 without an
//! OpenCode server), cross-dialect visibility, `--root-dialect agentpod` and webhooks in
//! AgentPod's shape. The OpenCode server is a stand-in (tests/agentpod_apps/opencode.py) the
//! test starts inside the sandbox on port 4096, where the user's server would run.

mod common;

use common::hooks::{receiver, Delivery};
use common::netns::{git, NetNs, Repo, GIT_SERVER};
use common::ws::{next_text, ws_connect};
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::Message;

const BASE: &str = "/compat/agentpod";
const OPENCODE: &str = include_str!("agentpod_apps/opencode.py");
const WS: &str = include_str!("ports_apps/ws.py");
const TOKEN: &str = "agentpod-test-token";
/// Bound on any single wait (a WebSocket message, a webhook delivery).
const WAIT: Duration = Duration::from_secs(60);

fn path(p: &str) -> String {
    format!("{BASE}{p}")
}

/// `POST /sandbox`; checks the answer's shape.
#[track_caller]
fn create(server: &Server, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &path("/sandbox"), body);
    r.expect(200);
    let v = r.json();
    assert_keys(
        &v,
        &[
            "success",
            "sandboxId",
            "status",
            "opencodeUrl",
            "serverPort",
        ],
    );
    assert_eq!(v["success"], true);
    assert_eq!(v["sandboxId"], body["id"]);
    assert_eq!(v["status"], "running");
    assert_eq!(
        v["opencodeUrl"],
        format!(
            "/sandbox/{}/opencode",
            body["id"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(v["serverPort"], 4096);
    v
}

#[track_caller]
fn info(server: &Server, id: &str) -> Value {
    let r = server.request(Method::GET, &path(&format!("/sandbox/{id}")));
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["sandboxId", "status", "hasWorkspace", "provider"]);
    assert_eq!(v["sandboxId"], id);
    v
}

#[track_caller]
fn message(server: &Server, id: &str, body: &Value) -> Resp {
    server.request_json(Method::POST, &path(&format!("/sandbox/{id}/message")), body)
}

/// The OpenCode stand-in on port 4096 of the sandbox.
#[track_caller]
fn start_opencode(server: &Server, id: &str) {
    server.put_file(id, "/workspace/opencode.py", OPENCODE.as_bytes());
    server.serve_in(
        id,
        "fake-opencode",
        "python3 /workspace/opencode.py 4096",
        "/workspace",
        4096,
    );
}

/// A dialect error: the status and `{"error": <message containing `says`>}`.
#[track_caller]
fn assert_error(r: &Resp, status: u16, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    let v = r.json();
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {v}"));
    assert!(msg.contains(says), "{msg:?} does not contain {says:?}");
}

#[test]
fn document_curl_flows() {
    let server = Server::start();

    // curl .../health → {"status":"ok","timestamp":"2025-12-20T..."}
    let r = server.request(Method::GET, &path("/health"));
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["status", "timestamp"]);
    assert_eq!(v["status"], "ok");
    let ts = v["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    assert!((parse_utc(ts).expect("ISO time") - now_unix()).abs() < 120.0);

    // curl -X POST .../sandbox -d '{"id":"test-1","userId":"user-1"}'
    let id = unique("test-1");
    create(&server, &json!({"id": id, "userId": "user-1"}));
    // The default workspace exists.
    assert_eq!(
        server.run_ok(&id, "test -d /home/user/workspace && echo yes"),
        "yes\n"
    );
    let v = info(&server, &id);
    assert_eq!(v["status"], "running");
    assert_eq!(v["hasWorkspace"], false);
    assert_eq!(v["provider"], "cloudflare");
    // Creating it again answers the same and makes nothing new.
    create(&server, &json!({"id": id, "userId": "user-1"}));

    // Seen through /v1 as an ordinary sandbox.
    assert!(server.list_ids().contains(&id));
    assert_eq!(server.sandbox(&id)["status"], "running");

    // curl -X POST .../sandbox/test-1/message -d '{"message":"What is 2+2?"}'
    start_opencode(&server, &id);
    let r = message(&server, &id, &json!({"message": "What is 2+2?"}));
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["sessionId", "response", "parts"]);
    assert_eq!(v["sessionId"], "ses_1");
    assert_eq!(v["response"], "echo: What is 2+2?\nmessage 1 of ses_1");
    let parts = v["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 4);
    assert_eq!(
        parts[1],
        json!({"id": "prt_2", "type": "text", "text": "echo: What is 2+2?"})
    );

    // The same session again, with a model: no new session.
    let model = json!({"providerID": "anthropic", "modelID": "claude"});
    let r = message(
        &server,
        &id,
        &json!({"message": "and 3+3?", "sessionId": "ses_1", "model": model}),
    );
    r.expect(200);
    let v = r.json();
    assert_eq!(v["sessionId"], "ses_1");
    assert_eq!(v["response"], "echo: and 3+3?\nmessage 2 of ses_1");
    // An unknown session: the OpenCode server's 404 is a 502 that says what it answered.
    let r = message(
        &server,
        &id,
        &json!({"message": "hi", "sessionId": "ses_nope"}),
    );
    assert_error(&r, 502, "404");

    // DELETE /sandbox/:id → {success:true, sandboxId}; gone everywhere.
    let r = server.request(Method::DELETE, &path(&format!("/sandbox/{id}")));
    r.expect(200);
    let v = r.json();
    assert_eq!(v["success"], true);
    assert_eq!(v["sandboxId"], id);
    assert!(!server.list_ids().contains(&id));
    assert_error(
        &server.request(Method::GET, &path(&format!("/sandbox/{id}"))),
        404,
        &id,
    );
}

fn sync(server: &Server, id: &str) -> Value {
    let r = server.request(Method::POST, &path(&format!("/sandbox/{id}/sync")));
    r.expect(200);
    let v = r.json();
    assert_keys(
        &v,
        &[
            "success",
            "sandboxId",
            "syncedFiles",
            "skippedFiles",
            "totalSize",
            "timestamp",
        ],
    );
    assert_eq!(v["success"], true);
    assert_eq!(v["sandboxId"], id);
    let ts = v["timestamp"].as_str().expect("timestamp");
    assert!((parse_utc(ts).expect("ISO time") - now_unix()).abs() < 120.0);
    v
}

fn wake(server: &Server, id: &str) -> Value {
    let r = server.request(Method::POST, &path(&format!("/sandbox/{id}/wake")));
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["success", "status", "serverPort", "restoredFiles"]);
    assert_eq!(v["success"], true);
    assert_eq!(v["status"], "running");
    assert_eq!(v["serverPort"], 4096);
    v
}

/// The `agentpod-sync` snapshots of `id`, through `/v1`.
fn sync_snapshots(server: &Server, id: &str) -> Vec<Value> {
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/snapshots"));
    if r.status == 404 {
        return Vec::new();
    }
    r.expect(200);
    r.json()["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .filter(|s| s["name"] == "agentpod-sync")
        .cloned()
        .collect()
}

#[test]
fn sync_outlives_the_sandbox_and_wake_restores_it() {
    let server = Server::start();
    let id = unique("synced");
    let dir = "/home/user/project";
    create(&server, &json!({"id": id, "userId": "u", "directory": dir}));
    server.put_file(&id, &format!("{dir}/a.txt"), b"hello");
    server.put_file(&id, &format!("{dir}/sub/b.txt"), b"abc");
    server.put_file(&id, &format!("{dir}/node_modules/x/y.js"), b"skipped");
    server.put_file(&id, "/workspace/elsewhere.txt", b"not in the workspace");

    let v = sync(&server, &id);
    assert_eq!(v["syncedFiles"], 2);
    assert_eq!(v["skippedFiles"], 1);
    assert_eq!(v["totalSize"], 8);
    assert_eq!(info(&server, &id)["hasWorkspace"], true);
    let snaps = sync_snapshots(&server, &id);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["path"], dir);

    // A second sync replaces the first.
    server.put_file(&id, &format!("{dir}/a.txt"), b"hello again");
    let v = sync(&server, &id);
    assert_eq!(v["totalSize"], 14);
    let snaps2 = sync_snapshots(&server, &id);
    assert_eq!(snaps2.len(), 1, "{snaps2:?}");
    assert_ne!(snaps2[0]["id"], snaps[0]["id"]);

    // The native DELETE keeps the sync: the sandbox is gone, its workspace is not.
    server.delete_sandbox(&id);
    let v = info(&server, &id);
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["hasWorkspace"], true);

    // wake makes it again with the same id and the last sync in its workspace.
    let v = wake(&server, &id);
    assert_eq!(v["restoredFiles"], 2);
    assert!(server.list_ids().contains(&id));
    assert_eq!(
        server.get_file(&id, &format!("{dir}/a.txt")),
        b"hello again"
    );
    assert_eq!(server.get_file(&id, &format!("{dir}/sub/b.txt")), b"abc");
    assert_eq!(
        server.run_ok(
            &id,
            &format!("test -e {dir}/node_modules || echo no-modules; test -e /workspace/elsewhere.txt || echo no-elsewhere")
        ),
        "no-modules\nno-elsewhere\n"
    );
    // The woken sandbox still knows its workspace.
    server.put_file(&id, &format!("{dir}/c.txt"), b"c");
    assert_eq!(sync(&server, &id)["syncedFiles"], 3);

    // Asleep: wake wakes it; its files never left.
    server
        .request(Method::POST, &format!("/v1/sandboxes/{id}/sleep"))
        .expect(200);
    assert_eq!(info(&server, &id)["status"], "sleeping");
    let v = wake(&server, &id);
    assert_eq!(v["restoredFiles"], 0);
    assert_eq!(server.sandbox(&id)["status"], "running");
    assert_eq!(server.get_file(&id, &format!("{dir}/c.txt")), b"c");

    // agentpod's DELETE removes the sandbox and its syncs.
    let r = server.request(Method::DELETE, &path(&format!("/sandbox/{id}")));
    r.expect(200);
    assert_eq!(r.json()["success"], true);
    assert!(sync_snapshots(&server, &id).is_empty());
    assert_error(
        &server.request(Method::GET, &path(&format!("/sandbox/{id}"))),
        404,
        &id,
    );
    assert_error(
        &server.request(Method::POST, &path(&format!("/sandbox/{id}/wake"))),
        404,
        &id,
    );
    // A sync of a sandbox whose workspace was removed is a clear error.
    let other = unique("no-ws");
    create(&server, &json!({"id": other}));
    server.run_ok(&other, "rm -rf /home/user/workspace");
    let r = server.request(Method::POST, &path(&format!("/sandbox/{other}/sync")));
    assert_error(&r, 500, "does not exist");
}

#[test]
fn create_with_git_url_clones_into_the_directory() {
    // A git smart-HTTP server in a network namespace of the test's own (as tests/git.rs).
    let mut ns = NetNs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Repo::new(dir.path(), "proj");
    git(&repo.work, &["checkout", "-q", "-b", "feature"]);
    let feature = repo.commit("on the feature branch\n");
    git(
        &repo.work,
        &["push", "-q", repo.bare.to_str().expect("utf-8"), "feature"],
    );
    let script = dir.path().join("server.py");
    std::fs::write(&script, GIT_SERVER).expect("write server");
    let root = dir.path().to_str().expect("utf-8").to_string();
    ns.spawn(
        &["python3", script.to_str().expect("utf-8"), &root, "8080"],
        &[],
        &dir.path().join("server.log"),
    );
    ns.wait_listening(8080);
    let url = format!("http://{}:8080/proj.git", ns.ns_addr);

    let server = Server::start();
    let id = unique("cloned");
    let v = create(
        &server,
        &json!({"id": id, "userId": "u", "gitUrl": url, "gitBranch": "feature",
                "directory": "/home/user/repo"}),
    );
    assert_eq!(v["status"], "running");
    assert_contained(&server, &id);
    assert_eq!(
        server.get_file(&id, "/home/user/repo/README"),
        b"on the feature branch\n"
    );
    assert_eq!(
        server.run_ok(&id, "git -C /home/user/repo rev-parse HEAD"),
        format!("{feature}\n")
    );
    // The sandbox reaches the repository's host and nothing else.
    assert_eq!(server.sandbox(&id)["network"], "egress");
    // And the clone is what a sync saves.
    assert_eq!(
        sync(&server, &id)["syncedFiles"].as_u64().map(|n| n > 1),
        Some(true)
    );

    // A branch that does not exist: the clone's error, and no sandbox left behind.
    let bad = unique("cloned-bad");
    let r = server.request_json(
        Method::POST,
        &path("/sandbox"),
        &json!({"id": bad, "gitUrl": url, "gitBranch": "nope"}),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(r.json()["success"], false);
    assert!(r.json()["error"].is_string());
    assert!(!server.list_ids().contains(&bad));
}

#[test]
fn message_without_an_opencode_server_is_a_clear_502() {
    let server = Server::start();
    let id = unique("no-oc");
    create(&server, &json!({"id": id}));
    let r = message(&server, &id, &json!({"message": "hello"}));
    assert_error(&r, 502, "No OpenCode server is running");
    assert!(r.text().contains("4096"), "{}", r.text());
    // The proxy says the same kind of thing.
    let r = server.request(Method::GET, &path(&format!("/sandbox/{id}/opencode/")));
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.json()["error"].is_string(), "{}", r.text());
    // And the sandbox is fine.
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

#[test]
fn opencode_proxy_passes_http_and_websockets() {
    let server = Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    let id = unique("proxy");
    create(&server, &json!({"id": id, "userId": "u"}));
    start_opencode(&server, &id);

    // HTTP: the path after /opencode and the query reach the server; the bearer does not.
    let r = server.request(
        Method::GET,
        &path(&format!(
            "/sandbox/{id}/opencode/session/list?directory=%2Fw&x=1"
        )),
    );
    r.expect(200);
    let v = r.json();
    assert_eq!(v["path"], "/session/list?directory=%2Fw&x=1");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert_eq!(
        v["headers"]["x-forwarded-prefix"],
        path(&format!("/sandbox/{id}/opencode"))
    );
    // The bare prefix is the server's `/`.
    for suffix in ["/opencode", "/opencode/"] {
        let r = server.request(Method::GET, &path(&format!("/sandbox/{id}{suffix}")));
        r.expect(200);
        assert_eq!(r.json()["path"], "/", "{suffix}");
    }
    // POST bodies pass: the OpenCode API through the proxy, as the SDK would use it.
    let r = server.request_json(
        Method::POST,
        &path(&format!("/sandbox/{id}/opencode/session")),
        &json!({"title": "via proxy"}),
    );
    r.expect(200);
    assert_eq!(r.json()["title"], "via proxy");
    // Without the token: 401 in the dialect's shape, nothing forwarded.
    let r =
        server.send(server.req_anon(Method::GET, &path(&format!("/sandbox/{id}/opencode/doc"))));
    assert_error(&r, 401, "Unauthorized");

    // WebSocket: a second sandbox runs an echo server on 4096.
    let ws_id = unique("proxy-ws");
    create(&server, &json!({"id": ws_id}));
    server.put_file(&ws_id, "/workspace/ws.py", WS.as_bytes());
    server.serve_in(
        &ws_id,
        "ws",
        "python3 /workspace/ws.py 4096",
        "/workspace",
        4096,
    );
    let bearer = format!("Bearer {TOKEN}");
    let mut ws = ws_connect(
        &server,
        &path(&format!("/sandbox/{ws_id}/opencode/event?x=1")),
        &[("Authorization", &bearer)],
        WAIT,
    )
    .expect("upgrade");
    assert_eq!(next_text(&mut ws, WAIT), "path:/event?x=1");
    for msg in ["one", "two"] {
        ws.send(Message::Text(msg.into())).expect("send");
        assert_eq!(next_text(&mut ws, WAIT), format!("echo:{msg}"));
    }
    let _ = ws.close(None);
    assert_eq!(
        ws_connect(
            &server,
            &path(&format!("/sandbox/{ws_id}/opencode/event")),
            &[],
            WAIT
        )
        .err(),
        Some(401)
    );
}

#[test]
fn error_cases() {
    let server = Server::start_with(ServerOpts {
        token: Some(TOKEN.into()),
        ..Default::default()
    });
    // Unknown routes: plain-text 404.
    for p in ["/nope", "/sandbox/x/nope", "/sandbox/x/wake/extra"] {
        let r = server.request(Method::GET, &path(p));
        assert_eq!(r.status, 404, "{p}");
        assert_eq!(r.text(), "Not Found", "{p}");
        assert!(
            r.content_type.starts_with("text/plain"),
            "{p}: {}",
            r.content_type
        );
    }
    // 401 without or with a wrong token, on every route but /health.
    for (method, p) in [
        (Method::POST, "/sandbox"),
        (Method::GET, "/sandbox/x"),
        (Method::DELETE, "/sandbox/x"),
        (Method::POST, "/sandbox/x/message"),
        (Method::POST, "/sandbox/x/sync"),
        (Method::POST, "/sandbox/x/wake"),
        (Method::GET, "/sandbox/x/opencode/"),
    ] {
        let r = server.send(server.req_anon(method.clone(), &path(p)));
        assert_eq!(r.status, 401, "{method} {p}");
        assert_eq!(r.json(), json!({"error": "Unauthorized"}), "{method} {p}");
        let r = server.send(
            server
                .req_anon(method.clone(), &path(p))
                .bearer_auth("wrong"),
        );
        assert_eq!(r.status, 401, "{method} {p}");
        assert_eq!(r.json(), json!({"error": "Unauthorized"}));
    }
    let r = server.send(server.req_anon(Method::GET, &path("/health")));
    r.expect(200);

    // Bad bodies.
    let bad = server.send(
        server
            .req(Method::POST, &path("/sandbox"))
            .header("content-type", "application/json")
            .body("{not json"),
    );
    assert_error(&bad, 400, "invalid JSON");
    assert_error(
        &server.request_json(Method::POST, &path("/sandbox"), &json!({"userId": "u"})),
        400,
        "id is required",
    );
    assert_error(
        &server.request_json(Method::POST, &path("/sandbox"), &json!({"id": 5})),
        400,
        "id must be a string",
    );
    assert_error(
        &server.request_json(Method::POST, &path("/sandbox"), &json!([1])),
        400,
        "JSON object",
    );
    assert_error(
        &server.request_json(
            Method::POST,
            &path("/sandbox"),
            &json!({"id": "rel-dir", "directory": "work"}),
        ),
        400,
        "absolute",
    );
    assert_error(
        &server.request_json(Method::POST, &path("/sandbox"), &json!({"id": "../x"})),
        400,
        "",
    );
    // A clone that cannot work: a clear error, and no sandbox left behind.
    let r = server.request_json(
        Method::POST,
        &path("/sandbox"),
        &json!({"id": "bad-git", "gitUrl": "file:///etc"}),
    );
    assert_error(&r, 400, "url");
    assert_eq!(r.json()["success"], false);
    assert!(!server.list_ids().contains(&"bad-git".to_string()));

    // Unknown sandboxes.
    let ghost = unique("ghost");
    for (method, p, body) in [
        (Method::GET, format!("/sandbox/{ghost}"), json!(null)),
        (Method::DELETE, format!("/sandbox/{ghost}"), json!(null)),
        (
            Method::POST,
            format!("/sandbox/{ghost}/message"),
            json!({"message": "hi"}),
        ),
        (Method::POST, format!("/sandbox/{ghost}/sync"), json!({})),
        (Method::POST, format!("/sandbox/{ghost}/wake"), json!({})),
        (
            Method::GET,
            format!("/sandbox/{ghost}/opencode/"),
            json!(null),
        ),
    ] {
        let r = server.request_json(method.clone(), &path(&p), &body);
        assert_error(&r, 404, &format!("Sandbox not found: {ghost}"));
    }
    // message needs a message.
    let id = unique("errs");
    create(&server, &json!({"id": id}));
    assert_error(
        &message(&server, &id, &json!({})),
        400,
        "message is required",
    );
    assert_error(
        &message(&server, &id, &json!({"message": "x", "sessionId": 3})),
        400,
        "sessionId must be a string",
    );
    // The server is fine after all that.
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

#[test]
fn root_dialect_agentpod() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--root-dialect".into(), "agentpod".into()],
        ..Default::default()
    });
    let r = server.request(Method::GET, "/health");
    r.expect(200);
    assert_eq!(r.json()["status"], "ok");
    let id = unique("root");
    let r = server.request_json(Method::POST, "/sandbox", &json!({"id": id}));
    r.expect(200);
    assert_eq!(r.json()["sandboxId"], id);
    // The same sandbox under /compat/agentpod and /v1; native routes still win.
    assert_eq!(info(&server, &id)["status"], "running");
    assert_eq!(server.sandbox(&id)["id"], id);
    let r = server.request(Method::GET, "/nope");
    assert_eq!((r.status, r.text().as_str()), (404, "Not Found"));
    // The proxy under the root mount tells the server its prefix.
    start_opencode(&server, &id);
    let r = server.request(Method::GET, &format!("/sandbox/{id}/opencode/doc"));
    r.expect(200);
    let v = r.json();
    assert_eq!(v["path"], "/doc");
    assert_eq!(
        v["headers"]["x-forwarded-prefix"],
        format!("/sandbox/{id}/opencode")
    );
}

/// The next delivery of `event` for `id`, within [`WAIT`].
#[track_caller]
fn next_event(rx: &mpsc::Receiver<Delivery>, event: &str, id: &str) -> Delivery {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {event} for {id} within {WAIT:?}"));
        let body = d.json();
        if body["event"] == event && body["data"]["sandboxId"] == id {
            return d;
        }
    }
}

#[test]
fn webhooks_in_agentpod_shape() {
    let (port, rx) = receiver(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sandpit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
url = "http://127.0.0.1:{port}/api/v2/cloudflare/webhook"
format = "agentpod"
token = "agentpod-api-token"
backoff_ms = 100
"#
        ),
    )
    .expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let id = unique("hooked");
    create(&server, &json!({"id": id, "userId": "user-1"}));
    let d = next_event(&rx, "sandbox.created", &id);
    assert_eq!(d.path, "/api/v2/cloudflare/webhook");
    assert_eq!(d.headers["authorization"], "Bearer agentpod-api-token");
    assert_eq!(d.headers["content-type"], "application/json");
    assert!(
        !d.headers.contains_key("x-sandpit-signature"),
        "no secret, no signature"
    );
    let body = d.json();
    assert_keys(&body, &["event", "data", "timestamp"]);
    let ts = body["timestamp"].as_str().expect("timestamp");
    assert!(ts.ends_with('Z') && ts.contains('.'), "{ts}");
    assert!((parse_utc(ts).expect("ISO time") - now_unix()).abs() < 120.0);
    assert_eq!(body["data"]["sandboxId"], id);

    // Sandboxes made through /v1 are announced too, and deletes.
    let other = unique("hooked-v1");
    server.create(&json!({"id": other}));
    next_event(&rx, "sandbox.created", &other);
    server
        .request(Method::DELETE, &path(&format!("/sandbox/{id}")))
        .expect(200);
    let d = next_event(&rx, "sandbox.deleted", &id);
    assert_eq!(d.headers["authorization"], "Bearer agentpod-api-token");

    // A bad format, or an agentpod hook with neither token nor secret, refuses to start.
    for (text, says) in [
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s\"\nformat = \"xml\"\n",
            "use sandpit or agentpod",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nformat = \"agentpod\"\n",
            "secret must not be empty",
        ),
    ] {
        std::fs::write(&config, text).expect("config");
        let data = tempfile::tempdir().expect("data dir");
        let listen = format!("127.0.0.1:{}", free_port());
        let (status, out) = run_binary(
            &[
                "serve",
                "--listen",
                &listen,
                "--data-dir",
                &data.path().to_string_lossy(),
                "--config",
                &config.to_string_lossy(),
            ],
            Duration::from_secs(20),
        )
        .expect("sandpit serve should exit");
        assert!(!status.success(), "started with {text}: {out}");
        assert!(out.contains(says), "{out}");
    }
}

#[test]
fn wake_after_expiry_restores_the_last_sync() {
    let server = Server::start();
    let id = unique("expired");
    let dir = "/home/user/workspace";
    create(&server, &json!({"id": id, "userId": "u"}));
    server.put_file(&id, &format!("{dir}/kept.txt"), b"survives expiry");
    assert_eq!(sync(&server, &id)["syncedFiles"], 1);

    // Let the reaper end it: a one-second keepalive, then no calls until it is gone.
    server
        .request_json(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}"),
            &json!({"keepalive_seconds": 1}),
        )
        .expect(200);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server.list_ids().contains(&id) {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let v = info(&server, &id);
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["hasWorkspace"], true);

    let v = wake(&server, &id);
    assert_eq!(v["status"], "running");
    assert_eq!(v["restoredFiles"], 1);
    assert_eq!(
        server.get_file(&id, &format!("{dir}/kept.txt")),
        b"survives expiry"
    );
}
