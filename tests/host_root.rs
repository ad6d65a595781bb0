//! The attacks of the security review (issue 16), made from inside sandboxes through the
//! public API: symlinks and rename races that host root used to follow when it prepared a
//! sandbox's root at a wake or a restart, taking over the agent (ptrace, /proc/1/mem,
//! pidfd_getfd, signals), an agent that stops answering, and the agent's log on the host.
//! Every victim is a decoy the test owns. Each test that runs hostile commands first checks
//! with `assert_contained` that the sandbox has its own pid namespace and an unprivileged uid.

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A root-owned directory in the host's /tmp with a 0600 secret and a file to truncate;
/// [`Decoy::assert_untouched`] checks every byte, owner and mode of it.
struct Decoy {
    dir: tempfile::TempDir,
}

const SECRET: &[u8] = b"decoy secret: host root owns this file";

impl Decoy {
    fn new() -> Decoy {
        let dir = tempfile::Builder::new()
            .prefix("sandpit-decoy-")
            .tempdir_in("/tmp")
            .expect("decoy dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod decoy");
        for name in ["secret", "victim"] {
            let p = dir.path().join(name);
            std::fs::write(&p, SECRET).expect("write decoy");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .expect("chmod decoy file");
        }
        Decoy { dir }
    }

    fn path(&self) -> String {
        self.dir.path().display().to_string()
    }

    #[track_caller]
    fn assert_untouched(&self, after: &str) {
        let meta = std::fs::metadata(self.dir.path()).expect("decoy dir");
        assert_eq!(
            meta.mode() & 0o7777,
            0o755,
            "{after}: decoy dir mode changed"
        );
        assert_eq!(
            (meta.uid(), meta.gid()),
            (0, 0),
            "{after}: decoy dir owner changed"
        );
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .expect("list decoy")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["secret", "victim"],
            "{after}: something was made in the decoy"
        );
        for name in ["secret", "victim"] {
            let p = self.dir.path().join(name);
            let meta = std::fs::metadata(&p).expect("decoy file");
            assert_eq!(meta.mode() & 0o7777, 0o600, "{after}: {name} mode changed");
            assert_eq!(
                (meta.uid(), meta.gid()),
                (0, 0),
                "{after}: {name} owner changed"
            );
            assert_eq!(
                std::fs::read(&p).expect("read decoy"),
                SECRET,
                "{after}: {name} changed"
            );
        }
    }
}

fn sleep_and_wake(server: &Server, id: &str) {
    server
        .request(Method::POST, &format!("/v1/sandboxes/{id}/sleep"))
        .expect(200);
    assert_eq!(server.sandbox(id)["status"], "sleeping");
    server
        .request(Method::POST, &format!("/v1/sandboxes/{id}/wake"))
        .expect(200);
}

/// The host pid of the sandbox's agent: the process that holds its agent.log.
fn agent_pid(server: &Server, id: &str) -> i32 {
    let log = server
        .data_dir()
        .join("sandboxes")
        .join(id)
        .join("agent.log");
    holders(&log)
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sandpit\0agent\0")
        })
        .unwrap_or_else(|| panic!("no agent holds {}", log.display()))
}

/// Pids of host processes with `file` open.
fn holders(file: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == file))
        {
            out.push(pid);
        }
    }
    out
}

/// Every name the host's preparation of a root touches, made a symlink to `target`; the
/// mount points are busy while the sandbox runs and stay as they are.
fn plant_symlinks(server: &Server, id: &str, target: &str) {
    let script = format!(
        "cd / && for d in var tmp root home run mnt .sandpit; do rm -rf \"/$d\" 2>/dev/null; \
         ln -sfn '{target}' \"/$d\" || exit 1; done; ls -la / >&2"
    );
    let r = server.exec_json(id, &json!({"argv": ["sh", "-c", script], "cwd": "/"}));
    assert_eq!(r.exit_code, 0, "{r:?}");
}

#[test]
fn symlinks_planted_in_the_root_are_not_followed_on_wake_or_restart() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let decoy = Decoy::new();
    plant_symlinks(&server, &id, &decoy.path());
    sleep_and_wake(&server, &id);
    decoy.assert_untouched("a wake");
    // The restart a call makes when the agent is gone (killed here from the host).
    let pid = agent_pid(&server, &id);
    // SAFETY: a signal to a process of the test's own sandbox.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // Until the kernel has torn the agent down its socket may refuse a call (503); the
    // restart under test is the one a call makes once the agent is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.split_whitespace().nth(2) != Some("Z"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed agent lingers"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = server.exec_json(
        &id,
        &json!({"argv": ["cat", "/proc/1/cmdline"], "cwd": "/"}),
    );
    assert_eq!(out.stdout, "sandpit\0agent\0", "{out:?}");
    decoy.assert_untouched("a restart");
    // The sandbox's own symlinks stay its own (nothing was made through them).
    let r = server.exec_json(&id, &json!({"argv": ["readlink", "/var"], "cwd": "/"}));
    assert_eq!(r.stdout.trim(), decoy.path());
}

