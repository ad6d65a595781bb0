//! The `kapin` dialect (`/compat/kapin`): the KAPIN sandbox worker (`/sandboxes/:projectId`)
//! called by a TypeScript web worker. Replays the document's curl flows, checks the
//! `{success, data}` shapes field by field, CORS headers on answers and preflights, the 404
//! and 401 shapes, exec's `success` on a failing command, streaming, clone/pull of a local
//! repository, `ls`, `DELETE` (processes gone, files kept), `/v1` visibility and
//! `--root-dialect kapin`.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/compat/kapin";

fn path(p: &str) -> String {
    format!("{BASE}{p}")
}

/// Asserts `{success: true, data}` and returns `data`.
#[track_caller]
fn data(r: &Resp) -> Value {
    r.expect(200);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let v = r.json();
    assert_keys(&v, &["success", "data"]);
    assert_eq!(v["success"], true, "{v}");
    v["data"].clone()
}

/// Asserts `{success: false, error}` with this status; returns the error text.
#[track_caller]
fn failure(r: &Resp, status: u16) -> String {
    r.expect(status);
    assert!(r.content_type.starts_with("application/json"), "{r:?}");
    let v = r.json();
    assert_keys(&v, &["success", "error"]);
    assert_eq!(v["success"], false, "{v}");
    v["error"].as_str().expect("error is a string").to_string()
}

fn exec_resp(server: &Server, id: &str, command: &str) -> Resp {
    server.request_json(
        Method::POST,
        &path(&format!("/sandboxes/{id}/exec")),
        &json!({ "command": command }),
    )
}

/// Runs a command through kapin; returns the whole body after checking its shape.
#[track_caller]
fn exec(server: &Server, id: &str, command: &str) -> Value {
    let r = exec_resp(server, id, command);
    r.expect(200);
    let v = r.json();
    assert_keys(&v, &["success", "data"]);
    assert_keys(&v["data"], &["stdout", "stderr", "exitCode"]);
    assert_eq!(v["success"], v["data"]["exitCode"] == 0, "{v}");
    v
}

fn clone(server: &Server, id: &str, body: &Value) -> Resp {
    server.request_json(Method::POST, &path(&format!("/sandboxes/{id}/clone")), body)
}

#[track_caller]
fn assert_cors(headers: &reqwest::header::HeaderMap) {
    let origin = headers
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok());
    assert_eq!(origin, Some("*"), "CORS headers missing: {headers:?}");
}

