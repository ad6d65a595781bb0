//! sandpit-agent: PID 1 of every sandbox. It reaps every process that ends in the sandbox,
//! survives `kill -9 -1` from inside (the kernel never delivers signals to a pid namespace's
//! init from within), and serves the server over the Unix socket the jail handed it:
//! exec and files today; sessions, processes and terminals build on the same loop. It is
//! out of reach of everything it starts: not dumpable (no process of the sandbox can trace
//! it, touch its memory or take its descriptors), and its log on the host capped.

mod archive;
mod exec;
mod files;
mod interp;
mod log;
mod procs;
mod pty;
mod reaper;
mod session;
mod tunnel;

use std::os::fd::FromRawFd;

use std::time::Duration;

use sandpit_proto::{
    read_all_data, read_frame, write_all_data, write_json, AgentError, Channel, Frame, ProtoError,
    Reply, Request, PROTOCOL_VERSION,
};

/// Largest standard input a command is given (the server's JSON body limit is lower).
const MAX_STDIN: usize = 64 * 1024 * 1024;

use tokio::net::UnixStream;

/// Entry point of `sandpit agent`. Returns the process exit code.
pub fn main() -> i32 {
    // Not dumpable: tracing this process, reading or writing its memory (/proc/1/mem,
    // process_vm_*), taking its descriptors (pidfd_getfd, /proc/1/fd) then need
    // CAP_SYS_PTRACE over the sandbox's user namespace, which no process of the sandbox has
    // (the jail dropped it from the bounding set; new user namespaces are refused). Signals
    // from inside reach PID 1 only for the ones it handles (SIGCHLD). Nothing of the sandbox
    // runs yet: the agent is the first process of a fresh pid namespace.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        eprintln!(
            "sandpit agent: cannot make the agent undumpable: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    log::capture();
    let fd: i32 = match std::env::var("SANDPIT_AGENT_FD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(fd) => fd,
        None => {
            eprintln!("sandpit agent: SANDPIT_AGENT_FD is not set; the agent is started by `sandpit jail`");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandpit agent: runtime: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        // SAFETY: the jail put the listening socket on this descriptor and nothing else owns it.
        let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
        if let Err(e) = std_listener.set_nonblocking(true) {
            eprintln!("sandpit agent: socket: {e}");
            return 1;
        }
        let listener = match tokio::net::UnixListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sandpit agent: socket: {e}");
                return 1;
            }
        };
        let reaper = reaper::Reaper::start();
        let state = State {
            sessions: session::Sessions::new(reaper.clone()),
            contexts: interp::Contexts::new(reaper.clone()),
            procs: procs::Procs::new(reaper.clone()),
            reaper,
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, state).await {
                            eprintln!("sandpit agent: connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    eprintln!("sandpit agent: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// What lives in the agent for the sandbox's lifetime.
#[derive(Clone)]
struct State {
    reaper: reaper::Reaper,
    sessions: session::Sessions,
    procs: procs::Procs,
    contexts: interp::Contexts,
}

fn reply<T>(r: Result<T, AgentError>, ok: impl FnOnce(T) -> Reply) -> Reply {
    match r {
        Ok(v) => ok(v),
        Err(e) => Reply::Error(e),
    }
}

/// Serves requests on one connection, one at a time, until the server closes it.
async fn serve(stream: UnixStream, state: State) -> Result<(), ProtoError> {
    let State {
        reaper,
        sessions,
        procs,
        contexts,
    } = &state;
    let (rd, mut wr) = stream.into_split();
    // Frames are read in two small reads each: buffer them.
    let mut rd = tokio::io::BufReader::with_capacity(256 * 1024, rd);
    loop {
        let req: Request = match read_frame(&mut rd).await {
            Ok(Frame::Json(body)) => serde_json_from(&body)?,
            Ok(other) => {
                return Err(ProtoError::Malformed(format!(
                    "expected a request, got {other:?}"
                )))
            }
            Err(ProtoError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        match req {
            Request::Ping => {
                write_json(
                    &mut wr,
                    &Reply::Pong {
                        version: PROTOCOL_VERSION,
                        agent_version: env!("CARGO_PKG_VERSION").to_string(),
                    },
                )
                .await?
            }
            Request::Exec(spec) => {
                let stdin = if spec.has_stdin {
                    Some(read_all_data(&mut rd, Channel::Input, MAX_STDIN).await?)
                } else {
                    None
                };
                if spec.session.is_some() {
                    sessions.exec(spec, stdin, &mut wr).await?
                } else {
                    exec::run(spec, stdin, reaper, &mut rd, &mut wr).await?
                }
            }
            Request::Pty { spec, cols, rows } => {
                pty::run(spec, cols, rows, reaper, &mut rd, &mut wr).await?
            }
            Request::ContextCreate(init) => {
                let r = reply(contexts.create(init).await, Reply::Context);
                write_json(&mut wr, &r).await?
            }
            Request::ContextList => {
                let r = Reply::Contexts {
                    contexts: contexts.list(),
                };
                write_json(&mut wr, &r).await?
            }
            Request::ContextGet { id } => {
                write_json(&mut wr, &reply(contexts.info(&id), Reply::Context)).await?
            }
            Request::ContextDelete { id } => {
                write_json(&mut wr, &reply(contexts.delete(&id), |()| Reply::Ok)).await?
            }
            Request::ContextRestart { id } => {
                let r = reply(contexts.restart(&id).await, Reply::Context);
                write_json(&mut wr, &r).await?
            }
            Request::RunCode {
                context,
                code,
                timeout_ms,
                locals,
                init,
            } => {
                let timeout = Duration::from_millis(timeout_ms);
                contexts
                    .run(&context, code, timeout, locals, init, &mut wr)
                    .await?
            }
            Request::SessionCreate(init) => {
                let r = reply(sessions.create(init).await, Reply::Session);
                write_json(&mut wr, &r).await?
            }
            Request::SessionList => {
                let r = Reply::Sessions {
                    sessions: sessions.list(),
                };
                write_json(&mut wr, &r).await?
            }
            Request::SessionGet { id } => {
                write_json(&mut wr, &reply(sessions.info(&id), Reply::Session)).await?
            }
            Request::SessionDelete { id } => {
                write_json(&mut wr, &reply(sessions.delete(&id), |()| Reply::Ok)).await?
            }
            Request::ProcStart { id, spec } => {
                write_json(&mut wr, &reply(procs.start(id, spec), Reply::Process)).await?
            }
            Request::ProcList => {
                let r = Reply::Processes {
                    processes: procs.list(),
                };
                write_json(&mut wr, &r).await?
            }
            Request::ProcGet { id } => {
                write_json(&mut wr, &reply(procs.info(&id), Reply::Process)).await?
            }
            Request::ProcLogs {
                id,
                stdout_offset,
                stderr_offset,
                max_bytes,
            } => match procs.logs(&id, (stdout_offset, stderr_offset), max_bytes) {
                Ok((info, out, err)) => {
                    let r = Reply::Logs {
                        stdout_offset: stdout_offset + out.len() as u64,
                        stderr_offset: stderr_offset + err.len() as u64,
                        running: info.running,
                        exit_code: info.exit_code,
                    };
                    write_json(&mut wr, &r).await?;
                    write_all_data(&mut wr, Channel::Stdout, &out).await?;
                    write_all_data(&mut wr, Channel::Stderr, &err).await?
                }
                Err(e) => write_json(&mut wr, &Reply::Error(e)).await?,
            },
            Request::ProcStdin { id, eof } => {
                let data = read_all_data(&mut rd, Channel::Input, MAX_STDIN).await?;
                let r = reply(procs.write_stdin(&id, &data, eof).await, |()| Reply::Ok);
                write_json(&mut wr, &r).await?
            }
            Request::ProcSignal { id, signal } => {
                write_json(&mut wr, &reply(procs.signal(&id, signal), |()| Reply::Ok)).await?
            }
            Request::ProcWait { id, timeout_ms } => {
                let r = procs.wait(&id, Duration::from_millis(timeout_ms)).await;
                write_json(&mut wr, &reply(r, Reply::Process)).await?
            }
            Request::ProcWaitPort {
                id,
                port,
                timeout_ms,
            } => {
                let r = procs
                    .wait_port(&id, port, Duration::from_millis(timeout_ms))
                    .await;
                write_json(&mut wr, &reply(r, |()| Reply::Ok)).await?
            }
            Request::ProcRemove { id } => {
                write_json(&mut wr, &reply(procs.remove(&id), |()| Reply::Ok)).await?
            }

            Request::Connect { port } => {
                // The connection is the tunnel's from now on.
                return tunnel::run(port, &mut rd, &mut wr).await;
            }
            Request::Archive { root, excludes } => archive::send(&root, &excludes, &mut wr).await?,
            Request::Extract { dir, clean } => {
                archive::receive(&dir, clean, &mut rd, &mut wr).await?
            }
            Request::ReadFile { path } => files::read(&path, &mut wr).await?,
            Request::WriteFile { path, mode } => {
                files::write(&path, mode, &mut rd, &mut wr).await?
            }
            other => {
                let reply = files::handle(other).await;
                write_json(&mut wr, &reply).await?
            }
        }
    }
}

fn serde_json_from(body: &[u8]) -> Result<Request, ProtoError> {
    sandpit_proto::decode(body)
}
