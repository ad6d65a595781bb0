//! Sessions: long-lived bash shells whose state (`cd`, `export`, variables, functions,
//! aliases) persists between commands. Each command is written to a script file and sourced
//! by the shell with its output redirected to per-command files, which are followed while it
//! runs; the shell then reports the exit code on a private control pipe (fd 3, closed for the
//! command itself). A timed-out command's processes are killed and the shell keeps its
//! state; a shell that cannot be interrupted (a builtin loop) or that exits is replaced by a
//! fresh one with the session's initial cwd and environment.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandpit_proto::{
    AgentError, Channel, ErrorCode, ExecSpec, ExitStatus, ProtoError, Reply, SessionInfo,
    SessionInit,
};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::exec::{descendants, kill_all, kill_tree, Sink};
use crate::procs::now_ms;
use crate::reaper::Reaper;

const SESSIONS_DIR: &str = "/run/sandpit/sessions";
/// How often a running command's output files are checked for new bytes.
const FOLLOW_EVERY: Duration = Duration::from_millis(10);
/// After killing a timed-out command, how long the shell gets to report back before it is
/// replaced.
const SHELL_GRACE: Duration = Duration::from_millis(500);

struct Shell {
    pid: i32,
    /// No command has run yet: the shell's options are set with the first one.
    fresh: bool,
    stdin: pipe::Sender,
    control: BufReader<pipe::Receiver>,
    exited: oneshot::Receiver<i32>,
}

