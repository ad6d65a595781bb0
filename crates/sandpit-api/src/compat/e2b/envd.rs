//! envd, E2B's in-sandbox daemon, on sandpit's agent: `process.Process` (Start, Connect,
//! List, SendInput, SendSignal, CloseStdin; Start with a `pty` runs on sandpit's terminal),
//! `filesystem.Filesystem` (Stat, MakeDir, Move, ListDir with depth, Remove, WatchDir and
//! the Create/Get/RemoveWatcher polling API) over Connect-RPC, plus `GET/POST /files` and
//! `GET /health`. The sandbox is the `E2b-Sandbox-Id` header's.
//!
//! A command is one of sandpit's background processes (its E2B pid is its pid inside the
//! sandbox); its stream follows the process's logs. The Start request's deadline
//! (`Connect-Timeout-Ms`, the SDK's `timeout`) kills the command when it passes, as envd's
//! does (background commands too); a Connect stream's deadline ends only that stream. Watching a directory is
//! polling: its listing is compared every [`WATCH_EVERY`] (creates, writes, removes; a
//! rename reads as a remove and a create). Relative paths are relative to `/workspace`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::StreamExt;
use sandpit_core::agent::PtyEvent;
use sandpit_core::model::{Entry, EntryKind, Process, StartProcess};
use sandpit_core::{CoreError, SandboxManager};
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::connect::{self, RpcError, StreamTx};
use super::{sandbox_of, E2bError};
use crate::compat::{basename, Params};
use crate::shared::AppState;

/// Most log bytes read per poll.
const LOG_PAGE: u64 = 1024 * 1024;
/// Polling of a command's logs: from this, doubling while idle, up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(100);
/// How often a watched directory is listed.
pub const WATCH_EVERY: Duration = Duration::from_millis(200);
/// Most entries a watch compares (deeper trees are cut there).
const WATCH_MAX_ENTRIES: usize = 10_000;
/// Where relative paths start.
const HOME: &str = "/workspace";
/// How long an ended command's logs are kept for a `Connect` that comes late.
const FORGET_AFTER: Duration = Duration::from_secs(5);
/// How long past its timeout a command's stream waits to see the command killed.
const KILL_GRACE: Duration = Duration::from_secs(2);

static B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

fn sandbox(headers: &HeaderMap) -> Result<String, RpcError> {
    sandbox_of(headers).ok_or_else(|| RpcError::invalid("the E2b-Sandbox-Id header is required"))
}

/// A path from a request: absolute, or relative to [`HOME`].
fn path_of(v: &Value, field: &str) -> Result<String, RpcError> {
    let p = v
        .get(field)
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| RpcError::invalid(format!("{field} is required")))?;
    Ok(absolute(p))
}

fn absolute(p: &str) -> String {
    if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{HOME}/{}", p.trim_start_matches("./"))
    }
}

// ---------------------------------------------------------------- process.Process

