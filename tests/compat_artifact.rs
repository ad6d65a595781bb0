//! The `artifact` dialect (`/compat/artifact`): the Artifact Sandbox worker and its Python
//! client (`x-sandbox-id`, `/sandbox /session /run /file`). Replays the documented flows and
//! the client's calls (every call of its default `ExecutionSession` carries
//! `sessionId: "default"`), checks the answer shapes, sessions whose `cd`/`export` persist,
//! the file routes with their 404s, the 501 of mount-bucket, auth and `/v1` visibility.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = "/compat/artifact";

/// A request as the Python client sends it: `x-sandbox-id` when it has a sandbox, a JSON body
/// on POST/PUT, parameters on GET/DELETE.
fn call(
    server: &Server,
    method: Method,
    p: &str,
    sandbox: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let mut rb = server.req(method, &format!("{BASE}{p}"));
    if let Some(id) = sandbox {
        rb = rb.header("x-sandbox-id", id);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    server.send(rb)
}

#[track_caller]
fn ok(r: Resp) -> Value {
    r.expect(200);
    assert!(
        r.content_type.starts_with("application/json"),
        "{}",
        r.content_type
    );
    r.json()
}

#[track_caller]
fn assert_run(v: &Value, output: &str, exit_code: i64) {
    assert_keys(v, &["output", "error", "exitCode", "success"]);
    assert_eq!(v["output"], output, "{v}");
    assert_eq!(v["exitCode"], exit_code, "{v}");
    assert_eq!(v["success"], exit_code == 0, "{v}");
}

#[track_caller]
fn assert_session_answer(v: &Value, sid: &str) {
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["sessionId"], sid, "{v}");
    assert_iso_millis(&v["timestamp"]);
}

fn new_sandbox(server: &Server) -> String {
    let id = unique("art");
    let v = ok(call(
        server,
        Method::POST,
        "/sandbox",
        None,
        Some(json!({"sandboxId": id, "options": null})),
    ));
    assert_eq!(
        v,
        json!({"sandboxId": id, "created": true, "options": null})
    );
    id
}

#[test]
fn documented_workflow() {
    let server = Server::start();
    // 1. Create a sandbox without an id: one is generated.
    let v = ok(call(&server, Method::POST, "/sandbox", None, None));
    assert_keys(&v, &["sandboxId", "created", "options"]);
    assert_eq!(v["created"], true);
    let id = v["sandboxId"].as_str().unwrap().to_string();
    assert!(server.list_ids().contains(&id), "not a /v1 sandbox: {v}");

    // 2. Create a session with its own cwd (created if missing) and env.
    let v = ok(call(
        &server,
        Method::POST,
        "/session",
        Some(&id),
        Some(
            json!({"id": "my-session", "env": {"PYTHONPATH": "/workspace"}, "cwd": "/workspace/project"}),
        ),
    ));
    assert_keys(&v, &["success", "sessionId", "timestamp"]);
    assert_session_answer(&v, "my-session");

    // 3. Write a file in the session.
    let v = ok(call(
        &server,
        Method::PUT,
        "/file",
        Some(&id),
        Some(
            json!({"path": "/workspace/project/main.py", "content": "print('Hello, World!')", "sessionId": "my-session"}),
        ),
    ));
    assert_eq!(
        v,
        json!({"path": "/workspace/project/main.py", "length": 22})
    );

    // 4. Run it in the session: relative to the session's cwd, with its env.
    let v = ok(call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(
            json!({"command": "python3 main.py && pwd && echo $PYTHONPATH", "sessionId": "my-session"}),
        ),
    ));
    assert_run(&v, "Hello, World!\n/workspace/project\n/workspace\n", 0);
    assert_eq!(v["error"], "");

    // 4b. run-script, as in the API reference.
    let v = ok(call(
        &server,
        Method::POST,
        "/run-script",
        Some(&id),
        Some(
            json!({"script": "print(\"Hello, World!\")", "interpreter": "python3", "sessionId": "my-session"}),
        ),
    ));
    assert_eq!(v["output"], "Hello, World!\n");
    assert_eq!(v["interpreter"], "python3");
    let script = v["scriptPath"].as_str().unwrap();
    assert!(script.starts_with("/workspace/script-"), "{v}");
    let gone = ok(call(
        &server,
        Method::GET,
        &format!("/exists?path={}", enc(script)),
        Some(&id),
        None,
    ));
    assert_eq!(
        gone,
        json!({"exists": false}),
        "temporary script left behind"
    );

    // 5. Read the result.
    let v = ok(call(
        &server,
        Method::GET,
        "/file?path=/workspace/project/main.py",
        Some(&id),
        None,
    ));
    assert_eq!(
        v,
        json!({"path": "/workspace/project/main.py", "content": "print('Hello, World!')"})
    );

    // 6. Clean up: session, then sandbox.
    let v = ok(call(
        &server,
        Method::DELETE,
        "/session?id=my-session",
        Some(&id),
        None,
    ));
    assert_session_answer(&v, "my-session");
    let v = ok(call(
        &server,
        Method::DELETE,
        &format!("/sandbox?sandbox_id={id}"),
        None,
        None,
    ));
    assert_eq!(
        v,
        json!({"sandboxId": id, "destroyed": true, "existed": true})
    );
    assert!(!server.list_ids().contains(&id));
}