struct Session {
    init: SessionInit,
    created_at: i64,
    dir: PathBuf,
    /// `None` until first use and after the shell died; one command at a time holds it.
    shell: tokio::sync::Mutex<Option<Shell>>,
    /// The pid of the current shell, readable without waiting for a running command.
    pid: Mutex<i32>,
    counter: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
pub struct Sessions {
    map: Arc<Mutex<HashMap<String, Arc<Session>>>>,
    reaper: Reaper,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Sessions {
    pub fn new(reaper: Reaper) -> Self {
        Self {
            map: Arc::default(),
            reaper,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, AgentError> {
        self.lock().get(id).cloned().ok_or_else(|| {
            AgentError::new(
                ErrorCode::NotFound,
                format!("session '{id}' does not exist"),
            )
        })
    }

    pub async fn create(&self, init: SessionInit) -> Result<SessionInfo, AgentError> {
        if !Path::new(&init.cwd).is_dir() {
            return Err(AgentError::new(
                ErrorCode::InvalidPath,
                format!("working directory '{}' does not exist", init.cwd),
            ));
        }
        let session = {
            let mut map = self.lock();
            if map.contains_key(&init.id) {
                return Err(AgentError::new(
                    ErrorCode::AlreadyExists,
                    format!("session '{}' already exists", init.id),
                ));
            }
            let dir = PathBuf::from(SESSIONS_DIR).join(&init.id);
            let s = Arc::new(Session {
                init: init.clone(),
                created_at: now_ms(),
                dir,
                shell: tokio::sync::Mutex::new(None),
                pid: Mutex::new(0),
                counter: 0.into(),
            });
            map.insert(init.id.clone(), s.clone());
            s
        };
        let mut shell = session.shell.lock().await;
        if let Err(e) = self.ensure_shell(&session, &mut shell) {
            self.lock().remove(&init.id);
            return Err(e);
        }
        drop(shell);
        Ok(info(&session))
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let mut all: Vec<SessionInfo> = self.lock().values().map(|s| info(s)).collect();
        all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        all
    }

    pub fn info(&self, id: &str) -> Result<SessionInfo, AgentError> {
        Ok(info(&*self.get(id)?))
    }

    pub fn delete(&self, id: &str) -> Result<(), AgentError> {
        let s = self.lock().remove(id).ok_or_else(|| {
            AgentError::new(
                ErrorCode::NotFound,
                format!("session '{id}' does not exist"),
            )
        })?;
        let pid = *s.pid.lock().unwrap_or_else(|p| p.into_inner());
        if pid > 0 {
            kill_tree(pid);
        }
        let _ = std::fs::remove_dir_all(&s.dir);
        Ok(())
    }

    /// Starts the session's shell if it has none (first use, or after it died).
    fn ensure_shell(&self, s: &Session, slot: &mut Option<Shell>) -> Result<(), AgentError> {
        if slot.is_some() {
            return Ok(());
        }
        let io = |e: std::io::Error| AgentError::from_io(&e, &s.dir.display().to_string());
        std::fs::create_dir_all(&s.dir).map_err(io)?;
        let (ctl_r, ctl_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| io(std::io::Error::from(e)))?;
        let ctl_w_fd = ctl_w.as_raw_fd();
        let mut cmd = Command::new("/bin/bash");
        cmd.args(["--noprofile", "--norc"])
            .env_clear()
            .envs(&s.init.env)
            .current_dir(&s.init.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid and dup2 are async-signal-safe; only descriptors are touched.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                if ctl_w_fd == 3 {
                    // dup2 onto itself would keep close-on-exec set.
                    if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(ctl_w_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }

                Ok(())
            });
        }
        let (mut child, exited) = self.reaper.spawn(&mut cmd).map_err(io)?;
        drop(ctl_w);
        let pid = child.id() as i32;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| AgentError::new(ErrorCode::Internal, "shell has no stdin"))?;
        let stdin = pipe::Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(io)?;
        let control = pipe::Receiver::from_owned_fd(ctl_r).map_err(io)?;
        *s.pid.lock().unwrap_or_else(|p| p.into_inner()) = pid;
        *slot = Some(Shell {
            pid,
            fresh: true,
            stdin,
            control: BufReader::new(control),
            exited,
        });
        Ok(())
    }

    /// Runs one command in a session and streams its events like a plain exec.
    pub async fn exec<W: AsyncWrite + Unpin>(
        &self,
        spec: ExecSpec,
        stdin: Option<Vec<u8>>,
        wr: &mut W,
    ) -> Result<(), ProtoError> {
        let mut sink = Sink::new(wr);
        let name = spec.session.clone().unwrap_or_default();
        let session = match (self.get(&name), spec.session_init.clone()) {
            (Ok(s), _) => Ok(s),
            (Err(_), Some(init)) => match self.create(init).await {
                Ok(_)
                | Err(AgentError {
                    code: ErrorCode::AlreadyExists,
                    ..
                }) => self.get(&name),
                Err(e) => Err(e),
            },
            (Err(e), None) => Err(e),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => {
                sink.json(&Reply::Error(e)).await;
                return sink.finish();
            }
        };
        let mut slot = session.shell.lock().await;
        if let Err(e) = self.prepare(&spec, &session, &mut slot) {
            sink.json(&Reply::Error(e)).await;
            return sink.finish();
        }
        let n = session
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let result = run(&session, &mut slot, n, spec, stdin, &mut sink).await;
        for ext in ["sh", "out", "err", "in"] {
            let _ = std::fs::remove_file(session.dir.join(format!("{n}.{ext}")));
        }
        if let Err(e) = result {
            sink.json(&Reply::Error(e)).await;
        }
        sink.finish()
    }

    fn prepare(
        &self,
        spec: &ExecSpec,
        s: &Session,
        slot: &mut Option<Shell>,
    ) -> Result<(), AgentError> {
        if spec.argv.is_empty() {
            return Err(AgentError::new(ErrorCode::BadRequest, "empty command"));
        }
        if !spec.cwd.is_empty() && !Path::new(&spec.cwd).is_dir() {
            return Err(AgentError::new(
                ErrorCode::InvalidPath,
                format!(
                    "working directory '{}' does not exist or is not a directory",
                    spec.cwd
                ),
            ));
        }
        if let Some(bad) = spec.env.keys().find(|k| !valid_name(k)) {
            return Err(AgentError::new(
                ErrorCode::BadRequest,
                format!("'{bad}' is not a shell variable name"),
            ));
        }
        self.ensure_shell(s, slot)
    }
}

fn info(s: &Session) -> SessionInfo {
    let pid = *s.pid.lock().unwrap_or_else(|p| p.into_inner());
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| s.init.cwd.clone());
    SessionInfo {
        id: s.init.id.clone(),
        cwd,
        pid,
        created_at: s.created_at,
    }
}

/// The command as shell text: shell text is kept; an argv is quoted word by word.
fn script_of(argv: &[String]) -> String {
    match argv {
        [shell, flag, text] if shell.ends_with("sh") && flag == "-c" => text.clone(),
        words => words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "),
    }
}

/// Follows a growing file from an offset.
struct Follow {
    path: PathBuf,
    offset: u64,
}

impl Follow {
    fn new_bytes(&mut self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return vec![];
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.offset += buf.len() as u64;
        }
        buf
    }
}