/// `POST /process.Process/{method}`.
pub async fn process(
    State(s): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match method.as_str() {
        "Start" | "Connect" => {
            let run = async {
                let id = sandbox(&headers)?;
                let req = connect::stream_request(&headers, &body)?;
                Ok::<_, RpcError>((id, req))
            };
            match run.await {
                Ok((id, req)) if method == "Start" => start(s, id, req, &headers).await,
                Ok((id, req)) => reconnect(s, id, req, &headers).await,
                Err(e) => connect::stream_error(e).await,
            }
        }
        _ => {
            let run = async {
                let id = sandbox(&headers)?;
                let req = connect::unary_request(&headers, &body)?;
                let m = &s.manager;
                match method.as_str() {
                    "List" => list(m, &id).await,
                    "SendInput" => send_input(m, &id, &req).await,
                    "SendSignal" => send_signal(m, &id, &req).await,
                    "CloseStdin" => close_stdin(m, &id, &req).await,
                    "Update" => update(&id, &req).await,
                    "StreamInput" => Err(RpcError::new(
                        "unimplemented",
                        "StreamInput (a client stream) is not served; use SendInput",
                    )),
                    other => Err(RpcError::new(
                        "unimplemented",
                        format!("process.Process/{other} is not a method"),
                    )),
                }
            };
            connect::unary(run.await)
        }
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// `Start {process: {cmd, args, envs, cwd}, pty?, tag?, stdin?}`: a start event with the
/// pid, data events, an end event with the exit code.
async fn start(s: AppState, id: String, req: Value, headers: &HeaderMap) -> Response {
    let p = &req["process"];
    let Some(cmd) = p
        .get("cmd")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    else {
        return connect::stream_error(RpcError::invalid("process.cmd is required")).await;
    };
    let mut argv = vec![cmd.to_string()];
    argv.extend(str_list(p.get("args")));
    let env = str_map(p.get("envs"));
    let cwd = p.get("cwd").and_then(Value::as_str).map(absolute);
    if req.get("pty").is_some_and(|p| !p.is_null()) {
        return start_pty(s, id, argv, env, cwd, &req["pty"], headers).await;
    }
    let tag = req
        .get("tag")
        .and_then(Value::as_str)
        .filter(|t| sandpit_core::valid_id(t))
        .map(str::to_string);
    let started = s
        .manager
        .start_process(
            &id,
            StartProcess {
                id: tag,
                argv: Some(argv),
                cwd,
                env,
                command: None,
            },
        )
        .await;
    let proc = match started {
        Ok(p) => p,
        Err(e) => return connect::stream_error(RpcError::from_core(&id, e)).await,
    };
    // Without `stdin: true` the command reads an empty input, as in E2B.
    if req.get("stdin").and_then(Value::as_bool) != Some(true) {
        let _ = s.manager.process_stdin(&id, &proc.id, &[], true).await;
    }
    // As envd: the request's timeout bounds the command's life, not only its stream (the
    // process is killed when it passes, whether or not the stream is still open).
    let timeout = connect::deadline(headers);
    let timed_out = Arc::new(AtomicBool::new(false));
    if let Some(after) = timeout {
        kill_after(
            s.manager.clone(),
            id.clone(),
            proc.clone(),
            after,
            timed_out.clone(),
        );
    }
    let (tx, resp) = connect::stream();
    let follow = Follow {
        manager: s.manager.clone(),
        id,
        proc: proc.id,
        offsets: (0, 0),
        // The stream normally ends when the kill is seen; this is only a backstop.
        deadline: timeout.map(|d| Instant::now() + d + KILL_GRACE),
        keepalive: connect::keepalive(headers),
        forget: true,
        timed_out,
    };
    let pid = proc.pid;
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        if tx.send(&json!({"event": {"start": {"pid": pid}}})).await {
            follow.run(tx).await;
        }
    }));
    resp
}

/// `Connect {process: {pid | tag}}`: the running command's events from now on.
async fn reconnect(s: AppState, id: String, req: Value, headers: &HeaderMap) -> Response {
    let found = select(&s.manager, &id, &req).await;
    let proc = match found {
        Ok(p) => p,
        Err(e) => {
            if let Some(pty) = pty_of(&id, &req) {
                return connect::stream_error(RpcError::new(
                    "unimplemented",
                    format!("pid {}: reconnecting to a terminal is not supported", pty.0),
                ))
                .await;
            }
            return connect::stream_error(e).await;
        }
    };
    // Skip what was already written: a connection sees new output.
    let mut offsets = (0, 0);
    loop {
        match s
            .manager
            .process_logs(&id, &proc.id, offsets, LOG_PAGE)
            .await
        {
            Ok(c) if c.stdout.is_empty() && c.stderr.is_empty() => break,
            Ok(c) => {
                offsets.0 += c.stdout.len() as u64;
                offsets.1 += c.stderr.len() as u64;
            }
            Err(e) => return connect::stream_error(RpcError::from_core(&id, e)).await,
        }
    }
    let (tx, resp) = connect::stream();
    let follow = Follow {
        manager: s.manager.clone(),
        id,
        proc: proc.id,
        offsets,
        deadline: connect::deadline(headers).map(|d| Instant::now() + d),
        keepalive: connect::keepalive(headers),
        forget: false,
        timed_out: Arc::new(AtomicBool::new(false)),
    };
    let pid = proc.pid;
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        if tx.send(&json!({"event": {"start": {"pid": pid}}})).await {
            follow.run(tx).await;
        }
    }));
    resp
}

/// A command's output from `offsets` to its end, as process events.
struct Follow {
    manager: Arc<SandboxManager>,
    id: String,
    proc: String,
    offsets: (u64, u64),
    deadline: Option<Instant>,
    keepalive: Option<Duration>,
    /// Forget the process some time after its end was sent (the stream that started it).
    forget: bool,
    /// Set once the command was killed because its timeout passed.
    timed_out: Arc<AtomicBool>,
}

