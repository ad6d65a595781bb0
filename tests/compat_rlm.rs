//! The `rlm` dialect (`/compat/rlm`): the RLM sandbox worker behind the `CloudflareREPL`
//! Python client. Replays the document's curl flows and the client's own REPL protocol
//! (a script written to `/tmp`, run with `python3`, state kept in `/tmp`), checks the answer
//! shapes, lazy creation, the public health routes, the 401 shapes and `--root-dialect rlm`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const BASE: &str = "/compat/rlm";

fn path(p: &str) -> String {
    format!("{BASE}{p}")
}

fn exec(server: &Server, id: &str, command: &str) -> Value {
    let r = server.request_json(
        Method::POST,
        &path("/sandbox/exec"),
        &json!({"sandbox_id": id, "command": command}),
    );
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["stdout", "stderr", "exitCode", "success"]);
    v
}

fn write(server: &Server, id: &str, file: &str, content: &str) -> Resp {
    server.request_json(
        Method::POST,
        &path("/sandbox/write"),
        &json!({"sandbox_id": id, "path": file, "content": content}),
    )
}

fn read(server: &Server, id: &str, file: &str) -> Resp {
    server.request(
        Method::GET,
        &path(&format!("/sandbox/read?sandbox_id={id}&path={}", enc(file))),
    )
}

#[track_caller]
fn assert_health(v: &Value) {
    assert_keys(v, &["status", "service", "timestamp"]);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["service"], "rlm-sandbox");
    let ms = v["timestamp"].as_u64().expect("timestamp in milliseconds");
    assert!(((ms as f64) / 1000.0 - now_unix()).abs() < 120.0, "{v}");
}

#[test]
fn document_curl_flows() {
    let server = Server::start();
    let id = unique("my-session");

    // POST /sandbox/exec: the sandbox is created on first use.
    assert!(server.list_ids().is_empty());
    let v = exec(&server, &id, "python3 -c \"print(42)\"");
    assert_eq!(
        v,
        json!({"stdout": "42\n", "stderr": "", "exitCode": 0, "success": true})
    );
    assert_eq!(server.list_ids(), vec![id.clone()]);
    assert_eq!(server.sandbox(&id)["status"], "running");

    // POST /sandbox/write, then GET /sandbox/read.
    let r = write(&server, &id, "/workspace/script.py", "print(\"hello\")");
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));
    let r = read(&server, &id, "/workspace/script.py");
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"content": "print(\"hello\")", "success": true})
    );
    let v = exec(&server, &id, "python3 /workspace/script.py");
    assert_eq!(v["stdout"], "hello\n");

    // A failing command: its exit code, success false, still HTTP 200.
    let v = exec(&server, &id, "echo bad >&2; exit 4");
    assert_eq!(
        v,
        json!({"stdout": "", "stderr": "bad\n", "exitCode": 4, "success": false})
    );
    // The same sandbox throughout.
    assert_eq!(server.list_ids(), vec![id]);
}

/// The client's protocol, as `CloudflareREPL.execute_code` drives it.
const EXEC_SCRIPT: &str = r#"
import json, os, io, sys
STATE = "/tmp/rlm_state.json"
state = json.load(open(STATE)) if os.path.exists(STATE) else {}
code = open("/tmp/rlm_code.py").read()
buf = io.StringIO()
old, sys.stdout = sys.stdout, buf
try:
    exec(code, state, state)
finally:
    sys.stdout = old
clean = {k: v for k, v in state.items() if not k.startswith("_")}
json.dump(clean, open(STATE, "w"))
print(json.dumps({"stdout": buf.getvalue(), "locals": {k: repr(v) for k, v in clean.items()}}))
"#;

