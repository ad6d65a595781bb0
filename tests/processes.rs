//! Background processes: start, list, logs (JSON with offsets and SSE), stdin, signals,
//! wait, wait-port, delete, and survival across a server restart.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn procs_path(id: &str) -> String {
    format!("/v1/sandboxes/{id}/processes")
}

fn proc_path(id: &str, pid: &str, route: &str) -> String {
    format!("/v1/sandboxes/{id}/processes/{pid}{route}")
}

/// `POST /v1/sandboxes/{id}/processes`; asserts 201 and returns the Process.
#[track_caller]
fn start(server: &Server, id: &str, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &procs_path(id), body);
    r.expect(201);
    let p = r.json();
    assert!(p["id"].is_string(), "process without id: {p}");
    p
}

#[track_caller]
fn get_proc(server: &Server, id: &str, pid: &str) -> Value {
    let r = server.request(Method::GET, &proc_path(id, pid, ""));
    r.expect(200);
    r.json()
}

#[track_caller]
fn proc_ids(server: &Server, id: &str) -> Vec<String> {
    let r = server.request(Method::GET, &procs_path(id));
    r.expect(200);
    let v = r.json();
    v["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes array: {v}"))
        .iter()
        .map(|p| p["id"].as_str().expect("process id").to_string())
        .collect()
}

/// `GET .../logs?stdout_offset=..&stderr_offset=..`; asserts 200.
#[track_caller]
fn logs(server: &Server, id: &str, pid: &str, out_off: u64, err_off: u64) -> Value {
    let r = server.request(
        Method::GET,
        &proc_path(
            id,
            pid,
            &format!("/logs?stdout_offset={out_off}&stderr_offset={err_off}"),
        ),
    );
    r.expect(200);
    let v = r.json();
    for key in ["stdout", "stderr"] {
        assert!(v[key].is_string(), "logs without {key}: {v}");
    }
    for key in ["stdout_offset", "stderr_offset"] {
        assert!(v[key].is_u64(), "logs without {key}: {v}");
    }
    v
}

