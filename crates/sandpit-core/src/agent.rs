//! The server's side of the agent protocol: a small pool of Unix socket connections per
//! sandbox, and typed calls for exec and files.
//!
//! No call waits on the agent without a deadline. Every reply is awaited under a [`Watch`]:
//! while the agent is silent it is pinged on a fresh connection every few seconds, and one
//! that does not answer a ping (or a call that passes its own limit: the command's timeout
//! plus a grace, or [`CALL_LIMIT`]) ends the call `sandbox_unavailable` and marks the agent
//! suspect, so that the next call checks it and restarts the sandbox if it stays silent.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sandpit_proto::{
    read_all_data, read_frame, read_json, write_all_data, write_data, write_end, write_json,
    Channel, ExecSpec, Frame, ProtoError, Reply, Request, PROTOCOL_VERSION,
};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::model::ExecEvent;
use crate::CoreError;

/// Idle connections kept per sandbox.
const POOL_SIZE: usize = 4;

/// Silence of the agent after which it is pinged.
const QUIET: Duration = Duration::from_secs(5);
/// How long a ping may take to be answered.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a call with a single reply may take (a recursive remove of a huge tree).
pub const CALL_LIMIT: Duration = Duration::from_secs(300);
/// Added to a command's (or wait's) own timeout before the server gives up on the agent.
const GRACE: Duration = Duration::from_secs(30);

/// How long the server waits for the reply to `req` (the whole stream for an exec).
fn limit_of(req: &Request) -> Option<Duration> {
    let after = |ms: u64| Duration::from_millis(ms).saturating_add(GRACE);
    match req {
        Request::Exec(spec) => spec.timeout_ms.map(after),
        Request::RunCode { timeout_ms, .. } => Some(after(*timeout_ms)),
        Request::ProcWait { timeout_ms, .. } | Request::ProcWaitPort { timeout_ms, .. } => {
            Some(after(*timeout_ms))
        }
        _ => Some(CALL_LIMIT),
    }
}

pub struct AgentClient {
    id: String,
    socket: PathBuf,
    idle: Pool,
    /// Sleeps and the delete of the sandbox, shared with the tasks that stream output.
    ends: Arc<Ends>,
}

/// What may end a sandbox's calls from outside; a stream that loses the agent after one of
/// them ends `Interrupted` instead of `sandbox_unavailable`.
#[derive(Default)]
struct Ends {
    /// Counts sleeps.
    sleeps: AtomicU64,
    /// Set when the sandbox is deleted: calls cut by it, and calls that would start it
    /// again, end `Interrupted`.
    deleted: AtomicBool,
    /// Set when the agent failed a liveness check or a call's limit passed: the next call
    /// pings it first (and restarts the sandbox when it stays silent).
    suspect: AtomicBool,
}

impl Ends {
    fn sleeps(&self) -> u64 {
        self.sleeps.load(Ordering::SeqCst)
    }

    /// What a stream begun at `sleeps == at` that lost the agent (`what`) ends with.
    fn lost(&self, id: &str, at: u64, what: String) -> CoreError {
        if self.deleted.load(Ordering::SeqCst) {
            return AgentClient::deleted_error(id);
        }
        if self.sleeps() != at {
            return CoreError::Interrupted(format!(
                "sandbox '{id}' was put to sleep during the call ({what}); the next call wakes it"
            ));
        }
        CoreError::unavailable(id, what)
    }
}

/// Idle connections to one agent, shared with the tasks that stream exec output.
type Pool = Arc<Mutex<Vec<UnixStream>>>;

fn give_back(pool: &Pool, conn: UnixStream) {
    let mut idle = pool.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < POOL_SIZE {
        idle.push(conn);
    }
}

/// What a call needs to tell a busy agent from a silent one; cloned into stream tasks.
#[derive(Clone)]
struct Watch {
    id: String,
    socket: PathBuf,
    ends: Arc<Ends>,
    /// `ends.sleeps` when the call began.
    at: u64,
}

