//! Hostile tests: what a sandbox must not see or do. Each one first checks with
//! `assert_contained` that the sandbox really is in its own user and pid namespaces.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

/// A started server and one contained sandbox.
fn contained() -> (Server, String) {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    (server, id)
}

#[test]
fn host_directories_are_not_visible() {
    let (server, id) = contained();
    for dir in ["/root", "/home", "/work", "/var/log"] {
        let r = server.exec(&id, &format!("if [ -e {dir} ]; then ls -A {dir}; fi"));
        assert_eq!(r.exit_code, 0, "{dir}: {r:?}");
        assert_eq!(r.stdout, "", "{dir} shows host content: {:?}", r.stdout);
    }
    let r = server.exec(&id, "test -e /work/main/Cargo.toml");
    assert_ne!(r.exit_code, 0, "the project checkout is visible");
    // Nor the server's data dir (where every sandbox's files live).
    let data = server.data_dir().display().to_string();
    let r = server.exec(&id, &format!("test -e '{data}'"));
    assert_ne!(r.exit_code, 0, "server data dir {data} visible");
}

#[test]
fn host_tmp_is_not_visible() {
    let (server, id) = contained();
    let marker = HostFile::new("sandpit-marker", b"host secret", 0o644);
    let r = server.exec(&id, &format!("test -e /tmp/{}", marker.name()));
    assert_ne!(r.exit_code, 0, "host /tmp marker visible inside");
    let listing = server.run_ok(&id, "ls -A /tmp");
    assert!(
        !listing.contains(&marker.name()),
        "host /tmp listed: {listing}"
    );
    // And the other way round: the sandbox's /tmp is not the host's.
    let name = unique("sandpit-inside");
    server.run_ok(&id, &format!("echo x > /tmp/{name}"));
    assert_host_absent(
        &std::path::Path::new("/tmp").join(&name),
        "sandbox /tmp write",
    );
}

#[test]
fn usr_and_etc_writes_stay_inside() {
    let (server, id) = contained();
    for dir in ["/usr", "/etc", "/usr/bin"] {
        let name = unique("sandpit-probe");
        let path = format!("{dir}/{name}");
        // The exit code may be 0 (a private writable layer) or not (read-only).
        let _ = server.exec(&id, &format!("touch {path}; echo x > {path}"));
        assert_host_absent(std::path::Path::new(&path), "write to host system dir");
    }
    let before = std::fs::read("/etc/hostname").ok();
    let _ = server.exec(&id, "echo pwned > /etc/hostname");
    assert_eq!(
        std::fs::read("/etc/hostname").ok(),
        before,
        "/etc/hostname changed"
    );
    let _ = server.exec(&id, "rm -f /usr/bin/env");
    assert!(
        std::path::Path::new("/usr/bin/env").exists(),
        "sandbox removed host /usr/bin/env"
    );
}

#[test]
fn etc_shadow_is_unreadable() {
    let (server, id) = contained();
    let r = server.exec(&id, "cat /etc/shadow");
    assert_ne!(r.exit_code, 0, "/etc/shadow readable: {r:?}");
    assert!(!r.stdout.contains("root:"), "{r:?}");
    // Not through the files API either.
    let r = server.request(Method::GET, &Server::files_path(&id, "", "/etc/shadow"));
    let host = std::fs::read("/etc/shadow").unwrap_or_default();
    assert!(
        !(r.status == 200 && !host.is_empty() && r.body == host),
        "files API served the host's /etc/shadow"
    );
    assert!(r.status >= 400, "status {}", r.status);
}

#[test]
fn only_own_processes_are_visible() {
    let (server, id) = contained();
    let procs = server.processes(&id);
    assert!(
        procs.len() < 20,
        "{} processes visible: {procs:?}",
        procs.len()
    );
    let me = std::env::current_exe().unwrap();
    let me = me.file_name().unwrap().to_string_lossy().into_owned();
    for p in &procs {
        assert!(!p.cmdline.contains(&me), "test process visible: {p:?}");
        assert!(!p.cmdline.contains(" serve "), "server visible: {p:?}");
        assert!(!p.cmdline.contains("systemd"), "host init visible: {p:?}");
    }
    // Our own pid, looked up inside, is not us (it is usually absent).
    let ours = std::fs::read(format!("/proc/{}/cmdline", std::process::id())).unwrap();
    let r = server.exec(&id, &format!("cat /proc/{}/cmdline", std::process::id()));
    assert!(
        r.stdout.as_bytes() != ours.as_slice(),
        "the test process is visible inside"
    );
    let r = server.exec(&id, "ls /proc | grep -c '^[0-9]'");
    let n: usize = r.stdout.trim().parse().unwrap();
    assert!(n < 20, "{n} pids in /proc");
}

