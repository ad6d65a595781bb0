//! The agent protocol: the one place that knows how the server and the in-sandbox agent
//! talk. A connection carries one request at a time; a request is a JSON frame, possibly
//! followed by data frames, and the answer is a sequence of frames ending in a terminal one.
//!
//! Frame layout: `u32` big-endian length of what follows, one kind byte, payload.
//! - `KIND_JSON`: a [`Request`] or [`Reply`] as JSON.
//! - `KIND_DATA`: one channel byte ([`Channel`]) then raw bytes.
//! - `KIND_END`: one channel byte; the end of that channel's data.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped whenever a wire type changes incompatibly; the server refuses agents it does not speak.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest frame either side accepts; data is sent in chunks well below it.
pub const MAX_FRAME: usize = 8 * 1024 * 1024;
/// Size of the data chunks both sides send.
pub const CHUNK: usize = 256 * 1024;

const KIND_JSON: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_END: u8 = 3;

/// Which stream a data frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Channel {
    /// File contents or stdin.
    Input = 0,
    Stdout = 1,
    Stderr = 2,
}

impl Channel {
    fn from_byte(b: u8) -> Result<Self, ProtoError> {
        match b {
            0 => Ok(Channel::Input),
            1 => Ok(Channel::Stdout),
            2 => Ok(Channel::Stderr),
            other => Err(ProtoError::Malformed(format!("unknown channel {other}"))),
        }
    }
}

/// What the server asks of the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Exec(ExecSpec),
    /// Answered by `Reply::FileInfo` then the file as data frames and an end frame.
    ReadFile {
        path: String,
    },
    /// Followed by the contents as data frames and an end frame; answered by `Reply::Ok`.
    WriteFile {
        path: String,
        #[serde(default)]
        mode: Option<u32>,
    },
    ListDir {
        path: String,
    },
    Stat {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    Rename {
        from: String,
        to: String,
    },
    /// Starts a long-lived shell; answered by `Reply::Session`.
    SessionCreate(SessionInit),
    SessionList,
    SessionGet {
        id: String,
    },
    /// Kills the shell and everything it started.
    SessionDelete {
        id: String,
    },
    /// Starts a background process (argv, env, cwd of the spec); answered by `Reply::Process`.
    ProcStart {
        id: String,
        spec: ExecSpec,
    },
    ProcList,
    ProcGet {
        id: String,
    },
    /// Answered by `Reply::Logs`, then the stdout bytes as data frames on `Stdout`, an end
    /// frame, the stderr bytes on `Stderr`, an end frame.
    ProcLogs {
        id: String,
        stdout_offset: u64,
        stderr_offset: u64,
        max_bytes: u64,
    },
    /// Followed by the input as data frames and an end frame; `eof` closes stdin after it.
    ProcStdin {
        id: String,
        eof: bool,
    },
    /// Sends `signal` to the process's whole tree.
    ProcSignal {
        id: String,
        signal: i32,
    },
    /// Waits for the process to exit, at most `timeout_ms`; answered by `Reply::Process`.
    ProcWait {
        id: String,
        timeout_ms: u64,
    },
    /// Waits until a TCP port inside the sandbox accepts connections.
    ProcWaitPort {
        id: String,
        port: u16,
        timeout_ms: u64,
    },
    /// Kills the process's tree and forgets it and its logs.
    ProcRemove {
        id: String,
    },
    /// Starts a program on a new terminal; answered by `Started`, then the connection carries
    /// the terminal both ways (input as data frames on `Input`, resizes as `PtyResize`) until
    /// `Exited`.
    Pty {
        spec: ExecSpec,
        cols: u16,
        rows: u16,
    },
    PtyResize {
        cols: u16,
        rows: u16,
    },
    /// Starts a code-interpreter context; answered by `Reply::Context`.
    ContextCreate(ContextInit),
    ContextList,
    ContextGet {
        id: String,
    },
    ContextDelete {
        id: String,
    },
    /// Replaces the context's interpreter with a fresh one (state is lost).
    ContextRestart {
        id: String,
    },
    /// Runs code in a context; answered by `Started`, output as data frames, then
    /// `RunResult`. `init` creates the context if it does not exist (the lazy default).
    RunCode {
        context: String,
        code: String,
        timeout_ms: u64,
        locals: bool,
        init: Option<ContextInit>,
    },
    /// Opens a TCP connection to `port` on the sandbox's loopback (127.0.0.1, then ::1);
    /// answered by `Ok` (or `Error` with `NotRunning` when nothing listens). After `Ok` the
    /// connection carries the TCP stream's raw bytes both ways, no frames, until either
    /// side closes: it is a tunnel and never serves another request.
    Connect {
        port: u16,
    },
    /// Archives the directory `root` (tar, zstd-compressed): answered by `Reply::Ok`, then the
    /// archive as data frames on `Stdout`, an end frame, and a final `Reply::Ok` or
    /// `Reply::Error`; only a final `Ok` means the archive is complete. Mount points (the
    /// host's system directories, `/proc`, `/dev`, the agent) are never included;
    /// `excludes` are globs matched against paths relative to `root` and against names.
    Archive {
        root: String,
        #[serde(default)]
        excludes: Vec<String>,
    },
    /// Followed by an archive made by `Archive` as data frames on `Input` and an end frame;
    /// unpacks it into `dir` (created if missing), after emptying `dir` when `clean`.
    /// Answered by `Reply::Ok` or an error once all data was read.
    Extract {
        dir: String,
        clean: bool,
    },
}

