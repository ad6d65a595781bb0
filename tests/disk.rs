//! Per-sandbox disk quotas (`limits.disk_mb`): a full disk is ENOSPC inside the sandbox,
//! the host, the server and neighbours are unaffected, the disk survives a server restart
//! without being mounted twice, grows while running, and deleting the sandbox frees it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn sandbox_dir(server: &Server, id: &str) -> PathBuf {
    server.data_dir().join("sandboxes").join(id)
}

/// How many mounts of the host's mount table sit at `path`.
fn mounts_at(path: &Path) -> usize {
    let path = path.canonicalize().unwrap_or(path.to_path_buf());
    let want = path.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

fn is_own_fs(dir: &Path) -> bool {
    let root = std::fs::metadata(dir.join("rootfs")).unwrap();
    let parent = std::fs::metadata(dir).unwrap();
    root.dev() != parent.dev()
}

/// Whether this (test) process, run as the server is, holds CAP_SYS_RESOURCE.
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap();
    eff & (1 << 24) != 0
}

fn patch_limits(server: &Server, id: &str, limits: Value) -> Resp {
    server.request_json(
        reqwest::Method::PATCH,
        &format!("/v1/sandboxes/{id}"),
        &json!({ "limits": limits }),
    )
}

/// Size of the filesystem holding `path` inside the sandbox, in MB (from `df`).
fn df_mb(server: &Server, id: &str, path: &str) -> u64 {
    let out = server.run_ok(id, &format!("df -m --output=size {path} | tail -1"));
    out.trim().parse().unwrap_or_else(|_| panic!("df: {out}"))
}

#[test]
fn a_full_disk_is_enospc_inside_and_nothing_else_notices() {
    let server = Server::start();
    let sb = server.create(&json!({ "limits": { "disk_mb": 48 } }));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["limits"]["disk_mb"], 48, "{sb}");
    assert_contained(&server, &id);
    let neighbour = server.new_sandbox();
    let dir = sandbox_dir(&server, &id);
    assert!(is_own_fs(&dir), "the sandbox's root is its own filesystem");
    assert_eq!(mounts_at(&dir.join("rootfs")), 1);
    let size = df_mb(&server, &id, "/workspace");
    assert!((30..=48).contains(&size), "disk of {size} MB");

    // Written before the disk fills up: must stay readable.
    let before = pseudo_random_bytes(1 << 20, 7);
    server.put_file(&id, "/workspace/before.bin", &before);

    let fill = server.exec(
        &id,
        "dd if=/dev/zero of=/tmp/fill bs=1M count=200 2>&1; echo rc=$?",
    );
    assert!(
        fill.stdout.contains("No space left on device"),
        "dd must hit ENOSPC: {fill:?}"
    );
    assert!(!fill.stdout.contains("rc=0"), "{fill:?}");
    // The same disk holds /workspace and /root: they are full too.
    let more = server.exec(
        &id,
        "head -c 4194304 /dev/zero > /workspace/more 2>&1 && echo wrote",
    );
    assert!(!more.stdout.contains("wrote"), "{more:?}");
    // An upload into the full sandbox is a clear 507.
    let path = Server::files_path(&id, "", "/workspace/upload.bin");
    let r = server.request_bytes(reqwest::Method::PUT, &path, vec![1u8; 256 << 10]);
    r.expect_error(507, "no_space");

    // Everything else keeps working: the sandbox, its old files, the neighbour, the server.
    assert_eq!(server.get_file(&id, "/workspace/before.bin"), before);
    assert_eq!(server.run_ok(&id, "echo alive"), "alive\n");
    let used = server.sandbox(&id)["disk_used_mb"].as_u64().unwrap_or(0);
    assert!(used >= 30, "disk_used_mb {used}");
    server.run_ok(
        &neighbour,
        "dd if=/dev/zero of=/tmp/big bs=1M count=100 status=none && rm /tmp/big",
    );
    server.request(reqwest::Method::GET, "/health").expect(200);

    // Freeing space inside works again.
    server.run_ok(&id, "rm /tmp/fill && echo ok > /workspace/after");

    server.delete_sandbox(&id);
    assert_eq!(mounts_at(&dir.join("rootfs")), 0, "unmounted at delete");
    assert!(!dir.exists(), "image removed at delete");
    let loops = std::process::Command::new("losetup")
        .arg("-a")
        .output()
        .unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout);
    assert!(
        !loops.contains(&format!("{}/disk.img", dir.display())),
        "loop device freed: {loops}"
    );
}

