//! The one test harness: starts the real `sandpit` binary on a free loopback port with a
//! data directory of its own, talks to it over HTTP, and cleans up after itself.
//!
//! Every test starts its own [`Server`]; dropping it deletes every sandbox through the API
//! (sandboxes outlive the server process) and then stops the server.
#![allow(dead_code)]

pub mod cgroups;
pub mod hooks;
pub mod netns;
pub mod ws;

use reqwest::blocking::{Client, RequestBuilder};
use reqwest::Method;
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Path of the server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sandpit");

const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
/// What the server logs once it has bound its port (src/main.rs).
const SERVING: &str = "sandpit serving";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(180);

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    /// Bearer token (`SANDPIT_AUTH_TOKEN`); `None` leaves the variable unset.
    pub token: Option<String>,
    /// Extra arguments after `serve --listen ... --data-dir ...`.
    pub args: Vec<String>,
    /// Host part of `--listen`; default `127.0.0.1`. Requests always go to 127.0.0.1.
    pub listen_host: Option<String>,
    /// Run the server as this unprivileged user (rootless mode).
    pub run_as: Option<RunAs>,
    /// Extra environment variables of the server process.
    pub env: Vec<(String, String)>,
}

/// An unprivileged user to run the server as.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub user: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// A running `sandpit serve` and an HTTP client for it.
pub struct Server {
    pub port: u16,
    pub token: Option<String>,
    opts: ServerOpts,
    data_dir: tempfile::TempDir,
    child: Option<Child>,
    client: Client,
}

/// An HTTP answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// The answer of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
    pub timed_out: bool,
    pub truncated: bool,
    pub duration_ms: u64,
}

/// One process seen inside a sandbox: its pid there and its command line (NULs as spaces).
#[derive(Debug, Clone)]
pub struct Proc {
    pub pid: u32,
    pub cmdline: String,
}

impl Server {
    /// A server without auth on a free loopback port.
    pub fn start() -> Server {
        Server::start_with(ServerOpts::default())
    }

    pub fn start_with(opts: ServerOpts) -> Server {
        let data_dir = tempfile::Builder::new()
            .prefix("sandpit-test-")
            .tempdir()
            .expect("create data dir");
        // Sandbox uids must be able to traverse the data dir.
        std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod data dir");
        if let Some(r) = &opts.run_as {
            std::os::unix::fs::chown(data_dir.path(), Some(r.uid), Some(r.gid))
                .expect("chown data dir");
        }
        let client = Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // The server gets killed and restarted: never reuse a pooled connection.
            .pool_max_idle_per_host(0)
            .build()
            .expect("http client");
        let mut server = Server {
            port: free_port(),
            token: opts.token.clone(),
            opts,
            data_dir,
            child: None,
            client,
        };
        // free_port() releases the port before the server binds it, so a test running at the
        // same moment can take it: start again on another port when that happens.
        for _ in 0..4 {
            match server.try_launch() {
                Err(tail) if tail.contains("Address already in use") => {
                    server.port = free_port();
                }
                Err(tail) => panic!("server did not become ready\n{tail}"),
                Ok(()) => return server,
            }
        }
        server.launch();
        server
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.data_dir.path().join("server.log")
    }

