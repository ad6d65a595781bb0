//! Terminals: a program on a fresh pseudo-terminal, its output streamed to the server and the
//! server's input, resizes and hang-up applied to it, over one dedicated connection.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::pty::{openpty, Winsize};
use nix::sys::signal::Signal;
use sandpit_proto::{
    decode, read_frame, AgentError, Channel, ErrorCode, ExecSpec, ExitStatus, Frame, ProtoError,
    Reply, Request,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::exec::{kill_tree, signal_tree, Sink};
use crate::reaper::Reaper;

fn winsize(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_row: rows.max(1),
        ws_col: cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn resize(master: &OwnedFd, cols: u16, rows: u16) {
    let ws = winsize(cols, rows);
    // SAFETY: TIOCSWINSZ reads the winsize we pass, which lives across the call.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

pub async fn run<R, W>(
    spec: ExecSpec,
    cols: u16,
    rows: u16,
    reaper: &Reaper,
    rd: &mut R,
    wr: &mut W,
) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sink = Sink::new(wr);
    let started = Instant::now();
    let pty = match openpty(Some(&winsize(cols, rows)), None) {
        Ok(p) => p,
        Err(e) => {
            let err = AgentError::new(ErrorCode::Internal, format!("openpty: {e}"));
            sink.json(&Reply::Error(err)).await;
            return sink.finish();
        }
    };
    let Some(program) = spec.argv.first() else {
        sink.json(&Reply::Error(AgentError::new(
            ErrorCode::BadRequest,
            "empty argv",
        )))
        .await;
        return sink.finish();
    };
    let slave = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
    let (Ok(i), Ok(o), Ok(e)) = (slave(&pty.slave), slave(&pty.slave), slave(&pty.slave)) else {
        let err = AgentError::new(ErrorCode::Internal, "cannot share the terminal");
        sink.json(&Reply::Error(err)).await;
        return sink.finish();
    };
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(&spec.env)
        .current_dir(&spec.cwd)
        .stdin(i)
        .stdout(o)
        .stderr(e);
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and only touch descriptors.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = reaper.spawn(&mut cmd);
    drop(pty.slave);
    let (child, mut exited) = match spawned {
        Ok(pair) => pair,
        Err(e) => {
            let err = AgentError::new(
                ErrorCode::BadRequest,
                format!("cannot start {program}: {e}"),
            );
            sink.json(&Reply::Error(err)).await;
            return sink.finish();
        }
    };
    let pid = child.id() as i32;
    drop(child);
    sink.json(&Reply::Started { pid }).await;

    let master = pty.master;
    let mut reader = match master.try_clone() {
        Ok(fd) => tokio::fs::File::from_std(std::fs::File::from(fd)),
        Err(e) => {
            kill_tree(pid);
            return Err(ProtoError::Io(e));
        }
    };
    let mut writer = match master.try_clone() {
        Ok(fd) => tokio::fs::File::from_std(std::fs::File::from(fd)),
        Err(e) => {
            kill_tree(pid);
            return Err(ProtoError::Io(e));
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut output_open = true;
    let mut exit_code = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if exit_code.is_some() && !output_open {
            break;
        }
        tokio::select! {
            _ = async {
                match drain_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => break,
            n = reader.read(&mut buf), if output_open => match n {
                Ok(n) if n > 0 => sink.data(Channel::Stdout, &buf[..n]).await,
                // EIO once every holder of the terminal's other end has gone.
                _ => output_open = false,
            },
            code = &mut exited, if exit_code.is_none() => {
                exit_code = Some(code.unwrap_or(255));
                drain_until = Some(tokio::time::Instant::now() + std::time::Duration::from_millis(200));

                // Output still buffered in the terminal is read until EIO; background
                // children still holding it are hung up.
                signal_tree(pid, Signal::SIGHUP);
            }
            frame = read_frame(rd), if exit_code.is_none() => match frame {
                Ok(Frame::Data(Channel::Input, data)) => {
                    let _ = writer.write_all(&data).await;
                }
                Ok(Frame::Json(body)) => {
                    if let Ok(Request::PtyResize { cols, rows }) = decode::<Request>(&body) {
                        resize(&master, cols, rows);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    // The server hung up: so does the terminal.
                    signal_tree(pid, Signal::SIGHUP);
                    kill_tree(pid);
                    return Ok(());
                }
            },
        }
    }
    sink.json(&Reply::Exited(ExitStatus {
        exit_code: exit_code.unwrap_or(255),
        duration_ms: started.elapsed().as_millis() as u64,
        timed_out: false,
    }))
    .await;
    sink.finish()
}
