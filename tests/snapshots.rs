//! Snapshots: a sandbox's files archived into object storage (a local directory, or a real
//! S3-compatible server started by the test: moto) and restored into the same or a new
//! sandbox; excludes, `/workspace`-only snapshots, list/get/delete, bad input, and a
//! `kill -9` of the server in the middle of writing one.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

#[track_caller]
fn snapshot(server: &Server, id: &str, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"), body);
    r.expect(201);
    let v = r.json();
    assert_keys(
        &v,
        &[
            "id",
            "name",
            "sandbox_id",
            "path",
            "size_bytes",
            "created_at",
            "tenant",
        ],
    );
    assert_eq!(v["sandbox_id"], id, "{v}");
    assert!(v["size_bytes"].as_u64().is_some_and(|s| s > 0), "{v}");
    assert!(
        parse_utc(v["created_at"].as_str().unwrap_or("")).is_some(),
        "{v}"
    );
    v
}

#[track_caller]
fn restore(server: &Server, id: &str, body: &Value) -> Value {
    let r = server.request_json(Method::POST, &format!("/v1/sandboxes/{id}/restore"), body);
    r.expect(200);
    r.json()
}

#[track_caller]
fn snapshot_ids(server: &Server, id: &str) -> Vec<String> {
    let r = server.request(Method::GET, &format!("/v1/sandboxes/{id}/snapshots"));
    r.expect(200);
    r.json()["snapshots"]
        .as_array()
        .expect("snapshots array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect()
}

/// Writes a varied tree: a binary file, a symlink, an executable, a file and a directory
/// owned by another uid, an empty directory, a file outside /workspace, deep nesting.
fn populate(server: &Server, id: &str) {
    server.put_file(id, "/workspace/bin.dat", &pseudo_random_bytes(300_000, 7));
    server.run_ok(
        id,
        "set -e; cd /workspace
         printf '#!/bin/sh\\necho run\\n' > tool.sh && chmod 0755 tool.sh
         ln -s bin.dat link && ln -s /etc/hostname abs-link
         mkdir -p owned/deep/er empty && echo mine > owned/deep/er/f
         chown -R 1234:2345 owned && chmod 0700 owned
         echo secret > /root/notes && chmod 0600 /root/notes
         mkdir -p /opt/app && echo cfg > /opt/app/config",
    );
}

/// Everything that should survive a round trip, one line per path: type, mode, owner,
/// size, link target, and a checksum of regular files.
const MANIFEST: &str =
    "cd / && find workspace root/notes opt -printf '%p %y %m %U:%G %s %l\\n' | sort \
     && find workspace root/notes opt -type f -print0 | sort -z | xargs -0 sha256sum";

fn manifest(server: &Server, id: &str) -> String {
    server.run_ok(id, MANIFEST)
}

/// Changes, deletes and adds files, so a restore has something to undo.
fn scramble(server: &Server, id: &str) {
    server.run_ok(
        id,
        "set -e; cd /workspace
         echo changed > bin.dat; rm -f link tool.sh; rm -rf owned /opt/app
         chmod 0644 /root/notes; echo intruder > new.txt; mkdir -p newdir/x",
    );
}

#[track_caller]
fn round_trip(server: &Server) {
    let id = unique("snap");
    server.create(&json!({ "id": id }));
    populate(server, &id);
    let before = manifest(server, &id);
    assert!(
        before.contains("workspace/owned/deep/er/f f 644 1234:2345"),
        "{before}"
    );
    assert!(before.contains("workspace/link l 777 0:0"), "{before}");

    let snap = snapshot(server, &id, &json!({ "name": "first" }));
    assert_eq!(snap["path"], "/");
    assert_eq!(snap["name"], "first");
    scramble(server, &id);
    assert_ne!(manifest(server, &id), before);

    let restored = restore(server, &id, &json!({}));
    assert_eq!(restored["id"], snap["id"]);
    assert_eq!(manifest(server, &id), before);
    let gone = server.exec(&id, "ls /workspace/new.txt /workspace/newdir");
    assert_ne!(
        gone.exit_code, 0,
        "files made after the snapshot survived: {gone:?}"
    );
    assert_eq!(server.run_ok(&id, "/workspace/tool.sh"), "run\n");
    assert_eq!(
        server.get_file(&id, "/workspace/bin.dat"),
        pseudo_random_bytes(300_000, 7)
    );
    // The system directories are the host's, untouched and still mounted.
    assert_eq!(server.run_ok(&id, "ls /usr/bin/env"), "/usr/bin/env\n");
}

#[test]
fn round_trip_local() {
    let server = Server::start();
    round_trip(&server);
    // The archives live under the data dir by default.
    let dir = server.data_dir().join("snapshots");
    assert!(
        files_under(&dir)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".tar.zst")),
        "no archive in {}",
        dir.display()
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A moto S3 server on a free loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto (pip install \"moto[server]\")");
        let moto = Moto { child, port };
        let client = reqwest::blocking::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while client.get(moto.url("/")).send().is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn create_bucket(&self, bucket: &str) {
        let r = reqwest::blocking::Client::new()
            .put(self.url(&format!("/{bucket}")))
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    /// Keys in the bucket (the S3 list API, read as text).
    fn keys(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::blocking::Client::new()
            .get(self.url(&format!("/{bucket}?list-type=2")))
            .send()
            .and_then(|r| r.text())
            .expect("list bucket");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(String::from)
            .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn round_trip_s3() {
    let moto = Moto::start();
    moto.create_bucket("sandpit-snaps");
    let conf = tempfile::tempdir().expect("tempdir");
    let path = conf.path().join("sandpit.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nurl = \"s3://sandpit-snaps/team/a\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            moto.url("")
        ),
    )
    .expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), path.to_string_lossy().into_owned()],
        ..Default::default()
    });
    round_trip(&server);
    let keys = moto.keys("sandpit-snaps");
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("team/a/snap-") && keys[0].ends_with(".tar.zst"),
        "{keys:?}"
    );
    assert!(
        files_under(&server.data_dir().join("snapshots")).is_empty(),
        "S3 snapshots were written locally"
    );

    // A larger archive goes up in several parts and comes back whole.
    let id = server.new_sandbox();
    server.run_ok(&id, "head -c 30000000 /dev/urandom > /workspace/big");
    let sum = server.run_ok(&id, "sha256sum /workspace/big");
    let snap = snapshot(&server, &id, &json!({ "path": "/workspace" }));
    assert!(
        snap["size_bytes"].as_u64().unwrap_or(0) > 30_000_000,
        "{snap}"
    );
    let fresh = server.create(&json!({ "restore": snap["id"] }))["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(fresh, id);
    assert_eq!(server.run_ok(&fresh, "sha256sum /workspace/big"), sum);

    // Deleting a snapshot deletes its object.
    let sid = snap["id"].as_str().expect("id");
    server
        .request(Method::DELETE, &format!("/v1/snapshots/{sid}"))
        .expect(204);
    assert!(
        !moto.keys("sandpit-snaps").iter().any(|k| k.contains(sid)),
        "object of a deleted snapshot is left"
    );
}

