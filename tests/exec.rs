//! `POST /v1/sandboxes/{id}/exec`: exit codes, streams, argv, stdin, env, cwd, timeouts,
//! output caps and Server-Sent Events.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

#[test]
fn exit_codes() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_eq!(server.exec(&id, "true").exit_code, 0);
    assert_eq!(server.exec(&id, "exit 3").exit_code, 3);
    assert_eq!(server.exec(&id, "false").exit_code, 1);
    let r = server.exec(&id, "exit 255");
    assert_eq!(r.exit_code, 255, "{r:?}");
    assert!(!r.timed_out && !r.truncated, "{r:?}");
}

#[test]
fn killed_by_signal_is_128_plus_n() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec(&id, "kill -9 $$");
    assert_eq!(r.exit_code, 137, "{r:?}");
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(server.exec(&id, "kill -15 $$").exit_code, 143);
}

#[test]
fn stderr_is_separate_from_stdout() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec(&id, "echo out; echo err >&2; echo out2");
    assert_eq!(r.stdout, "out\nout2\n");
    assert_eq!(r.stderr, "err\n");
    assert_eq!(r.exit_code, 0);
}

#[test]
fn argv_runs_without_a_shell() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec_json(&id, &json!({ "argv": ["printf", "%s", "$HOME"] }));
    assert_eq!(r.stdout, "$HOME", "{r:?}");
    assert_eq!(r.exit_code, 0);
    let r = server.exec_json(
        &id,
        &json!({ "argv": ["printf", "%s|", "a b", "; echo hacked", "`id`"] }),
    );
    assert_eq!(r.stdout, "a b|; echo hacked|`id`|", "{r:?}");
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", "print(1 + 1)"] }));
    assert_eq!(r.stdout, "2\n", "{r:?}");
}

#[test]
fn missing_program_is_127() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec_json(&id, &json!({ "argv": ["no-such-program-sandpit"] }));
    assert_eq!(r.exit_code, 127, "{r:?}");
    assert!(!r.stderr.is_empty(), "no message on stderr: {r:?}");
    let r = server.exec(&id, "no-such-program-sandpit");
    assert_eq!(r.exit_code, 127, "{r:?}");
}

#[test]
fn command_or_argv_exactly_one() {
    let server = Server::start();
    let id = server.new_sandbox();
    server
        .exec_resp(&id, &json!({ "command": "true", "argv": ["true"] }))
        .expect_error(400, "bad_request");
    server
        .exec_resp(&id, &json!({ "cwd": "/" }))
        .expect_error(400, "bad_request");
}

#[test]
fn stdin_is_fed() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec_json(&id, &json!({ "argv": ["cat"], "stdin": "hello\nworld" }));
    assert_eq!(r.stdout, "hello\nworld");
    let r = server.exec_json(&id, &json!({ "command": "tr a-z A-Z", "stdin": "shout" }));
    assert_eq!(r.stdout, "SHOUT");
    // No stdin given: the command sees end of file, it does not hang.
    let r = server.exec_json(&id, &json!({ "command": "wc -c", "timeout_ms": 10000 }));
    assert!(!r.timed_out, "{r:?}");
    assert_eq!(r.stdout.trim(), "0");
}

#[test]
fn large_stdin_and_stdout_do_not_deadlock() {
    let server = Server::start();
    let id = server.new_sandbox();
    let input: String = (0..3 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let r = server.exec_json(
        &id,
        &json!({ "argv": ["cat"], "stdin": input, "timeout_ms": 30000 }),
    );
    assert!(!r.timed_out, "timed out");
    assert_eq!(r.stdout.len(), input.len());
    assert!(r.stdout == input, "stdout differs from stdin");
}

#[test]
fn env_is_passed() {
    let server = Server::start();
    let sb = server.create(&json!({ "env": { "SB_GREETING": "hi there" } }));
    let id = sb["id"].as_str().unwrap();
    let r = server.exec_json(
        id,
        &json!({ "command": "printf '%s|%s' \"$FOO\" \"$SB_GREETING\"", "env": { "FOO": "bar baz" } }),
    );
    assert_eq!(r.stdout, "bar baz|hi there", "{r:?}");
    let r = server.exec_json(
        id,
        &json!({ "argv": ["printenv", "FOO"], "env": { "FOO": "x=y" } }),
    );
    assert_eq!(r.stdout, "x=y\n");
    // Per-exec env does not leak into the next exec.
    let r = server.exec(id, "printf %s \"${FOO-unset}\"");
    assert_eq!(r.stdout, "unset");
}

#[test]
fn cwd_defaults_to_workspace() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_eq!(server.run_ok(&id, "pwd"), "/workspace\n");
    let r = server.exec_json(&id, &json!({ "argv": ["pwd"] }));
    assert_eq!(r.stdout, "/workspace\n");
    let r = server.exec_json(&id, &json!({ "command": "pwd", "cwd": "/tmp" }));
    assert_eq!(r.stdout, "/tmp\n");
    server.run_ok(&id, "mkdir -p /workspace/sub/dir");
    let r = server.exec_json(
        &id,
        &json!({ "argv": ["pwd"], "cwd": "/workspace/sub/dir" }),
    );
    assert_eq!(r.stdout, "/workspace/sub/dir\n");
    server
        .exec_resp(&id, &json!({ "command": "pwd", "cwd": "/does/not/exist" }))
        .expect_error(400, "invalid_path");
}