/// How a code-interpreter context starts (and restarts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ContextInit {
    pub id: String,
    /// `python` or `javascript`.
    pub language: String,
    pub cwd: String,
    pub env: BTreeMap<String, String>,
    /// JSON text (a string, object or array), preloaded as the variable `context`.
    pub payload: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
    pub pid: i32,
    /// False once the interpreter died (crash, `os._exit`); restart brings it back.
    pub alive: bool,
    /// The interpreter's version.
    pub version: String,
    pub created_at: i64,
}

/// How a session's shell starts (and restarts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionInit {
    pub id: String,
    pub cwd: String,
    /// The shell's whole environment.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    /// The shell's current directory.
    pub cwd: String,
    pub pid: i32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcInfo {
    pub id: String,
    pub pid: i32,
    pub command: Vec<String>,
    pub cwd: String,
    pub running: bool,
    pub exit_code: Option<i32>,
    /// Milliseconds since the epoch.
    pub started_at: i64,
    pub exited_at: Option<i64>,
}

/// A command to run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    /// Program and arguments; the server turns shell text into a shell argv.
    pub argv: Vec<String>,
    /// The whole environment of the command (the server merges sandbox and request env).
    pub env: BTreeMap<String, String>,
    pub cwd: String,
    /// Standard input follows the request as data frames and an end frame; without it
    /// the command's stdin is /dev/null.
    #[serde(default)]
    pub has_stdin: bool,

    /// Kill the command's whole process tree after this long.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Run in this session's shell; `env` then holds only the command's own variables.
    #[serde(default)]
    pub session: Option<String>,
    /// Creates the session if it does not exist (used for the lazy `default` session).
    #[serde(default)]
    pub session_init: Option<SessionInit>,
    /// Kill the command's tree when the server hangs up on the exec (its client left).
    #[serde(default)]
    pub kill_on_disconnect: bool,
}

/// What the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Pong {
        version: u32,
        agent_version: String,
    },
    Ok,
    Error(AgentError),
    /// An exec started; output follows as data frames, then `Exited`.
    Started {
        pid: i32,
    },
    Exited(ExitStatus),
    FileInfo {
        size: u64,
    },
    Entries {
        entries: Vec<Entry>,
    },
    Entry(Entry),
    Session(SessionInfo),
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    Process(ProcInfo),
    Processes {
        processes: Vec<ProcInfo>,
    },
    Context(ContextInfo),
    Contexts {
        contexts: Vec<ContextInfo>,
    },
    /// The outcome of a code run: `execution_count`, `results`, `error`, `timed_out`, and
    /// `locals` when asked for.
    RunResult(serde_json::Value),
    /// Log bytes follow as data frames; the offsets are where the next read resumes.
    Logs {
        stdout_offset: u64,
        stderr_offset: u64,
        running: bool,
        exit_code: Option<i32>,
    },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit status, or 128 + signal number when killed by a signal.
    pub exit_code: i32,
    pub duration_ms: u64,
    pub timed_out: bool,
}

/// A directory entry or the answer to a stat.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: EntryKind,
    pub size: u64,
    pub mode: u32,
    /// Seconds since the epoch.
    pub modified: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// A failure the agent reports; `code` maps onto an API error code.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    PermissionDenied,
    InvalidPath,
    NoSpace,
    BadRequest,
    NotRunning,
    Timeout,
    /// The sandbox is at one of its limits (pids, memory): fork or spawn said EAGAIN/ENOMEM.
    LimitReached,
    Internal,
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps an OS error on `path` to the code a client can act on.
    pub fn from_io(err: &std::io::Error, path: &str) -> Self {
        use std::io::ErrorKind as K;
        let code = match err.kind() {
            K::NotFound => ErrorCode::NotFound,
            K::AlreadyExists => ErrorCode::AlreadyExists,
            K::PermissionDenied => ErrorCode::PermissionDenied,
            K::IsADirectory => ErrorCode::IsADirectory,
            K::NotADirectory => ErrorCode::NotADirectory,
            K::DirectoryNotEmpty => ErrorCode::NotEmpty,
            K::StorageFull => ErrorCode::NoSpace,
            K::InvalidInput | K::InvalidFilename => ErrorCode::InvalidPath,
            K::ReadOnlyFilesystem => ErrorCode::PermissionDenied,
            // EBUSY: a mount point (`/proc`, `/dev`) cannot be removed or replaced.
            K::ResourceBusy => ErrorCode::PermissionDenied,
            // EXDEV: a rename across mounts.
            K::CrossesDevices => ErrorCode::BadRequest,
            K::WouldBlock | K::OutOfMemory => {
                return Self::new(
                    ErrorCode::LimitReached,
                    format!(
                        "{path}: {err}: the sandbox is at its process or memory limit \
                         (limits.pids, limits.memory_mb)"
                    ),
                )
            }
            _ => match err.raw_os_error() {
                // ENXIO: a FIFO without a reader; ELOOP; ENAMETOOLONG.
                Some(6) | Some(40) | Some(36) => ErrorCode::InvalidPath,
                _ => ErrorCode::Internal,
            },
        };

        Self::new(code, format!("{path}: {err}"))
    }
}

