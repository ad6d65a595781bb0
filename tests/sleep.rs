//! Sleep and wake: a sleeping sandbox has no processes and no cgroups but keeps its files;
//! any call wakes it (GET does not); sleep survives a server restart; idle sandboxes fall
//! asleep by themselves; expiry with `snapshot_on_expiry` leaves a snapshot that a new
//! sandbox of the same id starts from.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Host pids in the sandbox's cgroups.
fn host_pids(server: &Server, id: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = cgroups::sandbox_dirs(server, id)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The sandbox as `GET /v1/sandboxes` lists it (listing is not activity and never wakes).
fn listed(server: &Server, id: &str) -> Option<Value> {
    let r = server.request(Method::GET, "/v1/sandboxes");
    r.expect(200);
    r.json()["sandboxes"]
        .as_array()
        .expect("sandboxes")
        .iter()
        .find(|s| s["id"] == id)
        .cloned()
}

/// Polls the list (generously) until `done` holds for the sandbox's entry.
#[track_caller]
fn wait_listed(server: &Server, id: &str, what: &str, done: impl Fn(Option<&Value>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let entry = listed(server, id);
        if done(entry.as_ref()) {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never {what}: {entry:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[track_caller]
fn sleep(server: &Server, id: &str) -> Value {
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/sleep"));
    r.expect(200);
    r.json()
}

#[test]
fn sleep_ends_processes_frees_cgroups_keeps_files_and_a_call_wakes() {
    let server = Server::start();
    let id = unique("sleeper");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    server.put_file(&id, "/workspace/kept.bin", &pseudo_random_bytes(100_000, 3));
    server.run_ok(
        &id,
        "echo note > /root/note; nohup sleep 1000 >/dev/null 2>&1 &",
    );
    let before = server.wait_for_process(&id, "sleep 1000");
    let cgroups = cgroups::sandbox_dirs(&server, &id);
    let pids = host_pids(&server, &id);
    let has_cgroups = !cgroups.is_empty();
    if has_cgroups {
        assert!(pids.len() >= 2, "agent and sleep in the cgroup: {pids:?}");
    } else {
        eprintln!("note: no cgroups on this host; checking processes only");
    }

    let slept = sleep(&server, &id);
    assert_eq!(slept["status"], "sleeping", "{slept}");
    // GET reports it asleep and does not wake it; the list neither.
    assert_eq!(server.sandbox(&id)["status"], "sleeping");
    assert_eq!(listed(&server, &id).expect("listed")["status"], "sleeping");
    let left: Vec<_> = cgroups::sandbox_dirs(&server, &id);
    assert!(left.is_empty(), "cgroups of a sleeping sandbox: {left:?}");
    for pid in &pids {
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| c.contains(&id));
        assert!(!alive, "host pid {pid} of the sandbox survived sleep");
    }
    // Sleeping twice is fine.
    assert_eq!(sleep(&server, &id)["status"], "sleeping");

    // Any call wakes it: the files are there, the old processes are not.
    assert_eq!(server.run_ok(&id, "cat /root/note"), "note\n");
    assert_eq!(server.sandbox(&id)["status"], "running");
    assert_eq!(
        server.get_file(&id, "/workspace/kept.bin"),
        pseudo_random_bytes(100_000, 3)
    );
    let procs = server.processes(&id);
    assert!(
        !procs.iter().any(|p| p.cmdline == "sleep 1000"),
        "background process {} survived sleep: {procs:?}",
        before.pid
    );
    if has_cgroups {
        assert!(
            !cgroups::sandbox_dirs(&server, &id).is_empty(),
            "woken sandbox without cgroups"
        );
    }

    // A file read wakes it as well.
    sleep(&server, &id);
    assert_eq!(server.get_file(&id, "/root/note"), b"note\n");
    assert_eq!(server.sandbox(&id)["status"], "running");

    // Explicit wake, and the routes 404 on unknown sandboxes.
    sleep(&server, &id);
    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/wake"));
    r.expect(200);
    assert_eq!(r.json()["status"], "running");
    server
        .request(Method::POST, "/v1/sandboxes/nope/sleep")
        .expect_error(404, "not_found");
    server
        .request(Method::POST, "/v1/sandboxes/nope/wake")
        .expect_error(404, "not_found");
}

#[test]
fn sleep_survives_a_server_restart() {
    let mut server = Server::start();
    let id = unique("dormant");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    server.run_ok(&id, "echo still-here > /workspace/f");
    sleep(&server, &id);
    server.kill9();
    server.restart();
    assert_eq!(server.sandbox(&id)["status"], "sleeping");
    assert!(
        cgroups::sandbox_dirs(&server, &id).is_empty(),
        "recover woke the sandbox"
    );
    server.terminate();
    server.restart();
    assert_eq!(server.sandbox(&id)["status"], "sleeping");
    assert_eq!(server.run_ok(&id, "cat /workspace/f"), "still-here\n");
    assert_eq!(server.sandbox(&id)["status"], "running");
}

#[test]
fn idle_sandboxes_fall_asleep_by_themselves() {
    let server = Server::start();
    let id = unique("drowsy");
    let made = server.create(&json!({ "id": id, "sleep_after_seconds": 1 }));
    assert_eq!(made["sleep_after_seconds"], 1);
    server.run_ok(&id, "echo zzz > /workspace/f");
    wait_listed(&server, &id, "fell asleep", |s| {
        s.is_some_and(|s| s["status"] == "sleeping")
    });
    assert_eq!(server.run_ok(&id, "cat /workspace/f"), "zzz\n");

    // A running command keeps it awake, however long it takes.
    let r = server.exec(&id, "sleep 3; echo done");
    assert_eq!(r.stdout, "done\n");

    // PATCH turns it off; a sandbox with 0 never sleeps.
    let r = server.request_json(
        Method::PATCH,
        &format!("/v1/sandboxes/{id}"),
        &json!({ "sleep_after_seconds": 0 }),
    );
    r.expect(200);
    assert_eq!(r.json()["sleep_after_seconds"], 0);
    let other = server.new_sandbox();
    assert_eq!(server.sandbox(&other)["sleep_after_seconds"], 0);
    // It may have fallen asleep again before the PATCH: wake it, then it stays awake.
    server.run_ok(&id, "true");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(listed(&server, &id).expect("listed")["status"], "running");
}

#[test]
fn config_default_sleep_after() {
    let conf = tempfile::tempdir().expect("tempdir");
    let path = conf.path().join("sandpit.toml");
    std::fs::write(&path, "[defaults]\nsleep_after_seconds = 1\n").expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), path.to_string_lossy().into_owned()],
        ..Default::default()
    });
    let id = server.new_sandbox();
    assert_eq!(server.sandbox(&id)["sleep_after_seconds"], 1);
    wait_listed(&server, &id, "fell asleep", |s| {
        s.is_some_and(|s| s["status"] == "sleeping")
    });
}