/// Polls the logs from offset 0 (up to 10 s) until stdout contains `needle`.
#[track_caller]
fn wait_stdout(server: &Server, id: &str, pid: &str, needle: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = logs(server, id, pid, 0, 0);
        if v["stdout"].as_str().unwrap().contains(needle) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in the stdout of {pid} after 10 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[track_caller]
fn post(server: &Server, id: &str, pid: &str, route: &str, body: &Value) -> Resp {
    server.request_json(Method::POST, &proc_path(id, pid, route), body)
}

/// `POST .../wait`; asserts 200 and returns the Process.
#[track_caller]
fn wait(server: &Server, id: &str, pid: &str, timeout_ms: u64) -> Value {
    let r = post(
        server,
        id,
        pid,
        "/wait",
        &json!({ "timeout_ms": timeout_ms }),
    );
    r.expect(200);
    r.json()
}

/// Waits (up to 10 s) for the process to exit and returns it.
#[track_caller]
fn wait_exited(server: &Server, id: &str, pid: &str) -> Value {
    let p = wait(server, id, pid, 10_000);
    assert_eq!(p["status"], "exited", "still running after 10 s: {p}");
    p
}

#[test]
fn start_list_get() {
    let server = Server::start();
    let id = server.new_sandbox();
    let before = now_unix();
    let web = start(
        &server,
        &id,
        &json!({ "id": "web", "command": "sleep 1000" }),
    );
    assert_eq!(web["id"], "web", "{web}");
    assert_eq!(web["status"], "running", "{web}");
    assert!(web["exit_code"].is_null(), "{web}");
    assert!(web["exited_at"].is_null(), "{web}");
    assert_eq!(web["cwd"], "/workspace", "{web}");
    let cmd = web["command"]
        .as_array()
        .unwrap_or_else(|| panic!("command is not an array: {web}"));
    assert_eq!(cmd.last(), Some(&json!("sleep 1000")), "{web}");
    assert!(cmd.contains(&json!("-c")), "{web}");
    let started = web["started_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap_or_else(|| panic!("bad started_at: {web}"));
    assert!(
        (before - 5.0..now_unix() + 5.0).contains(&started),
        "started_at far from now: {web}"
    );
    let pid = web["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {web}"));
    let procs = server.processes(&id);
    assert!(
        procs.iter().any(|p| u64::from(p.pid) == pid),
        "pid {pid} is not a process of the sandbox: {procs:?}"
    );

    let anon = start(&server, &id, &json!({ "argv": ["sleep", "1001"] }));
    let gen = anon["id"].as_str().unwrap().to_string();
    assert!(
        gen.len() == 10
            && gen.starts_with("p-")
            && gen[2..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "generated id {gen:?} is not `p-` + 8 characters"
    );
    assert_eq!(anon["command"], json!(["sleep", "1001"]), "{anon}");
    let other = start(&server, &id, &json!({ "argv": ["sleep", "1002"] }));
    assert_ne!(other["id"], anon["id"], "two generated ids are equal");
    server.wait_for_process(&id, "sleep 1001");

    let mut ids = proc_ids(&server, &id);
    ids.sort();
    let mut want = vec![
        "web".to_string(),
        gen.clone(),
        other["id"].as_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(ids, want);

    let got = get_proc(&server, &id, "web");
    for key in ["id", "pid", "command", "cwd", "status", "started_at"] {
        assert_eq!(got[key], web[key], "{key} differs: {got} vs {web}");
    }
    assert_eq!(get_proc(&server, &id, &gen)["command"], anon["command"]);

    // Duplicate id.
    server
        .request_json(
            Method::POST,
            &procs_path(&id),
            &json!({ "id": "web", "command": "true" }),
        )
        .expect_error(409, "already_exists");
    // Ids follow the sandbox id rules.
    server
        .request_json(
            Method::POST,
            &procs_path(&id),
            &json!({ "id": "bad id!", "command": "true" }),
        )
        .expect_error(400, "invalid_id");
    // Exactly one of command and argv.
    server
        .request_json(Method::POST, &procs_path(&id), &json!({ "cwd": "/" }))
        .expect_error(400, "bad_request");
    server
        .request_json(
            Method::POST,
            &procs_path(&id),
            &json!({ "command": "true", "argv": ["true"] }),
        )
        .expect_error(400, "bad_request");
    // A sandbox that does not exist.
    server
        .request_json(
            Method::POST,
            &procs_path("no-such-sandbox"),
            &json!({ "command": "true" }),
        )
        .expect_error(404, "not_found");
}

#[test]
fn cwd_and_env() {
    let server = Server::start();
    let sb = server.create(&json!({ "env": { "SB": "from-sandbox", "V": "sandbox" } }));
    let id = sb["id"].as_str().unwrap().to_string();
    let p = start(
        &server,
        &id,
        &json!({
            "id": "envy",
            "command": "pwd; printf '%s|%s\\n' \"$SB\" \"$V\"",
            "cwd": "/tmp",
            "env": { "V": "process" }
        }),
    );
    assert_eq!(p["cwd"], "/tmp", "{p}");
    let done = wait_exited(&server, &id, "envy");
    assert_eq!(done["exit_code"], 0, "{done}");
    let l = logs(&server, &id, "envy", 0, 0);
    assert_eq!(l["stdout"], "/tmp\nfrom-sandbox|process\n", "{l}");
}

#[test]
fn unknown_process_is_404() {
    let server = Server::start();
    let id = server.new_sandbox();
    let nope = "nope";
    server
        .request(Method::GET, &proc_path(&id, nope, ""))
        .expect_error(404, "not_found");
    server
        .request(Method::GET, &proc_path(&id, nope, "/logs"))
        .expect_error(404, "not_found");
    post(&server, &id, nope, "/stdin", &json!({ "data": "x" })).expect_error(404, "not_found");
    post(
        &server,
        &id,
        nope,
        "/signal",
        &json!({ "signal": "SIGTERM" }),
    )
    .expect_error(404, "not_found");
    post(&server, &id, nope, "/wait", &json!({ "timeout_ms": 100 })).expect_error(404, "not_found");
    post(
        &server,
        &id,
        nope,
        "/wait-port",
        &json!({ "port": 8000, "timeout_ms": 100 }),
    )
    .expect_error(404, "not_found");
    server
        .request(Method::DELETE, &proc_path(&id, nope, ""))
        .expect_error(404, "not_found");
    server
        .request(Method::GET, &proc_path("no-such-sandbox", nope, ""))
        .expect_error(404, "not_found");
}

#[test]
fn logs_resume_from_offsets() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({
            "id": "talker",
            "command": "echo line1; echo line2; echo line3; echo e1 >&2; read x; echo \"after-$x\"; echo e2 >&2"
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let v = logs(&server, &id, "talker", 0, 0);
        if v["stdout"] == "line1\nline2\nline3\n" && v["stderr"] == "e1\n" {
            break v;
        }
        assert!(Instant::now() < deadline, "first output not complete: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(first["stdout_offset"], 18, "{first}");
    assert_eq!(first["stderr_offset"], 3, "{first}");
    assert_eq!(first["status"], "running", "{first}");
    assert!(first["exit_code"].is_null(), "{first}");

    // Nothing new yet.
    let same = logs(&server, &id, "talker", 18, 3);
    assert_eq!(
        (&same["stdout"], &same["stderr"]),
        (&json!(""), &json!("")),
        "{same}"
    );
    assert_eq!(
        (&same["stdout_offset"], &same["stderr_offset"]),
        (&json!(18), &json!(3)),
        "{same}"
    );

    post(&server, &id, "talker", "/stdin", &json!({ "data": "go\n" })).expect(204);
    // Follow from the returned offsets until the process exited and everything was read.
    let (mut out, mut err) = (String::new(), String::new());
    let (mut out_off, mut err_off) = (18, 3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = logs(&server, &id, "talker", out_off, err_off);
        out.push_str(v["stdout"].as_str().unwrap());
        err.push_str(v["stderr"].as_str().unwrap());
        out_off = v["stdout_offset"].as_u64().unwrap();
        err_off = v["stderr_offset"].as_u64().unwrap();
        if v["status"] == "exited" && out == "after-go\n" && err == "e2\n" {
            assert_eq!(v["exit_code"], 0, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new output incomplete: stdout {out:?}, stderr {err:?}, last {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((out_off, err_off), (27, 6));

    let all = logs(&server, &id, "talker", 0, 0);
    assert_eq!(all["stdout"], "line1\nline2\nline3\nafter-go\n", "{all}");
    assert_eq!(all["stderr"], "e1\ne2\n", "{all}");
    let mid = logs(&server, &id, "talker", 6, 3);
    assert_eq!(mid["stdout"], "line2\nline3\nafter-go\n", "{mid}");
    assert_eq!(mid["stderr"], "e2\n", "{mid}");
    assert_eq!(mid["stdout_offset"], 27, "{mid}");
    // Without offsets: from the start.
    let r = server.request(Method::GET, &proc_path(&id, "talker", "/logs"));
    r.expect(200);
    assert_eq!(r.json()["stdout"], all["stdout"]);
}

/// Concatenated `data` of the stdout and stderr events.
fn sse_output(events: &[SseEvent]) -> (String, String) {
    let (mut out, mut err) = (String::new(), String::new());
    for e in events {
        let chunk = || e.data["data"].as_str().unwrap_or_else(|| panic!("{e:?}"));
        match e.name.as_str() {
            "stdout" => out.push_str(chunk()),
            "stderr" => err.push_str(chunk()),
            _ => {}
        }
    }
    (out, err)
}

#[test]
fn sse_log_stream_follows_the_process() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({
            "id": "streamer",
            "command": "echo one; read x; echo \"two-$x\"; echo err >&2; exit 5"
        }),
    );
    let mut stream = SseStream::open(
        server
            .req(
                Method::GET,
                &proc_path(&id, "streamer", "/logs?stdout_offset=0&stderr_offset=0"),
            )
            .timeout(Duration::from_secs(60)),
    );
    // `one` arrives while the process still waits for its input.
    let mut events = Vec::new();
    loop {
        let e = stream
            .next_event()
            .unwrap_or_else(|| panic!("stream ended early: {events:?}"));
        assert_ne!(e.name, "exit", "exit before the input was sent: {events:?}");
        events.push(e);
        if sse_output(&events).0 == "one\n" {
            break;
        }
    }
    assert_eq!(get_proc(&server, &id, "streamer")["status"], "running");

    post(
        &server,
        &id,
        "streamer",
        "/stdin",
        &json!({ "data": "go\n" }),
    )
    .expect(204);
    while let Some(e) = stream.next_event() {
        events.push(e);
    }
    let last = events.last().unwrap();
    assert_eq!(last.name, "exit", "{events:?}");
    assert_eq!(last.data["exit_code"], 5, "{events:?}");
    assert_eq!(
        events.iter().filter(|e| e.name == "exit").count(),
        1,
        "{events:?}"
    );
    let (out, err) = sse_output(&events);
    assert_eq!(out, "one\ntwo-go\n", "{events:?}");
    assert_eq!(err, "err\n", "{events:?}");
    // Offsets grow with the data.
    let mut prev = 0;
    for e in events.iter().filter(|e| e.name == "stdout") {
        let off = e.data["offset"]
            .as_u64()
            .unwrap_or_else(|| panic!("stdout event without offset: {e:?}"));
        assert!(off >= prev, "offsets go backwards: {events:?}");
        prev = off;
    }
    assert!(prev >= 4, "{events:?}");

    // From an offset, on an exited process: only the rest, then exit, then the end.
    let events = SseStream::open(
        server
            .req(
                Method::GET,
                &proc_path(&id, "streamer", "/logs?stdout_offset=4&stderr_offset=4"),
            )
            .timeout(Duration::from_secs(30)),
    )
    .collect_all();
    let (out, err) = sse_output(&events);
    assert_eq!(out, "two-go\n", "{events:?}");
    assert_eq!(err, "", "{events:?}");
    assert_eq!(
        events
            .last()
            .map(|e| (e.name.as_str(), e.data["exit_code"].clone())),
        Some(("exit", json!(5))),
        "{events:?}"
    );
}

#[test]
fn sse_log_stream_delivers_lines_as_they_come() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "ticker", "command": "for i in 1 2; do echo tick$i; sleep 1; done" }),
    );
    let events = SseStream::open(
        server
            .req(Method::GET, &proc_path(&id, "ticker", "/logs"))
            .timeout(Duration::from_secs(60)),
    )
    .collect_all();
    let (out, _) = sse_output(&events);
    assert_eq!(out, "tick1\ntick2\n", "{events:?}");
    let exit = events.last().expect("events");
    assert_eq!(exit.name, "exit", "{events:?}");
    assert_eq!(exit.data["exit_code"], 0, "{events:?}");
    let first = events
        .iter()
        .find(|e| e.name == "stdout")
        .expect("a stdout event");
    assert!(
        exit.at.duration_since(first.at) >= Duration::from_millis(1500),
        "first line came only {:?} before exit: not streamed",
        exit.at.duration_since(first.at)
    );
}

#[test]
fn stdin_and_eof() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(&server, &id, &json!({ "id": "cat", "argv": ["cat"] }));
    post(&server, &id, "cat", "/stdin", &json!({ "data": "hello\n" })).expect(204);
    wait_stdout(&server, &id, "cat", "hello\n");
    assert_eq!(get_proc(&server, &id, "cat")["status"], "running");
    post(
        &server,
        &id,
        "cat",
        "/stdin",
        &json!({ "data": "world\n", "eof": true }),
    )
    .expect(204);
    let done = wait_exited(&server, &id, "cat");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(logs(&server, &id, "cat", 0, 0)["stdout"], "hello\nworld\n");
    post(&server, &id, "cat", "/stdin", &json!({ "data": "late\n" }))
        .expect_error(409, "not_running");

    start(
        &server,
        &id,
        &json!({ "id": "reader", "command": "read line; echo \"got $line\"" }),
    );
    post(
        &server,
        &id,
        "reader",
        "/stdin",
        &json!({ "data": "hello\n", "eof": true }),
    )
    .expect(204);
    let done = wait_exited(&server, &id, "reader");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(logs(&server, &id, "reader", 0, 0)["stdout"], "got hello\n");
}

#[test]
fn signals_by_name_and_number() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "a", "argv": ["sleep", "1000"] }),
    );
    start(
        &server,
        &id,
        &json!({ "id": "b", "argv": ["sleep", "1001"] }),
    );
    start(
        &server,
        &id,
        &json!({ "id": "k", "argv": ["sleep", "1002"] }),
    );
    start(
        &server,
        &id,
        &json!({
            "id": "trap",
            "command": "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done"
        }),
    );
    wait_stdout(&server, &id, "trap", "ready\n");

    post(
        &server,
        &id,
        "a",
        "/signal",
        &json!({ "signal": "SIGTERM" }),
    )
    .expect(204);
    let a = wait_exited(&server, &id, "a");
    assert_eq!(a["exit_code"], 143, "{a}");
    assert!(a["exited_at"].as_str().and_then(parse_utc).is_some(), "{a}");

    post(&server, &id, "b", "/signal", &json!({ "signal": 15 })).expect(204);
    assert_eq!(wait_exited(&server, &id, "b")["exit_code"], 143);

    post(
        &server,
        &id,
        "k",
        "/signal",
        &json!({ "signal": "SIGKILL" }),
    )
    .expect(204);
    assert_eq!(wait_exited(&server, &id, "k")["exit_code"], 137);

    post(
        &server,
        &id,
        "trap",
        "/signal",
        &json!({ "signal": "SIGTERM" }),
    )
    .expect(204);
    let t = wait_exited(&server, &id, "trap");
    assert_eq!(t["exit_code"], 3, "{t}");
    assert_eq!(
        logs(&server, &id, "trap", 0, 0)["stdout"],
        "ready\ngot-term\n"
    );
}