#[test]
fn readme_client_calls() {
    let server = Server::start();
    // SandboxManager.create_or_get_sandbox: POST /sandbox {sandboxId, options}, no header.
    let id = new_sandbox(&server);
    // ... twice is fine: the same sandbox.
    let v = ok(call(
        &server,
        Method::POST,
        "/sandbox",
        None,
        Some(json!({"sandboxId": id, "options": {"sleepAfter": "10m", "unknown": 1}})),
    ));
    assert_eq!(
        v,
        json!({"sandboxId": id, "created": true, "options": {"sleepAfter": "10m"}})
    );
    assert_eq!(server.list_ids(), vec![id.clone()]);
    assert_eq!(server.sandbox(&id)["keepalive_seconds"], 600);

    // Sandbox.run: the default session, `{"command", "sessionId": "default"}`.
    let v = ok(call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(json!({"command": "python3 -c \"print(2+2)\"", "sessionId": "default"})),
    ));
    assert_run(&v, "4\n", 0);
    assert_eq!(v["error"], "");
    let v = ok(call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(json!({"command": "echo err >&2; (exit 2)", "sessionId": "default"})),
    ));
    assert_run(&v, "", 2);
    assert_eq!(v["error"], "err\n");
    // The worker's GET /run connectivity check, with ?sandbox_id=.
    let v = ok(call(
        &server,
        Method::GET,
        &format!("/run?sandbox_id={id}"),
        None,
        None,
    ));
    assert_run(&v, "4\n", 0);

    // write / read / download / delete through the default session.
    let v = ok(call(
        &server,
        Method::PUT,
        "/file",
        Some(&id),
        Some(
            json!({"path": "/workspace/hello.txt", "content": "Hello, World! é😀", "sessionId": "default"}),
        ),
    ));
    // JavaScript's length: UTF-16 units.
    assert_eq!(v, json!({"path": "/workspace/hello.txt", "length": 17}));
    let v = ok(call(
        &server,
        Method::GET,
        "/file?path=/workspace/hello.txt&sessionId=default",
        Some(&id),
        None,
    ));
    assert_eq!(
        v,
        json!({"path": "/workspace/hello.txt", "content": "Hello, World! é😀"})
    );
    let bytes = pseudo_random_bytes(5000, 3);
    server.put_file(&id, "/workspace/data.bin", &bytes);
    let (r, headers) = server.send_with_headers(
        server
            .req(
                Method::GET,
                &format!("{BASE}/file?path=/workspace/data.bin&mode=download&sessionId=default"),
            )
            .header("x-sandbox-id", &id),
    );
    r.expect(200);
    assert_eq!(r.body, bytes);
    assert_eq!(
        headers["content-disposition"].to_str().unwrap(),
        "attachment; filename=\"data.bin\""
    );
    let v = ok(call(
        &server,
        Method::DELETE,
        "/file?path=/workspace/hello.txt&sessionId=default",
        Some(&id),
        None,
    ));
    assert_eq!(v, json!({"path": "/workspace/hello.txt", "deleted": true}));

    // mkdir / exists / rename / move.
    let v = ok(call(
        &server,
        Method::POST,
        "/mkdir",
        Some(&id),
        Some(json!({"path": "/workspace/data/a/b", "recursive": true, "sessionId": "default"})),
    ));
    assert_eq!(
        v,
        json!({"success": true, "path": "/workspace/data/a/b", "recursive": true, "sessionId": "default"})
    );
    let r = call(
        &server,
        Method::POST,
        "/mkdir",
        Some(&id),
        Some(json!({"path": "/workspace/x/y", "recursive": false})),
    );
    r.expect(404);
    assert!(r.json()["error"].is_string());
    for (p, exists) in [
        ("/workspace/data/a", true),
        ("/workspace/data.bin", true),
        ("/workspace/nope", false),
        ("/workspace/data.bin/inside", false),
    ] {
        let v = ok(call(
            &server,
            Method::GET,
            &format!("/exists?path={}&sessionId=default", enc(p)),
            Some(&id),
            None,
        ));
        assert_eq!(v, json!({ "exists": exists }), "{p}");
    }
    let v = ok(call(
        &server,
        Method::POST,
        "/rename",
        Some(&id),
        Some(
            json!({"oldPath": "/workspace/data.bin", "newPath": "/workspace/renamed.bin", "sessionId": "default"}),
        ),
    ));
    assert_eq!(
        v,
        json!({"success": true, "from": "/workspace/data.bin", "to": "/workspace/renamed.bin"})
    );
    let v = ok(call(
        &server,
        Method::POST,
        "/move",
        Some(&id),
        Some(
            json!({"sourcePath": "/workspace/renamed.bin", "destinationPath": "/workspace/archive/a.bin", "sessionId": "default"}),
        ),
    ));
    assert_eq!(
        v,
        json!({"success": true, "from": "/workspace/renamed.bin", "to": "/workspace/archive/a.bin"})
    );
    assert_eq!(server.get_file(&id, "/workspace/archive/a.bin"), bytes);

    // Sandbox.create_or_get_session: GET /session?id= → 404 → POST /session.
    let r = call(
        &server,
        Method::GET,
        "/session?id=user-123",
        Some(&id),
        None,
    );
    r.expect_dialect_error(404, "Session not found");
    let v = ok(call(
        &server,
        Method::POST,
        "/session",
        Some(&id),
        Some(json!({"id": "user-123"})),
    ));
    assert_session_answer(&v, "user-123");
    let v = ok(call(
        &server,
        Method::GET,
        "/session?id=user-123",
        Some(&id),
        None,
    ));
    assert_session_answer(&v, "user-123");
    // Creating it again answers the existing session.
    let v = ok(call(
        &server,
        Method::POST,
        "/session",
        Some(&id),
        Some(json!({"id": "user-123"})),
    ));
    assert_session_answer(&v, "user-123");
    assert_eq!(v["message"], "Session 'user-123' already exists");
    // Sandbox.delete_session: DELETE /session {sessionId}.
    let v = ok(call(
        &server,
        Method::DELETE,
        "/session",
        Some(&id),
        Some(json!({"sessionId": "user-123"})),
    ));
    assert_session_answer(&v, "user-123");
    call(
        &server,
        Method::GET,
        "/session?id=user-123",
        Some(&id),
        None,
    )
    .expect_dialect_error(404, "Session not found");

    // SandboxManager.destroy_sandbox: DELETE /sandbox?sandbox_id= with the header.
    let v = ok(call(
        &server,
        Method::DELETE,
        &format!("/sandbox?sandbox_id={id}"),
        Some(&id),
        None,
    ));
    assert_eq!(
        v,
        json!({"sandboxId": id, "destroyed": true, "existed": true})
    );
}