fn execute_code(server: &Server, id: &str, code: &str) -> Value {
    write(server, id, "/tmp/rlm_code.py", code).expect(200);
    write(server, id, "/tmp/rlm_exec.py", EXEC_SCRIPT).expect(200);
    let v = exec(server, id, "python3 /tmp/rlm_exec.py");
    assert_eq!(v["exitCode"], 0, "{v}");
    let last = v["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .lines()
        .last()
        .unwrap_or("{}")
        .to_string();
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{e}: {v}"))
}

#[test]
fn repl_state_in_tmp_persists_per_sandbox() {
    let server = Server::start();
    let a = unique("rlm-a");
    let b = unique("rlm-b");
    let r = execute_code(&server, &a, "x = 2 + 2\nprint(x)");
    assert_eq!(r["stdout"], "4\n");
    assert_eq!(r["locals"], json!({"x": "4"}));
    let r = execute_code(&server, &a, "y = x * 10\nprint(y)");
    assert_eq!(r["stdout"], "40\n");
    assert_eq!(r["locals"], json!({"x": "4", "y": "40"}));
    // Another sandbox id has its own /tmp.
    let r = execute_code(&server, &b, "print('x' in dir())");
    assert_eq!(r["stdout"], "False\n");
    let r = read(&server, &b, "/tmp/rlm_state.json");
    r.expect(200);
    assert_eq!(r.json()["content"], "{}");
    // Still there later, and the state file is an ordinary file of the sandbox.
    std::thread::sleep(Duration::from_millis(1500));
    let r = read(&server, &a, "/tmp/rlm_state.json");
    r.expect(200);
    assert_eq!(r.json()["content"], r#"{"x": 4, "y": 40}"#);
    assert_eq!(
        server.get_file(&a, "/tmp/rlm_state.json"),
        br#"{"x": 4, "y": 40}"#
    );
    let mut ids = server.list_ids();
    ids.sort();
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids, want);
}

#[test]
fn health_routes() {
    let server = Server::start();
    for p in ["", "/health"] {
        let r = server.request(Method::GET, &path(p));
        r.expect(200);
        assert_health(&r.json());
    }
    let id = unique("h");
    let r = server.request(
        Method::GET,
        &path(&format!("/sandbox/health?sandbox_id={id}")),
    );
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["status", "python", "exitCode"]);
    assert_eq!(v["status"], "healthy");
    assert_eq!(v["exitCode"], 0);
    let python = v["python"].as_str().unwrap();
    assert!(
        python.starts_with("Python 3.") && !python.ends_with('\n'),
        "{v}"
    );
    // Without a sandbox_id the worker's `health-check` sandbox is used.
    let r = server.request(Method::GET, &path("/sandbox/health"));
    r.expect(200);
    assert_eq!(r.json()["status"], "healthy");
    assert!(server.list_ids().contains(&"health-check".to_string()));
}

#[test]
fn error_shapes() {
    let server = Server::start();
    let id = unique("err");
    for body in [
        json!({}),
        json!({"sandbox_id": id}),
        json!({"command": "true"}),
        json!({"sandbox_id": "", "command": "true"}),
        json!({"sandbox_id": id, "command": ""}),
    ] {
        server
            .request_json(Method::POST, &path("/sandbox/exec"), &body)
            .expect_dialect_error(400, "sandbox_id and command are required");
    }
    for body in [
        json!({"sandbox_id": id, "path": "/tmp/a"}),
        json!({"sandbox_id": id, "content": "x"}),
        json!({"path": "/tmp/a", "content": "x"}),
    ] {
        server
            .request_json(Method::POST, &path("/sandbox/write"), &body)
            .expect_dialect_error(400, "sandbox_id, path, and content are required");
    }
    for q in ["", "?sandbox_id=x", "?path=/tmp/a"] {
        server
            .request(Method::GET, &path(&format!("/sandbox/read{q}")))
            .expect_dialect_error(400, "sandbox_id and path query params are required");
    }
    assert!(
        server.list_ids().is_empty(),
        "a refused request created a sandbox"
    );

    // Empty content is a valid, empty file.
    let r = write(&server, &id, "/tmp/empty.txt", "");
    r.expect(200);
    assert_eq!(r.json(), json!({"success": true}));
    let r = read(&server, &id, "/tmp/empty.txt");
    r.expect(200);
    assert_eq!(r.json(), json!({"content": "", "success": true}));

    // A missing file.
    let r = read(&server, &id, "/tmp/missing.txt");
    let v = r.expect_dialect_error(404, "File not found: /tmp/missing.txt");
    assert_keys(&v, &["error", "content", "success"]);
    assert_eq!(v["content"], "");
    assert_eq!(v["success"], false);

    // A sandbox id sandpit cannot use.
    let r = server.request_json(
        Method::POST,
        &path("/sandbox/exec"),
        &json!({"sandbox_id": "no/slashes", "command": "true"}),
    );
    r.expect(400);
    assert!(r.json()["error"].is_string());

    // Unknown routes.
    let r = server.request(Method::GET, &path("/sandbox/nothing"));
    let v = r.expect_dialect_error(404, "Not found");
    assert!(v["endpoints"].is_array());
}