#[test]
fn signal_reaches_the_whole_tree() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({
            "id": "tree",
            "command": "sleep 1001 & sleep 1002 & setsid sleep 1003 & echo started; wait"
        }),
    );
    for c in ["sleep 1001", "sleep 1002", "sleep 1003"] {
        server.wait_for_process(&id, c);
    }
    post(
        &server,
        &id,
        "tree",
        "/signal",
        &json!({ "signal": "SIGKILL" }),
    )
    .expect(204);
    let p = wait_exited(&server, &id, "tree");
    assert_eq!(p["exit_code"], 137, "{p}");
    assert_processes_gone(&server, &id, &["sleep 1001", "sleep 1002", "sleep 1003"]);
}

#[test]
fn wait_returns_the_exit_or_times_out() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "short", "command": "sleep 1; exit 3" }),
    );
    let start_wait = Instant::now();
    let p = wait(&server, &id, "short", 30_000);
    assert_eq!(p["status"], "exited", "{p}");
    assert_eq!(p["exit_code"], 3, "{p}");
    assert!(
        start_wait.elapsed() < Duration::from_secs(15),
        "wait took {:?}",
        start_wait.elapsed()
    );
    let started = p["started_at"]
        .as_str()
        .and_then(parse_utc)
        .expect("started_at");
    let exited = p["exited_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap_or_else(|| panic!("bad exited_at: {p}"));
    assert!(exited >= started, "{p}");
    // Waiting again on an exited process answers at once with the same result.
    let again = wait(&server, &id, "short", 30_000);
    assert_eq!(again["exit_code"], 3);
    assert_eq!(get_proc(&server, &id, "short")["status"], "exited");

    // Without timeout_ms: the default (30 s); the process is already done.
    let r = post(&server, &id, "short", "/wait", &json!({}));
    r.expect(200);
    assert_eq!(r.json()["exit_code"], 3);

    start(
        &server,
        &id,
        &json!({ "id": "long", "argv": ["sleep", "1000"] }),
    );
    let t = Instant::now();
    let p = wait(&server, &id, "long", 500);
    let took = t.elapsed();
    assert_eq!(p["status"], "running", "{p}");
    assert!(p["exit_code"].is_null(), "{p}");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(10),
        "wait with timeout_ms 500 took {took:?}"
    );
}