#[test]
fn sessions_keep_cwd_and_env_apart() {
    let server = Server::start();
    let id = new_sandbox(&server);
    let run = |session: Option<&str>, command: &str| -> Value {
        let mut body = json!({ "command": command });
        if let Some(s) = session {
            body["sessionId"] = s.into();
        }
        ok(call(&server, Method::POST, "/run", Some(&id), Some(body)))
    };
    for sid in ["s1", "s2"] {
        let v = ok(call(
            &server,
            Method::POST,
            "/session",
            Some(&id),
            Some(json!({"id": sid, "cwd": format!("/workspace/{sid}"), "env": {"WHO": sid}})),
        ));
        assert_session_answer(&v, sid);
    }
    assert_run(&run(Some("s1"), "cd /tmp && export FOO=one"), "", 0);
    assert_run(&run(Some("s1"), "pwd; echo $FOO $WHO"), "/tmp\none s1\n", 0);
    assert_run(
        &run(Some("s2"), "pwd; echo ${FOO:-unset} $WHO"),
        "/workspace/s2\nunset s2\n",
        0,
    );
    // No sessionId is the default session, which keeps its own state too.
    assert_run(&run(None, "cd /etc && export BAR=d"), "", 0);
    assert_run(
        &run(Some("default"), "pwd; echo $BAR ${FOO:-unset}"),
        "/etc\nd unset\n",
        0,
    );
    // An unknown session, and the default one that cannot be deleted.
    call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(json!({"command": "true", "sessionId": "ghost"})),
    )
    .expect_dialect_error(404, "Session not found");
    call(
        &server,
        Method::DELETE,
        "/session?id=default",
        Some(&id),
        None,
    )
    .expect(400);
    call(
        &server,
        Method::DELETE,
        "/session?id=ghost",
        Some(&id),
        None,
    )
    .expect_dialect_error(404, "Session or sandbox not found");
    // Sessions are native sessions.
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/sessions/s1"));
    r.expect(200);
    assert_eq!(r.json()["cwd"], "/tmp");
}

