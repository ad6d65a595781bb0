//! Sleep and wake racing calls: several clients put one sandbox to sleep, wake it, run
//! commands in it and read its files at the same time. Every call either succeeds (waking
//! the sandbox as needed) or gets the documented 409 `interrupted` (a sleep ended the
//! command it was running); never a 5xx. The sandbox ends healthy.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// What one call answered, for the summary.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    interrupted: AtomicUsize,
}

/// Checks one answer: 200 (or 204) or the documented 409 `interrupted`.
#[track_caller]
fn check(what: &str, r: &Resp, tally: &Tally) {
    match r.status {
        200 | 204 => {
            tally.ok.fetch_add(1, Ordering::Relaxed);
        }
        409 => {
            r.expect_error(409, "interrupted");
            tally.interrupted.fetch_add(1, Ordering::Relaxed);
        }
        s => panic!("{what}: unexpected status {s}: {}", r.text()),
    }
}

#[test]
fn concurrent_sleep_wake_and_calls_never_get_a_server_error() {
    let server = Server::start();
    let id = unique("racer");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    server.put_file(&id, "/workspace/data.txt", b"payload");
    assert_contained(&server, &id);

    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    // Runs for a few seconds; the assertions do not depend on how many rounds ran.
    let run_for = Duration::from_secs(4);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/sleep"));
                    r.expect(200);
                    let r = server.request(Method::POST, &format!("/v1/sandboxes/{id}/wake"));
                    r.expect(200);
                    assert_eq!(r.json()["status"], "running", "{}", r.text());
                }
            });
        }
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let r = server.exec_resp(&id, &json!({ "command": "echo hi" }));
                    check("exec", &r, &tally);
                    if r.status == 200 {
                        let v: Value = r.json();
                        assert_eq!(v["stdout"], "hi\n", "{v}");
                    }
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let r = server.request(
                    Method::GET,
                    &Server::files_path(&id, "", "/workspace/data.txt"),
                );
                check("file read", &r, &tally);
                if r.status == 200 {
                    assert_eq!(r.body, b"payload");
                }
                let r =
                    server.request(Method::GET, &Server::files_path(&id, "/list", "/workspace"));
                check("list", &r, &tally);
            }
        });
        let started = Instant::now();
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.store(true, Ordering::Relaxed);
    });
    eprintln!(
        "calls: {} ok, {} interrupted by a sleep",
        tally.ok.load(Ordering::Relaxed),
        tally.interrupted.load(Ordering::Relaxed)
    );
    assert!(tally.ok.load(Ordering::Relaxed) > 0, "no call succeeded");
    // It ends healthy: a call wakes it and works, and it says it runs.
    assert_eq!(server.run_ok(&id, "cat /workspace/data.txt"), "payload");
    assert_eq!(server.sandbox(&id)["status"], "running");
}