#[test]
fn a_planted_dot_sandpit_cannot_replace_the_agent() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let decoy = Decoy::new();
    // A program of the sandbox's own where the agent used to be bound.
    let evil = "mkdir -p /workspace/evil && printf '#!/bin/sh\\necho pwned > /workspace/pwned\\n\
                exec sleep 1000\\n' > /workspace/evil/sandpit && chmod 755 /workspace/evil/sandpit \
                && rm -rf /.sandpit && ln -s /workspace/evil /.sandpit";
    assert_eq!(server.exec(&id, evil).exit_code, 0);
    sleep_and_wake(&server, &id);
    let out = server.exec_json(
        &id,
        &json!({"argv": ["cat", "/proc/1/cmdline"], "cwd": "/"}),
    );
    assert_eq!(
        out.stdout, "sandpit\0agent\0",
        "PID 1 is not the agent: {out:?}"
    );
    assert_eq!(
        server.run_ok(&id, "test -e /workspace/pwned && echo ran || echo not run"),
        "not run\n"
    );
    // Also when it points at a host directory: nothing is made there.
    let r = server.exec(
        &id,
        &format!("rm -f /.sandpit && ln -s '{}' /.sandpit", decoy.path()),
    );
    assert_eq!(r.exit_code, 0, "{r:?}");
    sleep_and_wake(&server, &id);
    decoy.assert_untouched("a wake with /.sandpit planted");
    assert_eq!(server.run_ok(&id, "echo ok"), "ok\n");
}

/// Sandbox A points its root's names into B's tree, where B swaps a directory and a symlink
/// to the decoy with RENAME_EXCHANGE as fast as it can, while A sleeps and wakes again and
/// again: host root must never chown, chmod, create or truncate through the swap.
#[test]
fn rename_exchange_races_between_two_sandboxes_never_reach_host_files() {
    let server = Server::start();
    let a = server.new_sandbox();
    let b = server.new_sandbox();
    assert_contained(&server, &a);
    assert_contained(&server, &b);
    let decoy = Decoy::new();
    let b_root = server.data_dir().join("sandboxes").join(&b).join("rootfs");
    // B: /race flips between a directory and a symlink to the decoy, for at most 120 s.
    let racer = format!(
        r#"
import ctypes, os, time
os.makedirs('/race_dir/tmp', exist_ok=True)
for n in ('/race', '/race_link'):
    try: os.remove(n)
    except OSError: pass
os.symlink('/race_dir', '/race')
os.symlink('{decoy}', '/race_link')
libc = ctypes.CDLL(None, use_errno=True)
end = time.time() + 120
n = 0
while time.time() < end and not os.path.exists('/workspace/stop'):
    libc.syscall(316, -100, b'/race', -100, b'/race_link', 2)
    n += 1
open('/workspace/flips', 'w').write(str(n))
"#,
        decoy = decoy.path()
    );
    server.put_file(&b, "/workspace/racer.py", racer.as_bytes());
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{b}/processes"),
            &json!({"id": "racer", "argv": ["python3", "/workspace/racer.py"]}),
        )
        .expect(201);
    plant_symlinks(&server, &a, &format!("{}/race", b_root.display()));
    for round in 0..20 {
        sleep_and_wake(&server, &a);
        decoy.assert_untouched(&format!("round {round}"));
    }
    server.put_file(&b, "/workspace/stop", b"");
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{b}/processes/racer/wait"),
            &json!({"timeout_ms": 30000}),
        )
        .expect(200);
    let flips: u64 = String::from_utf8_lossy(&server.get_file(&b, "/workspace/flips"))
        .trim()
        .parse()
        .expect("flip count");
    assert!(flips > 100, "the racer hardly ran: {flips} flips");
    decoy.assert_untouched("the race");
    assert_eq!(server.run_ok(&a, "echo ok"), "ok\n");
}

#[test]
fn no_process_of_the_sandbox_can_trace_read_rob_stop_or_kill_the_agent() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    // As root inside, with every capability root keeps there.
    let script = r#"
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def sysret(*a):
    r = libc.syscall(*a)
    return (r, ctypes.get_errno())