/// Asserts that no `sleep` process is left in the sandbox, polling briefly (SIGKILL
/// delivery is asynchronous).
#[track_caller]
fn assert_no_sleep_left(server: &Server, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left: Vec<Proc> = server
            .processes(id)
            .into_iter()
            .filter(|p| p.cmdline.split(' ').next() == Some("sleep"))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes survived the timeout: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn timeout_kills_the_whole_tree() {
    let server = Server::start();
    let id = server.new_sandbox();
    let start = Instant::now();
    let r = server.exec_json(
        &id,
        &json!({ "command": "sleep 100 & sleep 100", "timeout_ms": 1000 }),
    );
    let wall = start.elapsed();
    assert!(r.timed_out, "{r:?}");
    assert!(
        wall < Duration::from_secs(15),
        "exec answered after {wall:?}"
    );
    assert!(
        (900..15000).contains(&r.duration_ms),
        "duration_ms {}",
        r.duration_ms
    );
    assert_no_sleep_left(&server, &id);
    assert_eq!(server.run_ok(&id, "echo after"), "after\n");
}

#[test]
fn timeout_kills_children_in_other_sessions() {
    let server = Server::start();
    let id = server.new_sandbox();
    let r = server.exec_json(
        &id,
        &json!({ "command": "setsid sleep 101 & sleep 100", "timeout_ms": 1000 }),
    );
    assert!(r.timed_out, "{r:?}");
    assert_no_sleep_left(&server, &id);
}

#[test]
fn output_is_capped_and_marked_truncated() {
    let server = Server::start();
    let id = server.new_sandbox();
    let small = server.exec(&id, "echo small");
    assert!(!small.truncated, "{small:?}");
    let r = server.exec_json(
        &id,
        &json!({ "command": "yes | head -c 20000000", "timeout_ms": 60000 }),
    );
    assert!(!r.timed_out, "timed out");
    assert!(r.truncated, "20 MB of output not marked truncated");
    assert!(
        r.stdout.len() <= 10 * 1024 * 1024,
        "stdout is {} bytes, above the 10 MiB cap",
        r.stdout.len()
    );
    assert!(r.stdout.len() >= 1024 * 1024, "{} bytes", r.stdout.len());
    assert!(r.stdout.starts_with("y\ny\ny\n"));
}

#[test]
fn hostname_is_the_sandbox_id() {
    let server = Server::start();
    let id = unique("host");
    server.create(&json!({ "id": id }));
    assert_eq!(server.run_ok(&id, "uname -n"), format!("{id}\n"));
    assert_eq!(
        server.run_ok(&id, "cat /proc/sys/kernel/hostname"),
        format!("{id}\n")
    );
}

#[test]
fn python_and_git_work() {
    let server = Server::start();
    let id = server.new_sandbox();
    let py = server.exec(&id, "python3 --version");
    assert_eq!(py.exit_code, 0, "{py:?}");
    assert!(
        format!("{}{}", py.stdout, py.stderr).starts_with("Python 3."),
        "{py:?}"
    );
    let git = server.exec(&id, "git --version");
    assert_eq!(git.exit_code, 0, "{git:?}");
    assert!(git.stdout.starts_with("git version"), "{git:?}");
    // git can actually work in the workspace.
    let out = server.run_ok(
        &id,
        "git init -q repo && cd repo && echo x > f && git add f && \
         git -c user.name=t -c user.email=t@e commit -qm init && git log --format=%s",
    );
    assert_eq!(out, "init\n");
}

#[test]
fn concurrent_execs_run_in_parallel() {
    let server = Server::start();
    let id = server.new_sandbox();
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (server, id) = (&server, &id);
                s.spawn(move || server.exec(id, &format!("sleep 2; echo {i}")))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.join().expect("exec thread");
            assert_eq!(r.stdout, format!("{i}\n"));
        }
    });
    let wall = start.elapsed();
    assert!(
        wall < Duration::from_secs(7),
        "4 parallel 2 s execs took {wall:?}"
    );
}

/// One Server-Sent Event: its name, its JSON data, and when it arrived.
#[derive(Debug)]
struct Event {
    name: String,
    data: Value,
    at: Instant,
}

