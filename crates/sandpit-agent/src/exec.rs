//! Running one command: spawn it as the leader of a new session, stream its output as data
//! frames, and on timeout kill its whole tree (everything in its session or process group,
//! and their descendants, background children included).

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sandpit_proto::{
    write_data, write_json, AgentError, Channel, ErrorCode, ExecSpec, ExitStatus, ProtoError, Reply,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::reaper::Reaper;

/// How long output is still collected after the command exits, for background children that
/// keep its pipes open.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(100);

/// Forwards frames to the server; after the server went away, output is dropped but the
/// command still runs to its end (a disconnect does not kill it).
pub(crate) struct Sink<'a, W> {
    wr: &'a mut W,
    broken: Option<ProtoError>,
}

impl<'a, W> Sink<'a, W> {
    pub(crate) fn new(wr: &'a mut W) -> Self {
        Self { wr, broken: None }
    }
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    pub(crate) async fn data(&mut self, ch: Channel, data: &[u8]) {
        if self.broken.is_none() {
            if let Err(e) = write_data(self.wr, ch, data).await {
                self.broken = Some(e);
            }
        }
    }
    pub(crate) async fn json(&mut self, reply: &Reply) {
        if self.broken.is_none() {
            if let Err(e) = write_json(self.wr, reply).await {
                self.broken = Some(e);
            }
        }
    }
    pub(crate) fn finish(self) -> Result<(), ProtoError> {
        self.broken.map_or(Ok(()), Err)
    }
}

pub async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    spec: ExecSpec,
    stdin: Option<Vec<u8>>,
    reaper: &Reaper,
    rd: &mut R,
    wr: &mut W,
) -> Result<(), ProtoError> {
    let mut sink = Sink { wr, broken: None };
    let Some(program) = spec.argv.first() else {
        sink.json(&Reply::Error(AgentError::new(
            ErrorCode::BadRequest,
            "empty argv",
        )))
        .await;
        return sink.finish();
    };
    if !std::path::Path::new(&spec.cwd).is_dir() {
        let msg = format!(
            "working directory '{}' does not exist or is not a directory",
            spec.cwd
        );
        sink.json(&Reply::Error(AgentError::new(ErrorCode::InvalidPath, msg)))
            .await;
        return sink.finish();
    }
    let started = Instant::now();
    // An absolute program and a new process group (not a session) let the standard library
    // spawn with posix_spawn (vfork-like) instead of fork + exec: a fork copies the agent's
    // page tables, which the profile of an exec round trip showed (see docs/BENCHMARKS.md).
    let mut cmd = Command::new(resolve(program, &spec.env));
    cmd.arg0(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Its own process group: `tree` finds the command's processes by group and parentage.
    let spawned = reaper.spawn(cmd.process_group(0));
    let (mut child, exited) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            let (code, what) = match e.kind() {
                std::io::ErrorKind::NotFound => (127, "command not found"),
                std::io::ErrorKind::PermissionDenied => (126, "permission denied"),
                _ => (126, "cannot execute"),
            };
            sink.json(&Reply::Started { pid: 0 }).await;
            let msg = format!("sandpit: {program}: {what} ({e})\n");
            sink.data(Channel::Stderr, msg.as_bytes()).await;
            sink.json(&Reply::Exited(ExitStatus {
                exit_code: code,
                duration_ms: started.elapsed().as_millis() as u64,
                timed_out: false,
            }))
            .await;
            return sink.finish();
        }
    };
    let pid = child.id() as i32;
    sink.json(&Reply::Started { pid }).await;

    if let (Some(pipe_in), Some(data)) = (child.stdin.take(), stdin) {
        if let Ok(mut tx) = pipe::Sender::from_owned_fd(OwnedFd::from(pipe_in)) {
            tokio::spawn(async move {
                let _ = tx.write_all(&data).await;
            });
        }
    }
    let mut stdout = child
        .stdout
        .take()
        .and_then(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)).ok());
    let mut stderr = child
        .stderr
        .take()
        .and_then(|s| pipe::Receiver::from_owned_fd(OwnedFd::from(s)).ok());
    drop(child);

    let deadline = spec
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut exited = Some(exited);
    let mut exit_code: Option<i32> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut timed_out = false;
    let mut hung_up = false;
    let mut probe = [0u8; 1];

    let mut out_buf = vec![0u8; 64 * 1024];
    let mut err_buf = vec![0u8; 64 * 1024];
    loop {
        if exit_code.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        let timeout_at = if timed_out { None } else { deadline };
        tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => match n {
                Some(n) => sink.data(Channel::Stdout, &out_buf[..n]).await,
                None => stdout = None,
            },
            n = read_some(&mut stderr, &mut err_buf) => match n {
                Some(n) => sink.data(Channel::Stderr, &err_buf[..n]).await,
                None => stderr = None,
            },
            code = wait_exit(&mut exited) => {
                exited = None;
                exit_code = Some(code);
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            _ = sleep_until(timeout_at) => {
                timed_out = true;
                kill_tree(pid);
            }
            _ = sleep_until(drain_until) => break,
            // The server sends nothing more during an exec: a read that ends means it hung up.
            _ = rd.read(&mut probe), if spec.kill_on_disconnect && !hung_up && exit_code.is_none() => {
                hung_up = true;
                kill_tree(pid);
            }

        }
    }
    if timed_out {
        // Children that were forking while we killed may have slipped through once.
        kill_tree(pid);
    }
    let status = ExitStatus {
        exit_code: exit_code.unwrap_or(137),
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out,
    };
    sink.json(&Reply::Exited(status)).await;
    sink.finish()
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut Option<R>, buf: &mut [u8]) -> Option<usize> {
    match r {
        Some(r) => match r.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

async fn wait_exit(rx: &mut Option<tokio::sync::oneshot::Receiver<i32>>) -> i32 {
    match rx {
        Some(rx) => rx.await.unwrap_or(255),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One process as `/proc/<pid>/stat` describes it.
struct ProcStat {
    pid: i32,
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
}

/// `program` as the kernel would find it with the command's own `PATH`: as given when it
/// has a slash (or nothing matches: the spawn then fails as before), else the first
/// executable file of that name in `PATH`.
fn resolve(program: &str, env: &std::collections::BTreeMap<String, String>) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') || program.is_empty() {
        return program.into();
    }
    let path = env.get("PATH").map_or("/usr/bin:/bin", String::as_str);
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| program.into())
}

fn processes() -> Vec<ProcStat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let rest = stat.get(stat.rfind(')')? + 2..)?;
            let f: Vec<&str> = rest.split(' ').collect();
            Some(ProcStat {
                pid,
                ppid: f.get(1)?.parse().ok()?,
                pgrp: f.get(2)?.parse().ok()?,
                session: f.get(3)?.parse().ok()?,
                zombie: f.first() == Some(&"Z"),
            })
        })
        .collect()
}

