//! Sessions: long-lived shells in a sandbox. `cd`, `export`, variables, functions and
//! aliases persist between the commands of one session; each command keeps its own
//! output, exit code and timeout.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn sessions_path(id: &str) -> String {
    format!("/v1/sandboxes/{id}/sessions")
}

/// `POST /v1/sandboxes/{id}/sessions`; asserts 201 and returns the Session.
#[track_caller]
fn create_session(server: &Server, id: &str, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &sessions_path(id), body);
    r.expect(201);
    r.json()
}

/// `GET /v1/sandboxes/{id}/sessions/{sid}`; asserts 200.
#[track_caller]
fn get_session(server: &Server, id: &str, sid: &str) -> Value {
    let r = server.request(Method::GET, &format!("{}/{sid}", sessions_path(id)));
    r.expect(200);
    r.json()
}

/// Ids from `GET /v1/sandboxes/{id}/sessions`.
#[track_caller]
fn session_ids(server: &Server, id: &str) -> Vec<String> {
    let r = server.request(Method::GET, &sessions_path(id));
    r.expect(200);
    let v = r.json();
    v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array: {v}"))
        .iter()
        .map(|s| {
            s["id"]
                .as_str()
                .unwrap_or_else(|| panic!("session without id: {v}"))
                .to_string()
        })
        .collect()
}

/// Runs shell text in session `sid`; asserts 200.
#[track_caller]
fn sexec(server: &Server, id: &str, sid: &str, command: &str) -> ExecResult {
    server.exec_json(id, &json!({ "command": command, "session": sid }))
}

/// Runs shell text in session `sid`, asserts exit 0 and no timeout, returns stdout.
#[track_caller]
fn srun(server: &Server, id: &str, sid: &str, command: &str) -> String {
    let r = sexec(server, id, sid, command);
    assert!(
        r.exit_code == 0 && !r.timed_out,
        "`{command}` failed in session {sid}: {r:?}"
    );
    r.stdout
}

#[test]
fn create_list_get_delete() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert!(session_ids(&server, &id).is_empty());

    let before = now_unix();
    let s1 = create_session(&server, &id, &json!({ "id": "s1" }));
    assert_eq!(s1["id"], "s1", "{s1}");
    assert_eq!(s1["cwd"], "/workspace", "{s1}");
    let pid = s1["pid"].as_u64().unwrap_or_else(|| panic!("no pid: {s1}"));
    let created = s1["created_at"]
        .as_str()
        .and_then(parse_utc)
        .unwrap_or_else(|| panic!("bad created_at: {s1}"));
    assert!(
        (before - 5.0..now_unix() + 5.0).contains(&created),
        "created_at far from now: {s1}"
    );
    // The shell's pid is a process of the sandbox.
    let procs = server.processes(&id);
    assert!(
        procs.iter().any(|p| u64::from(p.pid) == pid),
        "session pid {pid} is not running in the sandbox: {procs:?}"
    );

    server
        .request_json(Method::POST, &sessions_path(&id), &json!({ "id": "s1" }))
        .expect_error(409, "already_exists");

    let s2 = create_session(&server, &id, &json!({ "id": "s2", "cwd": "/tmp" }));
    assert_eq!(s2["cwd"], "/tmp", "{s2}");
    let generated = create_session(&server, &id, &json!({}));
    let gid = generated["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no generated id: {generated}"))
        .to_string();
    assert!(!gid.is_empty() && gid != "s1" && gid != "s2", "{generated}");

    let mut ids = session_ids(&server, &id);
    ids.sort();
    let mut want = vec!["s1".to_string(), "s2".to_string(), gid.clone()];
    want.sort();
    assert_eq!(ids, want);

    let got = get_session(&server, &id, "s1");
    assert_eq!(got["id"], "s1");
    assert_eq!(got["pid"], s1["pid"]);
    assert_eq!(got["created_at"], s1["created_at"]);
    assert_eq!(get_session(&server, &id, "s2")["cwd"], "/tmp");
    assert_eq!(get_session(&server, &id, &gid)["id"], gid.as_str());

    // `cwd` is the shell's current directory, read when asked.
    srun(
        &server,
        &id,
        "s1",
        "mkdir -p /workspace/app && cd /workspace/app",
    );
    assert_eq!(get_session(&server, &id, "s1")["cwd"], "/workspace/app");

    server
        .request(Method::GET, &format!("{}/nope", sessions_path(&id)))
        .expect_error(404, "not_found");

    server
        .request(Method::DELETE, &format!("{}/s1", sessions_path(&id)))
        .expect(204);
    server
        .request(Method::GET, &format!("{}/s1", sessions_path(&id)))
        .expect_error(404, "not_found");
    server
        .request(Method::DELETE, &format!("{}/s1", sessions_path(&id)))
        .expect_error(404, "not_found");
    let mut ids = session_ids(&server, &id);
    ids.sort();
    let mut want = vec!["s2".to_string(), gid.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_pid_gone(&server, &id, pid as u32);

    // The id is free again.
    let again = create_session(&server, &id, &json!({ "id": "s1" }));
    assert_eq!(again["id"], "s1");

    // Sessions of a sandbox that does not exist.
    server
        .request(Method::GET, &sessions_path("no-such-sandbox"))
        .expect_error(404, "not_found");
    server
        .request_json(
            Method::POST,
            &sessions_path("no-such-sandbox"),
            &json!({ "id": "x" }),
        )
        .expect_error(404, "not_found");
}

