//! Resource limits (memory, pids, CPU), checked by behaviour; neighbours stay unaffected.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Creates a contained sandbox with `limits`; returns its id and Sandbox JSON.
fn limited(server: &Server, limits: Value) -> (String, Value) {
    let sb = server.create(&json!({ "limits": limits }));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_contained(server, &id);
    (id, sb)
}

#[test]
fn limits_echo_back() {
    let server = Server::start();
    let limits = json!({ "memory_mb": 256, "cpus": 0.5, "pids": 100 });
    let (id, sb) = limited(&server, limits.clone());
    assert_eq!(sb["limits"], limits, "{sb}");
    assert_eq!(server.sandbox(&id)["limits"], limits);
    let r = server.request(reqwest::Method::GET, "/v1/sandboxes");
    let listed = r.json()["sandboxes"][0].clone();
    assert_eq!(listed["limits"], limits, "{listed}");
    // Running as root on a host with cgroups, every limit can be applied.
    assert_eq!(sb["warnings"], json!([]), "{sb}");

    // Limits not given get defaults (numbers).
    let partial = server.create(&json!({ "limits": { "pids": 77 } }));
    assert_eq!(partial["limits"]["pids"], 77, "{partial}");
    assert!(partial["limits"]["memory_mb"]
        .as_u64()
        .is_some_and(|m| m > 0));
    assert!(partial["limits"]["cpus"].as_f64().is_some_and(|c| c > 0.0));
}

#[test]
fn memory_hog_is_stopped_and_neighbours_survive() {
    let server = Server::start();
    let (id, sb) = limited(&server, json!({ "memory_mb": 128 }));
    assert_eq!(sb["warnings"], json!([]), "{sb}");
    let neighbour = server.new_sandbox();

    // Within the limit works.
    let ok = server.exec_json(
        &id,
        &json!({ "argv": ["python3", "-c", "b = b'x' * (32 << 20); print(len(b))"] }),
    );
    assert_eq!(ok.stdout, "33554432\n", "{ok:?}");

    // bytes * n writes every page, so the memory is really used.
    let hog = server.exec_json(
        &id,
        &json!({
            "argv": ["python3", "-c", "b = b'x' * (800 << 20); print('survived', len(b))"],
            "timeout_ms": 60000,
        }),
    );
    assert!(!hog.timed_out, "{hog:?}");
    assert_ne!(hog.exit_code, 0, "800 MiB in a 128 MiB sandbox: {hog:?}");
    assert!(!hog.stdout.contains("survived"), "{hog:?}");
    eprintln!("memory hog exit code: {}", hog.exit_code);

    assert_eq!(server.run_ok(&id, "echo still-here"), "still-here\n");
    let n = server.exec_json(
        &neighbour,
        &json!({ "argv": ["python3", "-c", "b = b'x' * (300 << 20); print(len(b))"] }),
    );
    assert_eq!(n.stdout, "314572800\n", "neighbour limited too: {n:?}");
}

#[test]
fn fork_storm_is_held_at_the_pids_limit() {
    let server = Server::start();
    let (id, _) = limited(&server, json!({ "pids": 64 }));
    // Forks 200 sleepers, counts what made it and what /proc shows, then cleans up.
    let script = r#"
import os, signal, time
kids, fails = [], 0
for i in range(200):
    try:
        pid = os.fork()
    except OSError:
        fails += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
seen = len([p for p in os.listdir('/proc') if p.isdigit()])
print(len(kids), fails, seen, flush=True)
for k in kids:
    os.kill(k, signal.SIGKILL)
for k in kids:
    os.waitpid(k, 0)
"#;
    let r = server.exec_json(
        &id,
        &json!({ "argv": ["python3", "-c", script], "timeout_ms": 30000 }),
    );
    assert!(!r.timed_out, "{r:?}");
    let nums: Vec<usize> = r
        .stdout
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(nums.len(), 3, "{r:?}");
    let (forked, failed, seen) = (nums[0], nums[1], nums[2]);
    eprintln!("fork storm: {forked} forked, {failed} failed, {seen} visible");
    assert!(forked < 64, "{forked} forks succeeded under pids=64");
    assert!(failed > 0, "no fork failed");
    assert!(seen <= 64, "{seen} processes visible under pids=64");
    assert_eq!(server.run_ok(&id, "echo after"), "after\n");
}

#[test]
fn shell_fork_storm_times_out_and_neighbour_is_unaffected() {
    let server = Server::start();
    let (id, _) = limited(&server, json!({ "pids": 64 }));
    let neighbour = server.new_sandbox();
    std::thread::scope(|s| {
        let storm = s.spawn(|| {
            server.exec_json(
                &id,
                &json!({
                    "command": "for i in $(seq 200); do sleep 30 & done; wait",
                    "timeout_ms": 5000,
                }),
            )
        });
        // While the storm runs, the neighbour answers promptly.
        std::thread::sleep(Duration::from_millis(1500));
        let start = Instant::now();
        assert_eq!(server.run_ok(&neighbour, "echo neighbour"), "neighbour\n");
        let took = start.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "neighbour exec took {took:?}"
        );
        let r = storm.join().expect("storm thread");
        assert!(r.timed_out, "{r:?}");
    });
    // After the timeout, the sandbox execs again and the sleepers are gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.exec_resp(&id, &json!({ "command": "echo back" }));
        if r.status == 200 && ExecResult::from_json(&r.json()).stdout == "back\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sandbox does not exec after the storm: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = server
        .processes(&id)
        .into_iter()
        .filter(|p| p.cmdline == "sleep 30")
        .count();
    assert_eq!(left, 0, "{left} sleepers survived the timeout");
}

#[test]
fn cpu_limit_throttles() {
    let server = Server::start();
    let (id, _) = limited(&server, json!({ "cpus": 0.2 }));
    let script = "import time\n\
                  t, c = time.time(), time.process_time()\n\
                  while time.time() - t < 3: pass\n\
                  print(time.process_time() - c)\n";
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert_eq!(r.exit_code, 0, "{r:?}");
    let cpu: f64 = r.stdout.trim().parse().unwrap();
    assert!(cpu < 1.2, "{cpu:.2} s of CPU in 3 s with cpus=0.2");
}