/// Kills (SIGKILL, the whole tree) the command `proc` once `after` has passed, if it is
/// still that same process and still running; `timed_out` tells its stream why it ended.
fn kill_after(
    manager: Arc<SandboxManager>,
    id: String,
    proc: Process,
    after: Duration,
    timed_out: Arc<AtomicBool>,
) {
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        tokio::time::sleep(after).await;
        let Ok(now) = manager.get_process(&id, &proc.id).await else {
            return;
        };
        if now.pid != proc.pid || now.status != "running" {
            return;
        }
        timed_out.store(true, Ordering::SeqCst);
        if manager.signal_process(&id, &proc.id, 9).await.is_err() {
            timed_out.store(false, Ordering::SeqCst);
        }
    }));
}

impl Follow {
    async fn run(mut self, tx: StreamTx) {
        let mut idle = POLL_MIN;
        let mut last_sent = Instant::now();
        loop {
            let chunk = match self
                .manager
                .process_logs(&self.id, &self.proc, self.offsets, LOG_PAGE)
                .await
            {
                Ok(c) => c,
                Err(e) => return tx.end(Some(RpcError::from_core(&self.id, e))).await,
            };
            let drained = chunk.stdout.is_empty() && chunk.stderr.is_empty();
            for (name, data) in [("stdout", &chunk.stdout), ("stderr", &chunk.stderr)] {
                if !data.is_empty() {
                    let ev = json!({"event": {"data": {name: b64(data)}}});
                    if !tx.send(&ev).await {
                        return;
                    }
                    last_sent = Instant::now();
                }
            }
            self.offsets.0 += chunk.stdout.len() as u64;
            self.offsets.1 += chunk.stderr.len() as u64;
            if drained && !chunk.running && self.timed_out.load(Ordering::SeqCst) {
                if self.forget {
                    self.forget_later();
                }
                return tx
                    .end(Some(RpcError::new(
                        "deadline_exceeded",
                        "the command's timeout passed: it was killed",
                    )))
                    .await;
            }
            if drained && !chunk.running {
                let code = chunk.exit_code.unwrap_or(-1);
                let end = json!({"event": {"end": {
                    "exitCode": code,
                    "exited": true,
                    "status": exit_status(code),
                }}});
                if tx.send(&end).await {
                    tx.end(None).await;
                }
                if self.forget {
                    self.forget_later();
                }
                return;
            }
            if !drained {
                idle = POLL_MIN;
                continue;
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                return tx
                    .end(Some(RpcError::new(
                        "deadline_exceeded",
                        "the command's timeout passed",
                    )))
                    .await;
            }
            if self.keepalive.is_some_and(|k| last_sent.elapsed() >= k) {
                if !tx.send(&json!({"event": {"keepalive": {}}})).await {
                    return;
                }
                last_sent = Instant::now();
            }
            tokio::time::sleep(idle).await;
            idle = (idle * 2).min(POLL_MAX);
        }
    }

    fn forget_later(self) {
        tokio::spawn(sandpit_core::tenant::inherit(async move {
            tokio::time::sleep(FORGET_AFTER).await;
            let _ = self.manager.remove_process(&self.id, &self.proc).await;
        }));
    }
}

fn exit_status(code: i32) -> String {
    match code {
        137 | -9 => "signal: killed".into(),
        143 | -15 => "signal: terminated".into(),
        c => format!("exit status {c}"),
    }
}

/// The running process a `ProcessSelector` (`{pid}` or `{tag}`) names.
async fn select(manager: &SandboxManager, id: &str, req: &Value) -> Result<Process, RpcError> {
    let sel = &req["process"];
    let procs = manager
        .list_processes(id)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    let found = if let Some(pid) = sel.get("pid").and_then(Value::as_i64) {
        procs
            .into_iter()
            .find(|p| i64::from(p.pid) == pid && p.status == "running")
    } else if let Some(tag) = sel.get("tag").and_then(Value::as_str) {
        procs
            .into_iter()
            .find(|p| p.id == tag && p.status == "running")
    } else {
        return Err(RpcError::invalid("process.pid or process.tag is required"));
    };
    found.ok_or_else(|| RpcError::not_found(format!("process {sel} not found")))
}

fn is_generated(proc_id: &str) -> bool {
    proc_id.starts_with("p-")
}

/// `List`: the running commands.
async fn list(manager: &SandboxManager, id: &str) -> Result<Value, RpcError> {
    let procs = manager
        .list_processes(id)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    let items: Vec<Value> = procs
        .iter()
        .filter(|p| p.status == "running")
        .map(|p| {
            let mut info = json!({
                "config": {
                    "cmd": p.command.first().cloned().unwrap_or_default(),
                    "args": p.command.get(1..).unwrap_or_default(),
                    "cwd": p.cwd,
                },
                "pid": p.pid,
            });
            if !is_generated(&p.id) {
                info["tag"] = p.id.clone().into();
            }
            info
        })
        .collect();
    Ok(json!({"processes": items}))
}