#[test]
fn excludes_and_workspace_only_snapshots() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.run_ok(
        &id,
        "set -e; cd /workspace; mkdir -p src/cache node_modules/x logs
         echo code > src/main.rs; echo c > src/cache/blob; echo m > node_modules/x/i.js
         echo l > logs/a.log; echo l2 > top.log; echo keep > logs/keep.txt
         echo home > /root/outside",
    );
    let snap = snapshot(
        &server,
        &id,
        &json!({ "path": "/workspace/", "excludes": ["node_modules", "*.log", "src/cache"] }),
    );
    assert_eq!(snap["path"], "/workspace");

    // Into the same sandbox: only /workspace is replaced; /root is left alone.
    server.run_ok(&id, "rm -rf /workspace/src; echo changed > /root/outside");
    restore(&server, &id, &json!({ "snapshot": snap["id"] }));
    assert_eq!(
        server.run_ok(&id, "cd /workspace && find . | sort"),
        ".\n./logs\n./logs/keep.txt\n./src\n./src/main.rs\n"
    );
    assert_eq!(server.run_ok(&id, "cat /root/outside"), "changed\n");

    // Into a new sandbox, named by its id.
    let other = unique("other");
    let made = server.create(&json!({
        "id": other, "restore": { "snapshot": snap["id"], "from_sandbox": id }
    }));
    assert_eq!(made["status"], "running");
    assert_eq!(
        server.run_ok(&other, "cat /workspace/src/main.rs"),
        "code\n"
    );
    let r = server.exec(&other, "ls /workspace/top.log /root/outside");
    assert_ne!(r.exit_code, 0, "{r:?}");
}