    /// The server's stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|i| log.is_char_boundary(*i))
            .unwrap_or(log.len());
        format!(
            "--- server log (tail) ---\n{}\n--- end of log ---",
            &log[start..]
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    fn spawn(&self) -> std::io::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let host = self.opts.listen_host.as_deref().unwrap_or("127.0.0.1");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("{host}:{}", self.port))
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .args(&self.opts.args)
            .current_dir(self.data_dir.path())
            .env_remove("SANDPIT_AUTH_TOKEN")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(token) = &self.opts.token {
            cmd.env("SANDPIT_AUTH_TOKEN", token);
        }
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        if let Some(r) = &self.opts.run_as {
            cmd.uid(r.uid)
                .gid(r.gid)
                .env("HOME", &r.home)
                .env("USER", &r.user)
                .env("LOGNAME", &r.user);
        }
        cmd.spawn()
    }

    fn launch(&mut self) {
        if let Err(tail) = self.try_launch() {
            panic!("server did not become ready\n{tail}");
        }
    }

    /// Starts the server and waits for it; on failure, the reason and the log's tail.
    fn try_launch(&mut self) -> Result<(), String> {
        let before = self.serving_lines();
        let child = self
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        self.child = Some(child);
        self.wait_ready(HEALTH_TIMEOUT, before).map_err(|e| {
            let tail = self.log_tail();
            self.stop();
            format!("{e}\n{tail}")
        })
    }

    /// How often the log says the server bound its port ("sandpit serving").
    fn serving_lines(&self) -> usize {
        self.log().matches(SERVING).count()
    }

    /// Polls `/health` until it answers 200, the process exits, or `timeout` passes. The
    /// answer counts only once this process has logged that it bound the port (more than
    /// `before` "sandpit serving" lines): until then another test's server that took the
    /// same port could be the one answering.
    fn wait_ready(&mut self, timeout: Duration, before: usize) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("server exited early with {status}"));
                }
            } else {
                return Err("server is not running".into());
            }
            let answer = self
                .client
                .get(self.url("/health"))
                .timeout(Duration::from_secs(2))
                .send();
            if let Ok(r) = answer {
                if r.status().as_u16() == 200 && self.serving_lines() > before {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/health not 200 after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server's pid on the host, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL the server process and reap it. Sandboxes stay alive.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the server and wait (up to 10 s) for it to exit, SIGKILL after that.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    fn stop(&mut self) {
        self.terminate();
    }

    /// Starts the server again on the same port and data dir and waits for `/health`.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.terminate();
        }
        self.launch();
    }

    // ---- raw HTTP ----

    /// A request builder for `path` with the bearer token when the server has one.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A request builder without any Authorization header (for auth tests).
    pub fn req_anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    fn try_send(&self, rb: RequestBuilder) -> Result<Resp, reqwest::Error> {
        let r = rb.send()?;
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.bytes()?.to_vec();
        Ok(Resp {
            status,
            content_type,
            body,
        })
    }

    /// Sends and reads the whole answer; panics (with the server log) on a transport error.
    #[track_caller]
    pub fn send(&self, rb: RequestBuilder) -> Resp {
        match self.try_send(rb) {
            Ok(r) => r,
            Err(e) => panic!("HTTP request failed: {e:?}\n{}", self.log_tail()),
        }
    }

    #[track_caller]
    pub fn request(&self, method: Method, path: &str) -> Resp {
        self.send(self.req(method, path))
    }

    #[track_caller]
    pub fn request_json(&self, method: Method, path: &str, body: &Value) -> Resp {
        self.send(self.req(method, path).json(body))
    }

    #[track_caller]
    pub fn request_bytes(&self, method: Method, path: &str, body: Vec<u8>) -> Resp {
        self.send(self.req(method, path).body(body))
    }

    // ---- sandboxes ----

    /// `POST /v1/sandboxes`; asserts 201 and returns the Sandbox.
    #[track_caller]
    pub fn create(&self, body: &Value) -> Value {
        let r = self.request_json(Method::POST, "/v1/sandboxes", body);
        r.expect(201);
        r.json()
    }

    /// Creates a sandbox with default settings and returns its id.
    #[track_caller]
    pub fn new_sandbox(&self) -> String {
        self.create(&json!({}))["id"]
            .as_str()
            .expect("sandbox id")
            .to_string()
    }

    /// `GET /v1/sandboxes/{id}`; asserts 200.
    #[track_caller]
    pub fn sandbox(&self, id: &str) -> Value {
        let r = self.request(Method::GET, &format!("/v1/sandboxes/{id}"));
        r.expect(200);
        r.json()
    }

    /// Ids from `GET /v1/sandboxes`.
    #[track_caller]
    pub fn list_ids(&self) -> Vec<String> {
        let r = self.request(Method::GET, "/v1/sandboxes");
        r.expect(200);
        ids_of(&r.json())
    }

    #[track_caller]
    pub fn delete_sandbox(&self, id: &str) {
        self.request(Method::DELETE, &format!("/v1/sandboxes/{id}"))
            .expect(204);
    }

    fn delete_all(&self) {
        let list = self.try_send(self.req(Method::GET, "/v1/sandboxes"));
        let ids = match list {
            Ok(r) if r.status == 200 => match serde_json::from_slice::<Value>(&r.body) {
                Ok(v) => ids_of(&v),
                Err(_) => return,
            },
            _ => {
                eprintln!("cleanup: cannot list sandboxes on port {}", self.port);
                return;
            }
        };
        for id in ids {
            let r = self.try_send(self.req(Method::DELETE, &format!("/v1/sandboxes/{id}")));
            if !matches!(
                r,
                Ok(Resp {
                    status: 204 | 404,
                    ..
                })
            ) {
                eprintln!("cleanup: could not delete sandbox {id}: {r:?}");
            }
        }
    }

    // ---- exec ----

    /// `POST /v1/sandboxes/{id}/exec` with any body; the raw answer.
    #[track_caller]
    pub fn exec_resp(&self, id: &str, body: &Value) -> Resp {
        self.request_json(Method::POST, &format!("/v1/sandboxes/{id}/exec"), body)
    }

    /// Exec with a full request body; asserts 200.
    #[track_caller]
    pub fn exec_json(&self, id: &str, body: &Value) -> ExecResult {
        let r = self.exec_resp(id, body);
        r.expect(200);
        ExecResult::from_json(&r.json())
    }

    /// Runs shell text in the sandbox; asserts 200.
    #[track_caller]
    pub fn exec(&self, id: &str, command: &str) -> ExecResult {
        self.exec_json(id, &json!({ "command": command }))
    }

    /// Runs shell text, asserts exit 0, returns stdout.
    #[track_caller]
    pub fn run_ok(&self, id: &str, command: &str) -> String {
        let r = self.exec(id, command);
        assert_eq!(r.exit_code, 0, "`{command}` failed in {id}: {r:?}");
        r.stdout
    }

    /// Starts `command` as the background process `name` (working directory `cwd`) and
    /// waits until `port` accepts connections inside the sandbox.
    #[track_caller]
    pub fn serve_in(&self, id: &str, name: &str, command: &str, cwd: &str, port: u16) {
        self.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes"),
            &json!({"id": name, "command": command, "cwd": cwd}),
        )
        .expect(201);
        self.request_json(
            Method::POST,
            &format!("/v1/sandboxes/{id}/processes/{name}/wait-port"),
            &json!({"port": port, "timeout_ms": 60000}),
        )
        .expect(200);
    }

    /// Every process visible inside the sandbox (read from `/proc/*/cmdline`, no `ps`);
    /// NULs and newlines in command lines become spaces.
    #[track_caller]
    pub fn processes(&self, id: &str) -> Vec<Proc> {
        const SCRIPT: &str = r#"
import os
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            with open('/proc/%s/cmdline' % p, 'rb') as f:
                c = f.read()
        except OSError:
            continue
        c = c.replace(b'\0', b' ').replace(b'\n', b' ')
        print(p, c.decode('utf-8', 'replace').strip())
"#;
        let r = self.exec_json(id, &json!({ "argv": ["python3", "-c", SCRIPT] }));
        assert_eq!(r.exit_code, 0, "listing processes in {id}: {r:?}");
        r.stdout
            .lines()
            .map(|line| {
                let (pid, cmd) = line.split_once(' ').unwrap_or((line, ""));
                Proc {
                    pid: pid.parse().expect("pid"),
                    cmdline: cmd.to_string(),
                }
            })
            .collect()
    }

    /// Polls (up to 5 s) until a process with exactly this command line runs in the sandbox.
    #[track_caller]
    pub fn wait_for_process(&self, id: &str, cmdline: &str) -> Proc {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.processes(id);
            if let Some(p) = procs.iter().find(|p| p.cmdline == cmdline) {
                return p.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no process `{cmdline}` in {id}: {procs:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ---- files ----

    /// `/v1/sandboxes/{id}/files{route}?path=...` with `path` percent-encoded.
    pub fn files_path(id: &str, route: &str, path: &str) -> String {
        format!("/v1/sandboxes/{id}/files{route}?path={}", enc(path))
    }

    #[track_caller]
    pub fn put_file(&self, id: &str, path: &str, content: &[u8]) {
        self.request_bytes(
            Method::PUT,
            &Server::files_path(id, "", path),
            content.to_vec(),
        )
        .expect(204);
    }

    #[track_caller]
    pub fn get_file(&self, id: &str, path: &str) -> Vec<u8> {
        let r = self.request(Method::GET, &Server::files_path(id, "", path));
        r.expect(200);
        r.body
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Before cleanup deletes them: the server's log and any log a sandbox left.
            eprintln!("{}", self.log_tail());
            for log in find_logs(self.data_dir.path(), 4) {
                if log != self.log_path() {
                    let text = std::fs::read(&log).unwrap_or_default();
                    let tail = &text[text.len().saturating_sub(3000)..];
                    eprintln!(
                        "--- {} (tail) ---\n{}",
                        log.display(),
                        String::from_utf8_lossy(tail)
                    );
                }
            }
        }
        if !self.is_running() {
            // Sandboxes outlive the server: bring it back briefly to delete them.
            let before = self.serving_lines();
            match self.spawn() {
                Ok(child) => self.child = Some(child),
                Err(e) => eprintln!("cleanup: cannot restart server: {e}"),
            }
            if let Err(e) = self.wait_ready(Duration::from_secs(15), before) {
                eprintln!("cleanup: server did not come back ({e}); sandboxes may be left over");
            }
        }
        if self.is_running() {
            self.delete_all();
        }
        self.stop();
    }
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text()))
    }

    /// Asserts the status code.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }

    /// Asserts status and the documented error shape `{"error":{"code","message"}}`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        self.expect(status);
        assert!(
            self.content_type.starts_with("application/json"),
            "error content-type {:?}, body: {}",
            self.content_type,
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "error body: {v}");
        let message = v["error"]["message"].as_str();
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
    }
}

