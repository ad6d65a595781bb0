//! Code-interpreter contexts: long-lived Python or Node.js processes running a small driver
//! that sandpit ships (`drivers/`), so variables, imports, functions and classes persist
//! between runs. Requests go to the driver on its fd 3 and events (ordered stdout/stderr of
//! the interpreter's own streams, then the result) come back as JSON lines on its fd 4;
//! output written straight to fds 1 and 2 (by subprocesses) is forwarded too. A run past its
//! timeout is interrupted with SIGINT (KeyboardInterrupt in Python) and the context keeps its
//! state; an interpreter that ignores it is replaced.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandpit_proto::{AgentError, Channel, ContextInfo, ContextInit, ErrorCode, ProtoError, Reply};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::exec::{kill_tree, Sink};
use crate::procs::now_ms;
use crate::reaper::Reaper;

const DRIVER_DIR: &str = "/run/sandpit/interp";
const PYTHON_DRIVER: &str = include_str!("../drivers/python_driver.py");
const NODE_DRIVER: &str = include_str!("../drivers/node_driver.js");
/// How long an interpreter may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an interrupted run gets to come back before its interpreter is replaced.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// Where output written to the interpreter's fds 1 and 2 goes during a run.
type RawSlot = Arc<Mutex<Option<mpsc::Sender<(Channel, Vec<u8>)>>>>;

struct Interp {
    pid: i32,
    requests: pipe::Sender,
    events: BufReader<pipe::Receiver>,
    exited: oneshot::Receiver<i32>,
    raw: RawSlot,
}

struct Ctx {
    init: ContextInit,
    info: Mutex<ContextInfo>,
    interp: tokio::sync::Mutex<Option<Interp>>,
}