#[test]
fn document_curl_flows() {
    let server = Server::start();
    let id = unique("test-project");

    // curl http://localhost:8787/sandboxes/test-project -X POST
    let r = server.request(Method::POST, &path(&format!("/sandboxes/{id}")));
    let d = data(&r);
    assert_eq!(
        d,
        json!({"projectId": id, "status": "ready", "message": "Sandbox ready"})
    );
    assert_eq!(server.list_ids(), vec![id.clone()]);
    // Get-or-create: again, the same sandbox.
    let r = server.request(Method::POST, &path(&format!("/sandboxes/{id}")));
    assert_eq!(data(&r)["status"], "ready");
    assert_eq!(server.list_ids(), vec![id.clone()]);

    // curl .../sandboxes/test-project/exec -d '{"command": "echo Hello"}'
    let v = exec(&server, &id, "echo Hello");
    assert_eq!(
        v,
        json!({"success": true, "data": {"stdout": "Hello\n", "stderr": "", "exitCode": 0}})
    );
    // The document's example body, with `stream: false`.
    let r = server.request_json(
        Method::POST,
        &path(&format!("/sandboxes/{id}/exec")),
        &json!({"command": "python3 --version", "stream": false}),
    );
    let d = data(&r);
    assert_keys(&d, &["stdout", "stderr", "exitCode"]);
    assert_eq!(d["exitCode"], 0);
    assert!(
        d["stdout"].as_str().unwrap().starts_with("Python 3."),
        "{d}"
    );

    // PUT /sandboxes/:id/files/workspace/index.js
    let r = server.request_json(
        Method::PUT,
        &path(&format!("/sandboxes/{id}/files/workspace/index.js")),
        &json!({"content": "console.log('Hello, World!');"}),
    );
    assert_eq!(
        data(&r),
        json!({"path": "/workspace/index.js", "message": "File written successfully"})
    );
    assert_eq!(
        server.get_file(&id, "/workspace/index.js"),
        b"console.log('Hello, World!');"
    );
    // GET /sandboxes/:id/files/workspace/package.json
    server.put_file(&id, "/workspace/package.json", br#"{ "name": "my-app" }"#);
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/files/workspace/package.json")),
    );
    assert_eq!(
        data(&r),
        json!({"path": "/workspace/package.json", "content": "{ \"name\": \"my-app\" }"})
    );
    // Nested directories are created on write.
    let r = server.request_json(
        Method::PUT,
        &path(&format!("/sandboxes/{id}/files/workspace/src/deep/a.txt")),
        &json!({"content": ""}),
    );
    assert_eq!(data(&r)["path"], "/workspace/src/deep/a.txt");
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/files/workspace/src/deep/a.txt")),
    );
    assert_eq!(data(&r)["content"], "");

    // GET /sandboxes/:id/ls?path=/workspace
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/ls?path=/workspace")),
    );
    let d = data(&r);
    assert_keys(&d, &["path", "listing"]);
    assert_eq!(d["path"], "/workspace");
    let listing = d["listing"].as_str().unwrap();
    assert!(listing.starts_with("total "), "{listing}");
    for name in [" .\n", " ..\n", " index.js\n", " package.json\n", " src\n"] {
        assert!(listing.contains(name), "{name:?} not in {listing}");
    }
    assert!(listing
        .lines()
        .any(|l| l.starts_with('d') && l.ends_with(" src")));
    // Default path is /workspace.
    let r = server.request(Method::GET, &path(&format!("/sandboxes/{id}/ls")));
    let d = data(&r);
    assert_eq!(d["path"], "/workspace");
    assert_eq!(d["listing"].as_str().unwrap(), listing);
    // Another directory.
    let r = server.request(
        Method::GET,
        &path(&format!(
            "/sandboxes/{id}/ls?path={}",
            enc("/workspace/src")
        )),
    );
    let d = data(&r);
    assert_eq!(d["path"], "/workspace/src");
    assert!(d["listing"].as_str().unwrap().contains(" deep\n"), "{d}");

    // DELETE /sandboxes/:id
    let r = server.request(Method::DELETE, &path(&format!("/sandboxes/{id}")));
    assert_eq!(
        data(&r),
        json!({"projectId": id, "status": "cleaned", "message": "All processes terminated"})
    );
    // The sandbox and its files stay.
    assert_eq!(server.list_ids(), vec![id.clone()]);
    assert_eq!(
        server.get_file(&id, "/workspace/index.js"),
        b"console.log('Hello, World!');"
    );
}

#[test]
fn exec_results_and_errors() {
    let server = Server::start();
    let id = unique("exec");
    // The sandbox is created on first use of any route.
    let v = exec(&server, &id, "echo out; echo err >&2; exit 3");
    assert_eq!(
        v,
        json!({"success": false, "data": {"stdout": "out\n", "stderr": "err\n", "exitCode": 3}})
    );
    assert_eq!(server.list_ids(), vec![id.clone()]);

    // A missing or empty command.
    for body in [json!({}), json!({"command": ""}), json!({"command": 5})] {
        let r = server.request_json(Method::POST, &path(&format!("/sandboxes/{id}/exec")), &body);
        assert_eq!(failure(&r, 400), "command is required");
    }
    // No body at all.
    let r = server.request(Method::POST, &path(&format!("/sandboxes/{id}/exec")));
    assert_eq!(failure(&r, 400), "command is required");

    // Files: a missing file, a missing content.
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/files/workspace/missing.txt")),
    );
    assert_eq!(failure(&r, 404), "File not found: /workspace/missing.txt");
    let r = server.request_json(
        Method::PUT,
        &path(&format!("/sandboxes/{id}/files/workspace/x.txt")),
        &json!({}),
    );
    assert_eq!(failure(&r, 400), "content is required");
    // ls of a missing directory.
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/ls?path=/nowhere")),
    );
    assert!(failure(&r, 404).contains("No such file"));
    // A sandbox id sandpit cannot use.
    let r = server.request(Method::POST, &path("/sandboxes/bad%2Fid"));
    failure(&r, 400);
    // Clone without repoUrl.
    let r = clone(&server, &id, &json!({"directory": "/workspace/x"}));
    assert_eq!(failure(&r, 400), "repoUrl is required");
    assert_eq!(server.list_ids(), vec![id]);
}

