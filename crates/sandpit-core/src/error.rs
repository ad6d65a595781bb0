//! The one error type of the core; every API layer maps it onto its own error shape.

use sandpit_proto::{AgentError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("sandbox '{0}' does not exist")]
    NotFound(String),
    #[error("sandbox '{0}' already exists")]
    AlreadyExists(String),
    #[error("invalid sandbox id '{0}': use 1-63 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidId(String),
    #[error("invalid {kind} id '{id}': use 1-63 characters of A-Z, a-z, 0-9, '_' and '-'")]
    InvalidChildId { kind: &'static str, id: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    TooLarge(String),
    /// A file or exec failure the agent reported (not found, is a directory, ...).
    #[error("{0}")]
    Agent(#[from] AgentError),
    /// The sandbox could not be started or reached.
    #[error("sandbox '{id}' is unavailable: {message}")]
    Unavailable { id: String, message: String },
    #[error("internal error: {0}")]
    Internal(String),
    /// A sleep put the sandbox down while the call (a command, a file read) was running;
    /// the sandbox itself is fine and the next call wakes it.
    #[error("{0}")]
    Interrupted(String),
    /// This server cannot do what was asked (e.g. egress networking when rootless).
    #[error("{0}")]
    NotSupported(String),
    /// git failed: it could not reach or authenticate to the repository, or the checkout
    /// does not fast-forward. The message carries git's (redacted) stderr.
    #[error("{0}")]
    GitFailed(String),
    #[error("snapshot {0} does not exist")]
    SnapshotNotFound(String),
    /// The snapshot storage failed (unreachable, refused, corrupt object).
    #[error("snapshot storage: {0}")]
    Storage(String),
    /// The server's own disk (the data dir, the store or local snapshot storage) is full.
    #[error("no space left on the server's disk: {0}")]
    NoSpace(String),
    /// The server cannot take this call now (its budget for buffered output is in use).
    #[error("{0}")]
    Busy(String),
    /// A tenant's quota is used up; a retry may succeed after `retry_after` seconds.
    #[error("{message}")]
    QuotaExceeded { message: String, retry_after: u64 },
}

impl CoreError {
    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::InvalidId(_) | Self::InvalidChildId { .. } => "invalid_id",

            Self::BadRequest(_) => "bad_request",
            Self::TooLarge(_) => "payload_too_large",
            Self::Agent(e) => match e.code {
                ErrorCode::NotFound => "not_found",
                ErrorCode::AlreadyExists => "already_exists",
                ErrorCode::IsADirectory => "is_a_directory",
                ErrorCode::NotADirectory => "not_a_directory",
                ErrorCode::NotEmpty => "not_empty",
                ErrorCode::PermissionDenied => "permission_denied",
                ErrorCode::InvalidPath => "invalid_path",
                ErrorCode::NoSpace => "no_space",
                ErrorCode::BadRequest => "bad_request",
                ErrorCode::NotRunning => "not_running",
                ErrorCode::Timeout => "timeout",
                ErrorCode::LimitReached => "limit_reached",

                ErrorCode::Internal => "internal",
            },
            Self::Unavailable { .. } => "sandbox_unavailable",
            Self::Internal(_) => "internal",
            Self::Interrupted(_) => "interrupted",
            Self::NotSupported(_) => "not_supported",
            Self::GitFailed(_) => "git_failed",
            Self::SnapshotNotFound(_) => "snapshot_not_found",
            Self::Storage(_) => "storage_error",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::NoSpace(_) => "no_space",
            Self::Busy(_) => "busy",
        }
    }

    pub(crate) fn unavailable(id: &str, message: impl std::fmt::Display) -> Self {
        let message = message.to_string();
        if is_no_space(&message) {
            return Self::NoSpace(format!("sandbox '{id}': {message}"));
        }
        Self::Unavailable {
            id: id.to_string(),
            message,
        }
    }
}

/// Whether an error message is the kernel's or SQLite's "disk full".
pub(crate) fn is_no_space(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("database or disk is full")
}