#[test]
fn cd_export_and_shell_state_persist() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));

    srun(
        &server,
        &id,
        "s",
        "mkdir -p /workspace/app/sub && cd /workspace/app",
    );
    assert_eq!(srun(&server, &id, "s", "pwd"), "/workspace/app\n");
    srun(&server, &id, "s", "cd sub");
    assert_eq!(srun(&server, &id, "s", "pwd"), "/workspace/app/sub\n");

    srun(&server, &id, "s", "export FOO='bar baz'");
    assert_eq!(srun(&server, &id, "s", "printf %s \"$FOO\""), "bar baz");
    // Exported: child processes see it too.
    assert_eq!(
        srun(
            &server,
            &id,
            "s",
            "python3 -c 'import os; print(os.environ[\"FOO\"])'"
        ),
        "bar baz\n"
    );

    srun(&server, &id, "s", "X=42");
    assert_eq!(srun(&server, &id, "s", "echo \"x=$X\""), "x=42\n");
    // Not exported: a child process does not see it.
    assert_eq!(
        srun(&server, &id, "s", "bash -c 'printf %s \"${X-unset}\"'"),
        "unset"
    );

    srun(&server, &id, "s", "greet() { echo \"hello $1\"; }");
    assert_eq!(srun(&server, &id, "s", "greet bob"), "hello bob\n");

    srun(&server, &id, "s", "alias ll='echo aliased'");
    assert_eq!(srun(&server, &id, "s", "ll"), "aliased\n");

    // Plain exec without a session stays stateless.
    assert_eq!(server.run_ok(&id, "pwd"), "/workspace\n");
    assert_eq!(server.run_ok(&id, "printf %s \"${FOO-unset}\""), "unset");
    assert_eq!(server.run_ok(&id, "printf %s \"${X-unset}\""), "unset");
    let r = server.exec(&id, "greet bob");
    assert_eq!(r.exit_code, 127, "function leaked into a plain exec: {r:?}");
    server.run_ok(&id, "cd /tmp && export BAR=1");
    assert_eq!(server.run_ok(&id, "pwd"), "/workspace\n");
    assert_eq!(server.run_ok(&id, "printf %s \"${BAR-unset}\""), "unset");
    // ... and does not disturb the session.
    assert_eq!(
        srun(&server, &id, "s", "pwd; printf %s \"$FOO|${BAR-unset}\""),
        "/workspace/app/sub\nbar baz|unset"
    );
}

#[test]
fn sessions_are_isolated() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "one" }));
    create_session(&server, &id, &json!({ "id": "two" }));

    srun(
        &server,
        &id,
        "one",
        "cd /tmp && export WHO=one && ONLY1=yes",
    );
    assert_eq!(
        srun(
            &server,
            &id,
            "two",
            "pwd; printf %s \"${WHO-unset}|${ONLY1-unset}\""
        ),
        "/workspace\nunset|unset"
    );
    srun(&server, &id, "two", "cd / && export WHO=two");
    assert_eq!(
        srun(&server, &id, "one", "pwd; printf %s \"$WHO|$ONLY1\""),
        "/tmp\none|yes"
    );
    assert_eq!(
        srun(&server, &id, "two", "pwd; printf %s \"$WHO\""),
        "/\ntwo"
    );
    assert_ne!(
        get_session(&server, &id, "one")["pid"],
        get_session(&server, &id, "two")["pid"],
        "two sessions share a shell"
    );
}