#[test]
fn snapshot_on_expiry_then_a_new_sandbox_of_the_same_id_restores_it() {
    let server = Server::start();
    let id = unique("mortal");
    // It falls asleep first, then expires while asleep: woken for the snapshot, then gone.
    let made = server.create(&json!({
        "id": id, "keepalive_seconds": 6, "sleep_after_seconds": 1, "snapshot_on_expiry": true
    }));
    assert_eq!(made["snapshot_on_expiry"], true);
    server.run_ok(
        &id,
        "mkdir -p /workspace/proj && echo work > /workspace/proj/a && echo r > /root/r",
    );
    wait_listed(&server, &id, "fell asleep", |s| {
        s.is_some_and(|s| s["status"] == "sleeping")
    });
    wait_listed(&server, &id, "expired", |s| s.is_none());

    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/snapshots"));
    r.expect(200);
    let snaps = r.json()["snapshots"].as_array().expect("array").clone();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert_eq!(snaps[0]["name"], "expiry");

    let back = server.create(&json!({ "id": id, "restore": "latest", "keepalive_seconds": 0 }));
    assert_eq!(back["status"], "running");
    assert_eq!(
        server.run_ok(&id, "cat /workspace/proj/a /root/r"),
        "work\nr\n"
    );

    // Without snapshot_on_expiry, expiry leaves no snapshot.
    let plain = unique("plain");
    server.create(&json!({ "id": plain, "keepalive_seconds": 1 }));
    wait_listed(&server, &plain, "expired", |s| s.is_none());
    server
        .request(Method::GET, &format!("/v1/sandboxes/{plain}/snapshots"))
        .expect_error(404, "not_found");
}

/// A webhook receiver on loopback that answers 200 and hands each body to the test.
fn event_receiver() -> (u16, std::sync::mpsc::Receiver<Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(clone);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                if tx.send(v).is_err() {
                    return;
                }
            }
        }
    });
    (port, rx)
}

#[test]
fn sleeping_and_waking_send_webhook_events() {
    let (port, events) = event_receiver();
    let conf = tempfile::tempdir().expect("tempdir");
    let path = conf.path().join("sandpit.toml");
    std::fs::write(
        &path,
        format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"s\"\n\
             events = [\"sandbox.slept\", \"sandbox.woken\"]\n"
        ),
    )
    .expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), path.to_string_lossy().into_owned()],
        ..Default::default()
    });
    let id = unique("evented");
    server.create(&json!({ "id": id, "sleep_after_seconds": 1 }));
    let next = || {
        events
            .recv_timeout(Duration::from_secs(90))
            .expect("no webhook event arrived")
    };
    // Idle: it falls asleep by itself; a call wakes it; an explicit sleep says so.
    let slept = next();
    assert_eq!(slept["type"], "sandbox.slept", "{slept}");
    assert_eq!(slept["sandbox_id"], id.as_str());
    assert_eq!(slept["data"]["reason"], "idle", "{slept}");
    server.run_ok(&id, "true");
    let woken = next();
    assert_eq!(woken["type"], "sandbox.woken", "{woken}");
    server
        .request_json(
            Method::PATCH,
            &format!("/v1/sandboxes/{id}"),
            &json!({ "sleep_after_seconds": 0 }),
        )
        .expect(200);
    // It may have dozed off again before the PATCH (then `wake` wakes it); after that only
    // the explicit sleep puts it to sleep.
    server
        .request(Method::POST, &format!("/v1/sandboxes/{id}/wake"))
        .expect(200);
    sleep(&server, &id);
    loop {
        let e = next();
        if e["type"] == "sandbox.slept" && e["data"]["reason"] == "request" {
            break;
        }
        let idle_doze = e["type"] == "sandbox.slept" && e["data"]["reason"] == "idle";
        assert!(
            idle_doze || e["type"] == "sandbox.woken",
            "unexpected event {e}"
        );
    }
}
