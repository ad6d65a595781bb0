//! The warm pool against the real binary: a create is a hand-over of a ready sandbox (seen in
//! `sandpit_pool_hits_total`) under the requested id, hostname, env and limits, with nothing
//! left over; handed-over sandboxes are isolated from each other; the pool refills; pooled
//! sandboxes are invisible to list, tenants and quotas; `--pool-size 0` disables it; a
//! shutdown deletes pooled sandboxes and a restart after SIGKILL leaks none.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::json;

/// A counter or gauge of `/metrics`, 0 when absent.
fn metric(s: &Server, name: &str) -> f64 {
    let r = s.request(Method::GET, "/metrics");
    r.expect(200);
    r.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Names of the pooled sandboxes' directories on disk.
fn pool_dirs(s: &Server) -> BTreeSet<String> {
    std::fs::read_dir(s.data_dir().join("sandboxes"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with("pool-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (polling, generous bound: this is not a timing assertion) until the pool has `n`
/// ready sandboxes.
fn wait_pool_ready(s: &Server, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if metric(s, "sandpit_pool_ready") as usize == n && pool_dirs(s).len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pool never reached {n} ready sandboxes: gauge {}, dirs {:?}\n{}",
            metric(s, "sandpit_pool_ready"),
            pool_dirs(s),
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Host pids of the agents of the pooled sandboxes (processes whose cgroup path names them).
fn pool_agent_pids(names: &BTreeSet<String>) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if names.iter().any(|n| cg.contains(&format!("/{n}\n"))) {
            pids.push(pid);
        }
    }
    pids
}

/// The memory limit of a sandbox as its host cgroup says (v1 or v2), in bytes.
fn host_memory_limit(s: &Server, id: &str) -> Option<u64> {
    cgroups::sandbox_dirs(s, id).iter().find_map(|dir| {
        ["memory.limit_in_bytes", "memory.max"]
            .iter()
            .find_map(|f| {
                std::fs::read_to_string(dir.join(f))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
    })
}

#[test]
fn create_is_a_hand_over_of_a_fresh_sandbox_and_the_pool_refills() {
    let s = Server::start();
    wait_pool_ready(&s, 2);
    assert!(s.list_ids().is_empty(), "pooled sandboxes are listed");
    let before = pool_dirs(&s);
    let hits = metric(&s, "sandpit_pool_hits_total");
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");

    let v = s.create(&json!({"id": "pooled-a", "env": {"FOO": "bar"},
        "limits": {"memory_mb": 256}, "keepalive_seconds": 900}));
    assert_eq!(v["id"], "pooled-a");
    assert_eq!(v["status"], "running");
    assert_eq!(v["limits"]["memory_mb"], 256);
    assert_eq!(v["keepalive_seconds"], 900);
    assert_eq!(
        metric(&s, "sandpit_pool_hits_total"),
        hits + 1.0,
        "not served from the pool"
    );
    let timed = r#"sandpit_create_duration_seconds_count{source="pool"}"#;
    assert_eq!(
        metric(&s, timed),
        1.0,
        "the create was not timed as a hand-over"
    );
    assert_contained(&s, "pooled-a");
    // It is one of the pooled sandboxes, renamed: its directory went.
    assert_eq!(pool_dirs(&s).intersection(&before).count(), 1);
    assert!(s.data_dir().join("sandboxes/pooled-a").is_dir());

    // Its identity is the requested one and nothing was left in it.
    let out = s.run_ok(
        "pooled-a",
        "cat /proc/sys/kernel/hostname; echo $HOSTNAME; echo $FOO; \
         ls -A /workspace /tmp | tr '\\n' ' '; echo; p=$(ps -e -o comm=); echo $p",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pooled-a", "{out}");
    assert_eq!(lines[1], "pooled-a", "{out}");
    assert_eq!(lines[2], "bar", "{out}");
    let listing: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(listing, ["/tmp:", "/workspace:"], "leftover files: {out}");
    // (`ps` alone, not in a pipeline: a pipeline's parts show as `bash` until they exec.)
    let mut procs: Vec<&str> = lines[4].split_whitespace().collect();
    procs.sort_unstable();
    assert_eq!(
        procs,
        ["bash", "ps", "sandpit"],
        "leftover processes: {out}"
    );
    // The limits of the request apply (through the cgroup, after the fact).
    assert_eq!(host_memory_limit(&s, "pooled-a"), Some(256 << 20));

    // A second hand-over is isolated from the first: its own files, processes and uids.
    s.run_ok("pooled-a", "echo secret > /workspace/a.txt; sleep 300 &");
    let b = s.create(&json!({}))["id"].as_str().expect("id").to_string();
    assert_eq!(metric(&s, "sandpit_pool_hits_total"), hits + 2.0);
    let uid_a = assert_contained(&s, "pooled-a");
    let uid_b = assert_contained(&s, &b);
    assert_ne!(uid_a, uid_b, "two sandboxes share host uids");
    assert_eq!(s.exec(&b, "cat /workspace/a.txt").exit_code, 1);
    let procs_b = s.run_ok(&b, "ps -e -o args=");
    assert!(!procs_b.contains("sleep 300"), "{procs_b}");
    assert_eq!(s.run_ok(&b, "hostname").trim(), b);
    // Setting theirs left the host's (and the server's) alone.
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname"),
        host_name
    );

    // The pool refills in the background, and only pooled sandboxes stay unlisted.
    wait_pool_ready(&s, 2);
    let mut ids = s.list_ids();
    ids.sort();
    let mut want = vec!["pooled-a".to_string(), b.clone()];
    want.sort();
    assert_eq!(ids, want);
    let m = s.request(Method::GET, "/metrics").text();
    assert!(
        m.contains("sandpit_sandboxes{status=\"running\"} 2"),
        "pooled sandboxes counted in metrics: {m}"
    );

    // A sandbox the pool cannot give (here: a restore is not poolable, egress neither) is
    // started cold; a taken id is refused without using the pool.
    let hits = metric(&s, "sandpit_pool_hits_total");
    s.request_json(Method::POST, "/v1/sandboxes", &json!({"id": "pooled-a"}))
        .expect(409);
    assert_eq!(metric(&s, "sandpit_pool_hits_total"), hits);
    // Deleting a handed-over sandbox removes it whole.
    s.delete_sandbox("pooled-a");
    assert!(!s.data_dir().join("sandboxes/pooled-a").exists());
}

#[test]
fn pool_size_zero_creates_cold() {
    let s = Server::start_with(ServerOpts {
        args: vec!["--pool-size".into(), "0".into()],
        ..Default::default()
    });
    let id = s.new_sandbox();
    assert_contained(&s, &id);
    assert_eq!(s.run_ok(&id, "hostname").trim(), id);
    assert_eq!(metric(&s, "sandpit_pool_hits_total"), 0.0);
    assert!(pool_dirs(&s).is_empty(), "{:?}", pool_dirs(&s));
}

#[test]
fn shutdown_deletes_and_restart_discards_pooled_sandboxes() {
    let mut s = Server::start_with(ServerOpts {
        args: vec!["--pool-size".into(), "3".into()],
        ..Default::default()
    });
    wait_pool_ready(&s, 3);
    let id = s.new_sandbox();
    wait_pool_ready(&s, 3);
    let first = pool_dirs(&s);
    assert_eq!(
        pool_agent_pids(&first).len(),
        3,
        "one agent per pooled sandbox"
    );

    // SIGKILL leaves them running; the next start removes them and makes new ones.
    s.kill9();
    assert_eq!(pool_agent_pids(&first).len(), 3);
    s.restart();
    wait_pool_ready(&s, 3);
    let second = pool_dirs(&s);
    assert!(first.is_disjoint(&second), "{first:?} {second:?}");
    assert!(pool_agent_pids(&first).is_empty(), "pooled agents leaked");
    assert_eq!(s.list_ids(), vec![id.clone()]);
    assert_eq!(s.run_ok(&id, "echo alive").trim(), "alive");

    // A clean shutdown deletes the pool; the user's sandbox keeps running.
    s.terminate();
    assert!(pool_dirs(&s).is_empty(), "{:?}", pool_dirs(&s));
    assert!(
        pool_agent_pids(&second).is_empty(),
        "pooled agents left after shutdown"
    );
    s.restart();
    assert_eq!(s.run_ok(&id, "echo alive").trim(), "alive");
}

#[test]
fn tenants_quotas_do_not_see_the_pool() {
    let dir = tempfile::tempdir().expect("config dir");
    let path = dir.path().join("sandpit.toml");
    std::fs::write(
        &path,
        format!(
            "[pool]\nsize = 2\n\n[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{}\"\n\
             [tenants.quotas]\nmax_sandboxes = 1\n",
            hash_key("acme-pool-key")
        ),
    )
    .expect("config");
    let s = Server::start_with(ServerOpts {
        token: Some("admin-pool-token".into()),
        args: vec!["--config".into(), path.display().to_string()],
        ..Default::default()
    });
    wait_pool_ready(&s, 2);
    let as_acme = |m: Method, p: &str| s.req_anon(m, p).bearer_auth("acme-pool-key");
    let t = s.send(as_acme(Method::GET, "/v1/tenant"));
    t.expect(200);
    assert_eq!(t.json()["usage"]["sandboxes"], 0, "{}", t.text());
    let r = s.send(as_acme(Method::POST, "/v1/sandboxes").json(&json!({})));
    r.expect(201);
    assert_eq!(r.json()["tenant"], "acme");
    assert_eq!(metric(&s, "sandpit_pool_hits_total"), 1.0);
    // One sandbox is acme's whole quota, whatever the pool holds.
    s.send(as_acme(Method::POST, "/v1/sandboxes").json(&json!({})))
        .expect(429);
    let ids = s.send(as_acme(Method::GET, "/v1/sandboxes")).json();
    assert_eq!(ids["sandboxes"].as_array().map(Vec::len), Some(1));
}