#[test]
fn sandbox_id_sources_and_errors() {
    let server = Server::start();
    let id = new_sandbox(&server);
    let missing = "Missing sandbox id. Provide x-sandbox-id header or ?sandbox_id=";
    for (method, p, body) in [
        (Method::POST, "/run", Some(json!({"command": "true"}))),
        (Method::POST, "/session", Some(json!({}))),
        (Method::GET, "/session?id=x", None),
        (Method::DELETE, "/session?id=x", None),
        (
            Method::PUT,
            "/file",
            Some(json!({"path": "/a", "content": ""})),
        ),
        (Method::GET, "/file?path=/a", None),
        (Method::DELETE, "/file?path=/a", None),
        (Method::POST, "/mkdir", Some(json!({"path": "/a"}))),
        (Method::GET, "/exists?path=/a", None),
        (
            Method::POST,
            "/rename",
            Some(json!({"oldPath": "/a", "newPath": "/b"})),
        ),
        (
            Method::POST,
            "/move",
            Some(json!({"sourcePath": "/a", "destinationPath": "/b"})),
        ),
    ] {
        call(&server, method, p, None, body).expect_dialect_error(400, missing);
    }
    // ?sandbox_id= works; the header wins over it.
    let v = ok(call(
        &server,
        Method::POST,
        &format!("/run?sandbox_id={id}"),
        None,
        Some(json!({"command": "echo q"})),
    ));
    assert_run(&v, "q\n", 0);
    let v = ok(call(
        &server,
        Method::POST,
        "/run?sandbox_id=ghost",
        Some(&id),
        Some(json!({"command": "echo h"})),
    ));
    assert_run(&v, "h\n", 0);

    // Missing or blank command, missing paths.
    for body in [json!({}), json!({"command": "   "}), json!({"command": 5})] {
        call(&server, Method::POST, "/run", Some(&id), Some(body))
            .expect_dialect_error(400, "POST /run expects JSON body { \"command\": \"...\" }");
    }
    call(
        &server,
        Method::PUT,
        "/file",
        Some(&id),
        Some(json!({"content": "x"})),
    )
    .expect_dialect_error(
        400,
        "PUT /file expects JSON body { \"path\": \"...\", \"content\": \"...\" }",
    );
    call(&server, Method::GET, "/exists", Some(&id), None)
        .expect_dialect_error(400, "GET /exists requires ?path=/workspace/file.txt");
    call(
        &server,
        Method::POST,
        "/rename",
        Some(&id),
        Some(json!({"oldPath": "/a"})),
    )
    .expect(400);

    // Missing files.
    for (method, p) in [
        (Method::GET, "/file?path=/workspace/none.txt"),
        (Method::GET, "/file?path=/workspace/none.txt&mode=download"),
        (Method::DELETE, "/file?path=/workspace/none.txt"),
    ] {
        call(&server, method, p, Some(&id), None)
            .expect_dialect_error(404, "File not found: /workspace/none.txt");
    }
    call(
        &server,
        Method::POST,
        "/rename",
        Some(&id),
        Some(json!({"oldPath": "/workspace/none.txt", "newPath": "/workspace/b"})),
    )
    .expect_dialect_error(404, "File not found: /workspace/none.txt");

    // Paths are made absolute and `//` collapsed, as the worker did.
    let v = ok(call(
        &server,
        Method::PUT,
        "/file",
        Some(&id),
        Some(json!({"path": "workspace//rel.txt", "content": ""})),
    ));
    assert_eq!(v, json!({"path": "/workspace/rel.txt", "length": 0}));
    assert_eq!(server.get_file(&id, "/workspace/rel.txt"), b"");

    // Unknown sandboxes.
    call(
        &server,
        Method::POST,
        "/run",
        Some("ghost"),
        Some(json!({"command": "true"})),
    )
    .expect_dialect_error(404, "Sandbox not found or not initialized");
    let r = call(
        &server,
        Method::DELETE,
        "/sandbox?sandbox_id=ghost",
        None,
        None,
    );
    let v = r.expect_dialect_error(404, "Sandbox not found or already destroyed");
    assert_eq!(
        v,
        json!({"sandboxId": "ghost", "destroyed": false, "existed": false,
            "error": "Sandbox not found or already destroyed"})
    );
    call(&server, Method::DELETE, "/sandbox", None, None).expect_dialect_error(
        400,
        "DELETE /sandbox requires sandbox_id param, id in body, or x-sandbox-id header",
    );

    // Unknown routes and methods answer JSON errors.
    call(&server, Method::GET, "/nowhere", Some(&id), None).expect(404);
    call(&server, Method::PATCH, "/sandbox", None, None).expect(405);
}