holes = []
r, e = sysret(101, 16, 1, 0, 0)          # ptrace(PTRACE_ATTACH, 1)
if r == 0: holes.append('PTRACE_ATTACH worked')
r, e = sysret(101, 0x4206, 1, 0, 0)      # ptrace(PTRACE_SEIZE, 1)
if r == 0: holes.append('PTRACE_SEIZE worked')
for path, mode in (('/proc/1/mem', 'r+b'), ('/proc/1/mem', 'rb'), ('/proc/1/environ', 'rb')):
    try:
        open(path, mode).read(1); holes.append('opened ' + path + ' ' + mode)
    except OSError: pass
# Its descriptor numbers may be listed; none may be followed or read.
for fd in os.listdir('/proc/1/fd'):
    for how in (os.readlink, lambda p: open(p, 'rb').close()):
        try:
            how('/proc/1/fd/' + fd); holes.append('reached /proc/1/fd/' + fd)
        except OSError: pass
buf = ctypes.create_string_buffer(16)
class iovec(ctypes.Structure):
    _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
local = iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
remote = iovec(0x400000, 16)
r, e = sysret(310, 1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)  # process_vm_readv
if r >= 0 or e not in (errno.EPERM, errno.EACCES): holes.append('process_vm_readv: %d %d' % (r, e))
pidfd, e = sysret(434, 1, 0)             # pidfd_open(1)
if pidfd >= 0:
    for fd in range(0, 8):
        r, e = sysret(438, pidfd, fd, 0)  # pidfd_getfd
        if r >= 0: holes.append('pidfd_getfd took fd %d' % fd)
    sysret(424, pidfd, signal.SIGKILL, 0, 0)  # pidfd_send_signal
for sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTERM, signal.SIGSEGV, signal.SIGKILL):
    try: os.kill(1, sig)
    except OSError: pass
print('\n'.join(holes) if holes else 'held')
"#;
    let out = server.exec_json(&id, &json!({"argv": ["python3", "-c", script]}));
    assert_eq!(out.stdout.trim(), "held", "{out:?}");
    // The agent answers, is not stopped and is the same process.
    // (Sleeping or, at the instant it answers this very call, running: never stopped.)
    let stat = server.run_ok(&id, "cut -d' ' -f3 /proc/1/stat");
    assert!(matches!(stat.trim(), "S" | "R"), "agent state {stat:?}");
    assert_eq!(server.run_ok(&id, "echo still here"), "still here\n");
}

#[test]
fn an_agent_that_stops_answering_ends_the_call_and_the_sandbox_recovers() {
    let server = Server::start();
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/kept", b"kept across the restart");
    let pid = agent_pid(&server, &id);
    // Frozen from the host (nothing inside can do this any more): the call must not hang.
    // SAFETY: a signal to a process of the test's own sandbox.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client");
    let r = client
        .post(server.url(&format!("/v1/sandboxes/{id}/exec")))
        .json(&json!({"command": "echo hi", "timeout_ms": 3000}))
        .send()
        .expect("the call hung on a frozen agent");
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().expect("json");
    assert_eq!(body["error"]["code"], "sandbox_unavailable", "{body}");
    // The next call finds the agent silent and starts the sandbox again on its files.
    assert_eq!(
        server.run_ok(&id, "cat /workspace/kept"),
        "kept across the restart"
    );
    assert_ne!(agent_pid(&server, &id), pid);
}