impl Watch {
    /// Pings the agent on a connection of its own.
    async fn probe(&self) -> Result<(), String> {
        let once = async {
            let short =
                sandpit_runtime::sockpath::shorten(&self.socket).map_err(|e| e.to_string())?;
            let mut conn = UnixStream::connect(&short.path)
                .await
                .map_err(|e| e.to_string())?;
            write_json(&mut conn, &Request::Ping)
                .await
                .map_err(|e| e.to_string())?;
            match read_json::<_, Reply>(&mut conn).await {
                Ok(Reply::Pong { .. }) => Ok(()),
                Ok(other) => Err(format!("unexpected answer to a ping: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(PING_TIMEOUT, once)
            .await
            .map_err(|_| format!("no answer to a ping within {} s", PING_TIMEOUT.as_secs()))?
    }

    /// A failed call: the agent is suspect from now on.
    fn silent(&self, what: String) -> CoreError {
        self.ends.suspect.store(true, Ordering::SeqCst);
        self.ends.lost(&self.id, self.at, what)
    }

    /// Awaits `fut` (a read from the agent) while the agent answers pings, for at most
    /// `limit`. `fut` is polled to its end, never dropped half-way, unless the call fails.
    async fn reply<T, F>(&self, fut: F, limit: Option<Duration>) -> Result<T, CoreError>
    where
        F: std::future::Future<Output = Result<T, ProtoError>>,
    {
        tokio::pin!(fut);
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        loop {
            tokio::select! {
                r = &mut fut => {
                    return r.map_err(|e| {
                        if self.ends.deleted.load(Ordering::SeqCst) {
                            AgentClient::deleted_error(&self.id)
                        } else {
                            CoreError::unavailable(&self.id, format!("agent connection failed: {e}"))
                        }
                    })
                }
                _ = tokio::time::sleep(QUIET) => {
                    if let Err(e) = self.probe().await {
                        return Err(self.silent(format!("the agent stopped answering ({e})")));
                    }
                }
                _ = sleep_until(deadline) => {
                    let secs = limit.map_or(0, |l| l.as_secs());
                    return Err(self.silent(format!(
                        "the agent did not answer within {secs} s"
                    )));
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A stream of file bytes coming out of a sandbox.
pub type ByteStream = mpsc::Receiver<Result<Bytes, CoreError>>;

impl AgentClient {
    pub fn new(id: &str, socket: PathBuf) -> Self {
        Self {
            id: id.to_string(),
            socket,
            idle: Arc::new(Mutex::new(Vec::new())),
            ends: Arc::default(),
        }
    }

    /// Marks the sandbox as deleted: calls in flight end `Interrupted`, none may start it.
    pub fn mark_deleted(&self) {
        self.ends.deleted.store(true, Ordering::SeqCst);
        self.reset();
    }

    pub fn is_deleted(&self) -> bool {
        self.ends.deleted.load(Ordering::SeqCst)
    }

    /// Whether the agent failed a liveness check since it last answered a ping.
    pub fn is_suspect(&self) -> bool {
        self.ends.suspect.load(Ordering::SeqCst)
    }

    fn watch(&self) -> Watch {
        Watch {
            id: self.id.clone(),
            socket: self.socket.clone(),
            ends: self.ends.clone(),
            at: self.ends.sleeps(),
        }
    }

    /// What a call that found its sandbox deleted ends with.
    pub fn deleted_error(id: &str) -> CoreError {
        CoreError::Interrupted(format!("sandbox '{id}' was deleted during the call"))
    }

    /// Marks the agent as being put to sleep: streams open now end `Interrupted`.
    pub fn interrupt(&self) {
        self.ends.sleeps.fetch_add(1, Ordering::SeqCst);
        self.reset();
    }

    fn broken(&self, e: impl std::fmt::Display) -> CoreError {
        if self.is_deleted() {
            return Self::deleted_error(&self.id);
        }
        CoreError::unavailable(&self.id, format!("agent connection failed: {e}"))
    }

    async fn connect(&self) -> Result<UnixStream, CoreError> {
        let short = sandpit_runtime::sockpath::shorten(&self.socket).map_err(|e| self.broken(e))?;
        let conn = tokio::time::timeout(Duration::from_secs(5), UnixStream::connect(&short.path))
            .await
            .map_err(|_| self.broken("connect timed out"))?
            .map_err(|e| self.broken(e))?;
        Ok(conn)
    }

    fn pooled(&self) -> Option<UnixStream> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    fn give_back(&self, conn: UnixStream) {
        give_back(&self.idle, conn);
    }

    /// Ends the input stream of a request (an upload, an archive) and reads the agent's
    /// verdict.
    async fn end_input(&self, mut conn: UnixStream) -> Result<(), CoreError> {
        write_end(&mut conn, Channel::Input)
            .await
            .map_err(|e| self.broken(e))?;
        self.verdict(conn).await
    }

    /// Reads the agent's answer to a request that ends in `Ok` or its error; the connection
    /// goes back to the pool.
    async fn verdict(&self, mut conn: UnixStream) -> Result<(), CoreError> {
        let reply: Reply = self
            .watch()
            .reply(read_json(&mut conn), Some(CALL_LIMIT))
            .await?;
        self.give_back(conn);
        match reply {
            Reply::Ok => Ok(()),
            Reply::Error(e) => Err(CoreError::Agent(e)),
            other => Err(unexpected(&self.id, Ok(other))),
        }
    }

    /// Takes the idle connections of `other`, a client of the same agent under its old name
    /// (a warm-pool hand-over renames the socket's directory; open connections stay good).
    pub fn take_connections(&self, other: &AgentClient) {
        let taken = std::mem::take(&mut *other.idle.lock().unwrap_or_else(|p| p.into_inner()));
        for conn in taken {
            self.give_back(conn);
        }
    }

    /// Forgets pooled connections (after the agent was restarted).
    pub fn reset(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Sends a request on a pooled connection, or on a fresh one if the pooled one is dead.
    async fn send(&self, req: &Request) -> Result<UnixStream, CoreError> {
        if let Some(mut conn) = self.pooled() {
            if write_json(&mut conn, req).await.is_ok() {
                return Ok(conn);
            }
        }
        let mut conn = self.connect().await?;
        write_json(&mut conn, req)
            .await
            .map_err(|e| self.broken(e))?;
        Ok(conn)
    }

    /// A request with a single reply. A stale pooled connection is retried once, fresh.
    pub async fn call(&self, req: &Request) -> Result<Reply, CoreError> {
        let watch = self.watch();
        let limit = limit_of(req);
        let mut conn = self.send(req).await?;
        let reply = match watch.reply(read_json::<_, Reply>(&mut conn), limit).await {
            Ok(r) => r,
            Err(e @ CoreError::Unavailable { .. }) if !self.is_suspect() => {
                // A stale pooled connection: once more on a fresh one.
                let _ = e;
                let mut fresh = self.connect().await?;
                write_json(&mut fresh, req)
                    .await
                    .map_err(|e| self.broken(e))?;
                conn = fresh;
                watch.reply(read_json(&mut conn), limit).await?
            }
            Err(e) => return Err(e),
        };
        self.give_back(conn);
        match reply {
            Reply::Error(e) => Err(CoreError::Agent(e)),
            other => Ok(other),
        }
    }

    /// Checks that the agent answers and speaks our protocol.
    /// A silent agent fails it within [`PING_TIMEOUT`]; an answer clears the suspicion.
    pub async fn ping(&self) -> Result<(), CoreError> {
        let once = async {
            let mut conn = self.connect().await?;
            write_json(&mut conn, &Request::Ping)
                .await
                .map_err(|e| self.broken(e))?;
            match read_json::<_, Reply>(&mut conn)
                .await
                .map_err(|e| self.broken(e))?
            {
                Reply::Pong { version, .. } if version == PROTOCOL_VERSION => {
                    self.give_back(conn);
                    Ok(())
                }
                other => Err(self.broken(format!("unexpected answer to ping: {other:?}"))),
            }
        };
        let r = tokio::time::timeout(PING_TIMEOUT, once)
            .await
            .unwrap_or_else(|_| {
                Err(self.broken(format!(
                    "no answer to a ping within {} s",
                    PING_TIMEOUT.as_secs()
                )))
            });
        if r.is_ok() {
            self.ends.suspect.store(false, Ordering::SeqCst);
        }
        r
    }

    /// Starts a command; events arrive on the returned channel, the last one `Exited`.
    /// `guard` lives until the command has exited.
    pub async fn exec<G: Send + 'static>(
        &self,
        spec: ExecSpec,
        stdin: Option<Bytes>,
        guard: G,
    ) -> Result<mpsc::Receiver<Result<ExecEvent, CoreError>>, CoreError> {
        let spec = ExecSpec {
            has_stdin: stdin.is_some(),
            ..spec
        };
        let kill_on_disconnect = spec.kill_on_disconnect;
        self.stream(Request::Exec(spec), stdin, kill_on_disconnect, guard)
            .await
    }

    /// Sends a request that streams output (exec, code runs): `Started`, data frames, and a
    /// terminal `Exited` or `RunResult`. Events arrive on the returned channel.
    pub async fn stream<G: Send + 'static>(
        &self,
        req: Request,
        stdin: Option<Bytes>,
        kill_on_disconnect: bool,
        guard: G,
    ) -> Result<mpsc::Receiver<Result<ExecEvent, CoreError>>, CoreError> {
        let watch = self.watch();
        let limit = limit_of(&req);
        let deadline = limit.map(|l| tokio::time::Instant::now() + l);
        let left =
            move || deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
        let send_stdin = |mut conn: UnixStream| {
            let stdin = stdin.clone();
            async move {
                if let Some(data) = stdin {
                    write_all_data(&mut conn, Channel::Input, &data)
                        .await
                        .map_err(|e| self.broken(e))?;
                }
                Ok::<_, CoreError>(conn)
            }
        };
        let mut conn = send_stdin(self.send(&req).await?).await?;
        // The first frame tells whether the command started; a dead pooled connection shows
        // here, before anything ran, so it is safe to retry on a fresh one.
        let first = match watch.reply(read_frame(&mut conn), left()).await {
            Ok(f) => f,
            Err(CoreError::Unavailable { .. }) if !self.is_suspect() => {
                let mut fresh = self.connect().await?;
                write_json(&mut fresh, &req)
                    .await
                    .map_err(|e| self.broken(e))?;
                conn = send_stdin(fresh).await?;
                watch.reply(read_frame(&mut conn), left()).await?
            }
            Err(e) => return Err(e),
        };

        let first = match first {
            Frame::Json(body) => {
                match sandpit_proto::decode::<Reply>(&body).map_err(|e| self.broken(e))? {
                    Reply::Error(e) => return Err(CoreError::Agent(e)),
                    Reply::Started { pid } => ExecEvent::Started { pid },
                    other => return Err(self.broken(format!("unexpected reply {other:?}"))),
                }
            }
            other => return Err(self.broken(format!("unexpected frame {other:?}"))),
        };
        let (tx, rx) = mpsc::channel(64);
        let id = self.id.clone();
        let _ = tx.send(Ok(first)).await;
        let pool = self.idle.clone();
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                let frame = tokio::select! {
                    f = watch.reply(read_frame(&mut conn), left()) => f,
                    // The client left and asked for its command to die with it.
                    _ = tx.closed(), if kill_on_disconnect => return,
                };
                let event = match frame {
                    Ok(Frame::Data(Channel::Stdout, d)) => ExecEvent::Stdout(Bytes::from(d)),
                    Ok(Frame::Data(Channel::Stderr, d)) => ExecEvent::Stderr(Bytes::from(d)),
                    Ok(Frame::Json(body)) => match sandpit_proto::decode::<Reply>(&body) {
                        Ok(Reply::Exited(status)) => {
                            let _ = tx.send(Ok(ExecEvent::Exited(status))).await;
                            give_back(&pool, conn);
                            return;
                        }
                        Ok(Reply::RunResult(result)) => {
                            let _ = tx.send(Ok(ExecEvent::CodeResult(result))).await;
                            give_back(&pool, conn);
                            return;
                        }
                        other => {
                            let _ = tx.send(Err(unexpected(&id, other))).await;
                            return;
                        }
                    },
                    Ok(_) => continue,
                    Err(CoreError::Unavailable { message, .. }) => {
                        let what = format!("lost the agent during exec: {message}");
                        let _ = tx.send(Err(watch.ends.lost(&id, watch.at, what))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                // A client that went away does not stop the command (it keeps running and
                // we keep reading to its end) unless it asked for that: then hanging up on
                // the agent kills it.
                if tx.send(Ok(event)).await.is_err() && kill_on_disconnect {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Opens a file for reading: its size and a stream of its bytes.
    /// `guard` lives until the file was read to its end (or the reader left).
    pub async fn read_file<G: Send + 'static>(
        &self,
        path: &str,
        guard: G,
    ) -> Result<(u64, ByteStream), CoreError> {
        let watch = self.watch();
        let req = Request::ReadFile {
            path: path.to_string(),
        };
        let mut conn = self.send(&req).await?;
        let reply = match watch
            .reply(read_json::<_, Reply>(&mut conn), Some(CALL_LIMIT))
            .await
        {
            Ok(r) => r,
            Err(CoreError::Unavailable { .. }) if !self.is_suspect() => {
                conn = self.connect().await?;
                write_json(&mut conn, &req)
                    .await
                    .map_err(|e| self.broken(e))?;
                watch.reply(read_json(&mut conn), Some(CALL_LIMIT)).await?
            }
            Err(e) => return Err(e),
        };
        let size = match reply {
            Reply::FileInfo { size } => size,
            Reply::Error(e) => {
                self.give_back(conn);
                return Err(CoreError::Agent(e));
            }
            other => return Err(unexpected(&self.id, Ok(other))),
        };
        let (tx, rx) = mpsc::channel(8);
        let id = self.id.clone();
        let pool = self.idle.clone();
        tokio::spawn(async move {
            let _guard = guard;
            loop {
                // A download has no limit of its own (the client sets the pace); a silent
                // agent still ends it.
                match watch.reply(read_frame(&mut conn), None).await {
                    Ok(Frame::Data(_, d)) => {
                        if tx.send(Ok(Bytes::from(d))).await.is_err() {
                            return; // the client went away; drop the connection mid-file
                        }
                    }
                    Ok(Frame::End(_)) => {
                        give_back(&pool, conn);
                        return;
                    }
                    Ok(Frame::Json(_)) | Err(_) => {
                        let what = "file read interrupted".to_string();
                        let _ = tx.send(Err(watch.ends.lost(&id, watch.at, what))).await;
                        return;
                    }
                }
            }
        });
        Ok((size, rx))
    }

    /// Writes a file from a stream of bytes (parents are created by the agent).
    pub async fn write_file<S, E>(&self, path: &str, mut body: S) -> Result<(), CoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<CoreError>,
    {
        let req = Request::WriteFile {
            path: path.to_string(),
            mode: None,
        };
        let mut conn = self.send(&req).await?;
        while let Some(chunk) = body.next().await {
            // On a failed upload the connection is abandoned: the agent sees it close and
            // discards the partial write's connection; the file keeps what arrived.
            let chunk = chunk.map_err(Into::into)?;
            for part in chunk.chunks(sandpit_proto::CHUNK) {
                write_data(&mut conn, Channel::Input, part)
                    .await
                    .map_err(|e| self.broken(e))?;
            }
        }
        self.end_input(conn).await
    }
}

fn unexpected(id: &str, reply: Result<Reply, ProtoError>) -> CoreError {
    CoreError::unavailable(id, format!("unexpected agent reply: {reply:?}"))
}

/// What the agent says about a process's logs, with the bytes read.
#[derive(Debug, Clone)]
pub struct LogChunk {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_offset: u64,
    pub stderr_offset: u64,
    pub running: bool,
    pub exit_code: Option<i32>,
}

/// One step of a terminal.
#[derive(Debug)]
pub enum PtyEvent {
    Output(Bytes),
    Exited(i32),
}

/// The sending half of a terminal connection.
pub struct PtyInput {
    conn: tokio::net::unix::OwnedWriteHalf,
}

/// The receiving half of a terminal connection.
pub struct PtyOutput {
    conn: tokio::net::unix::OwnedReadHalf,
}

impl PtyInput {
    pub async fn send(&mut self, data: &[u8]) -> Result<(), CoreError> {
        for part in data.chunks(sandpit_proto::CHUNK) {
            write_data(&mut self.conn, Channel::Input, part)
                .await
                .map_err(|e| CoreError::Internal(format!("terminal: {e}")))?;
        }
        Ok(())
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), CoreError> {
        write_json(&mut self.conn, &Request::PtyResize { cols, rows })
            .await
            .map_err(|e| CoreError::Internal(format!("terminal: {e}")))
    }
}

impl PtyOutput {
    /// The next output chunk or the exit; `None` when the connection ended without one.
    pub async fn next(&mut self) -> Option<PtyEvent> {
        loop {
            match read_frame(&mut self.conn).await.ok()? {
                Frame::Data(_, d) => return Some(PtyEvent::Output(Bytes::from(d))),
                Frame::Json(body) => match sandpit_proto::decode::<Reply>(&body).ok()? {
                    Reply::Exited(st) => return Some(PtyEvent::Exited(st.exit_code)),
                    _ => return None,
                },
                Frame::End(_) => continue,
            }
        }
    }
}

impl AgentClient {
    /// Reads a process's logs from the given offsets.
    pub async fn proc_logs(
        &self,
        id: &str,
        offsets: (u64, u64),
        max_bytes: u64,
    ) -> Result<LogChunk, CoreError> {
        let req = Request::ProcLogs {
            id: id.to_string(),
            stdout_offset: offsets.0,
            stderr_offset: offsets.1,
            max_bytes,
        };
        let watch = self.watch();
        let mut conn = self.send(&req).await?;
        let reply: Reply = match watch.reply(read_json(&mut conn), Some(CALL_LIMIT)).await {
            Ok(r) => r,
            Err(CoreError::Unavailable { .. }) if !self.is_suspect() => {
                conn = self.connect().await?;
                write_json(&mut conn, &req)
                    .await
                    .map_err(|e| self.broken(e))?;
                watch.reply(read_json(&mut conn), Some(CALL_LIMIT)).await?
            }
            Err(e) => return Err(e),
        };
        let (stdout_offset, stderr_offset, running, exit_code) = match reply {
            Reply::Logs {
                stdout_offset,
                stderr_offset,
                running,
                exit_code,
            } => (stdout_offset, stderr_offset, running, exit_code),
            Reply::Error(e) => {
                self.give_back(conn);
                return Err(CoreError::Agent(e));
            }
            other => return Err(unexpected(&self.id, Ok(other))),
        };
        let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let stdout = watch
            .reply(
                read_all_data(&mut conn, Channel::Stdout, max),
                Some(CALL_LIMIT),
            )
            .await?;
        let stderr = watch
            .reply(
                read_all_data(&mut conn, Channel::Stderr, max),
                Some(CALL_LIMIT),
            )
            .await?;
        self.give_back(conn);
        Ok(LogChunk {
            stdout,
            stderr,
            stdout_offset,
            stderr_offset,
            running,
            exit_code,
        })
    }

    /// Writes to a process's stdin.
    pub async fn proc_stdin(&self, id: &str, data: &[u8], eof: bool) -> Result<(), CoreError> {
        let req = Request::ProcStdin {
            id: id.to_string(),
            eof,
        };
        let mut conn = self.send(&req).await?;
        write_all_data(&mut conn, Channel::Input, data)
            .await
            .map_err(|e| self.broken(e))?;
        self.verdict(conn).await
    }

    /// Starts a program on a terminal; the connection is the terminal's from then on.
    pub async fn pty(
        &self,
        spec: ExecSpec,
        cols: u16,
        rows: u16,
    ) -> Result<(PtyInput, PtyOutput), CoreError> {
        let mut conn = self.connect().await?;
        write_json(&mut conn, &Request::Pty { spec, cols, rows })
            .await
            .map_err(|e| self.broken(e))?;
        match self
            .watch()
            .reply(read_json::<_, Reply>(&mut conn), Some(CALL_LIMIT))
            .await?
        {
            Reply::Started { .. } => {}
            Reply::Error(e) => return Err(CoreError::Agent(e)),
            other => return Err(unexpected(&self.id, Ok(other))),
        }
        let (rd, wr) = conn.into_split();
        Ok((PtyInput { conn: wr }, PtyOutput { conn: rd }))
    }
}

/// An archive streaming out of a sandbox (see `Request::Archive`).
pub struct ArchiveReader {
    id: String,
    watch: Watch,
    /// `None` once the archive was read to its end (the connection went back to the pool).
    conn: Option<UnixStream>,
    pool: Pool,
}

impl ArchiveReader {
    /// The next chunk; `None` only once the agent said the archive is complete.
    pub async fn next(&mut self) -> Result<Option<Bytes>, CoreError> {
        let id = self.id.clone();
        let lost = |e: &dyn std::fmt::Display| {
            CoreError::unavailable(&id, format!("archive interrupted: {e}"))
        };
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        loop {
            let frame = self
                .watch
                .reply(read_frame(conn), Some(CALL_LIMIT))
                .await
                .map_err(|e| lost(&e))?;
            match frame {
                Frame::Data(Channel::Stdout, d) => return Ok(Some(Bytes::from(d))),
                Frame::End(Channel::Stdout) => {}
                Frame::Json(body) => {
                    return match sandpit_proto::decode::<Reply>(&body).map_err(|e| lost(&e))? {
                        Reply::Ok => {
                            if let Some(conn) = self.conn.take() {
                                give_back(&self.pool, conn);
                            }
                            Ok(None)
                        }
                        Reply::Error(e) => Err(CoreError::Agent(e)),
                        other => Err(unexpected(&self.id, Ok(other))),
                    }
                }
                other => return Err(lost(&format!("unexpected frame {other:?}"))),
            }
        }
    }
}

impl AgentClient {
    /// Starts archiving `root` inside the sandbox; read the archive from the reader.
    pub async fn archive(
        &self,
        root: &str,
        excludes: &[String],
    ) -> Result<ArchiveReader, CoreError> {
        let req = Request::Archive {
            root: root.to_string(),
            excludes: excludes.to_vec(),
        };
        let watch = self.watch();
        let mut conn = self.send(&req).await?;
        let reply = match watch
            .reply(read_json::<_, Reply>(&mut conn), Some(CALL_LIMIT))
            .await
        {
            Ok(r) => r,
            Err(CoreError::Unavailable { .. }) if !self.is_suspect() => {
                conn = self.connect().await?;
                write_json(&mut conn, &req)
                    .await
                    .map_err(|e| self.broken(e))?;
                watch.reply(read_json(&mut conn), Some(CALL_LIMIT)).await?
            }
            Err(e) => return Err(e),
        };
        match reply {
            Reply::Ok => Ok(ArchiveReader {
                id: self.id.clone(),
                conn: Some(conn),
                pool: self.idle.clone(),
                watch,
            }),
            Reply::Error(e) => {
                self.give_back(conn);
                Err(CoreError::Agent(e))
            }
            other => Err(unexpected(&self.id, Ok(other))),
        }
    }

    /// Unpacks an archive from a stream of bytes into `dir` inside the sandbox.
    pub async fn extract<S>(&self, dir: &str, clean: bool, mut body: S) -> Result<(), CoreError>
    where
        S: Stream<Item = Result<Bytes, CoreError>> + Unpin,
    {
        let req = Request::Extract {
            dir: dir.to_string(),
            clean,
        };
        let mut conn = self.connect().await?;
        write_json(&mut conn, &req)
            .await
            .map_err(|e| self.broken(e))?;
        // Storage streams come in small pieces (8 KiB from a local file): send full chunks.
        let mut pending = Vec::with_capacity(sandpit_proto::CHUNK);
        while let Some(chunk) = body.next().await {
            // A failed read abandons the connection: the agent stops at the cut.
            let chunk = chunk?;
            pending.extend_from_slice(&chunk);
            if pending.len() >= sandpit_proto::CHUNK {
                for part in pending.chunks(sandpit_proto::CHUNK) {
                    write_data(&mut conn, Channel::Input, part)
                        .await
                        .map_err(|e| self.broken(e))?;
                }
                pending.clear();
            }
        }
        if !pending.is_empty() {
            write_data(&mut conn, Channel::Input, &pending)
                .await
                .map_err(|e| self.broken(e))?;
        }
        self.end_input(conn).await
    }
}

impl AgentClient {
    /// Opens a tunnel to `port` on the sandbox's loopback: on success the returned
    /// connection carries that TCP connection's bytes both ways (it never goes back to the
    /// pool). Nothing listening answers `Agent(NotRunning)`.
    pub async fn connect_port(&self, port: u16) -> Result<UnixStream, CoreError> {
        let mut conn = self.connect().await?;
        write_json(&mut conn, &Request::Connect { port })
            .await
            .map_err(|e| self.broken(e))?;
        // read_json reads exactly one frame off the unbuffered stream: every byte after it
        // is the tunnel's.
        match self
            .watch()
            .reply(read_json::<_, Reply>(&mut conn), Some(CALL_LIMIT))
            .await?
        {
            Reply::Ok => Ok(conn),
            Reply::Error(e) => Err(CoreError::Agent(e)),
            other => Err(unexpected(&self.id, Ok(other))),
        }
    }
}
