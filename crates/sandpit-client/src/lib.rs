//! sandpit-client: an async Rust client of the sandpit HTTP API, on the model of the Python
//! SDK in `clients/python`: one [`Client`] owns the connection pool, the base URL and the
//! token; [`Sandbox`] is the facade of one sandbox (exec, files, sessions, processes,
//! terminals, code, snapshots); every failure is one [`Error`] carrying the server's code.
//!
//! ```no_run
//! # async fn demo() -> sandpit_client::Result<()> {
//! use sandpit_client::{Client, CreateSandbox, ExecRequest};
//! let client = Client::new("http://127.0.0.1:8787", None)?;
//! let sb = client.create(&CreateSandbox::default()).await?;
//! let out = client.sandbox(&sb.id).exec(&ExecRequest::shell("echo hi")).await?;
//! assert_eq!(out.stdout, "hi\n");
//! client.delete(&sb.id).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod error;
mod model;
mod pty;
mod sse;

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_LENGTH};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use error::{Error, Result};
pub use model::*;
pub use pty::{Pty, PtyEvent, PtyReader, PtyWriter};

/// The server a client talks to when none is given.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8787";

/// A stream of events of a streamed call (exec, process logs).
pub type EventStream<T> = BoxStream<'static, Result<T>>;

/// A callback told the number of bytes moved so far.
pub type Progress = Box<dyn FnMut(u64) + Send>;

