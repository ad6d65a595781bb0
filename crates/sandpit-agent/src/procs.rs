//! Background processes: started with their output going straight to log files under
//! `/run/sandpit/procs/<id>/`, kept in a table with their stdin pipe and exit status, and
//! driven by id (logs from an offset, stdin, signals, waits). They live as long as the
//! sandbox, whatever happens to the server.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandpit_proto::{AgentError, ErrorCode, ExecSpec, ProcInfo};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::reaper::{new_session, Reaper};

const PROCS_DIR: &str = "/run/sandpit/procs";

struct Proc {
    info: Mutex<ProcInfo>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    /// Becomes true once the process has exited.
    exited: watch::Receiver<bool>,
    dir: PathBuf,
}

impl Proc {
    fn info(&self) -> ProcInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Clone)]
pub struct Procs {
    table: Arc<Mutex<HashMap<String, Arc<Proc>>>>,
    reaper: Reaper,
}

fn not_found(id: &str) -> AgentError {
    AgentError::new(
        ErrorCode::NotFound,
        format!("process '{id}' does not exist"),
    )
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Procs {
    pub fn new(reaper: Reaper) -> Self {
        Self {
            table: Arc::default(),
            reaper,
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Proc>, AgentError> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    pub fn start(&self, id: String, spec: ExecSpec) -> Result<ProcInfo, AgentError> {
        if self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
        {
            return Err(AgentError::new(
                ErrorCode::AlreadyExists,
                format!("process '{id}' already exists"),
            ));
        }
        let Some(program) = spec.argv.first() else {
            return Err(AgentError::new(ErrorCode::BadRequest, "empty argv"));
        };
        if !std::path::Path::new(&spec.cwd).is_dir() {
            return Err(AgentError::new(
                ErrorCode::InvalidPath,
                format!("working directory '{}' does not exist", spec.cwd),
            ));
        }
        let dir = PathBuf::from(PROCS_DIR).join(&id);
        let io = |e: std::io::Error| AgentError::from_io(&e, &dir.display().to_string());
        std::fs::create_dir_all(&dir).map_err(io)?;
        let stdout = std::fs::File::create(dir.join("stdout")).map_err(io)?;
        let stderr = std::fs::File::create(dir.join("stderr")).map_err(io)?;
        let mut cmd = Command::new(program);
        cmd.args(&spec.argv[1..])
            .env_clear()
            .envs(&spec.env)
            .current_dir(&spec.cwd)
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr);
        let (child, exit_rx) = self.reaper.spawn(new_session(&mut cmd)).map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            AgentError::new(
                ErrorCode::BadRequest,
                format!("cannot start {program}: {e}"),
            )
        })?;
        let mut child = child;
        let pid = child.id() as i32;
        let stdin = child
            .stdin
            .take()
            .and_then(|s| pipe::Sender::from_owned_fd(OwnedFd::from(s)).ok());
        let info = ProcInfo {
            id: id.clone(),
            pid,
            command: spec.argv.clone(),
            cwd: spec.cwd.clone(),
            running: true,
            exit_code: None,
            started_at: now_ms(),
            exited_at: None,
        };
        let (done_tx, done_rx) = watch::channel(false);
        let proc = Arc::new(Proc {
            info: Mutex::new(info.clone()),
            stdin: tokio::sync::Mutex::new(stdin),
            exited: done_rx,
            dir,
        });
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, proc.clone());
        tokio::spawn(async move {
            let code = exit_rx.await.unwrap_or(255);
            {
                let mut i = proc.info.lock().unwrap_or_else(|p| p.into_inner());
                i.running = false;
                i.exit_code = Some(code);
                i.exited_at = Some(now_ms());
            }
            proc.stdin.lock().await.take();
            let _ = done_tx.send(true);
        });
        Ok(info)
    }

    pub fn list(&self) -> Vec<ProcInfo> {
        let mut all: Vec<ProcInfo> = self
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|p| p.info())
            .collect();
        all.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
        all
    }

    pub fn info(&self, id: &str) -> Result<ProcInfo, AgentError> {
        Ok(self.get(id)?.info())
    }

    /// Reads up to `max` bytes of each log from the given offsets.
    pub fn logs(
        &self,
        id: &str,
        offsets: (u64, u64),
        max: u64,
    ) -> Result<(ProcInfo, Vec<u8>, Vec<u8>), AgentError> {
        let p = self.get(id)?;
        // Status first: logs read after an exit was seen are complete.
        let info = p.info();
        let read = |name: &str, offset: u64| -> Result<Vec<u8>, AgentError> {
            let path = p.dir.join(name);
            let io = |e: std::io::Error| AgentError::from_io(&e, &path.display().to_string());
            let mut f = std::fs::File::open(&path).map_err(io)?;
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            let mut buf = Vec::new();
            f.take(max).read_to_end(&mut buf).map_err(io)?;
            Ok(buf)
        };
        Ok((info, read("stdout", offsets.0)?, read("stderr", offsets.1)?))
    }

    pub async fn write_stdin(&self, id: &str, data: &[u8], eof: bool) -> Result<(), AgentError> {
        let p = self.get(id)?;
        let mut stdin = p.stdin.lock().await;
        let Some(pipe) = stdin.as_mut() else {
            return Err(AgentError::new(
                ErrorCode::NotRunning,
                format!("process '{id}' has exited or its stdin is closed"),
            ));
        };
        if !data.is_empty() {
            pipe.write_all(data).await.map_err(|e| {
                AgentError::new(ErrorCode::NotRunning, format!("stdin of '{id}': {e}"))
            })?;
        }
        if eof {
            stdin.take();
        }
        Ok(())
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), AgentError> {
        let p = self.get(id)?;
        let info = p.info();
        if !info.running {
            return Err(AgentError::new(
                ErrorCode::NotRunning,
                format!("process '{id}' has exited"),
            ));
        }
        let sig = nix::sys::signal::Signal::try_from(signal).map_err(|_| {
            AgentError::new(ErrorCode::BadRequest, format!("unknown signal {signal}"))
        })?;
        crate::exec::signal_tree(info.pid, sig);
        Ok(())
    }

    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<ProcInfo, AgentError> {
        let p = self.get(id)?;
        let mut rx = p.exited.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|done| *done)).await;
        Ok(p.info())
    }

    pub async fn wait_port(
        &self,
        id: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let p = self.get(id)?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            for addr in ["127.0.0.1", "::1"] {
                if tokio::net::TcpStream::connect((addr, port)).await.is_ok() {
                    return Ok(());
                }
            }
            if *p.exited.borrow() {
                return Err(AgentError::new(
                    ErrorCode::NotRunning,
                    format!("process '{id}' exited before port {port} accepted connections"),
                ));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::new(
                    ErrorCode::Timeout,
                    format!(
                        "port {port} did not accept connections within {} ms",
                        timeout.as_millis()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn remove(&self, id: &str) -> Result<(), AgentError> {
        let p = self.get(id)?;
        let info = p.info();
        if info.running {
            crate::exec::kill_tree(info.pid);
        }
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let _ = std::fs::remove_dir_all(&p.dir);
        Ok(())
    }
}