#[test]
fn default_session_is_created_on_first_use() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert!(
        !session_ids(&server, &id).contains(&"default".to_string()),
        "default session exists before use"
    );
    server
        .request(Method::GET, &format!("{}/default", sessions_path(&id)))
        .expect_error(404, "not_found");

    srun(&server, &id, "default", "cd /tmp && export D=kept");
    assert!(session_ids(&server, &id).contains(&"default".to_string()));
    let s = get_session(&server, &id, "default");
    assert_eq!(s["id"], "default", "{s}");
    assert_eq!(s["cwd"], "/tmp", "{s}");
    assert_eq!(
        srun(&server, &id, "default", "pwd; printf %s \"$D\""),
        "/tmp\nkept"
    );

    // Only `default` springs into existence: another unknown session is not created.
    server
        .exec_resp(
            &id,
            &json!({ "command": "true", "session": "no-such-session" }),
        )
        .expect_error(404, "not_found");
    assert!(!session_ids(&server, &id).contains(&"no-such-session".to_string()));
}

#[test]
fn env_precedence_sandbox_session_command() {
    let server = Server::start();
    let sb = server.create(&json!({ "env": { "A": "sandbox", "B": "sandbox", "C": "sandbox" } }));
    let id = sb["id"].as_str().expect("id").to_string();
    create_session(
        &server,
        &id,
        &json!({ "id": "s", "env": { "B": "session", "C": "session" } }),
    );
    const SHOW: &str = "printf '%s %s %s' \"$A\" \"$B\" \"$C\"";
    let r = server.exec_json(
        &id,
        &json!({ "command": SHOW, "session": "s", "env": { "C": "command" } }),
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.stdout, "sandbox session command");
    // The command's env applied to that command only.
    assert_eq!(srun(&server, &id, "s", SHOW), "sandbox session session");
    let r = server.exec_json(
        &id,
        &json!({ "command": "printf %s \"${ONCE-unset}\"", "session": "s", "env": { "ONCE": "1" } }),
    );
    assert_eq!(r.stdout, "1", "{r:?}");
    assert_eq!(
        srun(&server, &id, "s", "printf %s \"${ONCE-unset}\""),
        "unset"
    );
    // Child processes see the same environment.
    let r = server.exec_json(
        &id,
        &json!({ "command": "printenv A B C", "session": "s", "env": { "C": "command" } }),
    );
    assert_eq!(r.stdout, "sandbox\nsession\ncommand\n", "{r:?}");
    // Sessions without env of their own see the sandbox's.
    assert_eq!(
        srun(&server, &id, "default", SHOW),
        "sandbox sandbox sandbox"
    );
}

#[test]
fn command_cwd_applies_to_that_command_only() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s", "cwd": "/tmp" }));
    assert_eq!(srun(&server, &id, "s", "pwd"), "/tmp\n");
    let r = server.exec_json(
        &id,
        &json!({ "command": "pwd", "session": "s", "cwd": "/" }),
    );
    assert_eq!(r.stdout, "/\n", "{r:?}");
    assert_eq!(srun(&server, &id, "s", "pwd"), "/tmp\n");

    srun(&server, &id, "s", "cd /var");
    let r = server.exec_json(
        &id,
        &json!({ "command": "pwd; cd /etc; pwd", "session": "s", "cwd": "/" }),
    );
    assert_eq!(r.stdout, "/\n/etc\n", "{r:?}");
    // The session's own directory is restored after it.
    assert_eq!(srun(&server, &id, "s", "pwd"), "/var\n");
    assert_eq!(get_session(&server, &id, "s")["cwd"], "/var");
}