fn input_bytes(v: &Value, field: &str) -> Result<Option<Vec<u8>>, RpcError> {
    match v.get(field).and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => B64
            .decode(s)
            .map(Some)
            .map_err(|e| RpcError::invalid(format!("input.{field} is not base64: {e}"))),
    }
}

/// `SendInput {process, input: {stdin | pty}}`.
async fn send_input(manager: &SandboxManager, id: &str, req: &Value) -> Result<Value, RpcError> {
    let input = &req["input"];
    if let Some(data) = input_bytes(input, "pty")? {
        let pty = pty_of(id, req).ok_or_else(|| RpcError::not_found("no such terminal"))?;
        let mut w = pty.1.input.lock().await;
        w.send(&data)
            .await
            .map_err(|e| RpcError::from_core(id, e))?;
        return Ok(json!({}));
    }
    let data = input_bytes(input, "stdin")?.unwrap_or_default();
    let proc = select(manager, id, req).await?;
    manager
        .process_stdin(id, &proc.id, &data, false)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    Ok(json!({}))
}

/// `CloseStdin {process}`.
async fn close_stdin(manager: &SandboxManager, id: &str, req: &Value) -> Result<Value, RpcError> {
    let proc = select(manager, id, req).await?;
    manager
        .process_stdin(id, &proc.id, &[], true)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    Ok(json!({}))
}

/// `SendSignal {process, signal: "SIGNAL_SIGKILL" | "SIGNAL_SIGTERM"}`.
async fn send_signal(manager: &SandboxManager, id: &str, req: &Value) -> Result<Value, RpcError> {
    let signal = match &req["signal"] {
        Value::String(s) if s == "SIGNAL_SIGKILL" => 9,
        Value::String(s) if s == "SIGNAL_SIGTERM" => 15,
        Value::Number(n) if n.as_i64() == Some(9) || n.as_i64() == Some(15) => {
            n.as_i64().unwrap_or(9) as i32
        }
        other => {
            return Err(RpcError::invalid(format!(
                "signal {other} is not supported"
            )))
        }
    };
    if let Some((pid, term)) = pty_of(id, req) {
        // Forgotten now, so that a second signal finds nothing (as for an ended process).
        if let Ok(mut t) = TERMINALS.lock() {
            t.remove(&(id.to_string(), pid));
        }
        term.kill.notify_one();
        return Ok(json!({}));
    }
    let proc = select(manager, id, req).await?;
    manager
        .signal_process(id, &proc.id, signal)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    Ok(json!({}))
}

/// `Update {process, pty: {size}}`: resizes a terminal.
async fn update(id: &str, req: &Value) -> Result<Value, RpcError> {
    let pty = pty_of(id, req).ok_or_else(|| RpcError::not_found("no such terminal"))?;
    let (cols, rows) = pty_size(&req["pty"]);
    let mut w = pty.1.input.lock().await;
    w.resize(cols, rows)
        .await
        .map_err(|e| RpcError::from_core(id, e))?;
    Ok(json!({}))
}

// ---------------------------------------------------------------- terminals

/// A terminal started by `Start` with `pty`: its input, and a way to end it.
struct Terminal {
    input: tokio::sync::Mutex<sandpit_core::agent::PtyInput>,
    kill: tokio::sync::Notify,
}

/// Terminals by (sandbox, pid). Their pids are numbers of this table (the agent's terminal
/// has none to report), from 1,000,000 up, so they never meet a process's pid.
type Terminals = HashMap<(String, u32), Arc<Terminal>>;
static TERMINALS: LazyLock<Mutex<Terminals>> = LazyLock::new(Default::default);
static NEXT_TERMINAL: AtomicU32 = AtomicU32::new(1_000_000);

fn pty_of(id: &str, req: &Value) -> Option<(u32, Arc<Terminal>)> {
    let pid = u32::try_from(req["process"].get("pid")?.as_u64()?).ok()?;
    let t = TERMINALS.lock().ok()?.get(&(id.to_string(), pid))?.clone();
    Some((pid, t))
}

fn pty_size(pty: &Value) -> (u16, u16) {
    let n = |k: &str, d: u16| {
        pty["size"][k]
            .as_u64()
            .and_then(|v| u16::try_from(v).ok())
            .filter(|v| *v > 0)
            .unwrap_or(d)
    };
    (n("cols", 80), n("rows", 24))
}