#[test]
fn list_get_delete_and_snapshots_outlive_their_sandbox() {
    let server = Server::start();
    let id = unique("lister");
    server.create(&json!({ "id": id }));
    assert!(snapshot_ids(&server, &id).is_empty());
    server.run_ok(&id, "echo one > /workspace/v");
    let first = snapshot(&server, &id, &json!({ "name": "v1" }));
    server.run_ok(&id, "echo two > /workspace/v");
    let second = snapshot(&server, &id, &json!({}));
    assert_eq!(second["name"], Value::Null);
    let (a, b) = (
        first["id"].as_str().expect("id").to_string(),
        second["id"].as_str().expect("id").to_string(),
    );
    assert_eq!(snapshot_ids(&server, &id), vec![b.clone(), a.clone()]);

    let got = server.request(Method::GET, &format!("/v1/snapshots/{a}"));
    got.expect(200);
    assert_eq!(got.json(), first);

    // "latest" is the newest; an older one by id.
    restore(&server, &id, &json!({ "snapshot": "latest" }));
    assert_eq!(server.run_ok(&id, "cat /workspace/v"), "two\n");
    restore(&server, &id, &json!({ "snapshot": a }));
    assert_eq!(server.run_ok(&id, "cat /workspace/v"), "one\n");

    // The sandbox goes; its snapshots stay, and a new sandbox of the same id starts from one.
    server.delete_sandbox(&id);
    assert_eq!(snapshot_ids(&server, &id), vec![b.clone(), a.clone()]);
    server.create(&json!({ "id": id, "restore": "latest" }));
    assert_eq!(server.run_ok(&id, "cat /workspace/v"), "two\n");

    server
        .request(Method::DELETE, &format!("/v1/snapshots/{b}"))
        .expect(204);
    server
        .request(Method::GET, &format!("/v1/snapshots/{b}"))
        .expect_error(404, "snapshot_not_found");
    server
        .request(Method::DELETE, &format!("/v1/snapshots/{b}"))
        .expect_error(404, "snapshot_not_found");
    assert_eq!(snapshot_ids(&server, &id), vec![a.clone()]);

    // Snapshots survive a server restart.
    let mut server = server;
    server.restart();
    assert_eq!(snapshot_ids(&server, &id), vec![a]);
}