#[test]
fn wait_port() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "web", "command": "python3 -m http.server 8123 --bind 127.0.0.1" }),
    );
    let r = post(
        &server,
        &id,
        "web",
        "/wait-port",
        &json!({ "port": 8123, "timeout_ms": 15000 }),
    );
    r.expect(200);
    assert_eq!(r.json(), json!({ "port": 8123, "ready": true }));
    let out = server.exec(
        &id,
        "python3 -c \"import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:8123/').status)\"",
    );
    assert_eq!(out.stdout, "200\n", "{out:?}");

    // A port nobody opens.
    let t = Instant::now();
    post(
        &server,
        &id,
        "web",
        "/wait-port",
        &json!({ "port": 8124, "timeout_ms": 500 }),
    )
    .expect_error(408, "timeout");
    assert!(
        t.elapsed() >= Duration::from_millis(400) && t.elapsed() < Duration::from_secs(10),
        "wait-port with timeout_ms 500 took {:?}",
        t.elapsed()
    );

    // A process that exits before opening the port.
    start(
        &server,
        &id,
        &json!({ "id": "quitter", "command": "sleep 1; exit 0" }),
    );
    let t = Instant::now();
    post(
        &server,
        &id,
        "quitter",
        "/wait-port",
        &json!({ "port": 8125, "timeout_ms": 20000 }),
    )
    .expect_error(409, "not_running");
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "not_running came after {:?}",
        t.elapsed()
    );
    // ... and one that has already exited.
    post(
        &server,
        &id,
        "quitter",
        "/wait-port",
        &json!({ "port": 8125, "timeout_ms": 20000 }),
    )
    .expect_error(409, "not_running");
}