#[test]
fn mount_bucket_is_not_supported() {
    let server = Server::start();
    let id = new_sandbox(&server);
    let r = call(
        &server,
        Method::POST,
        "/mount-bucket",
        Some(&id),
        Some(json!({"bucket": "my-r2-bucket", "mountPath": "/data",
            "options": {"endpoint": "https://example.r2.cloudflarestorage.com"}, "sessionId": "default"})),
    );
    r.expect(501);
    let message = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("not supported") && message.contains("mount"),
        "{message}"
    );
    let r = call(
        &server,
        Method::DELETE,
        "/unmount-bucket?mountPath=/data&sessionId=default",
        Some(&id),
        None,
    );
    r.expect(501);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("not supported"));
}

#[test]
fn keepalive_options_and_v1_visibility() {
    let server = Server::start();
    let id = unique("ka");
    ok(call(
        &server,
        Method::POST,
        "/sandbox",
        None,
        Some(json!({"id": id, "options": {"keepAlive": true}})),
    ));
    let sb = server.sandbox(&id);
    assert_eq!(sb["keepalive_seconds"], 0, "{sb}");
    assert!(sb["expires_at"].is_null(), "{sb}");
    let bad = call(
        &server,
        Method::POST,
        "/sandbox",
        None,
        Some(json!({"sandboxId": unique("bad"), "options": {"sleepAfter": "soon"}})),
    );
    bad.expect(400);
    // A native sandbox is reachable through the dialect, and a dialect one through /v1.
    let native = server.new_sandbox();
    server.put_file(&native, "/workspace/n.txt", b"native");
    let v = ok(call(
        &server,
        Method::GET,
        "/file?path=/workspace/n.txt",
        Some(&native),
        None,
    ));
    assert_eq!(v["content"], "native");
    ok(call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(json!({"command": "echo d > /workspace/d.txt"})),
    ));
    assert_eq!(server.get_file(&id, "/workspace/d.txt"), b"d\n");
}

#[test]
fn token_is_required() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let token = server.token.clone().unwrap();
    for (method, p) in [
        (Method::POST, "/sandbox"),
        (Method::DELETE, "/sandbox?sandbox_id=x"),
        (Method::POST, "/session"),
        (Method::POST, "/run"),
        (Method::PUT, "/file"),
        (Method::GET, "/file?path=/a"),
        (Method::POST, "/mount-bucket"),
    ] {
        for auth in [None, Some(format!("Bearer {token}x"))] {
            let mut rb = server
                .req_anon(method.clone(), &format!("{BASE}{p}"))
                .header("x-sandbox-id", "x")
                .json(&json!({"command": "true"}));
            if let Some(a) = auth.clone() {
                rb = rb.header("Authorization", a);
            }
            let r = server.send(rb);
            assert_eq!(r.status, 401, "{method} {p} with {auth:?}: {}", r.text());
            assert!(r.json()["error"]
                .as_str()
                .unwrap()
                .starts_with("Unauthorized"));
        }
    }
    assert!(server.list_ids().is_empty());
    let id = new_sandbox(&server);
    let v = ok(call(
        &server,
        Method::POST,
        "/run",
        Some(&id),
        Some(json!({"command": "echo ok"})),
    ));
    assert_run(&v, "ok\n", 0);
}