#[test]
fn bad_input_is_refused() {
    let server = Server::start();
    let id = server.new_sandbox();
    let post = |body: Value| {
        server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshots"),
            &body,
        )
    };
    post(json!({ "path": "workspace" })).expect_error(400, "invalid_path");
    post(json!({ "path": "/workspace/../etc" })).expect_error(400, "invalid_path");
    post(json!({ "path": "/usr" })).expect_error(400, "invalid_path");
    post(json!({ "path": "/proc" })).expect_error(400, "invalid_path");
    post(json!({ "path": "/no/such/dir" })).expect_error(404, "not_found");
    server.run_ok(&id, "echo x > /workspace/file");
    post(json!({ "path": "/workspace/file" })).expect_error(400, "not_a_directory");
    post(json!({ "name": "a b" })).expect_error(400, "bad_request");
    post(json!({ "name": "x".repeat(64) })).expect_error(400, "bad_request");
    post(json!({ "excludes": ["a["] })).expect_error(400, "bad_request");
    post(json!({ "excludes": [""] })).expect_error(400, "bad_request");
    post(json!({ "bogus": 1 })).expect_error(400, "invalid_json");
    server
        .request_json(Method::POST, "/v1/sandboxes/nope/snapshots", &json!({}))
        .expect_error(404, "not_found");
    server
        .request(Method::GET, "/v1/sandboxes/nope/snapshots")
        .expect_error(404, "not_found");
    server
        .request(Method::GET, "/v1/sandboxes/bad%20id/snapshots")
        .expect_error(400, "invalid_id");
    server
        .request(Method::GET, "/v1/snapshots/snap-nope")
        .expect_error(404, "snapshot_not_found");
    let restore_into = |body: Value| {
        server.request_json(Method::POST, &format!("/v1/sandboxes/{id}/restore"), &body)
    };
    restore_into(json!({})).expect_error(404, "snapshot_not_found");
    restore_into(json!({ "snapshot": "snap-nope" })).expect_error(404, "snapshot_not_found");
    server
        .request_json(Method::POST, "/v1/sandboxes/nope/restore", &json!({}))
        .expect_error(404, "not_found");
    // A snapshot named with another sandbox is not found there.
    let snap = snapshot(&server, &id, &json!({}));
    restore_into(json!({ "snapshot": snap["id"], "from_sandbox": "someone-else" }))
        .expect_error(404, "snapshot_not_found");

    // Create with a restore that cannot happen creates nothing.
    let ghost = unique("ghost");
    server
        .request_json(
            Method::POST,
            "/v1/sandboxes",
            &json!({ "id": ghost, "restore": "latest" }),
        )
        .expect_error(404, "snapshot_not_found");
    server
        .request_json(
            Method::POST,
            "/v1/sandboxes",
            &json!({ "restore": "latest" }),
        )
        .expect_error(400, "bad_request");
    server
        .request_json(
            Method::POST,
            "/v1/sandboxes",
            &json!({ "id": id, "restore": snap["id"] }),
        )
        .expect_error(409, "already_exists");
    assert!(!server.list_ids().contains(&ghost));
    // The sandbox still works after all of that.
    assert_eq!(server.run_ok(&id, "cat /workspace/file"), "x\n");
}