#[test]
fn unknown_routes_are_404_in_kapin_shape() {
    let server = Server::start();
    for (method, p) in [
        (Method::GET, "/nothing"),
        (Method::GET, ""),
        (Method::GET, "/sandboxes"),
        (Method::GET, "/sandboxes/p1"),
        (Method::PUT, "/sandboxes/p1/exec"),
        (Method::POST, "/sandboxes/p1/unknown"),
        (Method::DELETE, "/sandboxes/p1/files/workspace/a"),
    ] {
        let (r, headers) = server.send_with_headers(server.req(method.clone(), &path(p)));
        let e = failure(&r, 404);
        assert!(e.starts_with("Not found"), "{method} {p}: {e}");
        assert_cors(&headers);
    }
    assert!(server.list_ids().is_empty(), "a 404 created a sandbox");
}

#[test]
fn cors_headers_on_answers_and_preflight() {
    let server = Server::start();
    let id = unique("cors");
    // Normal answers.
    let (r, headers) = server.send_with_headers(
        server
            .req(Method::POST, &path(&format!("/sandboxes/{id}")))
            .header("Origin", "https://app.example"),
    );
    data(&r);
    assert_cors(&headers);
    let (r, headers) = server.send_with_headers(
        server
            .req(Method::POST, &path(&format!("/sandboxes/{id}/exec")))
            .header("Origin", "https://app.example")
            .json(&json!({"command": "exit 1"})),
    );
    assert_eq!(r.json()["success"], false);
    assert_cors(&headers);
    // An error answer.
    let (r, headers) = server.send_with_headers(
        server
            .req(Method::POST, &path(&format!("/sandboxes/{id}/exec")))
            .json(&json!({})),
    );
    failure(&r, 400);
    assert_cors(&headers);
    // Preflight.
    for p in [
        format!("/sandboxes/{id}"),
        format!("/sandboxes/{id}/exec"),
        format!("/sandboxes/{id}/files/workspace/a.js"),
    ] {
        let (r, headers) = server.send_with_headers(
            server
                .req_anon(Method::OPTIONS, &path(&p))
                .header("Origin", "https://app.example")
                .header("Access-Control-Request-Method", "PUT")
                .header("Access-Control-Request-Headers", "content-type"),
        );
        assert!(r.status == 200 || r.status == 204, "{p}: {r:?}");
        assert_cors(&headers);
        let methods = headers
            .get("access-control-allow-methods")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        for m in ["GET", "POST", "PUT", "DELETE"] {
            assert!(methods.contains(m), "{methods}");
        }
        let allowed = headers
            .get("access-control-allow-headers")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            allowed == "*" || allowed.contains("content-type"),
            "{allowed}"
        );
    }
}

