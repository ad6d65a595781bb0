//! The client's one error type: every failure carries the server's error code (or one of
//! the client's own: `connection_error`, `invalid_response`, `websocket`), its HTTP status
//! when an answer came back, and a message.

use std::fmt;

/// An error answer of the server, or a failure to reach it or to read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// HTTP status of the answer; `None` when no answer came back (or a stream broke).
    pub status: Option<u16>,
    /// The server's stable snake_case code (`not_found`, `invalid_path`, ...) or the client's.
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
}

/// Result of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of the client itself (no HTTP status).
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Error {
        Error {
            status: None,
            code: code.into(),
            message: message.into(),
        }
    }

    /// The error an answer with a non-success `status` and `body` stands for: the server's
    /// `{"error": {"code", "message"}}`, or the body text under a generic code.
    pub fn from_answer(status: u16, body: &[u8]) -> Error {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            code: String,
            message: String,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(e) => Error {
                status: Some(status),
                code: e.error.code,
                message: e.error.message,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                Error {
                    status: Some(status),
                    code: match status {
                        401 => "unauthorized".into(),
                        404 => "not_found".into(),
                        _ => format!("http_{status}"),
                    },
                    message: if text.is_empty() {
                        format!("the server answered HTTP {status}")
                    } else {
                        text.chars().take(500).collect()
                    },
                }
            }
        }
    }

    /// Whether this is the server saying the route or object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Error {
        let code = if e.is_decode() {
            "invalid_response"
        } else {
            "connection_error"
        };
        // reqwest's own message omits its causes ("error sending request"); add them.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error {
            status: e.status().map(|s| s.as_u16()),
            code: code.into(),
            message,
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::new("invalid_response", format!("decoding the answer: {e}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::new("io_error", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_carry_the_server_code() {
        let e = Error::from_answer(
            404,
            br#"{"error":{"code":"not_found","message":"sandbox 'x' does not exist"}}"#,
        );
        assert_eq!(
            (e.status, e.code.as_str(), e.message.as_str()),
            (Some(404), "not_found", "sandbox 'x' does not exist")
        );
        assert_eq!(e.to_string(), "sandbox 'x' does not exist (not_found)");
        assert!(e.is_not_found());
        // Not the server's envelope: the status says what it can.
        let e = Error::from_answer(502, b"Bad Gateway");
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("http_502", "Bad Gateway")
        );
        let e = Error::from_answer(401, b"");
        assert_eq!(e.code, "unauthorized");
        assert!(e.message.contains("401"));
    }
}