#[test]
fn output_does_not_leak_into_the_next_command() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    let r = sexec(
        &server,
        &id,
        "s",
        "(sleep 0.3; echo late; echo late-err >&2) & echo early",
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(r.stdout.starts_with("early\n"), "{r:?}");
    // The next command runs while the background job writes.
    let next = sexec(&server, &id, "s", "sleep 1; echo next");
    assert_eq!(next.stdout, "next\n", "output leaked: {next:?}");
    assert_eq!(next.stderr, "", "output leaked: {next:?}");
    let after = sexec(&server, &id, "s", "echo after");
    assert_eq!(after.stdout, "after\n", "output leaked: {after:?}");
    assert_eq!(after.stderr, "", "output leaked: {after:?}");
}

#[test]
fn each_command_has_its_own_exit_code_and_stderr() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    let r = sexec(&server, &id, "s", "echo out; echo err >&2; false");
    assert_eq!(r.exit_code, 1, "{r:?}");
    assert_eq!(r.stdout, "out\n");
    assert_eq!(r.stderr, "err\n");
    assert!(!r.timed_out && !r.truncated, "{r:?}");
    let r = sexec(&server, &id, "s", "true");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr, "");
    let r = sexec(&server, &id, "s", "(exit 42)");
    assert_eq!(r.exit_code, 42, "{r:?}");
    let r = sexec(&server, &id, "s", "echo only-err >&2");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr, "only-err\n");
    let r = sexec(&server, &id, "s", "no-such-program-sandpit");
    assert_eq!(r.exit_code, 127, "{r:?}");
    assert!(!r.stderr.is_empty(), "{r:?}");
    // Output without a trailing newline stays as it is.
    let r = sexec(&server, &id, "s", "printf abc");
    assert_eq!(r.stdout, "abc", "{r:?}");
    assert_eq!(srun(&server, &id, "s", "echo fine"), "fine\n");
}

#[test]
fn timed_out_command_leaves_the_session_usable() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    srun(&server, &id, "s", "cd /tmp && export KEEP=yes");
    let pid_before = get_session(&server, &id, "s")["pid"].clone();

    let start = Instant::now();
    let r = server.exec_json(
        &id,
        &json!({ "command": "sleep 100", "session": "s", "timeout_ms": 1000 }),
    );
    assert!(r.timed_out, "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "answered after {:?}",
        start.elapsed()
    );
    assert_processes_gone(&server, &id, &["sleep 100"]);
    assert_eq!(
        srun(&server, &id, "s", "pwd; printf %s \"$KEEP\""),
        "/tmp\nyes"
    );

    // Background children of the timed-out command are killed too.
    let r = server.exec_json(
        &id,
        &json!({ "command": "sleep 101 & sleep 100", "session": "s", "timeout_ms": 1000 }),
    );
    assert!(r.timed_out, "{r:?}");
    assert_processes_gone(&server, &id, &["sleep 100", "sleep 101"]);
    assert_eq!(
        srun(&server, &id, "s", "pwd; printf %s \"$KEEP\""),
        "/tmp\nyes"
    );
    assert_eq!(
        get_session(&server, &id, "s")["pid"],
        pid_before,
        "the shell was replaced although the command yielded"
    );
}

#[test]
fn builtin_loop_times_out_and_the_session_recovers() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    srun(&server, &id, "s", "cd /tmp");
    let start = Instant::now();
    let r = server.exec_json(
        &id,
        &json!({ "command": "while true; do :; done", "session": "s", "timeout_ms": 1000 }),
    );
    assert!(r.timed_out, "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "answered after {:?}",
        start.elapsed()
    );
    assert!(
        !r.stderr.is_empty(),
        "restarting the shell is not mentioned on stderr: {r:?}"
    );
    assert_eq!(srun(&server, &id, "s", "echo alive"), "alive\n");
    let r = sexec(&server, &id, "s", "echo out; exit 3");
    assert_eq!((r.exit_code, r.stdout.as_str()), (3, "out\n"), "{r:?}");
}

#[test]
fn exit_ends_the_shell_and_the_next_command_gets_a_fresh_one() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    let r = sexec(&server, &id, "s", "echo bye; exit 7");
    assert_eq!(r.exit_code, 7, "{r:?}");
    assert_eq!(r.stdout, "bye\n", "{r:?}");
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(srun(&server, &id, "s", "echo again"), "again\n");
    let r = sexec(&server, &id, "s", "exit 0");
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(srun(&server, &id, "s", "echo still"), "still\n");
    assert_eq!(get_session(&server, &id, "s")["id"], "s");
}

