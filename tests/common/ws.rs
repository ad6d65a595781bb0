//! WebSocket helpers for tests that drive the port proxy: a handshake that answers the HTTP
//! status when the server refuses the upgrade, and reading the next text message.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::Message;

use super::Server;

/// Opens a WebSocket to `path` on the server, with extra headers, within `wait`.
pub fn ws_connect(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
    wait: Duration,
) -> Result<tungstenite::WebSocket<TcpStream>, u16> {
    let url = format!("ws://127.0.0.1:{}{path}", server.port);
    let mut req = url.into_client_request().expect("ws request");
    for (k, v) in headers {
        req.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("header value"),
        );
    }
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let deadline = Instant::now() + wait;
    let mut attempt = tungstenite::client(req, tcp);
    loop {
        match attempt {
            Ok((ws, _)) => return Ok(ws),
            Err(HandshakeError::Interrupted(mid)) => {
                assert!(Instant::now() < deadline, "WebSocket handshake hangs");
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                return Err(resp.status().as_u16())
            }
            Err(HandshakeError::Failure(e)) => panic!("WebSocket handshake failed: {e}"),
        }
    }
}

/// The next text message, within `wait`.
pub fn next_text(ws: &mut tungstenite::WebSocket<TcpStream>, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => return t.to_string(),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                assert!(
                    Instant::now() < deadline,
                    "no WebSocket message in {wait:?}"
                );
            }
            Err(e) => panic!("WebSocket read failed: {e}"),
        }
    }
}
