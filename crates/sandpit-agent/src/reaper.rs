//! Child reaping for an init process: every exit in the sandbox comes to us (orphans are
//! re-parented to PID 1), so one loop calls `waitpid(-1)` and hands statuses to whoever
//! registered interest in that pid. Spawning and registering happen under one lock, so an exit
//! can never be reaped before its waiter is known.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Exit code of a finished process: its status, or 128 + the signal that killed it.
pub type ExitCode = i32;

#[derive(Clone)]
pub struct Reaper {
    waiters: Arc<Mutex<HashMap<i32, oneshot::Sender<ExitCode>>>>,
}

impl Reaper {
    pub fn start() -> Self {
        let reaper = Self {
            waiters: Arc::new(Mutex::new(HashMap::new())),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            let mut sigchld = match signal(SignalKind::child()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("sandpit agent: SIGCHLD handler: {e}");
                    return;
                }
            };
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        reaper
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, oneshot::Sender<ExitCode>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reap_all(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => self.deliver(pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.deliver(pid.as_raw(), 128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn deliver(&self, pid: i32, code: ExitCode) {
        if let Some(tx) = self.lock().remove(&pid) {
            let _ = tx.send(code);
        }
    }
}

impl Reaper {
    /// Spawns `cmd` and registers for its exit under the waiter lock, so the exit can never
    /// be reaped before its waiter is known.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<ExitCode>)> {
        let mut table = self.lock();
        let child = cmd.spawn()?;
        let (tx, rx) = oneshot::channel();
        table.insert(child.id() as i32, tx);
        Ok((child, rx))
    }
}

/// Makes `cmd` the leader of a new session (and process group) when it starts, so its whole
/// tree can be found and signalled later.
pub fn new_session(cmd: &mut Command) -> &mut Command {
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        })
    }
}