impl ExecResult {
    #[track_caller]
    pub fn from_json(v: &Value) -> ExecResult {
        let timed_out = v["timed_out"]
            .as_bool()
            .unwrap_or_else(|| panic!("exec answer without bool timed_out: {v}"));
        let exit_code = match v["exit_code"].as_i64() {
            Some(c) => c,
            // A killed, timed-out command may have no status of its own.
            None if timed_out && v["exit_code"].is_null() => -1,
            None => panic!("exec answer without integer exit_code: {v}"),
        };
        ExecResult {
            stdout: v["stdout"]
                .as_str()
                .unwrap_or_else(|| panic!("exec answer without stdout: {v}"))
                .to_string(),
            stderr: v["stderr"]
                .as_str()
                .unwrap_or_else(|| panic!("exec answer without stderr: {v}"))
                .to_string(),
            exit_code,
            timed_out,
            truncated: v["truncated"]
                .as_bool()
                .unwrap_or_else(|| panic!("exec answer without bool truncated: {v}")),
            duration_ms: v["duration_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("exec answer without duration_ms: {v}")),
        }
    }
}

/// The guard every hostile test calls first: the sandbox runs in a user namespace whose
/// root is an unprivileged host uid, and in a pid namespace other than ours. Returns the
/// host uid that root inside maps to.
#[track_caller]
pub fn assert_contained(server: &Server, id: &str) -> u32 {
    let map = server.exec(id, "cat /proc/self/uid_map");
    assert_eq!(map.exit_code, 0, "cannot read uid_map in {id}: {map:?}");
    let (_, host_uid, _) = id_map_entry(&map.stdout, 0).unwrap_or_else(|| {
        panic!(
            "NOT CONTAINED: uid 0 in {id} is not mapped:\n{}",
            map.stdout
        )
    });
    assert_ne!(
        host_uid, 0,
        "NOT CONTAINED: root in sandbox {id} is host root:\n{}",
        map.stdout
    );
    let ns = server.exec(id, "readlink /proc/self/ns/pid");
    assert_eq!(ns.exit_code, 0, "readlink failed in {id}: {ns:?}");
    let inside = ns.stdout.trim();
    let ours = std::fs::read_link("/proc/self/ns/pid").expect("own pid namespace");
    assert!(
        inside.starts_with("pid:["),
        "odd pid namespace in {id}: {inside:?}"
    );
    assert_ne!(
        inside,
        ours.to_string_lossy(),
        "NOT CONTAINED: sandbox {id} shares the host pid namespace"
    );
    host_uid
}

/// The `/proc/*/uid_map`-format line covering `inside`: (inside start, outside start, count),
/// with `outside` already shifted to the uid `inside` maps to.
pub fn id_map_entry(map: &str, inside: u64) -> Option<(u64, u32, u64)> {
    map.lines().find_map(|line| {
        let f: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        if f.len() != 3 || inside < f[0] || inside >= f[0] + f[2] {
            return None;
        }
        Some((f[0], (f[1] + inside - f[0]) as u32, f[2]))
    })
}

/// Files named `*.log` under `dir`, at most `depth` levels down.
fn find_logs(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() && depth > 0 => found.extend(find_logs(&path, depth - 1)),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "log") => {
                found.push(path)
            }
            _ => {}
        }
    }
    found
}