/// Half-written uploads of a local store: `<key>#<n>` files.
fn staged_uploads(server: &Server) -> Vec<PathBuf> {
    files_under(&server.data_dir().join("snapshots"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#'))
        .collect()
}

#[test]
fn kill9_during_a_snapshot_keeps_the_previous_one() {
    let mut server = Server::start();
    let id = unique("crash");
    server.create(&json!({ "id": id, "keepalive_seconds": 0 }));
    server.run_ok(&id, "echo before > /workspace/state");
    let good = snapshot(&server, &id, &json!({ "name": "good" }));
    let good_id = good["id"].as_str().expect("id").to_string();

    // 200 MB of incompressible data make the next snapshot take a while.
    server.run_ok(
        &id,
        "echo after > /workspace/state; head -c 200000000 /dev/urandom > /workspace/big",
    );
    let url = server.url(&format!("/v1/sandboxes/{id}/snapshots"));
    let writer = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("client")
            .post(url)
            .json(&json!({ "name": "doomed" }))
            .send()
            .map(|r| r.status().as_u16())
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while staged_uploads(&server).is_empty() {
        assert!(
            !writer.is_finished(),
            "the 200 MB snapshot finished before it could be interrupted"
        );
        assert!(
            Instant::now() < deadline,
            "the snapshot upload never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill9();
    let answer = writer.join().expect("writer thread");
    assert!(
        !matches!(answer, Ok(201)),
        "the snapshot completed although the server was killed"
    );

    server.restart();
    // Only the complete snapshot is listed, "latest" is it, and the leftover is gone.
    assert_eq!(snapshot_ids(&server, &id), vec![good_id.clone()]);
    assert!(
        staged_uploads(&server).is_empty(),
        "half-written upload left: {:?}",
        staged_uploads(&server)
    );
    restore(&server, &id, &json!({ "snapshot": "latest" }));
    assert_eq!(server.run_ok(&id, "cat /workspace/state"), "before\n");
    let r = server.exec(&id, "ls /workspace/big");
    assert_ne!(r.exit_code, 0, "{r:?}");
    let listed = server.request(Method::GET, &format!("/v1/snapshots/{good_id}"));
    listed.expect(200);
    assert_eq!(listed.json(), good);
}

/// The rootless tests' system user (see tests/rootless.rs), created when missing.
fn rootless_user() -> Option<RunAs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = "sandpit-rootless";
    let lookup = || {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let entry = lookup().or_else(|| {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .output();
        lookup()
    })?;
    let f: Vec<&str> = entry.split(':').collect();
    Some(RunAs {
        user: name.into(),
        uid: f.get(2)?.parse().ok()?,
        gid: f.get(3)?.parse().ok()?,
        home: PathBuf::from(f.get(5)?),
    })
}

#[test]
fn rootless_round_trip() {
    let Some(user) = rootless_user() else {
        eprintln!("note: not root, cannot switch users; rootless snapshot test skipped");
        return;
    };
    let server = Server::start_with(ServerOpts {
        run_as: Some(user),
        ..Default::default()
    });
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    server.put_file(&id, "/workspace/bin.dat", &pseudo_random_bytes(50_000, 9));
    server.run_ok(
        &id,
        "cd /workspace && printf 'x' > tool && chmod 0750 tool && ln -s bin.dat link && mkdir -p d/e",
    );
    let before = server.run_ok(
        &id,
        "cd /workspace && find . -printf '%p %y %m %l\\n' | sort",
    );
    snapshot(&server, &id, &json!({ "path": "/workspace" }));
    server.run_ok(&id, "rm -rf /workspace/* && echo junk > /workspace/junk");
    restore(&server, &id, &json!({}));
    assert_eq!(
        server.run_ok(
            &id,
            "cd /workspace && find . -printf '%p %y %m %l\\n' | sort"
        ),
        before
    );
    assert_eq!(
        server.get_file(&id, "/workspace/bin.dat"),
        pseudo_random_bytes(50_000, 9)
    );
}

/// Peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM of the server")
}

#[test]
fn large_snapshots_stream_in_constant_memory() {
    let server = Server::start();
    let pid = server.pid().expect("server pid");
    let id = server.new_sandbox();
    server.run_ok(&id, "head -c 200000000 /dev/urandom > /workspace/big");
    let sum = server.run_ok(&id, "sha256sum /workspace/big");
    let base = peak_rss(pid);
    let snap = snapshot(&server, &id, &json!({}));
    assert!(
        snap["size_bytes"].as_u64().unwrap_or(0) > 200_000_000,
        "{snap}"
    );
    server.run_ok(&id, "rm /workspace/big");
    restore(&server, &id, &json!({}));
    assert_eq!(server.run_ok(&id, "sha256sum /workspace/big"), sum);
    // 200 MB went through the server both ways; it held a few parts at a time, not the archive.
    let grown = peak_rss(pid).saturating_sub(base);
    assert!(
        grown < 100 * 1024 * 1024,
        "server peak memory grew by {} MiB for a 200 MB snapshot",
        grown >> 20
    );
}

#[test]
fn bad_storage_settings_stop_the_server_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (storage, expected) in [
        (
            "url = \"ftp://host/x\"",
            "use s3://bucket/prefix or file:///dir",
        ),
        ("url = \"s3:///prefix\"", "names no bucket"),
        ("bucket = \"x\"", "unknown field"),
    ] {
        let conf = dir.path().join("bad.toml");
        std::fs::write(&conf, format!("[storage]\n{storage}\n")).expect("config");
        let data = dir.path().join("data");
        let (status, output) = run_binary(
            &[
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--data-dir",
                &data.to_string_lossy(),
                "--config",
                &conf.to_string_lossy(),
            ],
            Duration::from_secs(60),
        )
        .expect("the server kept running with bad storage settings");
        assert!(!status.success(), "{storage}: {output}");
        assert!(output.contains(expected), "{storage}: {output}");
    }
}

/// The local object of a snapshot.
fn object_of(server: &Server, snap: &Value) -> PathBuf {
    let sid = snap["id"].as_str().expect("id");
    files_under(&server.data_dir().join("snapshots"))
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&format!("{sid}.tar.zst")))
        .unwrap_or_else(|| panic!("no object for {sid}"))
}

