//! Fault tests: a command OOM-killed (a clear exit code and an `oom_kills` count, the sandbox
//! and the server carry on), the data dir's disk full (clear 507s, nothing acknowledged is
//! lost, everything consistent after freeing space and a restart), and `kill -9` of the
//! server during an exec.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn an_oom_killed_command_is_reported_and_the_sandbox_carries_on() {
    let server = Server::start();
    let sb = server.create(&json!({ "limits": { "memory_mb": 64 } }));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_contained(&server, &id);
    let neighbour = server.new_sandbox();
    assert_eq!(server.sandbox(&id)["oom_kills"], 0);

    let hog = server.exec_json(
        &id,
        &json!({
            "argv": ["python3", "-c", "b = b'x' * (400 << 20); print('survived')"],
            "timeout_ms": 60000,
        }),
    );
    assert!(!hog.timed_out, "{hog:?}");
    assert_eq!(hog.exit_code, 137, "killed by SIGKILL: {hog:?}");
    assert!(!hog.stdout.contains("survived"), "{hog:?}");
    let kills = server.sandbox(&id)["oom_kills"].as_u64().unwrap_or(0);
    assert!(kills >= 1, "oom_kills {kills}");

    // The agent (PID 1) was not the victim: the sandbox, its neighbour and the server go on.
    assert_eq!(server.run_ok(&id, "echo still-here"), "still-here\n");
    server.put_file(&id, "/workspace/after", b"written after the OOM");
    assert_eq!(
        server.get_file(&id, "/workspace/after"),
        b"written after the OOM"
    );
    assert_eq!(server.run_ok(&neighbour, "echo fine"), "fine\n");
    assert_eq!(server.sandbox(&neighbour)["oom_kills"], 0);
    server.request(Method::GET, "/health").expect(200);
}

/// A small ext4 filesystem on a loop device, made and removed by the test.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl SmallDisk {
    fn new(mb: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mb << 20).unwrap();
        drop(f);
        let ok = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&img)
            .status()
            .unwrap();
        assert!(ok.success(), "mkfs.ext4");
        let ok = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success(), "mount -o loop");
        // Sandbox uids must be able to traverse the data dir.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
        SmallDisk { _dir: dir, mnt }
    }

    /// Fills the filesystem from the host, as another user of the disk would: again after
    /// each sync, until the blocks ext4 gives back on close are taken too.
    fn fill(&self) {
        std::fs::create_dir_all(self.filler()).unwrap();
        for (i, bs) in ["1M", "64k", "4k", "4k"].iter().enumerate() {
            let out = Command::new("dd")
                .args(["if=/dev/zero", &format!("bs={bs}"), "count=10000000"])
                .arg(format!("of={}/{i}", self.filler().display()))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("No space left on device"), "{err}");
            Command::new("sync").status().unwrap();
        }
    }

    fn filler(&self) -> PathBuf {
        self.mnt.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

fn integrity(db: &Path) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('pragma integrity_check').fetchone()[0])")
        .arg(db)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_no_space(r: &Resp, what: &str) {
    assert!(
        r.status == 507 || r.status == 503,
        "{what}: {} {}",
        r.status,
        r.text()
    );
    let v = r.json();
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("space") || msg.contains("full"),
        "{what}: a message that says why: {v}"
    );
}

#[test]
fn a_full_data_dir_is_a_clear_507_and_loses_nothing() {
    // Declared first, dropped last: the server (and its sandboxes) go before the disk.
    let disk = SmallDisk::new(96);
    let mut server = Server::start_with(ServerOpts {
        args: vec!["--data-dir".into(), disk.mnt.display().to_string()],
        ..Default::default()
    });
    let sb = server.create(&json!({}));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_contained(&server, &id);
    let kept = pseudo_random_bytes(2 << 20, 3);
    server.put_file(&id, "/workspace/kept.bin", &kept);
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/snapshots"),
        &json!({ "path": "/workspace" }),
    );
    r.expect(201);
    let snap = r.json()["id"].as_str().unwrap().to_string();

    disk.fill();
    // New work that needs the disk is refused with a clear answer ...
    let r = server.request_json(Method::POST, "/v1/sandboxes", &json!({}));
    assert_no_space(&r, "create");
    let r = server.request_bytes(
        Method::PUT,
        &Server::files_path(&id, "", "/workspace/new.bin"),
        vec![7u8; 256 << 10],
    );
    assert_no_space(&r, "upload");
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/snapshots"),
        &json!({ "path": "/workspace" }),
    );
    assert_no_space(&r, "snapshot");
    // ... while what exists keeps working.
    assert_eq!(server.run_ok(&id, "echo alive"), "alive\n");
    assert_eq!(server.get_file(&id, "/workspace/kept.bin"), kept);
    assert_eq!(server.list_ids(), vec![id.clone()]);
    server.request(Method::GET, "/health").expect(200);
    server
        .request(Method::GET, &format!("/v1/snapshots/{snap}"))
        .expect(200);

    // Space freed and the server restarted: everything is consistent and works again.
    std::fs::remove_dir_all(disk.filler()).unwrap();
    server.kill9();
    server.restart();
    assert_eq!(integrity(&disk.mnt.join("sandpit.db")), "ok");
    assert_eq!(server.list_ids(), vec![id.clone()]);
    assert_eq!(server.get_file(&id, "/workspace/kept.bin"), kept);
    let snaps = server.request(Method::GET, &format!("/v1/sandboxes/{id}/snapshots"));
    snaps.expect(200);
    assert_eq!(snaps.json()["snapshots"].as_array().map(Vec::len), Some(1));
    let other = server.create(&json!({ "restore": snap }));
    let other = other["id"].as_str().unwrap().to_string();
    assert_eq!(server.get_file(&other, "/workspace/kept.bin"), kept);
    server.put_file(&id, "/workspace/new.bin", b"now it fits");
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshots"),
            &json!({ "path": "/workspace" }),
        )
        .expect(201);
    drop(server);
}

#[test]
fn kill9_during_an_exec_leaves_a_working_sandbox() {
    let mut server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/before", b"acknowledged");
    let url = server.url(&format!("/v1/sandboxes/{id}/exec"));
    let exec = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .json(&json!({ "command": "sleep 3; echo late > /workspace/late" }))
            .send()
            .map(|r| r.status().as_u16())
    });
    // Wait until the command runs, then kill the server under it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !server
        .processes(&id)
        .iter()
        .any(|p| p.cmdline.contains("sleep 3"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the exec never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.kill9();
    assert!(exec.join().unwrap().is_err(), "the exec was never answered");
    server.restart();
    assert_eq!(server.get_file(&id, "/workspace/before"), b"acknowledged");
    assert_eq!(server.run_ok(&id, "echo after"), "after\n");
}