#[test]
fn delete_kills_the_tree_and_forgets() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "doomed", "command": "sleep 1004 & echo out; sleep 1005" }),
    );
    server.wait_for_process(&id, "sleep 1004");
    server.wait_for_process(&id, "sleep 1005");
    wait_stdout(&server, &id, "doomed", "out\n");
    server
        .request(Method::DELETE, &proc_path(&id, "doomed", ""))
        .expect(204);
    assert_processes_gone(&server, &id, &["sleep 1004", "sleep 1005"]);
    server
        .request(Method::GET, &proc_path(&id, "doomed", ""))
        .expect_error(404, "not_found");
    server
        .request(Method::GET, &proc_path(&id, "doomed", "/logs"))
        .expect_error(404, "not_found");
    assert!(!proc_ids(&server, &id).contains(&"doomed".to_string()));
    server
        .request(Method::DELETE, &proc_path(&id, "doomed", ""))
        .expect_error(404, "not_found");
    // The id can be used again, with fresh logs.
    start(
        &server,
        &id,
        &json!({ "id": "doomed", "command": "echo second" }),
    );
    wait_exited(&server, &id, "doomed");
    assert_eq!(logs(&server, &id, "doomed", 0, 0)["stdout"], "second\n");
    // An exited process can be deleted too.
    server
        .request(Method::DELETE, &proc_path(&id, "doomed", ""))
        .expect(204);
    assert!(proc_ids(&server, &id).is_empty());
}

