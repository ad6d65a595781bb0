//! sandpit-agent: PID 1 of every sandbox. It reaps every process that ends in the sandbox,
//! survives `kill -9 -1` from inside (the kernel never delivers signals to a pid namespace's
//! init from within), and serves the server over the Unix socket the jail handed it:
//! exec and files today; sessions, processes and terminals build on the same loop.

mod exec;
mod files;
mod reaper;

use std::os::fd::FromRawFd;

use sandpit_proto::{
    read_all_data, read_frame, write_json, Channel, Frame, ProtoError, Reply, Request,
    PROTOCOL_VERSION,
};

/// Largest standard input a command is given (the server's JSON body limit is lower).
const MAX_STDIN: usize = 64 * 1024 * 1024;

use tokio::net::UnixStream;

/// Entry point of `sandpit agent`. Returns the process exit code.
pub fn main() -> i32 {
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
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let reaper = reaper.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, reaper).await {
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

/// Serves requests on one connection, one at a time, until the server closes it.
async fn serve(stream: UnixStream, reaper: reaper::Reaper) -> Result<(), ProtoError> {
    let (mut rd, mut wr) = stream.into_split();
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
                exec::run(spec, stdin, &reaper, &mut wr).await?
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