/// One frame off the wire.
#[derive(Debug)]
pub enum Frame {
    Json(Vec<u8>),
    Data(Channel, Vec<u8>),
    End(Channel),
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("bad JSON frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("connection closed")]
    Closed,
}

/// Writes a JSON frame.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg)?;
    write_raw(w, KIND_JSON, None, &body).await
}

/// Writes a data frame on `ch`.
pub async fn write_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    ch: Channel,
    data: &[u8],
) -> Result<(), ProtoError> {
    write_raw(w, KIND_DATA, Some(ch), data).await
}

/// Writes the end-of-data frame of `ch`.
pub async fn write_end<W: AsyncWrite + Unpin>(w: &mut W, ch: Channel) -> Result<(), ProtoError> {
    write_raw(w, KIND_END, Some(ch), &[]).await
}

async fn write_raw<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    ch: Option<Channel>,
    body: &[u8],
) -> Result<(), ProtoError> {
    let extra = usize::from(ch.is_some());
    let len = 1 + extra + body.len();
    if len > MAX_FRAME {
        return Err(ProtoError::Malformed(format!("frame of {len} bytes")));
    }
    let mut head = [0u8; 6];
    head[..4].copy_from_slice(&(len as u32).to_be_bytes());
    head[4] = kind;
    if let Some(ch) = ch {
        head[5] = ch as u8;
    }
    w.write_all(&head[..5 + extra]).await?;
    w.write_all(body).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Err(Closed)` on a clean end of stream before a frame starts.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Frame, ProtoError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(ProtoError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ProtoError::Malformed(format!("frame length {len}")));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    match buf[0] {
        KIND_JSON => {
            buf.remove(0);
            Ok(Frame::Json(buf))
        }
        KIND_DATA if len >= 2 => {
            let ch = Channel::from_byte(buf[1])?;
            buf.drain(..2);
            Ok(Frame::Data(ch, buf))
        }
        KIND_END if len == 2 => Ok(Frame::End(Channel::from_byte(buf[1])?)),
        other => Err(ProtoError::Malformed(format!(
            "frame kind {other}, length {len}"
        ))),
    }
}

/// Decodes the body of a JSON frame.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ProtoError> {
    Ok(serde_json::from_slice(body)?)
}

/// Reads data frames of `ch` up to its end frame, refusing more than `max` bytes.
pub async fn read_all_data<R: AsyncRead + Unpin>(
    r: &mut R,
    ch: Channel,
    max: usize,
) -> Result<Vec<u8>, ProtoError> {
    let mut out = Vec::new();
    loop {
        match read_frame(r).await? {
            Frame::Data(c, d) if c == ch => {
                if out.len() + d.len() > max {
                    return Err(ProtoError::Malformed(format!(
                        "more than {max} bytes of data"
                    )));
                }
                out.extend_from_slice(&d);
            }
            Frame::End(c) if c == ch => return Ok(out),
            other => {
                return Err(ProtoError::Malformed(format!(
                    "expected data on {ch:?}, got {other:?}"
                )))
            }
        }
    }
}

/// Writes `data` on `ch` in chunks, then the end frame.
pub async fn write_all_data<W: AsyncWrite + Unpin>(
    w: &mut W,
    ch: Channel,
    data: &[u8],
) -> Result<(), ProtoError> {
    for part in data.chunks(CHUNK) {
        write_data(w, ch, part).await?;
    }
    write_end(w, ch).await
}

/// Reads a frame that must be JSON of type `T`.
pub async fn read_json<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, ProtoError> {
    match read_frame(r).await? {
        Frame::Json(body) => Ok(serde_json::from_slice(&body)?),
        other => Err(ProtoError::Malformed(format!(
            "expected a JSON frame, got {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        write_json(&mut a, &Request::Stat { path: "/x".into() })
            .await
            .unwrap();
        write_data(&mut a, Channel::Stdout, b"\x00\xffhi")
            .await
            .unwrap();
        write_end(&mut a, Channel::Stderr).await.unwrap();
        drop(a);
        let req: Request = read_json(&mut b).await.unwrap();
        assert!(matches!(req, Request::Stat { path } if path == "/x"));
        match read_frame(&mut b).await.unwrap() {
            Frame::Data(Channel::Stdout, d) => assert_eq!(d, b"\x00\xffhi"),
            f => panic!("unexpected {f:?}"),
        }
        assert!(matches!(
            read_frame(&mut b).await.unwrap(),
            Frame::End(Channel::Stderr)
        ));
        assert!(matches!(read_frame(&mut b).await, Err(ProtoError::Closed)));
    }

    #[tokio::test]
    async fn oversized_length_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut b).await,
            Err(ProtoError::Malformed(_))
        ));
    }
}