/// Posts an exec with `Accept: text/event-stream` and reads events as they arrive.
fn exec_events(server: &Server, id: &str, body: &Value) -> Vec<Event> {
    let resp = server
        .req(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .header("Accept", "text/event-stream")
        .json(body)
        .send()
        .expect("SSE request");
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
    let mut events = Vec::new();
    let (mut name, mut data) = (String::new(), String::new());
    for line in BufReader::new(resp).lines() {
        let line = line.expect("read SSE line");
        if line.is_empty() {
            if !data.is_empty() || !name.is_empty() {
                let data_json = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}"));
                events.push(Event {
                    name: std::mem::take(&mut name),
                    data: data_json,
                    at: Instant::now(),
                });
                data.clear();
            }
        } else if let Some(v) = line.strip_prefix("event:") {
            name = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(v.strip_prefix(' ').unwrap_or(v));
        }
        // `id:`, `retry:` and `:` comment lines carry nothing we check.
    }
    events
}

#[test]
fn sse_streams_start_output_exit_in_order() {
    let server = Server::start();
    let id = server.new_sandbox();
    let events = exec_events(
        &server,
        &id,
        &json!({ "command": "echo one; echo two >&2; echo three; exit 4" }),
    );
    assert!(events.len() >= 3, "{events:?}");
    assert_eq!(events[0].name, "start", "{events:?}");
    assert!(events[0].data["pid"].is_u64(), "{events:?}");
    let last = events.last().unwrap();
    assert_eq!(last.name, "exit", "{events:?}");
    assert_eq!(last.data["exit_code"], 4, "{events:?}");
    assert_eq!(last.data["timed_out"], false, "{events:?}");
    assert!(last.data["duration_ms"].is_u64(), "{events:?}");
    let (mut out, mut err) = (String::new(), String::new());
    for e in &events[1..events.len() - 1] {
        let chunk = e.data["data"].as_str().expect("data string");
        match e.name.as_str() {
            "stdout" => out.push_str(chunk),
            "stderr" => err.push_str(chunk),
            other => panic!("unexpected event {other}: {events:?}"),
        }
    }
    assert_eq!(out, "one\nthree\n");
    assert_eq!(err, "two\n");
}

#[test]
fn sse_delivers_output_before_the_command_ends() {
    let server = Server::start();
    let id = server.new_sandbox();
    let events = exec_events(
        &server,
        &id,
        &json!({ "command": "echo first; sleep 2; echo second" }),
    );
    let first = events
        .iter()
        .find(|e| e.name == "stdout" && e.data["data"].as_str().unwrap_or("").contains("first"))
        .unwrap_or_else(|| panic!("no stdout event with 'first': {events:?}"));
    let exit = events
        .iter()
        .find(|e| e.name == "exit")
        .expect("exit event");
    assert!(
        exit.at.duration_since(first.at) >= Duration::from_millis(1500),
        "'first' arrived only {:?} before exit: not streamed",
        exit.at.duration_since(first.at)
    );
    assert_eq!(exit.data["exit_code"], 0);
}

#[test]
fn sse_reports_timeouts() {
    let server = Server::start();
    let id = server.new_sandbox();
    let events = exec_events(
        &server,
        &id,
        &json!({ "command": "echo go; sleep 100", "timeout_ms": 1000 }),
    );
    let last = events.last().expect("events");
    assert_eq!(last.name, "exit", "{events:?}");
    assert_eq!(last.data["timed_out"], true, "{events:?}");
}

/// A client that leaves mid-command does not kill it, unless it asked for that with
/// `kill_on_disconnect` (buffered or streamed).
#[test]
fn disconnect_kills_only_when_asked() {
    let server = Server::start();
    let id = server.new_sandbox();
    let leave = |body: serde_json::Value, sse: bool| {
        let mut rb = server
            .req(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
            .json(&body)
            .timeout(std::time::Duration::from_millis(800));
        if sse {
            rb = rb.header("Accept", "text/event-stream");
        }
        // The answer (or the stream's end) never comes in time: the client gives up.
        let r = rb.send().and_then(|r| r.bytes());
        assert!(r.is_err(), "the command should still be running: {r:?}");
    };
    leave(
        json!({"command": "sleep 771", "kill_on_disconnect": true}),
        true,
    );
    leave(
        json!({"command": "sleep 772", "kill_on_disconnect": true}),
        false,
    );
    leave(json!({"command": "sleep 773"}), true);
    leave(json!({"command": "sleep 774"}), false);
    let mut running = Vec::new();
    for _ in 0..100 {
        running = server
            .processes(&id)
            .into_iter()
            .map(|p| p.cmdline)
            .filter(|c| c.starts_with("sleep 77"))
            .collect();
        if running.len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    running.sort();
    assert_eq!(running, vec!["sleep 773", "sleep 774"]);
}