#[test]
fn processes_and_logs_survive_server_kill9() {
    let mut server = Server::start();
    let id = server.new_sandbox();
    let ticker = start(
        &server,
        &id,
        &json!({
            "id": "ticker",
            "command": "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.2; done"
        }),
    );
    start(
        &server,
        &id,
        &json!({ "id": "later", "command": "sleep 2; exit 4" }),
    );
    let before = wait_stdout(&server, &id, "ticker", "tick2\n");
    let offset = before["stdout_offset"].as_u64().unwrap();

    server.kill9();
    server.restart();

    let p = get_proc(&server, &id, "ticker");
    assert_eq!(p["status"], "running", "{p}");
    assert_eq!(p["pid"], ticker["pid"], "{p}");
    assert_eq!(p["started_at"], ticker["started_at"], "{p}");
    let mut ids = proc_ids(&server, &id);
    ids.sort();
    assert_eq!(ids, ["later", "ticker"]);
    let all = logs(&server, &id, "ticker", 0, 0);
    assert!(
        all["stdout"]
            .as_str()
            .unwrap()
            .starts_with("tick0\ntick1\ntick2\n"),
        "{all}"
    );
    // New lines keep coming after the restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = String::new();
    let mut off = offset;
    loop {
        let v = logs(&server, &id, "ticker", off, 0);
        seen.push_str(v["stdout"].as_str().unwrap());
        off = v["stdout_offset"].as_u64().unwrap();
        if seen.matches("tick").count() >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new output after the restart: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen.starts_with("tick"), "{seen:?}");

    // The restarted server still controls them.
    let later = wait_exited(&server, &id, "later");
    assert_eq!(later["exit_code"], 4, "{later}");
    post(
        &server,
        &id,
        "ticker",
        "/signal",
        &json!({ "signal": "SIGTERM" }),
    )
    .expect(204);
    assert_eq!(wait_exited(&server, &id, "ticker")["exit_code"], 143);
}