/// Scratch directories a restore left in `/` or `/workspace`.
fn restore_leftovers(server: &Server, id: &str) -> String {
    server.run_ok(id, "ls -a / /workspace | grep '^.sandpit-' || true")
}

#[test]
fn a_failed_restore_keeps_the_files_as_they_were() {
    let server = Server::start();
    let id = unique("atomic");
    server.create(&json!({ "id": id }));
    populate(&server, &id);
    let snap = snapshot(&server, &id, &json!({}));
    scramble(&server, &id);
    let before = manifest(&server, &id);
    let object = object_of(&server, &snap);
    let good = std::fs::read(&object).expect("object");
    let restore_fails = |what: &str| {
        server
            .request_json(
                Method::POST,
                &format!("/v1/sandboxes/{id}/restore"),
                &json!({ "snapshot": snap["id"] }),
            )
            .expect_error(502, "storage_error");
        assert_eq!(manifest(&server, &id), before, "{what} changed the files");
        assert_eq!(
            server.run_ok(&id, "cat /workspace/new.txt"),
            "intruder\n",
            "{what}"
        );
        assert_eq!(restore_leftovers(&server, &id), "", "{what}");
    };
    // Cut off half-way, damaged in the middle, not an archive at all, gone.
    std::fs::write(&object, &good[..good.len() / 2]).expect("truncate");
    restore_fails("a truncated object");
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&object, &flipped).expect("corrupt");
    restore_fails("a corrupt object");
    std::fs::write(&object, b"garbage").expect("garbage");
    restore_fails("a garbage object");
    std::fs::remove_file(&object).expect("remove");
    restore_fails("a missing object");

    // A create restoring from a broken snapshot leaves no sandbox behind.
    std::fs::write(&object, &good[..good.len() / 2]).expect("truncate");
    let ghost = unique("ghost");
    server
        .request_json(
            Method::POST,
            "/v1/sandboxes",
            &json!({ "id": ghost, "restore": snap["id"] }),
        )
        .expect_error(502, "storage_error");
    assert!(!server.list_ids().contains(&ghost));
    assert!(
        !server.data_dir().join("sandboxes").join(&ghost).exists(),
        "the failed create left its directory"
    );

    // Whole again, the same snapshot restores and replaces the files.
    std::fs::write(&object, &good).expect("restore object");
    restore(&server, &id, &json!({ "snapshot": snap["id"] }));
    assert_ne!(manifest(&server, &id), before);
    assert_ne!(server.exec(&id, "ls /workspace/new.txt").exit_code, 0);
    assert_eq!(server.run_ok(&id, "/workspace/tool.sh"), "run\n");
    assert_eq!(restore_leftovers(&server, &id), "");
}

