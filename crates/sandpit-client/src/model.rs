//! Request and answer shapes of the API, as small serde structs of the client's own (the
//! server's model types would pull the server into every client). Answers keep fields this
//! version does not know in `extra`, so a newer server loses nothing on the way through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Resource limits of a sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

/// A sandbox, as `GET /v1/sandboxes/{id}` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub last_active_at: Option<String>,
    #[serde(default)]
    pub keepalive_seconds: u64,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sandboxes`; every field is optional.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateSandbox {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keepalive_seconds: Option<u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// A command to run: `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExecRequest {
    /// Shell text, run by `bash -c`. Exactly one of `command` and `argv`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A program and its arguments, no shell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_on_disconnect: Option<bool>,
}

impl ExecRequest {
    /// Shell text run by `bash -c`.
    pub fn shell(command: impl Into<String>) -> ExecRequest {
        ExecRequest {
            command: Some(command.into()),
            ..ExecRequest::default()
        }
    }

    /// A program and its arguments, run without a shell.
    pub fn argv<I, S>(argv: I) -> ExecRequest
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: Some(argv.into_iter().map(Into::into).collect()),
            ..ExecRequest::default()
        }
    }
}

/// The answer of a buffered exec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub truncated: bool,
}

impl ExecResult {
    /// Exit code 0 and not timed out.
    pub fn ok(&self) -> bool {
        self.exit_code == 0 && !self.timed_out
    }
}

/// One event of a streamed exec, as it happens.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ExecEvent {
    Start {
        pid: i64,
    },
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    Exit {
        exit_code: i64,
        duration_ms: u64,
        timed_out: bool,
    },
}

/// A file or directory inside a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub modified_at: Option<String>,
}

/// A long-lived shell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub created_at: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sandboxes/{id}/sessions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateSession {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A background process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub id: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    /// `running` or `exited`.
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub exited_at: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StartProcess {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The logs of a background process from given offsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessLogs {
    pub stdout: String,
    pub stderr: String,
    /// Where to resume stdout.
    pub stdout_offset: u64,
    /// Where to resume stderr.
    pub stderr_offset: u64,
    pub status: String,
    #[serde(default)]
    pub exit_code: Option<i64>,
}

/// One event of a followed process log.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    Stdout { data: String, offset: u64 },
    Stderr { data: String, offset: u64 },
    Exit { exit_code: Option<i64> },
}

/// A snapshot of (a directory of) a sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub sandbox_id: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub created_at: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateSnapshot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

/// A stateful interpreter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub id: String,
    pub language: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub created_at: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The body of `POST /v1/sandboxes/{id}/code`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CodeRequest {
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locals: Option<bool>,
}

/// The answer of a code run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub execution_count: Option<u64>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub truncated: bool,
    /// Each result maps MIME types (`text/plain`, `image/png`, ...) to representations.
    #[serde(default)]
    pub results: Vec<Map<String, Value>>,
    /// `{"name", "value", "traceback"}` when the code raised.
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub locals: Option<Map<String, Value>>,
}

/// `POST /v1/sandboxes/{id}/git/clone`: clone `url` into `dir`, or fast-forward it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GitClone {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Sent in the body only; the server keeps it out of argv, `.git/config` and logs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// What a clone did: `action` is `clone`, or `pull` when `dir` already held the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GitResult {
    pub action: String,
    pub dir: String,
    pub commit: String,
    pub branch: String,
}

/// A public token for one port: `url` opens that port without the API key. `token` is
/// shown only when it is made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortToken {
    pub port: u16,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: String,
}