#[test]
fn sandboxes_cannot_see_each_other() {
    let server = Server::start();
    let a = server.new_sandbox();
    let b = server.new_sandbox();
    assert_contained(&server, &a);
    assert_contained(&server, &b);
    server.run_ok(
        &a,
        "echo a-secret > /workspace/secret-a && echo a-secret > /tmp/secret-a && \
         nohup sleep 321 >/dev/null 2>&1 &",
    );
    for path in ["/workspace/secret-a", "/tmp/secret-a"] {
        let r = server.exec(&b, &format!("cat {path}"));
        assert_ne!(r.exit_code, 0, "b reads a's {path}: {r:?}");
        server
            .request(Method::GET, &Server::files_path(&b, "", path))
            .expect_error(404, "not_found");
        assert_eq!(server.get_file(&a, path), b"a-secret\n");
    }
    assert!(!server
        .run_ok(&b, "ls -A /workspace /tmp")
        .contains("secret"));
    server.wait_for_process(&a, "sleep 321");
    let seen: Vec<Proc> = server
        .processes(&b)
        .into_iter()
        .filter(|p| p.cmdline.contains("321"))
        .collect();
    assert!(seen.is_empty(), "b sees a's processes: {seen:?}");
}

#[test]
fn server_port_is_unreachable_from_inside() {
    let (server, id) = contained();
    let script = format!(
        "import socket\n\
         for host in ('127.0.0.1', 'localhost'):\n\
         \x20   s = socket.socket(); s.settimeout(3)\n\
         \x20   try:\n\
         \x20       s.connect((host, {port})); print('CONNECTED', host)\n\
         \x20   except Exception as e:\n\
         \x20       print('FAILED', host, type(e).__name__)\n",
        port = server.port
    );
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(!r.stdout.contains("CONNECTED"), "server reachable: {r:?}");
    assert_eq!(r.stdout.matches("FAILED").count(), 2, "{r:?}");
}

#[test]
fn only_loopback_interface() {
    let (server, id) = contained();
    let dev = server.run_ok(&id, "cat /proc/net/dev");
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim()))
        .collect();
    assert_eq!(names, ["lo"], "{dev}");
    // Loopback inside works (a server and a client in the sandbox).
    let script = "import socket\n\
                  l = socket.socket(); l.bind(('127.0.0.1', 0)); l.listen(1)\n\
                  c = socket.create_connection(l.getsockname(), timeout=3)\n\
                  s, _ = l.accept(); c.sendall(b'ping'); print(s.recv(4).decode())\n";
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert_eq!(r.stdout, "ping\n", "loopback inside broken: {r:?}");
    // Nothing outside is routable.
    let script = "import socket\n\
                  s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                  try:\n    s.connect(('192.0.2.1', 9)); print('ROUTE')\n\
                  except OSError as e:\n    print('NOROUTE', e.errno)\n";
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert!(r.stdout.starts_with("NOROUTE"), "{r:?}");
}