async fn run<W: AsyncWrite + Unpin>(
    s: &Session,
    slot: &mut Option<Shell>,
    n: u64,
    spec: ExecSpec,
    stdin: Option<Vec<u8>>,
    sink: &mut Sink<'_, W>,
) -> Result<(), AgentError> {
    let started = Instant::now();
    let path = |ext: &str| s.dir.join(format!("{n}.{ext}"));
    let io = |e: std::io::Error| AgentError::from_io(&e, &s.dir.display().to_string());
    std::fs::write(path("sh"), script_of(&spec.argv)).map_err(io)?;
    std::fs::write(path("out"), b"").map_err(io)?;
    std::fs::write(path("err"), b"").map_err(io)?;
    let input = match &stdin {
        Some(data) => {
            std::fs::write(path("in"), data).map_err(io)?;
            path("in")
        }
        None => PathBuf::from("/dev/null"),
    };
    let assignments: String = spec
        .env
        .iter()
        .map(|(k, v)| format!("{k}={} ", quote(v)))
        .collect();
    let p = |ext: &str| quote(&path(ext).display().to_string());
    let body = format!(
        "{{ {assignments}. {}; }} 3>&- <{} >{} 2>{}",
        p("sh"),
        quote(&input.display().to_string()),
        p("out"),
        p("err")
    );
    let line = if spec.cwd.is_empty() {
        format!("{body}; printf '%s %s\\n' {n} $? >&3\n")
    } else {
        format!(
            "__sp_o=$PWD; cd -- {} && {body}; __sp_r=$?; cd -- \"$__sp_o\"; printf '%s %s\\n' {n} $__sp_r >&3\n",
            quote(&spec.cwd)
        )
    };
    let Some(shell) = slot.as_mut() else {
        return Err(AgentError::new(ErrorCode::Internal, "session has no shell"));
    };
    let line = if shell.fresh {
        shell.fresh = false;
        // Aliases defined by one command work in the next, as in an interactive shell.
        format!("shopt -s expand_aliases\n{line}")
    } else {
        line
    };
    let before = descendants(shell.pid);

    if let Err(e) = shell.stdin.write_all(line.as_bytes()).await {
        slot.take();
        return Err(AgentError::new(
            ErrorCode::Internal,
            format!("session shell is gone: {e}"),
        ));
    }
    sink.json(&Reply::Started { pid: shell.pid }).await;

    let mut out = Follow {
        path: path("out"),
        offset: 0,
    };
    let mut err = Follow {
        path: path("err"),
        offset: 0,
    };
    let deadline = spec
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut grace: Option<tokio::time::Instant> = None;
    let mut note: Option<&str> = None;
    let mut marker = String::new();
    let exit_code: i32 = loop {
        tokio::select! {
            read = shell.control.read_line(&mut marker) => {
                let code = marker
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok());
                match (read, code) {
                    (Ok(n_read), Some(code)) if n_read > 0 => break code,
                    _ => {
                        // The control pipe closed: the shell exited (`exit` in the command).
                        let code = (&mut shell.exited).await.unwrap_or(255);
                        note = Some("the session's shell exited; the next command starts a new one");
                        break code;
                    }
                }
            }
            code = &mut shell.exited => {
                note = Some("the session's shell exited; the next command starts a new one");
                break code.unwrap_or(255);
            }
            _ = tokio::time::sleep(FOLLOW_EVERY) => {
                forward(sink, &mut out, &mut err).await;
            }
            _ = sleep_until(deadline), if !timed_out => {
                timed_out = true;
                grace = Some(tokio::time::Instant::now() + SHELL_GRACE);
                let mine: std::collections::HashSet<i32> =
                    descendants(shell.pid).difference(&before).copied().collect();
                kill_all(&mine);
            }
            _ = sleep_until(grace) => {
                // The shell itself is busy (a builtin loop): replace it.
                kill_tree(shell.pid);
                note = Some("the command could not be interrupted alone: the session's shell was restarted");
                break 137;
            }
        }
    };
    forward(sink, &mut out, &mut err).await;
    if let Some(note) = note {
        sink.data(Channel::Stderr, format!("sandpit: {note}\n").as_bytes())
            .await;
        if let Some(shell) = slot.take() {
            kill_tree(shell.pid);
        }
    }
    sink.json(&Reply::Exited(ExitStatus {
        exit_code: if timed_out && exit_code == 0 {
            137
        } else {
            exit_code
        },
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out,
    }))
    .await;
    Ok(())
}

async fn forward<W: AsyncWrite + Unpin>(
    sink: &mut Sink<'_, W>,
    out: &mut Follow,
    err: &mut Follow,
) {
    let o = out.new_bytes();
    if !o.is_empty() {
        sink.data(Channel::Stdout, &o).await;
    }
    let e = err.new_bytes();
    if !e.is_empty() {
        sink.data(Channel::Stderr, &e).await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::quote("a'b"), "'a'\\''b'");
        assert_eq!(
            super::script_of(&["/bin/bash".into(), "-c".into(), "cd /".into()]),
            "cd /"
        );
        assert_eq!(
            super::script_of(&["echo".into(), "a b".into()]),
            "'echo' 'a b'"
        );
        assert!(super::valid_name("A_1") && !super::valid_name("1A") && !super::valid_name("A-B"));
    }
}