/// A connection to one sandpit server: the pool, the base URL and the token. Cheap to clone
/// (clones share the pool).
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix), sending `token` as `Authorization: Bearer` when given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client> {
        let base = Url::parse(base_url)
            .map_err(|e| Error::new("invalid_url", format!("server URL '{base_url}': {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::new(
                "invalid_url",
                format!("server URL '{base_url}' must be http://host[:port]"),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of an API path made of `segments` (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let rb = self.http.request(method, self.url(segments));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request; an error answer becomes an [`Error`] with the server's code.
    async fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().await?;
        let status = resp.status();
        if status.is_success() || status.is_informational() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(Error::from_answer(status.as_u16(), &body))
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T> {
        let body = self.send(rb).await?.bytes().await?;
        Ok(serde_json::from_slice(&body)?)
    }

    async fn empty(&self, rb: RequestBuilder) -> Result<()> {
        self.send(rb).await?;
        Ok(())
    }

    /// Opens an SSE answer: the stream of its `(event, data)` pairs.
    async fn sse(&self, rb: RequestBuilder) -> Result<EventStream<sse::Event>> {
        let resp = self.send(rb.header(ACCEPT, "text/event-stream")).await?;
        Ok(sse::events(resp))
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        self.json(self.request(Method::GET, &["health"])).await
    }

    /// Creates a sandbox.
    pub async fn create(&self, body: &CreateSandbox) -> Result<Sandbox> {
        self.json(self.request(Method::POST, &["v1", "sandboxes"]).json(body))
            .await
    }

    /// One sandbox (counts as activity).
    pub async fn get(&self, id: &str) -> Result<Sandbox> {
        self.json(self.request(Method::GET, &["v1", "sandboxes", id]))
            .await
    }

    /// Every sandbox.
    pub async fn list(&self) -> Result<Vec<Sandbox>> {
        #[derive(Deserialize)]
        struct List {
            sandboxes: Vec<Sandbox>,
        }
        let list: List = self
            .json(self.request(Method::GET, &["v1", "sandboxes"]))
            .await?;
        Ok(list.sandboxes)
    }

    /// Deletes a sandbox and everything in it.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.empty(self.request(Method::DELETE, &["v1", "sandboxes", id]))
            .await
    }

    /// Deletes a snapshot.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<()> {
        self.empty(self.request(Method::DELETE, &["v1", "snapshots", snapshot_id]))
            .await
    }

    /// The facade of sandbox `id` (no request is made).
    pub fn sandbox(&self, id: &str) -> SandboxClient {
        SandboxClient {
            client: self.clone(),
            id: id.to_string(),
        }
    }
}

/// The facade of one sandbox: every call on it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct SandboxClient {
    client: Client,
    id: String,
}

#[derive(Deserialize)]
struct Sessions {
    sessions: Vec<Session>,
}
#[derive(Deserialize)]
struct Processes {
    processes: Vec<Process>,
}
#[derive(Deserialize)]
struct Contexts {
    contexts: Vec<Context>,
}
#[derive(Deserialize)]
struct Snapshots {
    snapshots: Vec<Snapshot>,
}
#[derive(Deserialize)]
struct Listing {
    entries: Vec<Entry>,
}

impl SandboxClient {
    /// The sandbox's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn request(&self, method: Method, rest: &[&str]) -> RequestBuilder {
        let mut segments = vec!["v1", "sandboxes", self.id.as_str()];
        segments.extend_from_slice(rest);
        self.client.request(method, &segments)
    }

    /// The sandbox (counts as activity).
    pub async fn info(&self) -> Result<Sandbox> {
        self.client.get(&self.id).await
    }

    /// Pushes the expiry out.
    pub async fn keepalive(&self) -> Result<Sandbox> {
        self.client
            .json(self.request(Method::POST, &["keepalive"]))
            .await
    }

    /// Changes the keepalive (0: never expires); the expiry is recomputed from now.
    pub async fn set_keepalive(&self, keepalive_seconds: u64) -> Result<Sandbox> {
        let body = serde_json::json!({ "keepalive_seconds": keepalive_seconds });
        self.client
            .json(self.request(Method::PATCH, &[]).json(&body))
            .await
    }

    /// Deletes the sandbox.
    pub async fn delete(&self) -> Result<()> {
        self.client.delete(&self.id).await
    }

    /// Puts the sandbox to sleep: its files are kept, its processes end.
    pub async fn sleep(&self) -> Result<Sandbox> {
        self.lifecycle("sleep").await
    }

    /// Wakes a sleeping sandbox.
    pub async fn wake(&self) -> Result<Sandbox> {
        self.lifecycle("wake").await
    }

    async fn lifecycle(&self, verb: &str) -> Result<Sandbox> {
        self.client
            .send(
                self.request(Method::POST, &[verb])
                    .json(&serde_json::json!({})),
            )
            .await?;
        // The list, unlike GET, is not activity: it cannot wake what it describes.
        let all = self.client.list().await?;
        match all.into_iter().find(|s| s.id == self.id) {
            Some(sb) => Ok(sb),
            None => self.info().await,
        }
    }

    // --- git and ports ---

    /// Clones (or fast-forwards) a repository inside the sandbox.
    pub async fn git_clone(&self, body: &GitClone) -> Result<GitResult> {
        self.client
            .json(self.request(Method::POST, &["git", "clone"]).json(body))
            .await
    }

    /// A new public token for `port` (replacing its previous one).
    pub async fn create_port_token(&self, port: u16) -> Result<PortToken> {
        let port = port.to_string();
        self.client
            .json(self.request(Method::POST, &["port-tokens", &port]))
            .await
    }

    /// Revokes the public token of `port`.
    pub async fn revoke_port_token(&self, port: u16) -> Result<()> {
        let port = port.to_string();
        self.client
            .empty(self.request(Method::DELETE, &["port-tokens", &port]))
            .await
    }

    // --- exec ---

    /// Runs a command and waits for it: its whole output at once.
    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult> {
        self.client
            .json(self.request(Method::POST, &["exec"]).json(req))
            .await
    }

    /// Runs a command, streaming its events as they happen. The stream ends after
    /// [`ExecEvent::Exit`]; a failure of the sandbox mid-stream is an `Err` item.
    pub async fn exec_stream(&self, req: &ExecRequest) -> Result<EventStream<ExecEvent>> {
        let events = self
            .client
            .sse(self.request(Method::POST, &["exec"]).json(req))
            .await?;
        Ok(sse::typed(events, |ev| {
            #[derive(Deserialize)]
            struct Start {
                pid: i64,
            }
            #[derive(Deserialize)]
            struct Data {
                data: String,
            }
            #[derive(Deserialize)]
            struct Exit {
                exit_code: i64,
                #[serde(default)]
                duration_ms: u64,
                #[serde(default)]
                timed_out: bool,
            }
            Ok(Some(match ev.event.as_str() {
                "start" => ExecEvent::Start {
                    pid: ev.parse::<Start>()?.pid,
                },
                "stdout" => ExecEvent::Stdout {
                    data: ev.parse::<Data>()?.data,
                },
                "stderr" => ExecEvent::Stderr {
                    data: ev.parse::<Data>()?.data,
                },
                "exit" => {
                    let e: Exit = ev.parse()?;
                    ExecEvent::Exit {
                        exit_code: e.exit_code,
                        duration_ms: e.duration_ms,
                        timed_out: e.timed_out,
                    }
                }
                _ => return Ok(None),
            }))
        }))
    }

    // --- files ---

    fn file_request(&self, method: Method, route: &[&str], path: &str) -> RequestBuilder {
        self.request(method, route).query(&[("path", path)])
    }

    /// Writes a whole file (parent directories are created).
    pub async fn write_file(&self, path: &str, data: impl Into<Bytes>) -> Result<()> {
        let data: Bytes = data.into();
        self.client
            .empty(self.file_request(Method::PUT, &["files"], path).body(data))
            .await
    }

    /// Streams `reader` into a file, telling `progress` the bytes sent so far. The file is
    /// replaced only once the upload completes.
    pub async fn upload<R>(
        &self,
        path: &str,
        reader: R,
        mut progress: Option<Progress>,
    ) -> Result<()>
    where
        R: AsyncRead + Send + Sync + 'static,
    {
        let mut sent = 0u64;
        let chunks = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024).inspect_ok(
            move |chunk| {
                sent += chunk.len() as u64;
                if let Some(p) = progress.as_mut() {
                    p(sent);
                }
            },
        );
        let body = reqwest::Body::wrap_stream(chunks);
        self.client
            .empty(self.file_request(Method::PUT, &["files"], path).body(body))
            .await
    }

    /// Reads a whole file.
    pub async fn read_file(&self, path: &str) -> Result<Bytes> {
        let resp = self
            .client
            .send(self.file_request(Method::GET, &["files"], path))
            .await?;
        Ok(resp.bytes().await?)
    }

    /// Opens a file for a streamed download.
    pub async fn download(&self, path: &str) -> Result<Download> {
        let resp = self
            .client
            .send(self.file_request(Method::GET, &["files"], path))
            .await?;
        let size = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Download { size, resp })
    }

    /// Streams a file into `writer`, telling `progress` the bytes received so far; answers
    /// the number of bytes written.
    pub async fn download_to<W>(
        &self,
        path: &str,
        writer: &mut W,
        mut progress: Option<Progress>,
    ) -> Result<u64>
    where
        W: AsyncWrite + Unpin,
    {
        let mut dl = self.download(path).await?;
        let mut total = 0u64;
        while let Some(chunk) = dl.chunk().await? {
            writer.write_all(&chunk).await?;
            total += chunk.len() as u64;
            if let Some(p) = progress.as_mut() {
                p(total);
            }
        }
        writer.flush().await?;
        Ok(total)
    }

    /// The entries of a directory, sorted by name.
    pub async fn list_dir(&self, path: &str) -> Result<Vec<Entry>> {
        let list: Listing = self
            .client
            .json(self.file_request(Method::GET, &["files", "list"], path))
            .await?;
        Ok(list.entries)
    }

    /// One file's metadata (symlinks are not followed).
    pub async fn stat(&self, path: &str) -> Result<Entry> {
        self.client
            .json(self.file_request(Method::GET, &["files", "stat"], path))
            .await
    }

    /// Creates a directory (and its parents when `parents`).
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<()> {
        let body = serde_json::json!({ "path": path, "parents": parents });
        self.client
            .empty(self.request(Method::POST, &["files", "mkdir"]).json(&body))
            .await
    }

    /// Removes a file, or a directory (non-empty only when `recursive`).
    pub async fn remove_file(&self, path: &str, recursive: bool) -> Result<()> {
        let mut rb = self.file_request(Method::DELETE, &["files"], path);
        if recursive {
            rb = rb.query(&[("recursive", "true")]);
        }
        self.client.empty(rb).await
    }

    /// Moves (renames) a file or directory.
    pub async fn move_file(&self, from: &str, to: &str) -> Result<()> {
        let body = serde_json::json!({ "from": from, "to": to });
        self.client
            .empty(self.request(Method::POST, &["files", "move"]).json(&body))
            .await
    }

    // --- sessions ---

    /// Starts a session (a long-lived shell).
    pub async fn create_session(&self, body: &CreateSession) -> Result<Session> {
        self.client
            .json(self.request(Method::POST, &["sessions"]).json(body))
            .await
    }

    /// Every session.
    pub async fn sessions(&self) -> Result<Vec<Session>> {
        let list: Sessions = self
            .client
            .json(self.request(Method::GET, &["sessions"]))
            .await?;
        Ok(list.sessions)
    }

    /// One session.
    pub async fn session(&self, session_id: &str) -> Result<Session> {
        self.client
            .json(self.request(Method::GET, &["sessions", session_id]))
            .await
    }

    /// Ends a session and everything it started.
    pub async fn delete_session(&self, session_id: &str) -> Result<()> {
        self.client
            .empty(self.request(Method::DELETE, &["sessions", session_id]))
            .await
    }

    // --- processes ---

    /// Starts a background process.
    pub async fn start_process(&self, body: &StartProcess) -> Result<Process> {
        self.client
            .json(self.request(Method::POST, &["processes"]).json(body))
            .await
    }

    /// Every background process.
    pub async fn processes(&self) -> Result<Vec<Process>> {
        let list: Processes = self
            .client
            .json(self.request(Method::GET, &["processes"]))
            .await?;
        Ok(list.processes)
    }

    /// One background process.
    pub async fn process(&self, process_id: &str) -> Result<Process> {
        self.client
            .json(self.request(Method::GET, &["processes", process_id]))
            .await
    }

    fn logs_request(
        &self,
        process_id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> RequestBuilder {
        self.request(Method::GET, &["processes", process_id, "logs"])
            .query(&[
                ("stdout_offset", stdout_offset),
                ("stderr_offset", stderr_offset),
            ])
    }

    /// The logs of a process from the given offsets.
    pub async fn process_logs(
        &self,
        process_id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<ProcessLogs> {
        self.client
            .json(self.logs_request(process_id, stdout_offset, stderr_offset))
            .await
    }

    /// Follows the logs of a process from the given offsets, until it exits.
    pub async fn follow_logs(
        &self,
        process_id: &str,
        stdout_offset: u64,
        stderr_offset: u64,
    ) -> Result<EventStream<LogEvent>> {
        let events = self
            .client
            .sse(self.logs_request(process_id, stdout_offset, stderr_offset))
            .await?;
        Ok(sse::typed(events, |ev| {
            #[derive(Deserialize)]
            struct Data {
                data: String,
                #[serde(default)]
                offset: u64,
            }
            #[derive(Deserialize)]
            struct Exit {
                #[serde(default)]
                exit_code: Option<i64>,
            }
            Ok(Some(match ev.event.as_str() {
                "stdout" => {
                    let d: Data = ev.parse()?;
                    LogEvent::Stdout {
                        data: d.data,
                        offset: d.offset,
                    }
                }
                "stderr" => {
                    let d: Data = ev.parse()?;
                    LogEvent::Stderr {
                        data: d.data,
                        offset: d.offset,
                    }
                }
                "exit" => LogEvent::Exit {
                    exit_code: ev.parse::<Exit>()?.exit_code,
                },
                _ => return Ok(None),
            }))
        }))
    }

    /// Writes to a process's stdin (`eof` closes it after).
    pub async fn process_stdin(&self, process_id: &str, data: &str, eof: bool) -> Result<()> {
        let body = serde_json::json!({ "data": data, "eof": eof });
        self.client
            .empty(
                self.request(Method::POST, &["processes", process_id, "stdin"])
                    .json(&body),
            )
            .await
    }

    /// Sends a signal (`"SIGTERM"`, `"KILL"`, ...) to a process's whole tree.
    pub async fn signal_process(&self, process_id: &str, signal: &str) -> Result<()> {
        let body = serde_json::json!({ "signal": signal });
        self.client
            .empty(
                self.request(Method::POST, &["processes", process_id, "signal"])
                    .json(&body),
            )
            .await
    }

    /// Waits for a process to exit, at most `timeout_ms` (the server's default when `None`).
    pub async fn wait_process(&self, process_id: &str, timeout_ms: Option<u64>) -> Result<Process> {
        #[derive(Serialize)]
        struct Wait {
            #[serde(skip_serializing_if = "Option::is_none")]
            timeout_ms: Option<u64>,
        }
        self.client
            .json(
                self.request(Method::POST, &["processes", process_id, "wait"])
                    .json(&Wait { timeout_ms }),
            )
            .await
    }

    /// Kills a process's tree and forgets it and its logs.
    pub async fn remove_process(&self, process_id: &str) -> Result<()> {
        self.client
            .empty(self.request(Method::DELETE, &["processes", process_id]))
            .await
    }

    // --- terminals ---

    /// Opens an interactive terminal of `cols` x `rows` running bash (or `command` run by
    /// bash) over the terminal WebSocket.
    pub async fn pty(&self, cols: u16, rows: u16, command: Option<&str>) -> Result<Pty> {
        let mut url = self.client.url(&["v1", "sandboxes", &self.id, "pty"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("cols", &cols.to_string())
                .append_pair("rows", &rows.to_string());
            if let Some(c) = command {
                q.append_pair("command", c);
            }
        }
        pty::connect(url, self.client.token.as_deref()).await
    }

    // --- code ---

    /// Runs code in a stateful interpreter.
    pub async fn run_code(&self, req: &CodeRequest) -> Result<RunResult> {
        self.client
            .json(self.request(Method::POST, &["code"]).json(req))
            .await
    }

    /// Every interpreter context.
    pub async fn contexts(&self) -> Result<Vec<Context>> {
        let list: Contexts = self
            .client
            .json(self.request(Method::GET, &["contexts"]))
            .await?;
        Ok(list.contexts)
    }

    /// Starts an interpreter context (`language`: `python` or `javascript`).
    pub async fn create_context(&self, id: Option<&str>, language: &str) -> Result<Context> {
        let body = serde_json::json!({ "id": id, "language": language });
        self.client
            .json(self.request(Method::POST, &["contexts"]).json(&body))
            .await
    }

    /// Ends an interpreter context.
    pub async fn delete_context(&self, context_id: &str) -> Result<()> {
        self.client
            .empty(self.request(Method::DELETE, &["contexts", context_id]))
            .await
    }

    // --- snapshots ---

    /// Snapshots the sandbox (or its directory `path`).
    pub async fn snapshot(&self, body: &CreateSnapshot) -> Result<Snapshot> {
        self.client
            .json(self.request(Method::POST, &["snapshots"]).json(body))
            .await
    }

    /// The snapshots of this sandbox.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let list: Snapshots = self
            .client
            .json(self.request(Method::GET, &["snapshots"]))
            .await?;
        Ok(list.snapshots)
    }

    /// Restores a snapshot into this sandbox; answers the server's JSON as is.
    pub async fn restore(&self, snapshot: &str) -> Result<serde_json::Value> {
        let body = serde_json::json!({ "snapshot": snapshot });
        let resp = self
            .client
            .send(self.request(Method::POST, &["restore"]).json(&body))
            .await?;
        let bytes = resp.bytes().await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

/// A file being downloaded.
pub struct Download {
    /// The file's size, when the server said it.
    pub size: Option<u64>,
    resp: Response,
}

impl Download {
    /// The next chunk; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        Ok(self.resp.chunk().await?)
    }

    /// The rest of the file as a stream of chunks.
    pub fn into_stream(self) -> EventStream<Bytes> {
        self.resp.bytes_stream().map_err(Error::from).boxed()
    }
}