#[test]
fn uid_maps_are_unprivileged_and_distinct() {
    let server = Server::start();
    let a = server.new_sandbox();
    let b = server.new_sandbox();
    let ua = assert_contained(&server, &a);
    let ub = assert_contained(&server, &b);
    assert_ne!(ua, ub, "two sandboxes share host uid {ua}");
    for id in [&a, &b] {
        assert_eq!(server.run_ok(id, "id -u"), "0\n");
        let uid_map = server.run_ok(id, "cat /proc/self/uid_map");
        for line in uid_map.lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect();
            assert_ne!(f[1], 0, "a range maps to host root: {uid_map}");
            assert!(f[2] < 4_294_967_295, "identity map: {uid_map}");
        }
        let gid_map = server.run_ok(id, "cat /proc/self/gid_map");
        let (_, host_gid, _) = id_map_entry(&gid_map, 0).expect("gid 0 mapped");
        assert_ne!(host_gid, 0, "gid 0 is host gid 0: {gid_map}");
    }
    // Files written by root inside belong to the unprivileged uid outside: check through
    // the host's view of a process inside.
    server.run_ok(&a, "nohup sleep 654 >/dev/null 2>&1 &");
    server.wait_for_process(&a, "sleep 654");
    let host_owner = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00654\x00"))
        .map(|e| std::os::unix::fs::MetadataExt::uid(&e.metadata().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(host_owner, vec![ua], "host view of the sandbox's process");
}

#[test]
fn kill_all_inside_leaves_the_agent_working() {
    let (server, id) = contained();
    server.run_ok(&id, "nohup sleep 500 >/dev/null 2>&1 &");
    server.wait_for_process(&id, "sleep 500");
    // The exec itself may be killed; any HTTP answer is fine, the sandbox must survive.
    let r = server.exec_resp(&id, &json!({ "command": "kill -9 -1; sleep 1; echo done" }));
    assert!(r.status < 600, "{r:?}");
    assert_eq!(server.run_ok(&id, "echo alive"), "alive\n");
    assert_eq!(server.run_ok(&id, "echo again"), "again\n");
    server.put_file(&id, "/workspace/after-kill", b"ok");
    assert_eq!(server.get_file(&id, "/workspace/after-kill"), b"ok");
    assert_eq!(server.sandbox(&id)["status"], "running");
    assert!(
        !server
            .processes(&id)
            .iter()
            .any(|p| p.cmdline == "sleep 500"),
        "kill -9 -1 did not reach the background process"
    );
}

#[test]
fn seccomp_blocks_new_user_namespaces() {
    let (server, id) = contained();
    let r = server.exec(&id, "unshare -U true");
    assert_ne!(r.exit_code, 0, "unshare -U succeeded: {r:?}");
    let script = "import ctypes, os\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  rc = libc.unshare(0x10000000)\n\
                  print('ALLOWED' if rc == 0 else 'BLOCKED %d' % ctypes.get_errno())\n";
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert!(
        r.stdout.starts_with("BLOCKED"),
        "unshare(CLONE_NEWUSER): {r:?}"
    );
}

#[test]
fn seccomp_blocks_mount() {
    let (server, id) = contained();
    let r = server.exec(
        &id,
        "mkdir -p /tmp/mnt-probe && mount -t tmpfs x /tmp/mnt-probe",
    );
    assert_ne!(r.exit_code, 0, "mount succeeded: {r:?}");
    let script = "import ctypes\n\
                  libc = ctypes.CDLL(None, use_errno=True)\n\
                  rc = libc.mount(b'x', b'/tmp/mnt-probe', b'tmpfs', 0, None)\n\
                  print('ALLOWED' if rc == 0 else 'BLOCKED %d' % ctypes.get_errno())\n";
    let r = server.exec_json(&id, &json!({ "argv": ["python3", "-c", script] }));
    assert!(r.stdout.starts_with("BLOCKED"), "mount(2): {r:?}");
    let mounts = server.run_ok(&id, "cat /proc/self/mountinfo");
    assert!(!mounts.contains("/tmp/mnt-probe"), "{mounts}");
}

#[test]
fn no_new_privs_and_seccomp_filter_are_set() {
    let (server, id) = contained();
    let status = server.run_ok(&id, "cat /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(field("NoNewPrivs:"), "1", "{status}");
    assert_eq!(field("Seccomp:"), "2", "{status}");
}

#[test]
fn dev_is_minimal() {
    let (server, id) = contained();
    let r = server.exec(
        &id,
        "head -c 4 /dev/zero | od -An -tu1; echo x > /dev/null && echo null-ok; \
         head -c 8 /dev/urandom | wc -c",
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert!(r.stdout.contains("null-ok"), "{r:?}");
    for dev in ["/dev/mem", "/dev/kmem", "/dev/kmsg", "/dev/port"] {
        let r = server.exec(&id, &format!("test -e {dev}"));
        assert_ne!(r.exit_code, 0, "{dev} exists inside");
    }
    let block = server.run_ok(&id, "find /dev -type b 2>/dev/null");
    assert_eq!(block, "", "block devices inside: {block}");
}

#[test]
fn files_api_does_not_escape_through_symlinks_or_dotdot() {
    let (server, id) = contained();
    let secret = HostFile::new("sandpit-secret", b"host-only secret", 0o644);
    let host_path = secret.path.display().to_string();
    server.run_ok(
        &id,
        &format!("ln -s {host_path} /workspace/esc && ln -s /tmp /workspace/tmplink"),
    );
    // Reading through a symlink resolves inside the sandbox, where the target is absent.
    for path in [
        "/workspace/esc".to_string(),
        format!("/../../../../../..{host_path}"),
        format!("/workspace/../../../../..{host_path}"),
    ] {
        let r = server.request(Method::GET, &Server::files_path(&id, "", &path));
        assert!(
            !r.body.windows(16).any(|w| w == b"host-only secret"),
            "host file read through {path}"
        );
        assert!(r.status >= 400, "{path}: status {}", r.status);
    }
    // Writing through a symlinked directory or `..` never lands on the host.
    for (i, path) in [
        "/workspace/tmplink/{}".to_string(),
        "/../../../../../../tmp/{}".to_string(),
        "/workspace/../../../../../tmp/{}".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let name = unique(&format!("sandpit-put{i}"));
        let path = path.replace("{}", &name);
        let _ = server.request_bytes(
            Method::PUT,
            &Server::files_path(&id, "", &path),
            b"x".to_vec(),
        );
        assert_host_absent(
            &std::path::Path::new("/tmp").join(&name),
            &format!("PUT {path}"),
        );
    }
    // Deleting through a symlink does not touch the host file either.
    let _ = server.request(
        Method::DELETE,
        &Server::files_path(&id, "", &format!("/workspace/tmplink/{}", secret.name())),
    );
    assert!(secret.path.exists(), "host file deleted through the API");
}