#[test]
fn the_disk_survives_a_server_restart_once_and_grows_while_running() {
    let mut server = Server::start();
    let sb = server.create(&json!({ "limits": { "disk_mb": 32 } }));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_contained(&server, &id);
    let dir = sandbox_dir(&server, &id);
    server.run_ok(&id, "echo kept > /workspace/kept");

    server.kill9();
    server.restart();
    assert_eq!(server.run_ok(&id, "cat /workspace/kept"), "kept\n");
    assert_eq!(mounts_at(&dir.join("rootfs")), 1, "not mounted twice");
    // Sleep and wake restart the agent on the same disk.
    server
        .request(reqwest::Method::POST, &format!("/v1/sandboxes/{id}/sleep"))
        .expect(200);
    assert_eq!(server.run_ok(&id, "cat /workspace/kept"), "kept\n");
    assert_eq!(mounts_at(&dir.join("rootfs")), 1, "not mounted twice");

    let full = server.exec(&id, "dd if=/dev/zero of=/tmp/a bs=1M count=48 2>&1");
    assert!(full.stdout.contains("No space left on device"), "{full:?}");
    server.run_ok(&id, "rm /tmp/a");

    // Growing works online where the server may resize (CAP_SYS_RESOURCE); the new space is
    // usable at once. Without that capability the answer says so and nothing changes.
    let r = patch_limits(&server, &id, json!({ "disk_mb": 96 }));
    let now = if has_cap_sys_resource() {
        r.expect(200);
        assert_eq!(r.json()["limits"]["disk_mb"], 96, "{}", r.text());
        let size = df_mb(&server, &id, "/tmp");
        assert!(size > 64, "grown to {size} MB");
        server.run_ok(
            &id,
            "dd if=/dev/zero of=/tmp/a bs=1M count=48 status=none && rm /tmp/a",
        );
        96
    } else {
        r.expect_error(400, "bad_request");
        assert!(r.text().contains("CAP_SYS_RESOURCE"), "{}", r.text());
        let size = df_mb(&server, &id, "/tmp");
        assert!(size <= 32, "still {size} MB");
        32
    };
    assert_eq!(server.sandbox(&id)["limits"]["disk_mb"], now);

    // Shrinking is refused with a clear message; the limit stays.
    let r = patch_limits(&server, &id, json!({ "disk_mb": 16 }));
    r.expect_error(400, "bad_request");
    assert!(r.text().contains("cannot shrink"), "{}", r.text());
    assert_eq!(server.sandbox(&id)["limits"]["disk_mb"], now);

    // A sandbox without a disk limit cannot be given one later; bad sizes are refused.
    let plain = server.new_sandbox();
    let r = patch_limits(&server, &plain, json!({ "disk_mb": 64 }));
    r.expect_error(400, "bad_request");
    assert!(
        r.text().contains("when the sandbox is created"),
        "{}",
        r.text()
    );
    server
        .request_json(
            reqwest::Method::POST,
            "/v1/sandboxes",
            &json!({ "limits": { "disk_mb": 1 } }),
        )
        .expect_error(400, "bad_request");

    server.delete_sandbox(&id);
    assert_eq!(mounts_at(&dir.join("rootfs")), 0);
    assert!(!dir.exists());
}

#[test]
fn the_server_default_applies_to_every_sandbox() {
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "[defaults]\ndisk_mb = 40\n").unwrap();
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), cfg.path().display().to_string()],
        ..Default::default()
    });
    let sb = server.create(&json!({}));
    let id = sb["id"].as_str().unwrap().to_string();
    assert_eq!(sb["limits"]["disk_mb"], 40, "{sb}");
    assert!(is_own_fs(&sandbox_dir(&server, &id)));
    let own = server.create(&json!({ "limits": { "disk_mb": 24 } }));
    assert_eq!(own["limits"]["disk_mb"], 24, "{own}");
}