#[test]
fn stdin_still_works_after_server_kill9() {
    let mut server = Server::start();
    let id = server.new_sandbox();
    start(&server, &id, &json!({ "id": "cat", "argv": ["cat"] }));
    post(
        &server,
        &id,
        "cat",
        "/stdin",
        &json!({ "data": "before\n" }),
    )
    .expect(204);
    wait_stdout(&server, &id, "cat", "before\n");

    server.kill9();
    server.restart();

    let p = get_proc(&server, &id, "cat");
    assert_eq!(p["status"], "running", "the restart ended the process: {p}");
    post(
        &server,
        &id,
        "cat",
        "/stdin",
        &json!({ "data": "after\n", "eof": true }),
    )
    .expect(204);
    let done = wait_exited(&server, &id, "cat");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(logs(&server, &id, "cat", 0, 0)["stdout"], "before\nafter\n");
}

/// The `sandpit_log_followers` gauge (running log-follower tasks) from `/metrics`.
fn log_followers(server: &Server) -> f64 {
    let r = server.request(Method::GET, "/metrics");
    r.expect(200);
    r.text()
        .lines()
        .find_map(|l| l.strip_prefix("sandpit_log_followers "))
        .map_or(0.0, |v| v.trim().parse().unwrap_or(f64::NAN))
}

#[test]
fn a_log_follower_ends_when_its_client_leaves_a_silent_process() {
    let server = Server::start();
    let id = server.new_sandbox();
    start(
        &server,
        &id,
        &json!({ "id": "silent", "command": "sleep 1000" }),
    );
    assert_eq!(log_followers(&server), 0.0);
    {
        // A follow request on a process that never writes; the client reads the headers and
        // hangs up.
        use std::io::{BufRead, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        let path = proc_path(&id, "silent", "/logs");
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut status = String::new();
        std::io::BufReader::new(&conn)
            .read_line(&mut status)
            .expect("status line");
        assert!(status.contains(" 200 "), "{status}");
        // The follower runs while the client is connected.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log_followers(&server) != 1.0 {
            assert!(Instant::now() < deadline, "no follower counted");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Gone with its client, though the process never wrote anything.
    let deadline = Instant::now() + Duration::from_secs(30);
    while log_followers(&server) != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the follower outlived its client by 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        get_proc(&server, &id, "silent")["status"],
        "running",
        "the process lives on"
    );
}
