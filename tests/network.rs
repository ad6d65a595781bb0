//! Egress networking: `network: "none"` (default) reaches nothing; `"egress"` goes out
//! through slirp4netns, reaches an allowed server in a network namespace the test creates,
//! and never the host's loopback, the host's own addresses, private ranges it does not allow
//! or the metadata address, even after root inside tries to change the routes.

mod common;

use common::netns::{host_addresses, HostListener, NetNs, GIT_SERVER, PROBE};
use common::{assert_contained, RunAs, Server, ServerOpts};
use reqwest::Method;
use serde_json::json;

/// A namespace with a web server on port 8080 answering `GET /hello`.
fn web_server() -> (NetNs, tempfile::TempDir) {
    let mut ns = NetNs::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("server.py");
    std::fs::write(&script, GIT_SERVER).expect("write server");
    let root = dir.path().to_str().expect("utf-8").to_string();
    ns.spawn(
        &["python3", script.to_str().expect("utf-8"), &root, "8080"],
        &[],
        &dir.path().join("server.log"),
    );
    ns.wait_listening(8080);
    (ns, dir)
}

/// Connects from inside the sandbox; `ok <first line>` or `err <errno> <message>`.
fn probe(server: &Server, id: &str, host: &str, port: u16) -> String {
    let r = server.exec(id, &format!("python3 /tmp/probe.py {host} {port}"));
    assert_eq!(r.exit_code, 0, "probe failed to run: {r:?}");
    r.stdout.trim().to_string()
}

#[track_caller]
fn assert_blocked(server: &Server, id: &str, host: &str, port: u16) {
    let p = probe(server, id, host, port);
    assert!(p.starts_with("err"), "{id} reached {host}:{port}: {p}");
}

