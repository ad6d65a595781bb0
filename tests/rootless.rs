//! Rootless mode: the server runs as an ordinary system user and still isolates.

mod common;

use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

const USER: &str = "sandpit-rootless";
/// A second user that has subordinate ids, so the newuidmap path is exercised too.
const SUB_USER: &str = "sandpit-rootsub";
const SUB_START: u64 = 3_000_000;
const SUB_COUNT: u64 = 131_072;

/// The rootless user `name`, created when missing.
fn rootless_user_named(name: &str) -> RunAs {
    let lookup = || {
        let out = Command::new("getent")
            .args(["passwd", name])
            .output()
            .expect("getent");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let entry = match lookup() {
        Some(e) => e,
        None => {
            let out = Command::new("useradd")
                .args([
                    "--system",
                    "--create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .output()
                .expect("useradd");
            // A concurrent creation is fine; the lookup below decides.
            if !out.status.success() {
                eprintln!("useradd: {}", String::from_utf8_lossy(&out.stderr));
            }
            lookup().expect("rootless user exists after useradd")
        }
    };
    let f: Vec<&str> = entry.split(':').collect();
    RunAs {
        user: name.into(),
        uid: f[2].parse().unwrap(),
        gid: f[3].parse().unwrap(),
        home: PathBuf::from(f[5]),
    }
}

fn rootless_user() -> RunAs {
    rootless_user_named(USER)
}

/// The user's subordinate uid ranges from /etc/subuid (start, count).
fn subuid_ranges(user: &RunAs) -> Vec<(u64, u64)> {
    std::fs::read_to_string("/etc/subuid")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let ours = f
                .first()
                .is_some_and(|n| *n == user.user || *n == user.uid.to_string());
            (ours && f.len() == 3).then(|| (f[1].parse().ok(), f[2].parse().ok()))
        })
        .filter_map(|(a, b)| Some((a?, b?)))
        .collect()
}

#[test]
fn rootless_server_isolates_sandboxes() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, cannot switch to {USER}; rootless test skipped");
        return;
    }
    let user = rootless_user();
    let server = Server::start_with(ServerOpts {
        run_as: Some(user.clone()),
        ..Default::default()
    });
    // The server process really runs as the user.
    let pid = server.pid().expect("server pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line
            .split_whitespace()
            .skip(1)
            .all(|u| u == user.uid.to_string()),
        "server not running as {}: {uid_line}",
        user.uid
    );

    let id = server.new_sandbox();
    let host_uid = assert_contained(&server, &id);
    assert_eq!(server.run_ok(&id, "id -u"), "0\n");
    let in_subuids = subuid_ranges(&user)
        .iter()
        .any(|(start, count)| (*start..start + count).contains(&(host_uid as u64)));
    assert!(
        host_uid == user.uid || in_subuids,
        "root inside maps to host uid {host_uid}, neither {} nor one of its subuids",
        user.uid
    );

    // Files round trip.
    let blob = pseudo_random_bytes(1 << 20, 7);
    server.put_file(&id, "/workspace/r/blob.bin", &blob);
    assert!(server.get_file(&id, "/workspace/r/blob.bin") == blob);
    assert_eq!(
        server.run_ok(&id, "wc -c < /workspace/r/blob.bin").trim(),
        "1048576"
    );
    server.run_ok(&id, "echo inside > /workspace/r/made.txt");
    assert_eq!(server.get_file(&id, "/workspace/r/made.txt"), b"inside\n");

    // A root-only host file is neither visible nor readable, by exec or the files API.
    let secret = HostFile::new("sandpit-root-only", b"root only", 0o600);
    let inside = format!("/tmp/{}", secret.name());
    let r = server.exec(&id, &format!("cat {inside}"));
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(!r.stdout.contains("root only"), "{r:?}");
    assert_ne!(server.exec(&id, &format!("test -e {inside}")).exit_code, 0);
    let r = server.request(
        reqwest::Method::GET,
        &Server::files_path(&id, "", &secret.path.display().to_string()),
    );
    assert!(r.status >= 400 && !r.text().contains("root only"), "{r:?}");
    assert_ne!(server.exec(&id, "cat /etc/shadow").exit_code, 0);

    // Exec basics and a second sandbox.
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", "print(6*7)"] }));
    assert_eq!(r.stdout, "42\n", "{r:?}");
    let other = server.new_sandbox();
    assert_contained(&server, &other);
    assert_ne!(
        server
            .exec(&other, "test -e /workspace/r/made.txt")
            .exit_code,
        0
    );

    // A disk of its own needs a loop mount, which a rootless server cannot make.
    let r = server.request_json(
        reqwest::Method::POST,
        "/v1/sandboxes",
        &json!({ "limits": { "disk_mb": 64 } }),
    );
    r.expect_error(501, "not_supported");
    assert!(r.text().contains("disk_mb"), "{}", r.text());
}

/// Gives `user` subordinate uids and gids (once), as `usermod --add-subuids` would.
fn grant_subordinate_ids(user: &RunAs) {
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if !text
            .lines()
            .any(|l| l.starts_with(&format!("{}:", user.user)))
        {
            let line = format!("{}:{SUB_START}:{SUB_COUNT}\n", user.user);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .unwrap();
            std::io::Write::write_all(&mut f, line.as_bytes()).unwrap();
        }
    }
}

#[test]
fn rootless_server_maps_subordinate_ids_and_cleans_up_their_files() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root, cannot switch users; rootless test skipped");
        return;
    }
    assert!(
        Command::new("newuidmap").arg("--help").output().is_ok(),
        "newuidmap is missing: install the uidmap package"
    );
    let user = rootless_user_named(SUB_USER);
    grant_subordinate_ids(&user);
    let server = Server::start_with(ServerOpts {
        run_as: Some(user.clone()),
        ..Default::default()
    });
    let id = server.new_sandbox();
    assert_eq!(assert_contained(&server, &id), user.uid);
    // Root maps to the user, ids 1.. to its subordinate range.
    let map = server.run_ok(&id, "cat /proc/self/uid_map");
    let lines: Vec<Vec<u64>> = map
        .lines()
        .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
        .collect();
    assert_eq!(lines.len(), 2, "{map}");
    assert_eq!(lines[0], vec![0, u64::from(user.uid), 1], "{map}");
    assert_eq!(lines[1][0], 1, "{map}");
    assert!(
        (SUB_START..SUB_START + SUB_COUNT).contains(&lines[1][1]),
        "{map}"
    );

    // A file given to uid 1000 inside belongs to a subordinate id on the host, and the
    // sandbox's removal still deletes it (the server user could not do so directly).
    server.run_ok(
        &id,
        "mkdir -p /workspace/d && echo x > /workspace/d/f && chown -R 1000:1000 /workspace/d && chmod 000 /workspace/d",
    );
    let dir = server.data_dir().join("sandboxes").join(&id);
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.join("rootfs/workspace/d"))
            .unwrap()
            .uid()
    };
    assert!(
        (SUB_START..SUB_START + SUB_COUNT).contains(&u64::from(owner)),
        "owner {owner}"
    );
    server.delete_sandbox(&id);
    assert!(!dir.exists(), "{} was left behind", dir.display());
}