/// Shell-quotes one word.
fn quote(w: &str) -> String {
    if !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@".contains(&b))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}

/// The shell line that runs `argv` in `cwd` with `env` on a terminal.
fn pty_command(argv: &[String], env: &BTreeMap<String, String>, cwd: Option<&str>) -> String {
    let mut line = String::new();
    if let Some(dir) = cwd {
        line.push_str(&format!("cd {} && ", quote(dir)));
    }
    line.push_str("exec env");
    for (k, v) in env {
        line.push_str(&format!(" {}", quote(&format!("{k}={v}"))));
    }
    for w in argv {
        line.push(' ');
        line.push_str(&quote(w));
    }
    line
}

async fn start_pty(
    s: AppState,
    id: String,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<String>,
    pty: &Value,
    headers: &HeaderMap,
) -> Response {
    let (cols, rows) = pty_size(pty);
    if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains('=')) {
        return connect::stream_error(RpcError::invalid(format!("bad variable name '{bad}'")))
            .await;
    }
    let command = pty_command(&argv, &env, cwd.as_deref());
    let (input, mut output, busy) = match s.manager.pty(&id, Some(command), cols, rows).await {
        Ok(t) => t,
        Err(e) => return connect::stream_error(RpcError::from_core(&id, e)).await,
    };
    let pid = NEXT_TERMINAL.fetch_add(1, Ordering::Relaxed);
    let term = Arc::new(Terminal {
        input: tokio::sync::Mutex::new(input),
        kill: tokio::sync::Notify::new(),
    });
    if let Ok(mut t) = TERMINALS.lock() {
        t.insert((id.clone(), pid), term.clone());
    }
    let deadline = connect::deadline(headers);
    let (tx, resp) = connect::stream();
    tokio::spawn(async move {
        let _busy = busy;
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep(d).await,
                None => futures::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
        let mut outcome = None;
        if tx.send(&json!({"event": {"start": {"pid": pid}}})).await {
            loop {
                tokio::select! {
                    ev = output.next() => match ev {
                        Some(PtyEvent::Output(d)) => {
                            if !tx.send(&json!({"event": {"data": {"pty": b64(&d)}}})).await {
                                break;
                            }
                        }
                        Some(PtyEvent::Exited(code)) => { outcome = Some(Ok(code)); break; }
                        None => { outcome = Some(Ok(-1)); break; }
                    },
                    _ = term.kill.notified() => { outcome = Some(Ok(137)); break; }
                    _ = &mut sleep_until => {
                        outcome = Some(Err(RpcError::new("deadline_exceeded", "the terminal's timeout passed")));
                        break;
                    }
                }
            }
        }
        if let Ok(mut t) = TERMINALS.lock() {
            t.remove(&(id, pid));
        }
        match outcome {
            Some(Ok(code)) => {
                let end = json!({"event": {"end": {
                    "exitCode": code, "exited": true, "status": exit_status(code)}}});
                if tx.send(&end).await {
                    tx.end(None).await;
                }
            }
            Some(Err(e)) => tx.end(Some(e)).await,
            None => {}
        }
        // Dropping the terminal's halves ends its shell.
    });
    resp
}

// ---------------------------------------------------------------- filesystem.Filesystem

fn permissions(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        _ => '-',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

fn file_type(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "FILE_TYPE_FILE",
        EntryKind::Dir => "FILE_TYPE_DIRECTORY",
        EntryKind::Symlink => "FILE_TYPE_SYMLINK",
        EntryKind::Other => "FILE_TYPE_UNSPECIFIED",
    }
}

/// E2B's `EntryInfo` (protobuf JSON: `size` as a string, enums by name).
fn entry_info(e: &Entry) -> Value {
    json!({
        "name": e.name,
        "type": file_type(e.kind),
        "path": e.path,
        "size": e.size.to_string(),
        "mode": e.mode & 0o7777,
        "permissions": permissions(e.kind, e.mode),
        "owner": "user",
        "group": "user",
        "modifiedTime": sandpit_core::model::rfc3339(e.modified.saturating_mul(1000)),
        "isSymlink": e.kind == EntryKind::Symlink,
    })
}

