//! Network fixtures for the egress and git tests: a network namespace the test creates
//! (`ip netns add` + a veth pair on a 10.213.x.y/30 of its own), servers run inside it, and
//! listeners on the host. Everything is removed on drop, also when the test panics.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A network namespace joined to the host by a veth pair: host side `host_addr`, namespace
/// side `ns_addr`, both in a /30 no other test uses.
pub struct NetNs {
    pub name: String,
    logs: Vec<PathBuf>,
    pub host_addr: String,
    pub ns_addr: String,
    host_if: String,
    servers: Vec<Child>,
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

#[track_caller]
fn sh_ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    pub fn new() -> NetNs {
        static N: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let used =
            String::from_utf8_lossy(&sh(&["ip", "-4", "-o", "addr", "show"]).stdout).into_owned();
        loop {
            let n = N.fetch_add(1, Ordering::Relaxed);
            assert!(n < 4096, "no free 10.213.x.y/30 subnet");
            // 64 /30s per third octet; start somewhere depending on the pid so that two test
            // binaries running at once rarely probe the same subnets.
            let slot = (pid.wrapping_mul(37).wrapping_add(n)) % (256 * 64);
            let (third, fourth) = (slot / 64, (slot % 64) * 4);
            let host_addr = format!("10.213.{third}.{}", fourth + 1);
            let ns_addr = format!("10.213.{third}.{}", fourth + 2);
            if used.contains(&format!("inet {host_addr}/")) {
                continue;
            }
            let name = format!("sandpit-t{pid}-{n}");
            let host_if = format!("spt{}h{n}", pid % 100_000);
            let ns_if = format!("spt{}n{n}", pid % 100_000);
            if !sh(&["ip", "netns", "add", &name]).status.success() {
                continue;
            }
            let ns = NetNs {
                name: name.clone(),
                host_addr: host_addr.clone(),
                ns_addr: ns_addr.clone(),
                host_if: host_if.clone(),
                servers: vec![],
                logs: vec![],
            };
            if !sh(&[
                "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            .status
            .success()
            {
                continue;
            }
            sh_ok(&["ip", "link", "set", &ns_if, "netns", &name]);
            sh_ok(&[
                "ip",
                "addr",
                "add",
                &format!("{host_addr}/30"),
                "dev",
                &host_if,
            ]);
            sh_ok(&["ip", "link", "set", &host_if, "up"]);
            let exec = |args: &[&str]| {
                let mut v = vec!["ip", "netns", "exec", &name];
                v.extend_from_slice(args);
                sh_ok(&v);
            };
            exec(&["ip", "addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if]);
            exec(&["ip", "link", "set", &ns_if, "up"]);
            exec(&["ip", "link", "set", "lo", "up"]);
            return ns;
        }
    }

    /// Starts `argv` inside the namespace, with extra environment; killed on drop.
    pub fn spawn(&mut self, argv: &[&str], env: &[(&str, &str)], log_path: &Path) {
        let log = std::fs::File::create(log_path).expect("server log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start server in netns");
        self.servers.push(child);
        self.logs.push(log_path.to_path_buf());
    }

    /// Waits until something listens on `port` inside the namespace.
    pub fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = sh(&["ip", "netns", "exec", &self.name, "ss", "-ltnH"]);
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                return;
            }
            let logs: Vec<String> = self
                .logs
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            if Instant::now() >= deadline {
                let ps = sh(&["ps", "-eo", "pid,ppid,stat,wchan:20,args"]);
                let ss = sh(&["ip", "netns", "exec", &self.name, "ss", "-ltnp"]);
                panic!(
                    "nothing listens on {port} in {}: logs {logs:?}\nss: {} {}\nps:\n{}",
                    self.name,
                    String::from_utf8_lossy(&ss.stdout),
                    String::from_utf8_lossy(&ss.stderr),
                    String::from_utf8_lossy(&ps.stdout)
                        .lines()
                        .filter(|l| l.contains("python3") || l.contains("netns"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// A TCP listener on the host that accepts (and answers "host\n" to) every connection in a
/// background thread, counting them.
pub struct HostListener {
    pub port: u16,
    pub accepted: std::sync::Arc<AtomicU32>,
}

impl HostListener {
    pub fn bind(addr: &str) -> HostListener {
        let l = TcpListener::bind(format!("{addr}:0")).expect("bind host listener");
        let port = l.local_addr().expect("addr").port();
        let accepted = std::sync::Arc::new(AtomicU32::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for mut s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = s.write_all(b"host\n");
            }
        });
        HostListener { port, accepted }
    }

    pub fn count(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The host's own IPv4 addresses other than loopback.
pub fn host_addresses() -> Vec<String> {
    let out = sh(&["ip", "-4", "-o", "addr", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|x| *x == "inet")?;
            let a = w.next()?.split('/').next()?.to_string();
            (!a.starts_with("127.")).then_some(a)
        })
        .collect()
}

/// A Python program run inside sandboxes: `python3 /tmp/probe.py HOST PORT` prints `ok <first
/// line>` when a TCP connection succeeds, else `err <errno> <message>`.
pub const PROBE: &str = r#"
import socket, sys
s = socket.socket()
s.settimeout(5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    print("ok", s.recv(100).decode(errors="replace").splitlines()[0])
except (OSError, IndexError) as e:
    print("err", getattr(e, "errno", None), e)
"#;

/// A git smart-HTTP server (`git http-backend` behind Python's http.server) serving the bare
/// repositories under a directory; with `GIT_SERVER_TOKEN` set, every request needs basic
/// auth with that password; `GIT_SERVER_DELAY_MS` slows every upload-pack answer.
pub const GIT_SERVER: &str = r#"
import base64, os, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT, PORT = sys.argv[1], int(sys.argv[2])
TOKEN = os.environ.get("GIT_SERVER_TOKEN", "")
DELAY = int(os.environ.get("GIT_SERVER_DELAY_MS", "0")) / 1000.0

class H(BaseHTTPRequestHandler):
    def handle_one(self, method):
        if TOKEN:
            want = "Basic " + base64.b64encode(("x-access-token:" + TOKEN).encode()).decode()
            got = self.headers.get("Authorization", "")
            user_pass = ""
            if got.startswith("Basic "):
                try:
                    user_pass = base64.b64decode(got[6:]).decode()
                except Exception:
                    pass
            if not user_pass.endswith(":" + TOKEN):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        if "git-upload-pack" in path and method == "POST" and DELAY:
            time.sleep(DELAY)
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=method,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_ADDR=self.client_address[0])
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode(errors="replace").split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        if self.path == "/hello":
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"hello\n")
            return
        self.handle_one("GET")

    def do_POST(self):
        self.handle_one("POST")

ThreadingHTTPServer(("0.0.0.0", PORT), H).serve_forever()
"#;

/// Runs git on the host with a fixed identity.
#[track_caller]
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A work repository with one commit and its bare copy `<root>/<name>.git` that a
/// [`GIT_SERVER`] serves.
pub struct Repo {
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl Repo {
    pub fn new(root: &Path, name: &str) -> Repo {
        let work = root.join(format!("{name}-work"));
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q", "-b", "main"]);
        std::fs::write(work.join("README"), "first\n").expect("write");
        git(&work, &["add", "README"]);
        git(&work, &["commit", "-q", "-m", "first"]);
        let bare = root.join(format!("{name}.git"));
        git(
            root,
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().expect("utf-8"),
                bare.to_str().expect("utf-8"),
            ],
        );
        Repo { work, bare }
    }

    /// Commits `content` to README and pushes it; returns the new commit.
    pub fn commit(&self, content: &str) -> String {
        std::fs::write(self.work.join("README"), content).expect("write");
        git(&self.work, &["commit", "-q", "-am", "next"]);
        git(
            &self.work,
            &["push", "-q", self.bare.to_str().expect("utf-8"), "HEAD"],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }
}
