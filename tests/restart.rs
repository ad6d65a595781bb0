//! Sandboxes outlive the server process: after kill -9 (or a clean stop) and a new start
//! on the same data dir, every sandbox, file and process is still there.

mod common;

use common::*;
use serde_json::json;

/// Creates a sandbox with a file and a background process; returns (id, sleeper's pid).
fn prepare(server: &Server, id: &str) -> u32 {
    server.create(&json!({ "id": id, "keepalive_seconds": 0, "limits": { "pids": 200 } }));
    server.put_file(id, "/workspace/keep.txt", b"survives restarts");
    server.run_ok(id, "echo from-exec > /tmp/exec.txt");
    server.run_ok(id, "nohup sleep 1000 >/dev/null 2>&1 &");
    server.wait_for_process(id, "sleep 1000").pid
}

#[track_caller]
fn check_survived(server: &Server, id: &str, sleeper: u32, before: &serde_json::Value) {
    let sb = server.sandbox(id);
    assert_eq!(sb["status"], "running", "{sb}");
    for key in ["created_at", "limits", "keepalive_seconds", "expires_at"] {
        assert_eq!(sb[key], before[key], "{key} changed across restart: {sb}");
    }
    assert_eq!(
        server.get_file(id, "/workspace/keep.txt"),
        b"survives restarts"
    );
    assert_eq!(server.get_file(id, "/tmp/exec.txt"), b"from-exec\n");
    let procs = server.processes(id);
    assert!(
        procs
            .iter()
            .any(|p| p.pid == sleeper && p.cmdline == "sleep 1000"),
        "background process {sleeper} gone: {procs:?}"
    );
    assert_eq!(
        server.run_ok(id, "cat /workspace/keep.txt"),
        "survives restarts"
    );
    assert_eq!(server.run_ok(id, "uname -n"), format!("{id}\n"));
}

#[test]
fn sandboxes_survive_server_kill9() {
    let mut server = Server::start();
    let id = unique("survivor");
    let sleeper = prepare(&server, &id);
    let before = server.sandbox(&id);

    server.kill9();
    server.restart();
    check_survived(&server, &id, sleeper, &before);
    assert_eq!(server.list_ids(), vec![id.clone()]);

    // New sandboxes work next to the old one, and the id stays taken.
    let fresh = server.new_sandbox();
    assert_eq!(server.run_ok(&fresh, "echo fresh"), "fresh\n");
    server
        .request_json(reqwest::Method::POST, "/v1/sandboxes", &json!({ "id": id }))
        .expect_error(409, "already_exists");

    // A second crash is no different.
    server.kill9();
    server.restart();
    check_survived(&server, &id, sleeper, &before);
    assert_eq!(server.run_ok(&fresh, "echo fresh"), "fresh\n");

    // Deleting after a restart really removes it.
    server.delete_sandbox(&id);
    server
        .request(reqwest::Method::GET, &format!("/v1/sandboxes/{id}"))
        .expect_error(404, "not_found");
}

#[test]
fn sandboxes_survive_a_clean_stop() {
    let mut server = Server::start();
    let id = unique("calm");
    let sleeper = prepare(&server, &id);
    let before = server.sandbox(&id);
    server.terminate().expect("server was running");
    server.restart();
    check_survived(&server, &id, sleeper, &before);
}

#[test]
fn expiry_still_applies_after_restart() {
    let mut server = Server::start();
    let sb = server.create(&json!({ "keepalive_seconds": 4 }));
    let id = sb["id"].as_str().unwrap().to_string();
    server.kill9();
    server.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while server.list_ids().contains(&id) {
        assert!(
            std::time::Instant::now() < deadline,
            "sandbox with keepalive 4 s outlived 20 s across a restart"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn a_clean_stop_removes_the_instance_cgroups_once_no_sandbox_uses_them() {
    let mut server = Server::start();
    let id = unique("cgparent");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    // (A sandbox from the warm pool keeps its pooled id as its cgroups' name.)
    let name = cgroups::cgroup_name(&server, &id);
    let dirs = cgroups::instance_dirs_holding(&name);
    if dirs.is_empty() {
        eprintln!("note: no cgroups on this host; nothing to check");
        return;
    }
    // A sandbox still running keeps them (it outlives the server).
    server.terminate().expect("server was running");
    for d in &dirs {
        assert!(
            d.join(&name).is_dir(),
            "{} went with the server",
            d.display()
        );
    }
    server.restart();
    assert_eq!(server.run_ok(&id, "echo back"), "back\n");
    server.delete_sandbox(&id);
    server.terminate().expect("server was running");
    for d in &dirs {
        assert!(!d.exists(), "{} left after a clean stop", d.display());
    }
    // The next start makes them again.
    server.restart();
    let again = unique("cgagain");
    server.create(&json!({ "id": again }));
    assert_eq!(server.run_ok(&again, "echo up"), "up\n");
    for d in &dirs {
        assert!(d.exists(), "{} not made again after a restart", d.display());
    }
}
