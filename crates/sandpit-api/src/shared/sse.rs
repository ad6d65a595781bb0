//! Server-Sent Events of a command's or code run's output, and the UTF-8 carry that keeps
//! a character split across two output chunks whole: used by the native exec and code
//! routes and by the dialects that stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use sandpit_core::model::ExecEvent;
use sandpit_core::CoreError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Whether the client asked for Server-Sent Events.
pub fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Streams a command's or code run's events as SSE: `start`, `stdout`, `stderr`, then
/// `exit` (a command) or `result` (a code run), or `error`.
pub fn event_stream(rx: mpsc::Receiver<Result<ExecEvent, CoreError>>) -> Response {
    let mut out = Utf8Carry::default();
    let mut err = Utf8Carry::default();
    let events = ReceiverStream::new(rx).map(move |ev| {
        let event = match ev {
            Ok(ExecEvent::Started { pid }) => sse("start", serde_json::json!({"pid": pid})),
            Ok(ExecEvent::Stdout(d)) => sse("stdout", serde_json::json!({"data": out.push(&d)})),
            Ok(ExecEvent::Stderr(d)) => sse("stderr", serde_json::json!({"data": err.push(&d)})),
            Ok(ExecEvent::Exited(st)) => sse(
                "exit",
                serde_json::json!({"exit_code": st.exit_code, "duration_ms": st.duration_ms, "timed_out": st.timed_out}),
            ),
            Ok(ExecEvent::CodeResult(result)) => sse("result", result),
            Err(e) => sse("error", serde_json::json!({"code": e.code(), "message": e.to_string()})),
        };
        Ok::<_, Infallible>(event)
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(10)))
        .into_response()
}

fn sse(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// Turns a byte stream into text without splitting a UTF-8 character across two events.
#[derive(Default)]
pub struct Utf8Carry {
    pending: Vec<u8>,
}

impl Utf8Carry {
    pub fn push(&mut self, data: &[u8]) -> String {
        self.pending.extend_from_slice(data);
        let valid_up_to = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next chunk; anything else is
            // invalid and is replaced now.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(valid_up_to);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Carry;

    #[test]
    fn split_characters_are_joined() {
        let mut c = Utf8Carry::default();
        let bytes = "héllo".as_bytes();
        assert_eq!(c.push(&bytes[..2]), "h");
        assert_eq!(c.push(&bytes[2..]), "éllo");
        assert_eq!(c.push(b"\xff!"), "\u{fffd}!");
    }
}