fn slirp_pid(server: &Server, id: &str) -> i32 {
    let path = server
        .data_dir()
        .join("sandboxes")
        .join(id)
        .join("slirp4netns.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["pid"].as_i64().expect("pid") as i32
}

/// Alive and not a zombie waiting for a reaper.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim_start().to_string()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

#[test]
fn network_none_is_the_default_and_reaches_nothing() {
    let (ns, _dir) = web_server();
    let server = Server::start();
    let id = server.new_sandbox();
    assert_eq!(server.sandbox(&id)["network"], "none");
    server.put_file(&id, "/tmp/probe.py", PROBE.as_bytes());
    let links = server.run_ok(&id, "ip -o link show | awk '{print $2}'");
    assert_eq!(links.trim(), "lo:", "a sandbox without egress has only lo");
    assert_blocked(&server, &id, &ns.ns_addr, 8080);
    assert_blocked(&server, &id, &ns.host_addr, 8080);
}

#[test]
fn bad_network_settings_are_refused() {
    let server = Server::start();
    for (body, code) in [
        (json!({"network": "bridge"}), "bad_request"),
        (json!({"allow": ["1.2.3.4"]}), "bad_request"),
        (
            json!({"network": "egress", "allow": ["::1"]}),
            "bad_request",
        ),
        (
            json!({"network": "egress", "allow": ["10.0.2.0/24"]}),
            "bad_request",
        ),
        (
            json!({"network": "egress", "allow": ["no such host!"]}),
            "bad_request",
        ),
        (
            json!({"network": "egress", "allow": "1.2.3.4"}),
            "invalid_json",
        ),
    ] {
        server
            .request_json(Method::POST, "/v1/sandboxes", &body)
            .expect_error(400, code);
    }
    assert!(server.list_ids().is_empty(), "no sandbox was left behind");
}

#[test]
fn egress_reaches_an_allowed_server_and_never_the_host_or_metadata() {
    let (ns, _dir) = web_server();
    let local = HostListener::bind("127.0.0.1");
    let any = HostListener::bind("0.0.0.0");
    let server = Server::start();
    let sb = server.create(&json!({"network": "egress", "allow": [format!("{}/32", ns.ns_addr)]}));
    let id = sb["id"].as_str().expect("id").to_string();
    assert_eq!(sb["network"], "egress");
    assert_eq!(sb["allow"], json!([format!("{}/32", ns.ns_addr)]));
    assert_contained(&server, &id);
    server.put_file(&id, "/tmp/probe.py", PROBE.as_bytes());

    let fetch = server.run_ok(
        &id,
        &format!("python3 -c \"import urllib.request as u; print(u.urlopen('http://{}:8080/hello', timeout=10).read().decode())\"", ns.ns_addr),
    );
    assert_eq!(fetch.trim(), "hello");
    assert_eq!(
        server.run_ok(&id, "cat /etc/resolv.conf").trim(),
        "nameserver 10.0.2.3"
    );

    let check_blocked = |why: &str| {
        for (host, port) in [
            ("10.0.2.2", local.port),
            ("127.0.0.1", local.port),
            ("10.0.2.2", any.port),
            (ns.host_addr.as_str(), any.port),
            ("169.254.169.254", 80),
            ("10.0.2.2", 80),
        ] {
            let p = probe(&server, &id, host, port);
            assert!(p.starts_with("err"), "{why}: reached {host}:{port}: {p}");
        }
        for addr in host_addresses() {
            let p = probe(&server, &id, &addr, any.port);
            assert!(
                p.starts_with("err"),
                "{why}: reached host address {addr}: {p}"
            );
        }
        // A blocked route answers at once with EACCES: the block is the route, not a timeout.
        let meta = probe(&server, &id, "169.254.169.254", 80);
        assert!(meta.starts_with("err 13"), "{why}: metadata: {meta}");
    };
    check_blocked("before");
    let v6 = server.run_ok(&id, "ip -6 -o addr show dev tap0");
    assert_eq!(v6.trim(), "", "tap0 has IPv6 addresses: {v6}");

    // Root inside has CAP_NET_ADMIN in its user namespace, but the network namespace is
    // not its own: every change is refused.
    for cmd in [
        "ip route del prohibit 169.254.169.254",
        "ip route del prohibit 10.0.0.0/8",
        "ip route flush table main",
        "ip route replace default via 10.0.2.2 dev tap0",
        "ip link set tap0 down",
        "ip addr flush dev tap0",
        "ip addr add 10.213.0.99/32 dev lo",
        "echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet",
        "ip netns add x",
        // Raw and packet sockets could hand slirp4netns packets the routes never saw.
        "python3 -c 'import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW)'",
        "python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 6)'",
    ] {
        let r = server.exec(&id, cmd);
        assert_ne!(
            r.exit_code, 0,
            "'{cmd}' succeeded inside the sandbox: {r:?}"
        );
    }
    check_blocked("after trying to change the routes");
    let again = probe(&server, &id, &ns.ns_addr, 8080);
    assert!(again.starts_with("ok"), "allowed server lost: {again}");
    assert_eq!(local.count(), 0, "the host's loopback listener was reached");
    assert_eq!(any.count(), 0, "the host's listener on 0.0.0.0 was reached");

    // Root may still bind low ports and serve inside its own namespace.
    server.run_ok(
        &id,
        "python3 -c \"import socket; s=socket.socket(); s.bind(('0.0.0.0', 80))\"",
    );
}

#[test]
fn egress_without_an_allow_entry_does_not_reach_private_ranges() {
    let (ns, _dir) = web_server();
    let server = Server::start();
    let id = server.create(&json!({"network": "egress"}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_contained(&server, &id);
    server.put_file(&id, "/tmp/probe.py", PROBE.as_bytes());
    let p = probe(&server, &id, &ns.ns_addr, 8080);
    assert!(
        p.starts_with("err 13"),
        "reached a private address without an allow entry: {p}"
    );
    let routes = server.run_ok(&id, "ip -4 route show");
    assert!(routes.contains("default via 10.0.2.2"), "{routes}");
    for r in [
        "prohibit 10.0.0.0/8",
        "prohibit 172.16.0.0/12",
        "prohibit 192.168.0.0/16",
        "prohibit 169.254.169.254",
    ] {
        assert!(routes.contains(r), "missing '{r}':\n{routes}");
    }
}

#[test]
fn slirp4netns_lives_with_the_sandbox_across_restarts_and_dies_with_it() {
    let (ns, _dir) = web_server();
    let mut server = Server::start();
    let id = server.create(&json!({"network": "egress", "allow": [ns.ns_addr.clone()]}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    server.put_file(&id, "/tmp/probe.py", PROBE.as_bytes());
    let pid = slirp_pid(&server, &id);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("slirp4netns comm");
    assert_eq!(comm.trim(), "slirp4netns");
    // Starting it left the host's mounts alone: the test's `ip netns` bind still works.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "true"])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "the test's network namespace was unmounted: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The server dies; the sandbox and its network stay and are re-attached.
    server.kill9();
    assert!(running(pid), "slirp4netns died with the server");
    server.restart();
    let p = probe(&server, &id, &ns.ns_addr, 8080);
    assert!(p.starts_with("ok"), "after the restart: {p}");
    assert_eq!(
        slirp_pid(&server, &id),
        pid,
        "a healthy slirp4netns was replaced"
    );

    // slirp4netns dies: the next call brings the sandbox back with a new one.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "kill -9 {pid} did not end it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let p = probe(&server, &id, &ns.ns_addr, 8080);
    assert!(p.starts_with("ok"), "after slirp4netns died: {p}");
    let second = slirp_pid(&server, &id);
    assert_ne!(second, pid);
    assert!(running(second));

    server.delete_sandbox(&id);
    assert!(
        !running(second),
        "slirp4netns {second} outlived its sandbox"
    );
    assert!(!running(pid));
}

/// The rootless test user (the same one tests/rootless.rs uses), created when missing.
fn rootless_user() -> RunAs {
    const USER: &str = "sandpit-rootless";
    let lookup = || {
        let out = std::process::Command::new("getent")
            .args(["passwd", USER])
            .output()
            .expect("getent");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let entry = lookup().unwrap_or_else(|| {
        let _ = std::process::Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ])
            .status();
        lookup().expect("rootless user exists after useradd")
    });
    let f: Vec<&str> = entry.split(':').collect();
    RunAs {
        user: USER.into(),
        uid: f[2].parse().expect("uid"),
        gid: f[3].parse().expect("gid"),
        home: f[5].into(),
    }
}

#[test]
fn a_rootless_server_refuses_egress_it_could_not_enforce() {
    let server = Server::start_with(ServerOpts {
        run_as: Some(rootless_user()),
        ..ServerOpts::default()
    });
    let r = server.request_json(Method::POST, "/v1/sandboxes", &json!({"network": "egress"}));
    r.expect_error(501, "not_supported");
    assert!(r.text().contains("root"), "{}", r.text());
    assert!(server.list_ids().is_empty());
    // Loopback-only sandboxes still work.
    let id = server.new_sandbox();
    assert_eq!(server.sandbox(&id)["network"], "none");
}