#[test]
fn stream_mode_sends_events() {
    let server = Server::start();
    let id = unique("stream");
    let rb = server
        .req(Method::POST, &path(&format!("/sandboxes/{id}/exec")))
        .json(&json!({"command": "echo one; echo two >&2; exit 2", "stream": true}));
    let events = SseStream::open(rb).collect_all();
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"), "{events:?}");
    assert_eq!(names.last(), Some(&"exit"), "{events:?}");
    let out: String = events
        .iter()
        .filter(|e| e.name == "stdout")
        .map(|e| e.data["data"].as_str().unwrap().to_string())
        .collect();
    let err: String = events
        .iter()
        .filter(|e| e.name == "stderr")
        .map(|e| e.data["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(out, "one\n");
    assert_eq!(err, "two\n");
    assert_eq!(events.last().unwrap().data["exit_code"], 2);
}

#[test]
fn clone_then_pull_a_local_repository() {
    let server = Server::start();
    let id = unique("git");
    let setup = exec(
        &server,
        &id,
        "set -e; git init -q /srv/repo && cd /srv/repo \
         && git config user.email t@example.com && git config user.name t \
         && echo one > first.txt && git add . && git commit -qm one && echo done",
    );
    assert_eq!(setup["success"], true, "{setup}");

    // Default directory: /workspace/<repo name>.
    let r = clone(&server, &id, &json!({"repoUrl": "file:///srv/repo"}));
    let d = data(&r);
    assert_eq!(
        d,
        json!({
            "repoUrl": "file:///srv/repo",
            "directory": "/workspace/repo",
            "action": "clone",
            "message": "Repository cloned successfully",
        })
    );
    assert_eq!(server.get_file(&id, "/workspace/repo/first.txt"), b"one\n");

    // A second commit, then clone again: the directory exists, so it pulls.
    let v = exec(
        &server,
        &id,
        "cd /srv/repo && echo two > second.txt && git add . && git commit -qm two",
    );
    assert_eq!(v["success"], true, "{v}");
    let r = clone(&server, &id, &json!({"repoUrl": "file:///srv/repo"}));
    let d = data(&r);
    assert_eq!(d["action"], "pull");
    assert_eq!(d["directory"], "/workspace/repo");
    assert_eq!(d["repoUrl"], "file:///srv/repo");
    assert!(d["message"].is_string());
    assert_eq!(server.get_file(&id, "/workspace/repo/second.txt"), b"two\n");

    // An explicit directory and a plain path; a token is ignored for non-https URLs and
    // never answered back.
    let token = "ghp_secretTOKEN123";
    let r = clone(
        &server,
        &id,
        &json!({"repoUrl": "/srv/repo", "directory": "/workspace/other", "githubToken": token}),
    );
    let d = data(&r);
    assert_eq!(d["action"], "clone");
    assert_eq!(d["directory"], "/workspace/other");
    assert!(!r.text().contains(token));
    assert_eq!(
        server.get_file(&id, "/workspace/other/second.txt"),
        b"two\n"
    );

    // ls of the clone.
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/ls?path=/workspace/repo")),
    );
    let listing = data(&r)["listing"].as_str().unwrap().to_string();
    assert!(listing.contains(" .git\n") && listing.contains(" second.txt\n"));

    // A failing clone (https, no network): an error, the token redacted everywhere.
    let r = clone(
        &server,
        &id,
        &json!({"repoUrl": "https://github.com/user/private.git", "githubToken": token}),
    );
    let e = failure(&r, 500);
    assert!(e.contains("git clone failed"), "{e}");
    assert!(!r.text().contains(token), "{}", r.text());
    assert!(!server.log().contains(token), "token in the server log");
    // A missing local repository.
    let r = clone(&server, &id, &json!({"repoUrl": "file:///srv/none"}));
    assert!(failure(&r, 500).contains("git clone failed"));
}

#[test]
fn delete_kills_processes_but_keeps_files() {
    let server = Server::start();
    let id = unique("clean");
    let r = server.request(Method::POST, &path(&format!("/sandboxes/{id}")));
    data(&r);
    let r = server.request_json(
        Method::PUT,
        &path(&format!("/sandboxes/{id}/files/workspace/keep.txt")),
        &json!({"content": "kept"}),
    );
    data(&r);
    // A background sleep started through kapin, and a native background process.
    exec(
        &server,
        &id,
        "setsid nohup sleep 1234 >/dev/null 2>&1 < /dev/null &",
    );
    server.wait_for_process(&id, "sleep 1234");
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes"),
        &json!({"argv": ["sleep", "4321"]}),
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    server.wait_for_process(&id, "sleep 4321");

    let r = server.request(Method::DELETE, &path(&format!("/sandboxes/{id}")));
    assert_eq!(data(&r)["status"], "cleaned");
    assert_processes_gone(&server, &id, &["sleep 1234", "sleep 4321"]);
    // The native process list no longer shows it running.
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/processes"));
    r.expect(200);
    let v = r.json();
    let list = v["processes"].as_array().cloned().unwrap_or_default();
    assert!(
        list.iter().all(|p| p["status"] != "running"),
        "still running: {v}"
    );

    // Files kept, the sandbox still works.
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/files/workspace/keep.txt")),
    );
    assert_eq!(data(&r)["content"], "kept");
    let v = exec(&server, &id, "echo alive");
    assert_eq!(v["data"]["stdout"], "alive\n");
    assert_eq!(server.sandbox(&id)["status"], "running");

    // Cleaning a project never used answers the same and creates nothing.
    let other = unique("never");
    let r = server.request(Method::DELETE, &path(&format!("/sandboxes/{other}")));
    assert_eq!(data(&r)["projectId"], other);
    assert_eq!(server.list_ids(), vec![id]);
}