#[test]
fn token_is_required_in_the_dialect_shape() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let token = server.token.clone().unwrap();
    let id = unique("auth");
    let body = json!({"sandbox_id": id, "command": "true", "path": "/tmp/a", "content": ""});
    let routes = [
        (Method::POST, "/sandbox/exec".to_string()),
        (Method::POST, "/sandbox/write".to_string()),
        (
            Method::GET,
            format!("/sandbox/read?sandbox_id={id}&path=/tmp/a"),
        ),
        (Method::GET, format!("/sandbox/health?sandbox_id={id}")),
        (Method::GET, "/sandbox/unknown".to_string()),
    ];
    for (method, p) in &routes {
        let r = server.send(server.req_anon(method.clone(), &path(p)).json(&body));
        assert_eq!(r.status, 401, "{method} {p}: {}", r.text());
        assert_eq!(r.json(), json!({"error": "Authorization header required"}));
        // What the client sends without a token of its own: "Bearer ".
        for wrong in [
            "Bearer ".to_string(),
            format!("Bearer {token}x"),
            token.clone(),
        ] {
            let r = server.send(
                server
                    .req_anon(method.clone(), &path(p))
                    .header("Authorization", wrong)
                    .json(&body),
            );
            assert_eq!(r.status, 401, "{method} {p}: {}", r.text());
            assert_eq!(r.json(), json!({"error": "Invalid token"}));
        }
    }
    assert!(
        server.list_ids().is_empty(),
        "a refused request created a sandbox"
    );
    // `/` and `/health` need no token.
    for p in ["", "/health"] {
        let r = server.send(server.req_anon(Method::GET, &path(p)));
        r.expect(200);
        assert_health(&r.json());
    }
    // With the token.
    let v = exec(&server, &id, "echo ok");
    assert_eq!(v["stdout"], "ok\n");
}

#[test]
fn root_dialect_rlm_serves_sandbox_exec_at_root() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        args: vec!["--root-dialect".into(), "rlm".into()],
        ..Default::default()
    });
    let id = unique("root");
    let r = server.request_json(
        Method::POST,
        "/sandbox/exec",
        &json!({"sandbox_id": id, "command": "echo at-root"}),
    );
    r.expect(200);
    assert_eq!(
        r.json(),
        json!({"stdout": "at-root\n", "stderr": "", "exitCode": 0, "success": true})
    );
    let r = server.request_json(
        Method::POST,
        "/sandbox/write",
        &json!({"sandbox_id": id, "path": "/tmp/root.txt", "content": "r"}),
    );
    assert_eq!(r.json(), json!({"success": true}));
    let r = server.request(
        Method::GET,
        &format!("/sandbox/read?sandbox_id={id}&path=/tmp/root.txt"),
    );
    r.expect(200);
    assert_eq!(r.json(), json!({"content": "r", "success": true}));
    // Auth at the root is the dialect's, natively-routed paths keep theirs.
    let r = server.send(
        server
            .req_anon(Method::POST, "/sandbox/exec")
            .json(&json!({})),
    );
    assert_eq!(r.json(), json!({"error": "Authorization header required"}));
    server
        .send(server.req_anon(Method::GET, "/v1/sandboxes"))
        .expect_error(401, "unauthorized");
    // `/` is the dialect's health; `/health` collides and the native one wins.
    let r = server.send(server.req_anon(Method::GET, "/"));
    r.expect(200);
    assert_health(&r.json());
    let r = server.send(server.req_anon(Method::GET, "/health"));
    r.expect(200);
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert!(v["version"].is_string(), "native /health wins: {v}");
    // Unknown root paths answer in the dialect's shape; the prefixed mount still works.
    let r = server.request(Method::GET, "/nowhere");
    r.expect_dialect_error(404, "Not found");
    let v = exec(&server, &id, "echo prefixed");
    assert_eq!(v["stdout"], "prefixed\n");
    assert_eq!(server.list_ids(), vec![id]);
}

#[test]
fn unknown_root_dialect_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let data = dir.path().to_string_lossy().into_owned();
    for (name, says) in [
        ("nope", "is not a dialect"),
        ("AgentPod", "is not a dialect"),
    ] {
        let (status, out) = run_binary(
            &[
                "serve",
                "--listen",
                &listen,
                "--data-dir",
                &data,
                "--root-dialect",
                name,
            ],
            Duration::from_secs(20),
        )
        .expect("sandpit serve should exit");
        assert!(
            !status.success(),
            "started with --root-dialect {name}: {out}"
        );
        assert!(
            out.contains(&format!("--root-dialect '{name}'")) && out.contains(says),
            "{out}"
        );
        assert!(out.contains("acontext, artifact, rlm"), "{out}");
    }
}