/// `POST /filesystem.Filesystem/{method}`.
pub async fn filesystem(
    State(s): State<AppState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == "WatchDir" {
        let run = async {
            let id = sandbox(&headers)?;
            let req = connect::stream_request(&headers, &body)?;
            let w = Watch::new(&s.manager, &id, &req).await?;
            Ok::<_, RpcError>(w)
        };
        return match run.await {
            Ok(w) => watch_stream(w, &headers),
            Err(e) => connect::stream_error(e).await,
        };
    }
    let run = async {
        let id = sandbox(&headers)?;
        let req = connect::unary_request(&headers, &body)?;
        let m = &s.manager;
        let core = |e| RpcError::from_core(&id, e);
        match method.as_str() {
            "Stat" => {
                let e = m.stat(&id, &path_of(&req, "path")?).await.map_err(core)?;
                Ok(json!({"entry": entry_info(&e)}))
            }
            "MakeDir" => {
                let path = path_of(&req, "path")?;
                match m.stat(&id, &path).await {
                    Ok(_) => {
                        return Err(RpcError::new(
                            "already_exists",
                            format!("'{path}' already exists"),
                        ))
                    }
                    Err(e) if crate::compat::is_missing_entry(&e) => {}
                    Err(e) => return Err(core(e)),
                }
                m.mkdir(&id, &path, true).await.map_err(core)?;
                let e = m.stat(&id, &path).await.map_err(core)?;
                Ok(json!({"entry": entry_info(&e)}))
            }
            "Move" => {
                let from = path_of(&req, "source")?;
                let to = path_of(&req, "destination")?;
                m.rename(&id, &from, &to).await.map_err(core)?;
                let e = m.stat(&id, &to).await.map_err(core)?;
                Ok(json!({"entry": entry_info(&e)}))
            }
            "Remove" => {
                m.remove(&id, &path_of(&req, "path")?, true)
                    .await
                    .map_err(core)?;
                Ok(json!({}))
            }
            "ListDir" => {
                let path = path_of(&req, "path")?;
                let depth = req.get("depth").and_then(Value::as_u64).unwrap_or(1).max(1);
                let mut out = Vec::new();
                list_deep(m, &id, &path, depth, &mut out, usize::MAX)
                    .await
                    .map_err(core)?;
                Ok(json!({"entries": out.iter().map(entry_info).collect::<Vec<_>>()}))
            }
            "CreateWatcher" => {
                let w = Watch::new(m, &id, &req).await?;
                let wid = format!("w-{}", NEXT_WATCHER.fetch_add(1, Ordering::Relaxed));
                if let Ok(mut ws) = WATCHERS.lock() {
                    ws.insert(wid.clone(), Arc::new(tokio::sync::Mutex::new(w)));
                }
                Ok(json!({"watcherId": wid}))
            }
            "GetWatcherEvents" => {
                let w = watcher(&req)?;
                let mut w = w.lock().await;
                if w.id != id {
                    return Err(RpcError::not_found("no such watcher"));
                }
                let events = w.poll().await?;
                Ok(json!({"events": events}))
            }
            "RemoveWatcher" => {
                let wid = req.get("watcherId").and_then(Value::as_str).unwrap_or("");
                let removed = WATCHERS.lock().ok().and_then(|mut ws| ws.remove(wid));
                match removed {
                    Some(_) => Ok(json!({})),
                    None => Err(RpcError::not_found(format!("watcher '{wid}' not found"))),
                }
            }
            other => Err(RpcError::new(
                "unimplemented",
                format!("filesystem.Filesystem/{other} is not a method"),
            )),
        }
    };
    connect::unary(run.await)
}

/// Entries under `path` down to `depth` levels (symlinks are not followed), at most `max`.
async fn list_deep(
    m: &SandboxManager,
    id: &str,
    path: &str,
    depth: u64,
    out: &mut Vec<Entry>,
    max: usize,
) -> Result<(), CoreError> {
    let mut level = vec![path.to_string()];
    for _ in 0..depth {
        let mut next = Vec::new();
        for dir in level {
            let entries = m.list_dir(id, &dir).await?;
            for e in entries {
                if out.len() >= max {
                    return Ok(());
                }
                if e.kind == EntryKind::Dir {
                    next.push(e.path.clone());
                }
                out.push(e);
            }
        }
        level = next;
        if level.is_empty() {
            break;
        }
    }
    Ok(())
}

type Watcher = Arc<tokio::sync::Mutex<Watch>>;
static WATCHERS: LazyLock<Mutex<HashMap<String, Watcher>>> = LazyLock::new(Default::default);
static NEXT_WATCHER: AtomicU32 = AtomicU32::new(1);