fn ids_of(list: &Value) -> Vec<String> {
    list["sandboxes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `sandpit hash-key` of the real binary: the hex SHA-256 a `[[tenants]]` entry stores.
pub fn hash_key(key: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sandpit hash-key");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{key}\n").as_bytes())
        .expect("write key");
    let out = child.wait_with_output().expect("hash-key output");
    assert!(out.status.success(), "hash-key failed: {out:?}");
    let hex = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_eq!(hex.len(), 64, "{hex}");
    hex
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Percent-encodes everything but unreserved characters (query values, paths in them).
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A name unique within this test run, usable as a sandbox id (short, `[A-Za-z0-9_-]`).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// Parses an RFC 3339 UTC timestamp that ends in `Z` (`2026-11-22T03:00:00Z`, optional
/// fraction) into Unix seconds. `None` for anything else, offsets included.
pub fn parse_utc(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let frac = match b[19] {
        b'Z' if b.len() == 20 => 0.0,
        b'.' if b.len() > 21 => {
            let digits = &s[20..s.len() - 1];
            if !digits.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            format!("0.{digits}").parse().ok()?
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec) as f64 + frac)
}

/// A file in the host's /tmp, removed on drop.
pub struct HostFile {
    pub path: PathBuf,
}

impl HostFile {
    /// Creates `/tmp/<unique name>` owned by the test process (root) with `mode`.
    pub fn new(prefix: &str, content: &[u8], mode: u32) -> HostFile {
        let path = PathBuf::from("/tmp").join(unique(prefix));
        std::fs::write(&path, content).expect("write host file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod host file");
        HostFile { path }
    }

    pub fn name(&self) -> String {
        self.path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asserts that `path` does not exist on the host; removes it (then panics) if it does.
#[track_caller]
pub fn assert_host_absent(path: &Path, why: &str) {
    if std::fs::symlink_metadata(path).is_ok() {
        let _ = std::fs::remove_file(path);
        panic!("{why}: {} appeared on the host", path.display());
    }
}

/// Runs `sandpit` with `args` (no auth token in its environment) and waits up to `timeout`
/// for it to exit. `None` (after killing it) when it was still running.
pub fn run_binary(args: &[&str], timeout: Duration) -> Option<(std::process::ExitStatus, String)> {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let log: File = out.reopen().expect("reopen");
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("SANDPIT_AUTH_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone fd"))
        .stderr(log)
        .spawn()
        .expect("spawn sandpit");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::new();
    let _ = out.reopen().and_then(|mut f| f.read_to_string(&mut text));
    status.map(|s| (s, text))
}

// ---- Server-Sent Events ----

/// One Server-Sent Event: its name, its JSON data, and when it arrived.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: String,
    pub data: Value,
    pub at: Instant,
}

/// A `text/event-stream` answer, read event by event as the server sends them.
pub struct SseStream {
    lines: std::io::Lines<std::io::BufReader<reqwest::blocking::Response>>,
}

impl SseStream {
    /// Sends `rb` with `Accept: text/event-stream`; asserts 200 and the content type.
    #[track_caller]
    pub fn open(rb: RequestBuilder) -> SseStream {
        let resp = rb
            .header("Accept", "text/event-stream")
            .send()
            .unwrap_or_else(|e| panic!("SSE request failed: {e:?}"));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != 200 {
            let body = resp.text().unwrap_or_default();
            panic!("SSE request answered {status}: {body}");
        }
        assert!(ct.starts_with("text/event-stream"), "content-type {ct:?}");
        SseStream {
            lines: std::io::BufRead::lines(std::io::BufReader::new(resp)),
        }
    }

    /// The next event, waiting for it; `None` once the server ended the stream.
    #[track_caller]
    pub fn next_event(&mut self) -> Option<SseEvent> {
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let line = match self.lines.next() {
                Some(line) => line.unwrap_or_else(|e| panic!("reading SSE stream: {e}")),
                // End of stream; an event not terminated by a blank line is dropped.
                None => return None,
            };
            if line.is_empty() {
                if data.is_empty() && name.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data:?}"));
                return Some(SseEvent {
                    name,
                    data,
                    at: Instant::now(),
                });
            } else if let Some(v) = line.strip_prefix("event:") {
                name = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // `id:`, `retry:` and `:` comment lines carry nothing we check.
        }
    }

    /// Every remaining event, until the server ends the stream.
    #[track_caller]
    pub fn collect_all(mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(e) = self.next_event() {
            events.push(e);
        }
        events
    }
}