#[test]
fn sandboxes_are_visible_through_v1() {
    let server = Server::start();
    let id = unique("vis");
    data(&server.request(Method::POST, &path(&format!("/sandboxes/{id}"))));
    let s = server.sandbox(&id);
    assert_eq!(s["id"], id);
    assert_eq!(s["status"], "running");
    // A file written natively is read through kapin and the other way round.
    server.put_file(&id, "/workspace/native.txt", b"from v1");
    let r = server.request(
        Method::GET,
        &path(&format!("/sandboxes/{id}/files/workspace/native.txt")),
    );
    assert_eq!(data(&r)["content"], "from v1");
    let r = server.request_json(
        Method::PUT,
        &path(&format!("/sandboxes/{id}/files/tmp/k.txt")),
        &json!({"content": "from kapin"}),
    );
    data(&r);
    assert_eq!(server.get_file(&id, "/tmp/k.txt"), b"from kapin");
    assert_eq!(server.run_ok(&id, "cat /tmp/k.txt"), "from kapin");
    // A sandbox made natively is used by kapin.
    let native = server.new_sandbox();
    let v = exec(&server, &native, "echo hi");
    assert_eq!(v["data"]["stdout"], "hi\n");
}

#[test]
fn token_is_required_in_the_kapin_shape() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let token = server.token.clone().unwrap();
    let id = unique("auth");
    let routes = [
        (Method::POST, format!("/sandboxes/{id}")),
        (Method::DELETE, format!("/sandboxes/{id}")),
        (Method::POST, format!("/sandboxes/{id}/exec")),
        (Method::POST, format!("/sandboxes/{id}/clone")),
        (Method::GET, format!("/sandboxes/{id}/ls")),
        (Method::GET, format!("/sandboxes/{id}/files/workspace/a")),
        (Method::PUT, format!("/sandboxes/{id}/files/workspace/a")),
        (Method::GET, "/unknown".to_string()),
    ];
    let body = json!({"command": "true", "content": "x", "repoUrl": "/srv/r"});
    for (method, p) in &routes {
        for auth in [None, Some(format!("Bearer {token}x")), Some(token.clone())] {
            let mut rb = server.req_anon(method.clone(), &path(p)).json(&body);
            if let Some(a) = auth {
                rb = rb.header("Authorization", a);
            }
            let (r, headers) = server.send_with_headers(rb.header("Origin", "https://a.example"));
            assert_eq!(r.status, 401, "{method} {p}: {}", r.text());
            assert_eq!(r.json(), json!({"success": false, "error": "Unauthorized"}));
            assert_cors(&headers);
        }
    }
    assert!(
        server.list_ids().is_empty(),
        "a refused request created a sandbox"
    );
    // A preflight carries no credentials and is answered.
    let (r, headers) = server.send_with_headers(
        server
            .req_anon(Method::OPTIONS, &path(&format!("/sandboxes/{id}/exec")))
            .header("Origin", "https://a.example")
            .header("Access-Control-Request-Method", "POST"),
    );
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    assert_cors(&headers);
    // With the token.
    let v = exec(&server, &id, "echo ok");
    assert_eq!(v["data"]["stdout"], "ok\n");
}

#[test]
fn root_dialect_kapin_serves_sandboxes_at_root() {
    let server = Server::start_with(ServerOpts {
        args: vec!["--root-dialect".into(), "kapin".into()],
        ..Default::default()
    });
    let id = unique("root");
    let (r, headers) =
        server.send_with_headers(server.req(Method::POST, &format!("/sandboxes/{id}")));
    assert_eq!(data(&r)["projectId"], id);
    assert_cors(&headers);
    let r = server.request_json(
        Method::POST,
        &format!("/sandboxes/{id}/exec"),
        &json!({"command": "echo at-root"}),
    );
    assert_eq!(data(&r)["stdout"], "at-root\n");
    // Unknown root paths answer in kapin's shape; native routes still win.
    let r = server.request(Method::GET, "/nowhere");
    failure(&r, 404);
    let r = server.request(Method::GET, "/health");
    r.expect(200);
    assert!(r.json()["version"].is_string());
    // The prefixed mount still works.
    let v = exec(&server, &id, "echo prefixed");
    assert_eq!(v["data"]["stdout"], "prefixed\n");
    assert_eq!(server.list_ids(), vec![id]);
}