fn watcher(req: &Value) -> Result<Watcher, RpcError> {
    let wid = req.get("watcherId").and_then(Value::as_str).unwrap_or("");
    WATCHERS
        .lock()
        .ok()
        .and_then(|ws| ws.get(wid).cloned())
        .ok_or_else(|| RpcError::not_found(format!("watcher '{wid}' not found")))
}

/// A watched directory: its last listing (path → size and mtime).
struct Watch {
    manager: Arc<SandboxManager>,
    id: String,
    path: String,
    depth: u64,
    seen: HashMap<String, (u64, i64)>,
}

impl Watch {
    async fn new(m: &Arc<SandboxManager>, id: &str, req: &Value) -> Result<Self, RpcError> {
        let path = path_of(req, "path")?;
        let e = m
            .stat(id, &path)
            .await
            .map_err(|e| RpcError::from_core(id, e))?;
        if e.kind != EntryKind::Dir {
            return Err(RpcError::invalid(format!("'{path}' is not a directory")));
        }
        let recursive = req.get("recursive").and_then(Value::as_bool) == Some(true);
        let mut w = Self {
            manager: m.clone(),
            id: id.to_string(),
            path,
            depth: if recursive { 64 } else { 1 },
            seen: HashMap::new(),
        };
        w.seen = w.snapshot().await?;
        Ok(w)
    }

    async fn snapshot(&self) -> Result<HashMap<String, (u64, i64)>, RpcError> {
        let mut out = Vec::new();
        list_deep(
            &self.manager,
            &self.id,
            &self.path,
            self.depth,
            &mut out,
            WATCH_MAX_ENTRIES,
        )
        .await
        .map_err(|e| RpcError::from_core(&self.id, e))?;
        Ok(out
            .into_iter()
            .map(|e| (e.path, (e.size, e.modified)))
            .collect())
    }

    /// Events since the last poll: `{name, type}` with `name` relative to the directory.
    async fn poll(&mut self) -> Result<Vec<Value>, RpcError> {
        let now = self.snapshot().await?;
        let rel = |p: &str| {
            p.strip_prefix(&self.path)
                .unwrap_or(p)
                .trim_start_matches('/')
                .to_string()
        };
        let mut events = Vec::new();
        let mut paths: Vec<&String> = now.keys().chain(self.seen.keys()).collect();
        paths.sort();
        paths.dedup();
        for p in paths {
            let kind = match (self.seen.get(p), now.get(p)) {
                (None, Some(_)) => "EVENT_TYPE_CREATE",
                (Some(_), None) => "EVENT_TYPE_REMOVE",
                (Some(a), Some(b)) if a != b => "EVENT_TYPE_WRITE",
                _ => continue,
            };
            events.push(json!({"name": rel(p), "type": kind}));
        }
        self.seen = now;
        Ok(events)
    }
}

fn watch_stream(mut w: Watch, headers: &HeaderMap) -> Response {
    let deadline = connect::deadline(headers).map(|d| Instant::now() + d);
    let keepalive = connect::keepalive(headers);
    let (tx, resp) = connect::stream();
    tokio::spawn(sandpit_core::tenant::inherit(async move {
        if !tx.send(&json!({"start": {}})).await {
            return;
        }
        let mut last_sent = Instant::now();
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return tx
                    .end(Some(RpcError::new(
                        "deadline_exceeded",
                        "the watch's timeout passed",
                    )))
                    .await;
            }
            let events = match w.poll().await {
                Ok(ev) => ev,
                Err(e) => return tx.end(Some(e)).await,
            };
            for ev in events {
                if !tx.send(&json!({"filesystem": ev})).await {
                    return;
                }
                last_sent = Instant::now();
            }
            if keepalive.is_some_and(|k| last_sent.elapsed() >= k) {
                if !tx.send(&json!({"keepalive": {}})).await {
                    return;
                }
                last_sent = Instant::now();
            }
        }
    }));
    resp
}

// ---------------------------------------------------------------- /files, /health

/// A core error on `/files`: a missing sandbox as E2B's proxy answers it (502 "... was not
/// found"), a missing file 404, the rest with the core's status.
fn files_error(id: &str, e: CoreError) -> E2bError {
    if matches!(e, CoreError::NotFound(_)) {
        return E2bError::new(
            StatusCode::BAD_GATEWAY,
            format!("sandbox \"{id}\" was not found"),
        );
    }
    E2bError::from(e)
}

fn files_sandbox(headers: &HeaderMap) -> Result<String, E2bError> {
    sandbox_of(headers)
        .ok_or_else(|| E2bError::bad_request("the E2b-Sandbox-Id header is required"))
}