/// Polls (up to 10 s) until no process in the sandbox has one of these exact command
/// lines; panics with what is left otherwise.
#[track_caller]
pub fn assert_processes_gone(server: &Server, id: &str, cmdlines: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<Proc> = server
            .processes(id)
            .into_iter()
            .filter(|p| cmdlines.contains(&p.cmdline.as_str()))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes still running in {id} after 10 s: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls (up to 10 s) until no process with this pid exists in the sandbox.
#[track_caller]
pub fn assert_pid_gone(server: &Server, id: &str, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = server.processes(id);
        match procs.iter().find(|p| p.pid == pid) {
            None => return,
            Some(p) => assert!(
                Instant::now() < deadline,
                "pid {pid} still running in {id} after 10 s: {p:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- dialects (/compat/...) ----

impl Server {
    /// Sends and reads the whole answer, keeping its headers too.
    #[track_caller]
    pub fn send_with_headers(&self, rb: RequestBuilder) -> (Resp, reqwest::header::HeaderMap) {
        let answer = rb.send().and_then(|r| {
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let content_type = headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = r.bytes()?.to_vec();
            Ok((
                Resp {
                    status,
                    content_type,
                    body,
                },
                headers,
            ))
        });
        match answer {
            Ok(a) => a,
            Err(e) => panic!("HTTP request failed: {e:?}\n{}", self.log_tail()),
        }
    }
}

impl Resp {
    /// Asserts the status and a dialect's error body: JSON whose `error` is exactly
    /// `message`. Returns the body for further checks.
    #[track_caller]
    pub fn expect_dialect_error(&self, status: u16, message: &str) -> Value {
        self.expect(status);
        assert!(
            self.content_type.starts_with("application/json"),
            "error content-type {:?}, body: {}",
            self.content_type,
            self.text()
        );
        let v = self.json();
        assert_eq!(v["error"], message, "error body: {v}");
        v
    }
}

/// Asserts `v` is an ISO-8601 UTC timestamp with milliseconds and `Z`, as JavaScript's
/// `toISOString()` writes it (`2025-01-15T10:00:00.000Z`); returns it in Unix seconds.
#[track_caller]
pub fn assert_iso_millis(v: &Value) -> f64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {v}"));
    assert_eq!(s.len(), 24, "not YYYY-MM-DDTHH:MM:SS.mmmZ: {s}");
    assert_eq!(&s[19..20], ".", "no milliseconds: {s}");
    parse_utc(s).unwrap_or_else(|| panic!("not an RFC 3339 UTC timestamp: {s}"))
}

/// Asserts the JSON object has exactly these keys.
#[track_caller]
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let mut got: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "keys of {v}");
}