#[test]
fn a_restore_that_does_not_fit_the_disk_fails_cleanly() {
    let server = Server::start();
    let id = server.create(&json!({ "limits": { "disk_mb": 64 } }))["id"]
        .as_str()
        .expect("id")
        .to_string();
    server.run_ok(&id, "head -c 40000000 /dev/urandom > /workspace/a");
    let snap = snapshot(&server, &id, &json!({ "path": "/workspace" }));
    let a = server.run_ok(&id, "sha256sum < /workspace/a");
    server.run_ok(
        &id,
        "rm /workspace/a && head -c 35000000 /dev/urandom > /workspace/b",
    );
    let b = server.run_ok(&id, "sha256sum < /workspace/b");
    // The staged copy and the files now do not fit together: 507, and nothing changed.
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/restore"),
            &json!({ "snapshot": snap["id"] }),
        )
        .expect_error(507, "no_space");
    assert_eq!(server.run_ok(&id, "ls /workspace"), "b\n");
    assert_eq!(server.run_ok(&id, "sha256sum < /workspace/b"), b);
    assert_eq!(restore_leftovers(&server, &id), "");
    // With room for it, it goes through.
    server.run_ok(&id, "rm /workspace/b");
    restore(&server, &id, &json!({ "snapshot": snap["id"] }));
    assert_eq!(server.run_ok(&id, "ls /workspace"), "a\n");
    assert_eq!(server.run_ok(&id, "sha256sum < /workspace/a"), a);
}

impl Moto {
    /// Starts a multipart upload of `key` and leaves it incomplete.
    fn initiate(&self, bucket: &str, key: &str) {
        let r = reqwest::blocking::Client::new()
            .post(self.url(&format!("/{bucket}/{key}?uploads")))
            .send()
            .expect("create multipart upload");
        assert!(r.status().is_success(), "create upload: {}", r.status());
    }

    /// Keys of the bucket's incomplete multipart uploads.
    fn uploads(&self, bucket: &str) -> Vec<String> {
        let body = reqwest::blocking::Client::new()
            .get(self.url(&format!("/{bucket}?uploads")))
            .send()
            .and_then(|r| r.text())
            .expect("list uploads");
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(String::from)
            .collect();
        keys.sort();
        keys
    }
}

#[test]
fn s3_multipart_uploads_left_behind_are_aborted() {
    let moto = Moto::start();
    moto.create_bucket("sandpit-mp");
    // What a crash mid-snapshot leaves: an incomplete upload under sandpit's prefix. One
    // beside the prefix is someone else's.
    moto.initiate("sandpit-mp", "team/b/sb-1/snap-crashed.tar.zst");
    moto.initiate("sandpit-mp", "other/upload.bin");
    assert_eq!(moto.uploads("sandpit-mp").len(), 2);
    let conf = tempfile::tempdir().expect("tempdir");
    let path = conf.path().join("sandpit.toml");
    std::fs::write(
        &path,
        format!(
            "[storage]\nurl = \"s3://sandpit-mp/team/b\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key = \"testing\"\nallow_http = true\n",
            moto.url("")
        ),
    )
    .expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), path.to_string_lossy().into_owned()],
        ..Default::default()
    });
    // The start-up sweep ran before serving (moto dates every upload back to 2010).
    assert_eq!(moto.uploads("sandpit-mp"), ["other/upload.bin"]);

    // A snapshot request cancelled mid-upload aborts its upload, wherever it is cut: while
    // the upload is being created, between parts, or while a part is in flight.
    let id = server.new_sandbox();
    server.run_ok(&id, "head -c 60000000 /dev/urandom > /workspace/big");
    for cut_ms in [5, 20, 60, 150, 300] {
        let cut = server
            .req(Method::POST, &format!("/v1/sandboxes/{id}/snapshots"))
            .timeout(Duration::from_millis(cut_ms))
            .json(&json!({ "path": "/workspace" }))
            .send();
        assert!(
            cut.is_err(),
            "the snapshot finished within {cut_ms} ms: {cut:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while moto.uploads("sandpit-mp").len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            moto.uploads("sandpit-mp"),
            ["other/upload.bin"],
            "cut after {cut_ms} ms"
        );
    }
    // Snapshots still work.
    snapshot(&server, &id, &json!({ "path": "/workspace" }));
    assert_eq!(moto.uploads("sandpit-mp"), ["other/upload.bin"]);
}
