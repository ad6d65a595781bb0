//! Port tunnels: one agent connection handed over to a TCP connection to a port on the
//! sandbox's loopback, carrying raw bytes both ways until either side is done.

use std::time::Duration;

use sandpit_proto::{write_json, AgentError, ErrorCode, ProtoError, Reply};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a connect to the sandbox's own loopback may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn dial(port: u16) -> Result<TcpStream, AgentError> {
    if port == 0 {
        return Err(AgentError::new(
            ErrorCode::BadRequest,
            "port 0 is not a port",
        ));
    }
    let mut last = String::new();
    for addr in ["127.0.0.1", "::1"] {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((addr, port))).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "connect timed out".into(),
        }
    }
    Err(AgentError::new(
        ErrorCode::NotRunning,
        format!("nothing is listening on port {port} in the sandbox ({last})"),
    ))
}

/// Answers a `Connect` and then relays bytes until both directions are closed. `rd` is the
/// buffered reader of the request loop: bytes it already holds belong to the tunnel, and
/// reading through it hands them over first.
pub async fn run<R, W>(port: u16, rd: &mut R, wr: &mut W) -> Result<(), ProtoError>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let tcp = match dial(port).await {
        Ok(s) => s,
        Err(e) => return write_json(wr, &Reply::Error(e)).await,
    };
    let _ = tcp.set_nodelay(true);
    write_json(wr, &Reply::Ok).await?;
    let (mut trd, mut twr) = tcp.into_split();
    // Each direction passes on the end of its stream (a half-close) to the other side.
    let up = async {
        let _ = tokio::io::copy_buf(rd, &mut twr).await;
        let _ = twr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut trd, wr).await;
        let _ = wr.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}