impl Ctx {
    fn info(&self) -> ContextInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn set(&self, f: impl FnOnce(&mut ContextInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

#[derive(Clone)]
pub struct Contexts {
    map: Arc<Mutex<HashMap<String, Arc<Ctx>>>>,
    reaper: Reaper,
}

fn not_found(id: &str) -> AgentError {
    AgentError::new(
        ErrorCode::NotFound,
        format!("context '{id}' does not exist"),
    )
}

/// Moves `src` to descriptor `dst` in a child before exec, clearing close-on-exec.
///
/// # Safety
/// Only call between fork and exec; uses async-signal-safe calls only.
unsafe fn move_fd(src: RawFd, dst: RawFd) -> std::io::Result<()> {
    let r = if src == dst {
        libc::fcntl(dst, libc::F_SETFD, 0)
    } else {
        libc::dup2(src, dst)
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Contexts {
    pub fn new(reaper: Reaper) -> Self {
        Self {
            map: Arc::default(),
            reaper,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Ctx>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Ctx>, AgentError> {
        self.lock().get(id).cloned().ok_or_else(|| not_found(id))
    }

    pub async fn create(&self, init: ContextInit) -> Result<ContextInfo, AgentError> {
        if !matches!(init.language.as_str(), "python" | "javascript") {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!(
                    "language '{}' is not supported (python, javascript)",
                    init.language
                ),
            ));
        }
        if !Path::new(&init.cwd).is_dir() {
            return Err(AgentError::new(
                ErrorCode::InvalidPath,
                format!("working directory '{}' does not exist", init.cwd),
            ));
        }
        let ctx = {
            let mut map = self.lock();
            if map.contains_key(&init.id) {
                return Err(AgentError::new(
                    ErrorCode::AlreadyExists,
                    format!("context '{}' already exists", init.id),
                ));
            }
            let ctx = Arc::new(Ctx {
                info: Mutex::new(ContextInfo {
                    id: init.id.clone(),
                    language: init.language.clone(),
                    cwd: init.cwd.clone(),
                    pid: 0,
                    alive: false,
                    version: String::new(),
                    created_at: now_ms(),
                }),
                init: init.clone(),
                interp: tokio::sync::Mutex::new(None),
            });
            map.insert(init.id.clone(), ctx.clone());
            ctx
        };
        let mut slot = ctx.interp.lock().await;
        match self.spawn(&ctx).await {
            Ok(interp) => *slot = Some(interp),
            Err(e) => {
                self.lock().remove(&init.id);
                return Err(e);
            }
        }
        drop(slot);
        Ok(ctx.info())
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let mut all: Vec<ContextInfo> = self.lock().values().map(|c| c.info()).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    pub fn info(&self, id: &str) -> Result<ContextInfo, AgentError> {
        Ok(self.get(id)?.info())
    }

    pub fn delete(&self, id: &str) -> Result<(), AgentError> {
        let ctx = self.lock().remove(id).ok_or_else(|| not_found(id))?;
        let pid = ctx.info().pid;
        if pid > 0 {
            kill_tree(pid);
        }
        Ok(())
    }

    pub async fn restart(&self, id: &str) -> Result<ContextInfo, AgentError> {
        let ctx = self.get(id)?;
        let mut slot = ctx.interp.lock().await;
        if let Some(old) = slot.take() {
            kill_tree(old.pid);
        }
        *slot = Some(self.spawn(&ctx).await?);
        drop(slot);
        Ok(ctx.info())
    }

    /// Starts the context's interpreter and waits for its driver to say it is ready.
    async fn spawn(&self, ctx: &Ctx) -> Result<Interp, AgentError> {
        let init = &ctx.init;
        let io = |e: std::io::Error| AgentError::from_io(&e, DRIVER_DIR);
        std::fs::create_dir_all(DRIVER_DIR).map_err(io)?;
        let (program, driver, source) = match init.language.as_str() {
            "javascript" => ("node", "node_driver.js", NODE_DRIVER),
            _ => ("python3", "python_driver.py", PYTHON_DRIVER),
        };
        let driver = Path::new(DRIVER_DIR).join(driver);
        std::fs::write(&driver, source).map_err(io)?;
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io(e.into()));
        let (req_r, req_w) = pipe()?;
        let (ev_r, ev_w) = pipe()?;
        let (req_fd, ev_fd) = (req_r.as_raw_fd(), ev_w.as_raw_fd());
        let mut cmd = Command::new(program);
        if program == "python3" {
            cmd.arg("-u");
        }
        cmd.arg(&driver)
            .env_clear()
            .envs(&init.env)
            .current_dir(&init.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(payload) = &init.payload {
            cmd.env("SANDPIT_CONTEXT_PAYLOAD", payload);
        }
        // SAFETY: between fork and exec only descriptors are moved, with async-signal-safe
        // calls; a source that is already 4 is moved first so it cannot be overwritten.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if ev_fd == 3 {
                    let tmp = libc::fcntl(ev_fd, libc::F_DUPFD_CLOEXEC, 10);
                    move_fd(req_fd, 3)?;
                    move_fd(tmp, 4)?;
                } else {
                    move_fd(req_fd, 3)?;
                    move_fd(ev_fd, 4)?;
                }
                Ok(())
            });
        }
        let (mut child, exited) = self.reaper.spawn(&mut cmd).map_err(|e| {
            AgentError::new(
                ErrorCode::BadRequest,
                format!("cannot start {program}: {e}"),
            )
        })?;
        drop((req_r, ev_w));
        let pid = child.id() as i32;
        let raw: RawSlot = Arc::default();
        for (ch, stream) in [
            (Channel::Stdout, child.stdout.take().map(OwnedFd::from)),
            (Channel::Stderr, child.stderr.take().map(OwnedFd::from)),
        ] {
            if let Some(fd) = stream {
                forward_raw(ch, fd, raw.clone());
            }
        }
        drop(child);
        let requests = pipe::Sender::from_owned_fd(req_w).map_err(io)?;
        let mut events = BufReader::new(pipe::Receiver::from_owned_fd(ev_r).map_err(io)?);
        let mut line = String::new();
        let ready = tokio::time::timeout(START_TIMEOUT, events.read_line(&mut line)).await;
        let version = match ready {
            Ok(Ok(n)) if n > 0 => serde_json::from_str::<Value>(&line)
                .ok()
                .and_then(|v| v["version"].as_str().map(String::from))
                .unwrap_or_default(),
            _ => {
                kill_tree(pid);
                return Err(AgentError::new(
                    ErrorCode::Internal,
                    format!("the {program} interpreter did not start"),
                ));
            }
        };
        ctx.set(|i| {
            i.pid = pid;
            i.alive = true;
            i.version = version;
        });
        Ok(Interp {
            pid,
            requests,
            events,
            exited,
            raw,
        })
    }

    /// Runs code and streams its output and result.
    pub async fn run<W: AsyncWrite + Unpin>(
        &self,
        context: &str,
        code: String,
        timeout: Duration,
        locals: bool,
        init: Option<ContextInit>,
        wr: &mut W,
    ) -> Result<(), ProtoError> {
        let mut sink = Sink::new(wr);
        let ctx = match (self.get(context), init) {
            (Ok(c), _) => Ok(c),
            (Err(_), Some(init)) => match self.create(init).await {
                Ok(_)
                | Err(AgentError {
                    code: ErrorCode::AlreadyExists,
                    ..
                }) => self.get(context),
                Err(e) => Err(e),
            },
            (Err(e), None) => Err(e),
        };
        let ctx = match ctx {
            Ok(c) => c,
            Err(e) => {
                sink.json(&Reply::Error(e)).await;
                return sink.finish();
            }
        };
        let mut slot = ctx.interp.lock().await;
        let Some(interp) = slot.as_mut() else {
            let e = AgentError::new(
                ErrorCode::NotRunning,
                format!("context '{context}' has no interpreter (it crashed): restart it"),
            );
            sink.json(&Reply::Error(e)).await;
            return sink.finish();
        };
        let (tx, mut raw_rx) = mpsc::channel(64);
        *interp.raw.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        let request = json!({"code": code, "locals": locals}).to_string() + "\n";
        if interp.requests.write_all(request.as_bytes()).await.is_err() {
            interp.raw.lock().unwrap_or_else(|p| p.into_inner()).take();
            slot.take();
            ctx.set(|i| i.alive = false);
            let e = AgentError::new(
                ErrorCode::NotRunning,
                format!("context '{context}' has exited: restart it"),
            );
            sink.json(&Reply::Error(e)).await;
            return sink.finish();
        }
        sink.json(&Reply::Started { pid: interp.pid }).await;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interrupted = false;
        let mut grace: Option<tokio::time::Instant> = None;
        let mut line = String::new();
        let outcome: Result<Value, String> = loop {
            tokio::select! {
                read = interp.events.read_line(&mut line) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        let code = (&mut interp.exited).await.unwrap_or(255);
                        break Err(format!("the interpreter exited with code {code}"));
                    }
                    let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                    line.clear();
                    match event["event"].as_str() {
                        Some("stdout") => sink.data(Channel::Stdout, event["data"].as_str().unwrap_or("").as_bytes()).await,
                        Some("stderr") => sink.data(Channel::Stderr, event["data"].as_str().unwrap_or("").as_bytes()).await,
                        Some("done") => break Ok(event),
                        _ => {}
                    }
                }
                Some((ch, data)) = raw_rx.recv() => sink.data(ch, &data).await,
                code = &mut interp.exited => {
                    break Err(format!("the interpreter exited with code {}", code.unwrap_or(255)));
                }
                _ = tokio::time::sleep_until(deadline), if !interrupted => {
                    interrupted = true;
                    grace = Some(tokio::time::Instant::now() + INTERRUPT_GRACE);
                    let _ = kill(Pid::from_raw(interp.pid), Signal::SIGINT);
                }
                _ = async { match grace { Some(g) => tokio::time::sleep_until(g).await, None => std::future::pending().await } } => {
                    break Err("the run did not stop when interrupted: the interpreter was restarted".into());
                }
            }
        };
        // Output the interpreter wrote to its fds just before finishing.
        while let Ok((ch, data)) = raw_rx.try_recv() {
            sink.data(ch, &data).await;
        }
        interp.raw.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut result = match outcome {
            Ok(done) => done,
            Err(why) => {
                let pid = interp.pid;
                slot.take();
                kill_tree(pid);
                ctx.set(|i| i.alive = false);
                // A run that would not stop gets a fresh interpreter; a crash waits for restart.
                if interrupted {
                    if let Ok(fresh) = self.spawn(&ctx).await {
                        *slot = Some(fresh);
                    }
                }
                let name = if interrupted {
                    "TimeoutError"
                } else {
                    "ContextDied"
                };
                json!({"execution_count": null, "results": [], "error": {"name": name, "value": why, "traceback": ""}})
            }
        };
        result["timed_out"] = Value::Bool(interrupted);
        if let Some(obj) = result.as_object_mut() {
            obj.remove("event");
        }
        sink.json(&Reply::RunResult(result)).await;
        sink.finish()
    }
}

/// Copies what the interpreter writes to fd 1 or 2 to the current run, or drops it between
/// runs (so the pipe never fills and blocks the interpreter).
fn forward_raw(ch: Channel, fd: OwnedFd, slot: RawSlot) {
    let Ok(mut rx) = pipe::Receiver::from_owned_fd(fd) else {
        return;
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rx.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    let tx = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    if let Some(tx) = tx {
                        let _ = tx.send((ch, buf[..n].to_vec())).await;
                    }
                }
                _ => return,
            }
        }
    });
}