/// `leader` and every live process of its session or process group, and all their
/// descendants.
fn tree(leader: i32, procs: &[ProcStat]) -> HashSet<i32> {
    let mut members: HashSet<i32> = procs
        .iter()
        .filter(|p| !p.zombie && (p.pid == leader || p.session == leader || p.pgrp == leader))
        .map(|p| p.pid)
        .collect();
    add_descendants(&mut members, procs);
    members.remove(&(std::process::id() as i32));
    members.remove(&1);
    members
}

fn add_descendants(set: &mut HashSet<i32>, procs: &[ProcStat]) {
    loop {
        let before = set.len();
        for p in procs {
            if !p.zombie && set.contains(&p.ppid) {
                set.insert(p.pid);
            }
        }
        if set.len() == before {
            return;
        }
    }
}

/// The live descendants of `pid` (not `pid` itself).
pub fn descendants(pid: i32) -> HashSet<i32> {
    let procs = processes();
    let mut set = HashSet::from([pid]);
    add_descendants(&mut set, &procs);
    set.remove(&pid);
    set
}

/// Sends `sig` once to `leader`'s whole tree.
pub fn signal_tree(leader: i32, sig: Signal) {
    for pid in tree(leader, &processes()) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Kills `pids` and their descendants, repeating until none is left (a forking tree can add
/// members while we kill).
pub fn kill_all(pids: &HashSet<i32>) {
    let mut doomed = pids.clone();
    for _ in 0..20 {
        let procs = processes();
        let live: HashSet<i32> = procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
        doomed.retain(|p| live.contains(p));
        add_descendants(&mut doomed, &procs);
        doomed.remove(&(std::process::id() as i32));
        doomed.remove(&1);
        if doomed.is_empty() {
            return;
        }
        for pid in &doomed {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills `leader` and its whole tree (see [`tree`]), repeating until none is left.
pub fn kill_tree(leader: i32) {
    for _ in 0..20 {
        let doomed = tree(leader, &processes());
        if doomed.is_empty() {
            return;
        }
        for pid in &doomed {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
