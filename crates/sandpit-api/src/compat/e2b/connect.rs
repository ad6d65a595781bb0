//! The Connect-RPC protocol with the JSON codec, as envd speaks it: unary calls are a JSON
//! body in and out (`application/json`); server streams take one enveloped message and answer
//! `application/connect+json` frames (a flag byte, a big-endian u32 length, the JSON), ended by
//! a frame with flag `0x02` carrying `{}` or `{"error": {...}}`. Errors are
//! `{"code": "not_found", "message"}` with the code's HTTP status on unary calls.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sandpit_core::CoreError;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Flag of a compressed message (refused: the SDK never compresses).
const FLAG_COMPRESSED: u8 = 0x01;
/// Flag of the frame that ends a stream.
const FLAG_END: u8 = 0x02;

/// A Connect error: a code from the protocol's fixed set and a message.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: &'static str,
    pub message: String,
}

impl RpcError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_argument", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new("not_found", message)
    }

    /// A missing sandbox, worded as E2B's proxy words it: the SDK turns it into
    /// `SandboxNotRunningException`.
    pub fn sandbox_gone(id: &str) -> Self {
        Self::new("unavailable", format!("sandbox \"{id}\" was not found"))
    }

    /// The HTTP status of a unary answer with this code.
    pub fn status(&self) -> StatusCode {
        match self.code {
            "canceled" => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
            "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
            "not_found" => StatusCode::NOT_FOUND,
            "already_exists" | "aborted" => StatusCode::CONFLICT,
            "permission_denied" => StatusCode::FORBIDDEN,
            "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
            "unimplemented" => StatusCode::NOT_IMPLEMENTED,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn body(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }

    /// A core error about sandbox `id`.
    pub fn from_core(id: &str, e: CoreError) -> Self {
        if matches!(e, CoreError::NotFound(_)) {
            return Self::sandbox_gone(id);
        }
        let code = match e.code() {
            "not_found" | "snapshot_not_found" => "not_found",
            "already_exists" => "already_exists",
            "bad_request" | "invalid_id" | "invalid_path" | "is_a_directory"
            | "not_a_directory" | "not_empty" => "invalid_argument",
            "permission_denied" => "permission_denied",
            "payload_too_large" | "no_space" | "quota_exceeded" => "resource_exhausted",
            "not_running" => "failed_precondition",
            "timeout" => "deadline_exceeded",
            "not_supported" => "unimplemented",
            "sandbox_unavailable" => "unavailable",
            _ => "internal",
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() && self.code != "unimplemented" {
            tracing::warn!(code = self.code, message = %self.message, "e2b rpc failed");
        }
        (self.status(), axum::Json(self.body())).into_response()
    }
}

/// The JSON message of a unary request (an empty body is `{}`).
pub fn unary_request(headers: &HeaderMap, body: &[u8]) -> Result<Value, RpcError> {
    let ct = content_type(headers);
    if !ct.is_empty() && ct != "application/json" {
        return Err(RpcError::new(
            "unimplemented",
            format!("content type '{ct}': only the JSON codec (application/json) is served"),
        ));
    }
    parse(body)
}

/// The one message of a server-stream request: an enveloped JSON message.
pub fn stream_request(headers: &HeaderMap, body: &[u8]) -> Result<Value, RpcError> {
    let ct = content_type(headers);
    if ct != "application/connect+json" {
        return Err(RpcError::new(
            "unimplemented",
            format!("content type '{ct}': streams take application/connect+json (the JSON codec)"),
        ));
    }
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(RpcError::invalid("stream request without an envelope"));
    };
    if head[0] & FLAG_COMPRESSED != 0 {
        return Err(RpcError::new(
            "unimplemented",
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let msg = rest
        .get(..len)
        .ok_or_else(|| RpcError::invalid("stream request envelope is cut short"))?;
    parse(msg)
}

fn parse(bytes: &[u8]) -> Result<Value, RpcError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| RpcError::invalid(format!("invalid JSON message: {e}")))?;
    if !v.is_object() {
        return Err(RpcError::invalid("the message must be a JSON object"));
    }
    Ok(v)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// A unary answer.
pub fn unary(result: Result<Value, RpcError>) -> Response {
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// One frame of a stream.
fn frame(flags: u8, msg: &Value) -> Bytes {
    let data = msg.to_string();
    let mut out = Vec::with_capacity(5 + data.len());
    out.push(flags);
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data.as_bytes());
    Bytes::from(out)
}

/// The sending half of a server stream: messages, then exactly one end.
pub struct StreamTx {
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
}

impl StreamTx {
    /// Sends a message; false once the client has gone.
    pub async fn send(&self, msg: &Value) -> bool {
        self.tx.send(Ok(frame(0, msg))).await.is_ok()
    }

    /// Ends the stream, with an error or without.
    pub async fn end(self, error: Option<RpcError>) {
        let msg = match error {
            None => json!({}),
            Some(e) => json!({"error": e.body()}),
        };
        let _ = self.tx.send(Ok(frame(FLAG_END, &msg))).await;
    }
}

/// A streaming answer and the sender that feeds it.
pub fn stream() -> (StreamTx, Response) {
    let (tx, rx) = mpsc::channel(32);
    let mut resp = Body::from_stream(ReceiverStream::new(rx)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/connect+json"),
    );
    (StreamTx { tx }, resp)
}

/// A stream that is only an error (a request refused before anything ran).
pub async fn stream_error(e: RpcError) -> Response {
    let (tx, resp) = stream();
    tx.end(Some(e)).await;
    resp
}

/// The client's deadline (`Connect-Timeout-Ms`), if any.
pub fn deadline(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// How often a stream sends a keepalive event (`Keepalive-Ping-Interval`, seconds).
pub fn keepalive(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ct.parse().unwrap());
        h
    }

    #[test]
    fn frames_are_flag_length_json() {
        let f = frame(FLAG_END, &json!({}));
        assert_eq!(&f[..], &[2, 0, 0, 0, 2, b'{', b'}']);
    }

    #[test]
    fn stream_requests_are_unwrapped() {
        let body = frame(0, &json!({"a": 1}));
        let v = stream_request(&headers("application/connect+json"), &body).unwrap();
        assert_eq!(v, json!({"a": 1}));
        let e = stream_request(&headers("application/connect+json"), &body[..6]).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        let e = stream_request(&headers("application/connect+proto"), &body).unwrap_err();
        assert_eq!(e.code, "unimplemented");
        let mut compressed = body.to_vec();
        compressed[0] = 1;
        assert!(stream_request(&headers("application/connect+json"), &compressed).is_err());
    }

    #[test]
    fn unary_requests_are_json_objects() {
        let h = headers("application/json");
        assert_eq!(unary_request(&h, b"").unwrap(), json!({}));
        assert_eq!(unary_request(&h, b"{\"x\":2}").unwrap(), json!({"x": 2}));
        assert_eq!(
            unary_request(&h, b"[1]").unwrap_err().code,
            "invalid_argument"
        );
        assert_eq!(
            unary_request(&h, b"{").unwrap_err().code,
            "invalid_argument"
        );
    }

    #[test]
    fn codes_have_their_statuses() {
        assert_eq!(RpcError::not_found("x").status(), StatusCode::NOT_FOUND);
        assert_eq!(
            RpcError::sandbox_gone("x").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert!(RpcError::sandbox_gone("x")
            .message
            .contains("was not found"));
    }
}
