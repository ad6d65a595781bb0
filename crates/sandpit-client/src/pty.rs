//! Interactive terminals: the client side of the `GET /v1/sandboxes/{id}/pty` WebSocket
//! (binary messages are keystrokes and output, text messages JSON control: `resize` from
//! the client, `exit` from the server).

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Error, Result};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open terminal; [`Pty::split`] it to type and read at once.
pub struct Pty {
    socket: Socket,
}

/// What the terminal says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtyEvent {
    /// Terminal output, bytes as the program wrote them.
    Output(Bytes),
    /// The program exited with this code; the socket closes after.
    Exit(i64),
}

/// The typing half of a terminal.
pub struct PtyWriter {
    sink: SplitSink<Socket, Message>,
}

/// The reading half of a terminal.
pub struct PtyReader {
    stream: SplitStream<Socket>,
}

fn ws_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            Error::from_answer(status, resp.body().as_deref().unwrap_or_default())
        }
        other => Error::new("websocket", other.to_string()),
    }
}

pub(crate) async fn connect(mut url: Url, token: Option<&str>) -> Result<Pty> {
    let scheme = if url.scheme() == "https" { "wss" } else { "ws" };
    url.set_scheme(scheme).map_err(|()| {
        Error::new(
            "invalid_url",
            format!("cannot make a WebSocket URL of {url}"),
        )
    })?;
    let mut request = url.as_str().into_client_request().map_err(ws_error)?;
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|e| Error::new("invalid_token", e.to_string()))?;
        request.headers_mut().insert("authorization", value);
    }
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(ws_error)?;
    Ok(Pty { socket })
}

impl Pty {
    /// The typing and reading halves.
    pub fn split(self) -> (PtyWriter, PtyReader) {
        let (sink, stream) = self.socket.split();
        (PtyWriter { sink }, PtyReader { stream })
    }
}

impl PtyWriter {
    /// Types `data`.
    pub async fn send(&mut self, data: &[u8]) -> Result<()> {
        self.sink
            .send(Message::Binary(Bytes::copy_from_slice(data)))
            .await
            .map_err(ws_error)
    }

    /// Resizes the terminal.
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<()> {
        let msg = serde_json::json!({"type": "resize", "cols": cols, "rows": rows}).to_string();
        self.sink
            .send(Message::Text(msg.into()))
            .await
            .map_err(ws_error)
    }

    /// Closes the socket, which hangs the terminal up.
    pub async fn close(&mut self) -> Result<()> {
        self.sink.close().await.map_err(ws_error)
    }
}

impl PtyReader {
    /// The next output or the exit; `None` when the socket closed without an exit.
    pub async fn next(&mut self) -> Result<Option<PtyEvent>> {
        while let Some(msg) = self.stream.next().await {
            match msg.map_err(ws_error)? {
                Message::Binary(data) => return Ok(Some(PtyEvent::Output(data))),
                Message::Text(text) => {
                    #[derive(serde::Deserialize)]
                    struct Control {
                        #[serde(rename = "type")]
                        kind: String,
                        #[serde(default)]
                        exit_code: i64,
                    }
                    if let Ok(c) = serde_json::from_str::<Control>(&text) {
                        if c.kind == "exit" {
                            return Ok(Some(PtyEvent::Exit(c.exit_code)));
                        }
                    }
                }
                Message::Close(_) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }
}