/// `GET /health`: 204 while the header's sandbox exists (502 once it is gone, which the
/// SDK reads as "not running").
pub async fn health(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = sandbox_of(&headers) {
        if let Err(e) = s.manager.get(&id) {
            return files_error(&id, e).into_response();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /files?path=`: the file's bytes.
pub async fn download(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, E2bError> {
    let id = files_sandbox(&headers)?;
    let path = q
        .non_empty("path")
        .map(|p| absolute(&p))
        .ok_or_else(|| E2bError::bad_request("path is required"))?;
    let (size, rx) = s
        .manager
        .read_file(&id, &path)
        .await
        .map_err(|e| files_error(&id, e))?;
    let body = Body::from_stream(ReceiverStream::new(rx).map(|c| c.map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    basename(&path).replace('"', "")
                ),
            ),
        ],
        body,
    )
        .into_response())
}

fn written(path: &str) -> Value {
    json!({"name": basename(path), "type": "file", "path": path})
}

/// Caps an upload at `max` bytes.
fn capped<S, E>(body: S, max: u64) -> impl futures::Stream<Item = Result<Bytes, CoreError>> + Unpin
where
    S: futures::Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    let mut total = 0u64;
    Box::pin(body.map(move |c| {
        let c = c.map_err(|e| CoreError::BadRequest(format!("upload: {e}")))?;
        total += c.len() as u64;
        if total > max {
            return Err(CoreError::TooLarge(format!(
                "the upload is larger than {max} bytes"
            )));
        }
        Ok(c)
    }))
}

/// `POST /files?path=`: `multipart/form-data` (a `file` part per file, named by its path
/// when several are sent) or `application/octet-stream` (the body is the file at `path`).
/// Answers `[{name, type, path}]`.
pub async fn upload(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Params,
    req: Request,
) -> Result<Json<Value>, E2bError> {
    let id = files_sandbox(&headers)?;
    let query_path = q.non_empty("path").map(|p| absolute(&p));
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if headers.contains_key(header::CONTENT_ENCODING) {
        return Err(E2bError::bad_request(
            "compressed uploads (Content-Encoding) are not supported",
        ));
    }
    let max = s.max_upload_bytes;
    if !ct.starts_with("multipart/form-data") {
        let path = query_path.ok_or_else(|| E2bError::bad_request("path is required"))?;
        let body = capped(req.into_body().into_data_stream(), max);
        s.manager
            .write_file(&id, &path, body)
            .await
            .map_err(|e| files_error(&id, e))?;
        return Ok(Json(json!([written(&path)])));
    }
    let mut form = Multipart::from_request(req, &s)
        .await
        .map_err(|e| E2bError::bad_request(e.body_text()))?;
    let mut out = Vec::new();
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| E2bError::bad_request(format!("multipart: {e}")))?;
        let Some(field) = field else { break };
        let named = field.file_name().filter(|n| !n.is_empty()).map(absolute);
        let path = match (&query_path, named) {
            (Some(p), _) if out.is_empty() => p.clone(),
            (_, Some(n)) => n,
            (Some(p), None) => p.clone(),
            (None, None) => {
                return Err(E2bError::bad_request(
                    "a file part without a file name needs the path parameter",
                ))
            }
        };
        s.manager
            .write_file(&id, &path, capped(field, max))
            .await
            .map_err(|e| files_error(&id, e))?;
        out.push(written(&path));
    }
    if out.is_empty() {
        return Err(E2bError::bad_request("the form has no file"));
    }
    Ok(Json(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_like_ls() {
        assert_eq!(permissions(EntryKind::File, 0o644), "-rw-r--r--");
        assert_eq!(permissions(EntryKind::Dir, 0o755), "drwxr-xr-x");
    }

    #[test]
    fn relative_paths_start_at_the_workspace() {
        assert_eq!(absolute("a.txt"), "/workspace/a.txt");
        assert_eq!(absolute("./a"), "/workspace/a");
        assert_eq!(absolute("/tmp/x"), "/tmp/x");
    }

    #[test]
    fn terminal_commands_set_cwd_and_env() {
        let env = BTreeMap::from([("A".to_string(), "b c".to_string())]);
        let argv = vec!["/bin/bash".to_string(), "-i".to_string()];
        assert_eq!(
            pty_command(&argv, &env, Some("/tmp")),
            "cd /tmp && exec env 'A=b c' /bin/bash -i"
        );
    }

    #[test]
    fn words_are_quoted_for_the_shell() {
        assert_eq!(quote("/bin/bash"), "/bin/bash");
        assert_eq!(quote("-i"), "-i");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