#[test]
fn the_agent_log_is_the_agents_alone() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    // Processes of every kind, alive while the log's holders are listed.
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes"),
            &json!({"id": "bg", "command": "sleep 300"}),
        )
        .expect(201);
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/sessions"),
            &json!({"id": "s"}),
        )
        .expect(201);
    server.run_ok(&id, "(sleep 300 &) ; true");
    let log: PathBuf = server
        .data_dir()
        .join("sandboxes")
        .join(&id)
        .join("agent.log");
    let pid = agent_pid(&server, &id);
    assert_eq!(holders(&log), [pid], "only the agent may hold its log");
    // Its stdout and stderr are a pipe to its capping thread, not the file.
    for fd in [1, 2] {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("fd link");
        assert!(
            link.to_string_lossy().starts_with("pipe:"),
            "fd {fd}: {link:?}"
        );
    }
    let r = server.exec(
        &id,
        "ls -l /proc/*/fd/ 2>/dev/null | grep -c agent.log || true",
    );
    assert_eq!(r.stdout.trim(), "0", "{r:?}");
}

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Twelve buffered execs at once, each with 10 MiB of control bytes on stdout and on stderr
/// (120 MiB of JSON each): the server's memory stays near its budget, the runs that do not
/// fit answer 503 `busy`, the ones that do are whole, and the server works on.
#[test]
fn buffered_output_is_bounded_by_the_servers_budget() {
    let dir = tempfile::tempdir().expect("config dir");
    let cfg = dir.path().join("sandpit.toml");
    std::fs::write(&cfg, "[defaults]\nmax_buffered_output_mb = 300\n").expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), cfg.display().to_string()],
        ..ServerOpts::default()
    });
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let pid = server.pid().expect("server pid");
    let before = peak_rss(pid);
    let cmd = "head -c 10485760 /dev/zero | tr '\\0' '\\1'; head -c 10485760 /dev/zero | tr '\\0' '\\1' >&2";
    let results: Vec<(u16, String, usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                s.spawn(|| {
                    let r = server.exec_resp(&id, &json!({"command": cmd, "timeout_ms": 120000}));
                    if r.status == 200 {
                        let v = r.json();
                        let len = |k: &str| v[k].as_str().map_or(0, str::len);
                        (200, String::new(), len("stdout"), len("stderr"))
                    } else {
                        let v = r.json();
                        (
                            r.status,
                            v["error"]["code"].as_str().unwrap_or("").to_string(),
                            0,
                            0,
                        )
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let peak = peak_rss(pid);
    let ok = results.iter().filter(|r| r.0 == 200).count();
    for r in &results {
        match r {
            (200, _, out, err) => assert_eq!((*out, *err), (10485760, 10485760), "{r:?}"),
            (503, code, ..) => assert_eq!(code, "busy", "{r:?}"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert!(ok >= 1, "no run fitted: {results:?}");
    assert!(
        peak < before + 600 * 1024 * 1024,
        "the server grew from {} MiB to {} MiB",
        before >> 20,
        peak >> 20
    );
    assert_eq!(server.run_ok(&id, "echo fine"), "fine\n");
}

#[test]
fn sockets_of_other_address_families_are_refused() {
    let server = Server::start();
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let script = r#"
import socket, errno
out = []
for name, fam, typ, proto in (
    ('vsock', 40, socket.SOCK_STREAM, 0),
    ('packet', 17, socket.SOCK_RAW, 0),
    ('bluetooth', 31, socket.SOCK_STREAM, 0),
    ('can', 29, socket.SOCK_RAW, 1),
    ('alg', 38, socket.SOCK_SEQPACKET, 0),
    ('netlink audit', 16, socket.SOCK_RAW, 9),
    ('netlink uevent', 16, socket.SOCK_DGRAM, 15),
    ('unix', 1, socket.SOCK_STREAM, 0),
    ('inet', 2, socket.SOCK_STREAM, 0),
    ('inet6', 10, socket.SOCK_DGRAM, 0),
    ('netlink route', 16, socket.SOCK_RAW, 0),
):
    try:
        socket.socket(fam, typ, proto).close(); out.append(name + ' ok')
    except OSError as e:
        out.append('%s %s' % (name, errno.errorcode.get(e.errno, e.errno)))
print('\n'.join(out))
"#;
    let out = server.exec_json(&id, &json!({"argv": ["python3", "-c", script]}));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "vsock EAFNOSUPPORT",
            "packet EAFNOSUPPORT",
            "bluetooth EAFNOSUPPORT",
            "can EAFNOSUPPORT",
            "alg EAFNOSUPPORT",
            "netlink audit EAFNOSUPPORT",
            "netlink uevent EAFNOSUPPORT",
            "unix ok",
            "inet ok",
            "inet6 ok",
            "netlink route ok",
        ],
        "{out:?}"
    );
    // Route netlink still serves ip(8).
    assert!(server.run_ok(&id, "ip -o link show lo").contains("lo"));
}

#[test]
fn a_session_at_the_pids_limit_is_a_clear_429() {
    let server = Server::start();
    let id = server.create(&json!({"limits": {"pids": 16}}))["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_contained(&server, &id);
    // A background filler forks until the pids limit says no (bounded by the limit), says
    // so in /tmp/full, and lets its children go when /tmp/release appears.
    let filler = r#"
import os, time
kids = 0
while True:
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        while not os.path.exists('/tmp/release'):
            time.sleep(0.05)
        os._exit(0)
    kids += 1
open('/tmp/full', 'w').write(str(kids))
while not os.path.exists('/tmp/release'):
    time.sleep(0.05)
"#;
    server.put_file(&id, "/workspace/filler.py", filler.as_bytes());
    server
        .request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes"),
            &json!({"id": "filler", "argv": ["python3", "/workspace/filler.py"]}),
        )
        .expect(201);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while server
        .request(Method::GET, &Server::files_path(&id, "", "/tmp/full"))
        .status
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the filler never filled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/sessions"),
        &json!({"id": "full"}),
    );
    r.expect_error(429, "limit_reached");
    assert!(r.text().contains("limits.pids"), "{}", r.text());
    // Room again: the session starts.
    server.put_file(&id, "/tmp/release", b"");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = server.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/sessions"),
            &json!({"id": "room"}),
        );
        if r.status == 201 || std::time::Instant::now() > deadline {
            r.expect(201);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