#[test]
fn sse_exec_in_a_session() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    srun(&server, &id, "s", "cd /tmp && export E=streamed");
    let events = SseStream::open(
        server
            .req(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
            .timeout(Duration::from_secs(60))
            .json(&json!({
                "command": "echo \"$E\"; pwd; echo err >&2; false",
                "session": "s"
            })),
    )
    .collect_all();
    assert!(events.len() >= 3, "{events:?}");
    assert_eq!(events[0].name, "start", "{events:?}");
    assert!(events[0].data["pid"].is_u64(), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.name, "exit", "{events:?}");
    assert_eq!(last.data["exit_code"], 1, "{events:?}");
    assert_eq!(last.data["timed_out"], false, "{events:?}");
    let (mut out, mut err) = (String::new(), String::new());
    for e in &events[1..events.len() - 1] {
        let chunk = e.data["data"].as_str().expect("data string");
        match e.name.as_str() {
            "stdout" => out.push_str(chunk),
            "stderr" => err.push_str(chunk),
            other => panic!("unexpected event {other}: {events:?}"),
        }
    }
    assert_eq!(out, "streamed\n/tmp\n");
    assert_eq!(err, "err\n");
    // State set in a streamed command persists too.
    let events = SseStream::open(
        server
            .req(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
            .timeout(Duration::from_secs(60))
            .json(&json!({ "command": "cd / && export E=changed", "session": "s" })),
    )
    .collect_all();
    assert_eq!(
        events.last().map(|e| e.name.as_str()),
        Some("exit"),
        "{events:?}"
    );
    assert_eq!(
        srun(&server, &id, "s", "pwd; printf %s \"$E\""),
        "/\nchanged"
    );
}

#[test]
fn deleting_a_session_kills_what_it_started() {
    let server = Server::start();
    let id = server.new_sandbox();
    let s1 = create_session(&server, &id, &json!({ "id": "s1" }));
    create_session(&server, &id, &json!({ "id": "s2" }));
    srun(&server, &id, "s1", "sleep 1000 >/dev/null 2>&1 &");
    srun(&server, &id, "s2", "sleep 1001 >/dev/null 2>&1 &");
    server.wait_for_process(&id, "sleep 1000");
    server.wait_for_process(&id, "sleep 1001");
    let shell = s1["pid"].as_u64().expect("pid") as u32;

    server
        .request(Method::DELETE, &format!("{}/s1", sessions_path(&id)))
        .expect(204);
    assert_processes_gone(&server, &id, &["sleep 1000"]);
    assert_pid_gone(&server, &id, shell);
    // The other session and what it started are untouched.
    let procs = server.processes(&id);
    assert!(
        procs.iter().any(|p| p.cmdline == "sleep 1001"),
        "deleting s1 killed s2's job: {procs:?}"
    );
    assert_eq!(srun(&server, &id, "s2", "echo s2"), "s2\n");
}

#[test]
fn concurrent_commands_in_one_session_are_serialized() {
    let server = Server::start();
    let id = server.new_sandbox();
    create_session(&server, &id, &json!({ "id": "s" }));
    let start = Instant::now();
    let (a, b) = std::thread::scope(|s| {
        let (server, id) = (&server, &id);
        let a = s.spawn(move || sexec(server, id, "s", "V=a; echo a1; sleep 1; echo \"a2-$V\""));
        let b = s.spawn(move || sexec(server, id, "s", "V=b; echo b1; sleep 1; echo \"b2-$V\""));
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    let wall = start.elapsed();
    assert_eq!((a.exit_code, a.stdout.as_str()), (0, "a1\na2-a\n"), "{a:?}");
    assert_eq!((b.exit_code, b.stdout.as_str()), (0, "b1\nb2-b\n"), "{b:?}");
    assert!(
        wall >= Duration::from_millis(1900),
        "two 1 s commands in one session finished in {wall:?}: they ran in parallel"
    );
    // The last one to run set V.
    let v = srun(&server, &id, "s", "printf %s \"$V\"");
    assert!(v == "a" || v == "b", "V={v:?}");
}
