//! The client subcommands of `sandpit` (`create`, `ls`, `info`, `exec`, `shell`, `cp`, `logs`,
//! `snapshot`, `snapshots`, `restore`, `rm`): argument parsing, finding the server URL and
//! token (flag, environment, `~/.config/sandpit/cli.toml`, default), and printing answers as
//! text for people or JSON (`--json`) for scripts, over the `sandpit-client` crate.
//!
//! Exit codes: `exec` and `shell` exit with the command's code; others 0 on success, 1 when
//! the server or the network fails (`sandpit: <message> (<code>)` on stderr), 2 on bad usage.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use futures::StreamExt;
use sandpit_client::{
    Client, CreateSandbox, CreateSnapshot, Error, ExecEvent, ExecRequest, GitClone, Limits,
    LogEvent, PtyEvent, SandboxClient, StartProcess,
};
use serde::Serialize;

/// Files at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// How to reach the server, and how to print. Every client subcommand takes these.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Server URL [env: SANDPIT_URL; config: url; default: http://127.0.0.1:8787]
    #[arg(long)]
    url: Option<String>,
    /// Bearer token [env: SANDPIT_AUTH_TOKEN; config: token]
    #[arg(long)]
    token: Option<String>,
    /// Print the answer as JSON, for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a sandbox; prints its id.
    Create {
        /// Id of the new sandbox (1-63 of [A-Za-z0-9_-]); generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// CPU limit (1.5 = one and a half cores).
        #[arg(long)]
        cpus: Option<f64>,
        /// Seconds of inactivity before the sandbox is deleted (0: never).
        #[arg(long)]
        keepalive: Option<u64>,
        /// Environment of every command, K=V (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the sandboxes.
    Ls {
        #[command(flatten)]
        conn: Conn,
    },
    /// Show one sandbox.
    Info {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a command, streaming its output; exits with its exit code. One argument is shell
    /// text (run by bash -c); several are a program and its arguments (no shell).
    Exec {
        id: String,
        /// Working directory (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// Environment of the command, K=V (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        /// Run in this session (a shell whose cd/export persist).
        #[arg(long)]
        session: Option<String>,
        /// Kill the command after this many milliseconds.
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Send this CLI's standard input to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        #[command(flatten)]
        conn: Conn,
        /// The command: `-- prog args...` or `'shell text'`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// An interactive terminal in the sandbox; exits with the shell's exit code.
    Shell {
        id: String,
        /// Run this (by bash) instead of an interactive bash.
        #[arg(long)]
        command: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Copy a file into or out of a sandbox: `cp ./a ID:/workspace/a`, `cp ID:/path ./b`
    /// (`-` is stdin or stdout). Files only, not directories.
    Cp {
        src: String,
        dst: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Print the logs of a background process (`--follow` until it exits).
    Logs {
        id: String,
        process: String,
        /// Keep printing as the process writes, until it exits.
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Snapshot a sandbox (or one directory of it); prints the snapshot id.
    Snapshot {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Directory to snapshot (default: the server's, /workspace).
        #[arg(long)]
        path: Option<String>,
        /// Paths to leave out (repeatable).
        #[arg(long = "exclude")]
        excludes: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List the snapshots of a sandbox.
    Snapshots {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Restore a snapshot into a sandbox.
    Restore {
        id: String,
        snapshot: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Start a background process; prints its id (read its output with `logs`). One
    /// argument is shell text, several are a program and its arguments.
    Start {
        id: String,
        /// Id of the process (generated when absent).
        #[arg(long)]
        name: Option<String>,
        /// Working directory (default /workspace).
        #[arg(long)]
        cwd: Option<String>,
        /// Environment of the process, K=V (repeatable).
        #[arg(long = "env", value_name = "K=V")]
        env: Vec<String>,
        #[command(flatten)]
        conn: Conn,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Send a signal to a background process (default SIGTERM).
    Kill {
        id: String,
        process: String,
        #[arg(long, default_value = "SIGTERM")]
        signal: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Put a sandbox to sleep: its files are kept, its processes end; any call wakes it.
    Sleep {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Wake a sleeping sandbox.
    Wake {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Clone a git repository inside the sandbox (or fast-forward the clone already in
    /// `--dir`); prints the checked-out commit.
    Clone {
        id: String,
        url: String,
        #[arg(long)]
        branch: Option<String>,
        #[arg(long)]
        depth: Option<u32>,
        /// Where (default /workspace/<repository name>).
        #[arg(long)]
        dir: Option<String>,
        /// Read the access token from this environment variable (never from argv).
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// User name sent with the token (default: the server's, x-access-token).
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Give a port of the sandbox a public URL that opens it without the API key; prints it.
    Expose {
        id: String,
        port: u16,
        #[command(flatten)]
        conn: Conn,
    },
    /// Revoke the public URL of a port.
    Unexpose {
        id: String,
        port: u16,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete sandboxes.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
}

/// Why a command failed.
enum Failure {
    /// Bad usage: exit 2.
    Usage(String),
    /// The server or the network: exit 1.
    Api(Error),
    /// Anything else: exit 1.
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Api(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Other(e.to_string())
    }
}

type Outcome = Result<i32, Failure>;

/// Runs a client subcommand; answers the process's exit code.
pub fn main(cmd: Command) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandpit: starting the runtime: {e}");
            return 1;
        }
    };
    let outcome = rt.block_on(run(cmd));
    // A read of stdin may still be blocked in its thread: do not wait for it.
    rt.shutdown_background();
    match outcome {
        Ok(code) => code,
        Err(Failure::Usage(m)) => {
            eprintln!("sandpit: {m}");
            2
        }
        Err(Failure::Api(e)) => {
            eprintln!("sandpit: {e}");
            1
        }
        Err(Failure::Other(m)) => {
            eprintln!("sandpit: {m}");
            1
        }
    }
}

/// The `url` and `token` of `~/.config/sandpit/cli.toml`.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    url: Option<String>,
    token: Option<String>,
}

fn config_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config"),
    };
    Some(dir.join("sandpit").join("cli.toml"))
}

fn load_config() -> Result<FileConfig, Failure> {
    let Some(path) = config_path() else {
        return Ok(FileConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| Failure::Other(format!("config file {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(Failure::Other(format!(
            "config file {}: {e}",
            path.display()
        ))),
    }
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The client for `conn`: each of URL and token from the flag, else the environment, else
/// the config file (read only when needed), else the default.
fn connect(conn: &Conn) -> Result<Client, Failure> {
    let mut url = conn.url.clone().or_else(|| env_var("SANDPIT_URL"));
    let mut token = conn.token.clone().or_else(|| env_var("SANDPIT_AUTH_TOKEN"));
    if url.is_none() || token.is_none() {
        let file = load_config()?;
        url = url.or(file.url);
        token = token.or(file.token);
    }
    let url = url.unwrap_or_else(|| sandpit_client::DEFAULT_URL.to_string());
    Client::new(&url, token).map_err(|e| Failure::Usage(e.message))
}

fn parse_env(pairs: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    pairs
        .iter()
        .map(|p| match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(Failure::Usage(format!("--env '{p}': expected K=V"))),
        })
        .collect()
}

fn print_json<T: Serialize>(value: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Other(e.to_string()))?;
    println!("{text}");
    Ok(())
}

async fn run(cmd: Command) -> Outcome {
    match cmd {
        Command::Create {
            id,
            memory_mb,
            cpus,
            keepalive,
            env,
            conn,
        } => {
            let client = connect(&conn)?;
            let limits = (memory_mb.is_some() || cpus.is_some()).then_some(Limits {
                memory_mb,
                cpus,
                pids: None,
            });
            let body = CreateSandbox {
                id,
                keepalive_seconds: keepalive,
                env: parse_env(&env)?,
                limits,
            };
            let sb = client.create(&body).await?;
            if conn.json {
                print_json(&sb)?;
            } else {
                for w in &sb.warnings {
                    eprintln!("sandpit: warning: {w}");
                }
                println!("{}", sb.id);
            }
            Ok(0)
        }
        Command::Ls { conn } => {
            let list = connect(&conn)?.list().await?;
            if conn.json {
                print_json(&list)?;
            } else {
                println!("{:<24} {:<9} {:<21} EXPIRES", "ID", "STATUS", "CREATED");
                for sb in list {
                    println!(
                        "{:<24} {:<9} {:<21} {}",
                        sb.id,
                        sb.status,
                        sb.created_at,
                        sb.expires_at.as_deref().unwrap_or("never")
                    );
                }
            }
            Ok(0)
        }
        Command::Info { id, conn } => {
            let sb = connect(&conn)?.get(&id).await?;
            if conn.json {
                print_json(&sb)?;
            } else {
                let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                println!("id:          {}", sb.id);
                println!("status:      {}", sb.status);
                println!("created:     {}", sb.created_at);
                println!("last active: {}", opt(sb.last_active_at));
                println!(
                    "expires:     {} (keepalive {} s)",
                    sb.expires_at.as_deref().unwrap_or("never"),
                    sb.keepalive_seconds
                );
                println!(
                    "limits:      memory {} MiB, cpus {}, pids {}",
                    opt(sb.limits.memory_mb.map(|v| v.to_string())),
                    opt(sb.limits.cpus.map(|v| v.to_string())),
                    opt(sb.limits.pids.map(|v| v.to_string()))
                );
                println!("network:     {}", opt(sb.network));
                for w in sb.warnings {
                    println!("warning:     {w}");
                }
            }
            Ok(0)
        }
        Command::Exec {
            id,
            cwd,
            env,
            session,
            timeout_ms,
            stdin,
            conn,
            command,
        } => {
            let mut req = if command.len() == 1 {
                ExecRequest::shell(command[0].clone())
            } else {
                ExecRequest::argv(command)
            };
            req.cwd = cwd;
            req.env = parse_env(&env)?;
            req.session = session;
            req.timeout_ms = timeout_ms;
            if stdin {
                let mut input = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                    .map_err(|e| Failure::Other(format!("reading stdin (text only): {e}")))?;
                req.stdin = Some(input);
            }
            let sb = connect(&conn)?.sandbox(&id);
            exec(&sb, &req, conn.json).await
        }
        Command::Shell { id, command, conn } => {
            let sb = connect(&conn)?.sandbox(&id);
            shell(&sb, command.as_deref()).await
        }
        Command::Cp { src, dst, conn } => {
            let client = connect(&conn)?;
            cp(&client, &src, &dst, conn.json).await
        }
        Command::Logs {
            id,
            process,
            follow,
            conn,
        } => {
            let sb = connect(&conn)?.sandbox(&id);
            logs(&sb, &process, follow, conn.json).await
        }
        Command::Snapshot {
            id,
            name,
            path,
            excludes,
            conn,
        } => {
            let sb = connect(&conn)?.sandbox(&id);
            let snap = sb
                .snapshot(&CreateSnapshot {
                    name,
                    path,
                    excludes,
                })
                .await
                .map_err(snapshot_error)?;
            if conn.json {
                print_json(&snap)?;
            } else {
                println!("{}", snap.id);
            }
            Ok(0)
        }
        Command::Snapshots { id, conn } => {
            let list = connect(&conn)?
                .sandbox(&id)
                .snapshots()
                .await
                .map_err(snapshot_error)?;
            if conn.json {
                print_json(&list)?;
            } else {
                println!(
                    "{:<24} {:<20} {:>12} {:<21} PATH",
                    "ID", "NAME", "BYTES", "CREATED"
                );
                for s in list {
                    println!(
                        "{:<24} {:<20} {:>12} {:<21} {}",
                        s.id,
                        s.name.as_deref().unwrap_or("-"),
                        s.size_bytes,
                        s.created_at,
                        s.path.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(0)
        }
        Command::Restore { id, snapshot, conn } => {
            let answer = connect(&conn)?
                .sandbox(&id)
                .restore(&snapshot)
                .await
                .map_err(snapshot_error)?;
            if conn.json {
                print_json(&answer)?;
            } else {
                println!("restored {snapshot} into {id}");
            }
            Ok(0)
        }
        Command::Start {
            id,
            name,
            cwd,
            env,
            conn,
            command,
        } => {
            let (shell, argv) = if command.len() == 1 {
                (command.into_iter().next(), None)
            } else {
                (None, Some(command))
            };
            let body = StartProcess {
                id: name,
                command: shell,
                argv,
                cwd,
                env: parse_env(&env)?,
            };
            let process = connect(&conn)?.sandbox(&id).start_process(&body).await?;
            if conn.json {
                print_json(&process)?;
            } else {
                println!("{}", process.id);
            }
            Ok(0)
        }
        Command::Kill {
            id,
            process,
            signal,
            conn,
        } => {
            connect(&conn)?
                .sandbox(&id)
                .signal_process(&process, &signal)
                .await?;
            if conn.json {
                print_json(&serde_json::json!({ "process": process, "signal": signal }))?;
            }
            Ok(0)
        }
        Command::Sleep { id, conn } => {
            let sb = connect(&conn)?.sandbox(&id).sleep().await?;
            print_status(&sb, conn.json)
        }
        Command::Wake { id, conn } => {
            let sb = connect(&conn)?.sandbox(&id).wake().await?;
            print_status(&sb, conn.json)
        }
        Command::Clone {
            id,
            url,
            branch,
            depth,
            dir,
            token_env,
            username,
            conn,
        } => {
            let token = match token_env {
                Some(var) => Some(std::env::var(&var).map_err(|_| {
                    Failure::Usage(format!("--token-env {var}: that variable is not set"))
                })?),
                None => None,
            };
            let body = GitClone {
                url,
                branch,
                depth,
                dir,
                token,
                username,
            };
            let done = connect(&conn)?.sandbox(&id).git_clone(&body).await?;
            if conn.json {
                print_json(&done)?;
            } else {
                println!(
                    "{} {} {} ({})",
                    done.action, done.dir, done.commit, done.branch
                );
            }
            Ok(0)
        }
        Command::Expose { id, port, conn } => {
            let token = connect(&conn)?.sandbox(&id).create_port_token(port).await?;
            if conn.json {
                print_json(&token)?;
            } else {
                println!("{}", token.url);
            }
            Ok(0)
        }
        Command::Unexpose { id, port, conn } => {
            connect(&conn)?.sandbox(&id).revoke_port_token(port).await?;
            if conn.json {
                print_json(&serde_json::json!({ "port": port, "revoked": true }))?;
            }
            Ok(0)
        }
        Command::Rm { ids, conn } => {
            let client = connect(&conn)?;
            let mut deleted = Vec::new();
            let mut failed = false;
            for id in ids {
                match client.delete(&id).await {
                    Ok(()) => {
                        if !conn.json {
                            println!("{id}");
                        }
                        deleted.push(id);
                    }
                    Err(e) => {
                        eprintln!("sandpit: {e}");
                        failed = true;
                    }
                }
            }
            if conn.json {
                print_json(&serde_json::json!({ "deleted": deleted }))?;
            }
            Ok(i32::from(failed))
        }
    }
}

/// `id status` (or the sandbox as JSON).
fn print_status(sb: &sandpit_client::Sandbox, json: bool) -> Outcome {
    if json {
        print_json(sb)?;
    } else {
        println!("{} {}", sb.id, sb.status);
    }
    Ok(0)
}

/// A 404 for a whole route (not an object) means a server without snapshots.
fn snapshot_error(e: Error) -> Failure {
    if e.code == "route_not_found" {
        return Failure::Api(Error {
            message: "this server does not support snapshots".into(),
            ..e
        });
    }
    Failure::Api(e)
}

/// A command's exit code as a process exit code.
fn exit_code(code: i64) -> i32 {
    match i32::try_from(code) {
        Ok(c) if (0..=255).contains(&c) => c,
        _ => 1,
    }
}

/// Whether `e` says the session of `req` does not exist (not the sandbox).
fn missing_session(req: &ExecRequest, e: &Error) -> bool {
    req.session.is_some() && e.code == "not_found" && e.message.starts_with("session ")
}

/// Creates the session of `req` (started on first use, like the server's `default`).
async fn create_session(sb: &SandboxClient, req: &ExecRequest) -> Result<(), Failure> {
    let body = sandpit_client::CreateSession {
        id: req.session.clone(),
        ..Default::default()
    };
    match sb.create_session(&body).await {
        Ok(_) => Ok(()),
        Err(e) if e.code == "already_exists" => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn exec(sb: &SandboxClient, req: &ExecRequest, json: bool) -> Outcome {
    match exec_once(sb, req, json).await {
        Err(Failure::Api(e)) if missing_session(req, &e) => {
            create_session(sb, req).await?;
            exec_once(sb, req, json).await
        }
        other => other,
    }
}

async fn exec_once(sb: &SandboxClient, req: &ExecRequest, json: bool) -> Outcome {
    if json {
        let result = sb.exec(req).await?;
        print_json(&result)?;
        return Ok(exit_code(result.exit_code));
    }
    let mut events = sb.exec_stream(req).await?;
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    while let Some(event) = events.next().await {
        match event? {
            ExecEvent::Start { .. } => {}
            ExecEvent::Stdout { data } => {
                stdout.write_all(data.as_bytes())?;
                stdout.flush()?;
            }
            ExecEvent::Stderr { data } => {
                stderr.write_all(data.as_bytes())?;
                stderr.flush()?;
            }
            ExecEvent::Exit {
                exit_code: code,
                timed_out,
                ..
            } => {
                if timed_out {
                    eprintln!("sandpit: the command timed out and was killed");
                }
                return Ok(exit_code(code));
            }
        }
    }
    Err(Failure::Api(Error::new(
        "connection_error",
        "the stream ended before the command's exit",
    )))
}

async fn logs(sb: &SandboxClient, process: &str, follow: bool, json: bool) -> Outcome {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    if !follow {
        let logs = sb.process_logs(process, 0, 0).await?;
        if json {
            print_json(&logs)?;
        } else {
            stdout.write_all(logs.stdout.as_bytes())?;
            stderr.write_all(logs.stderr.as_bytes())?;
        }
        return Ok(0);
    }
    let mut events = sb.follow_logs(process, 0, 0).await?;
    while let Some(event) = events.next().await {
        let event = event?;
        if json {
            // One JSON object per line, as the events come.
            let line = serde_json::to_string(&event).map_err(|e| Failure::Other(e.to_string()))?;
            writeln!(stdout, "{line}")?;
            stdout.flush()?;
            continue;
        }
        match event {
            LogEvent::Stdout { data, .. } => {
                stdout.write_all(data.as_bytes())?;
                stdout.flush()?;
            }
            LogEvent::Stderr { data, .. } => {
                stderr.write_all(data.as_bytes())?;
                stderr.flush()?;
            }
            LogEvent::Exit { .. } => break,
        }
    }
    Ok(0)
}

/// One side of `cp`: a local path, or `ID:/path` in a sandbox.
#[derive(Debug, PartialEq)]
enum Place<'a> {
    Local(&'a str),
    Remote { id: &'a str, path: &'a str },
}

fn place(spec: &str) -> Place<'_> {
    if let Some((id, path)) = spec.split_once(':') {
        let is_id = !id.is_empty()
            && id.len() <= 63
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if is_id {
            return Place::Remote { id, path };
        }
    }
    Place::Local(spec)
}

fn basename(path: &str) -> Option<&str> {
    Path::new(path).file_name().and_then(|n| n.to_str())
}

/// A progress bar of `size` bytes drawn on stderr when it is a terminal and the file large.
fn progress_bar(size: Option<u64>) -> indicatif::ProgressBar {
    match size {
        Some(n) if n >= PROGRESS_MIN_BYTES && std::io::stderr().is_terminal() => {
            let bar = indicatif::ProgressBar::new(n);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            ) {
                bar.set_style(style);
            }
            bar
        }
        _ => indicatif::ProgressBar::hidden(),
    }
}

#[derive(Serialize)]
struct Copied<'a> {
    source: &'a str,
    destination: String,
    bytes: u64,
}

async fn cp(client: &Client, src: &str, dst: &str, json: bool) -> Outcome {
    let (from, to) = (place(src), place(dst));
    let (copied, destination) =
        match (&from, &to) {
            (Place::Local(local), Place::Remote { id, path }) => {
                upload(&client.sandbox(id), local, path)
                    .await
                    .map(|(n, p)| (n, format!("{id}:{p}")))?
            }
            (Place::Remote { id, path }, Place::Local(local)) => {
                download(&client.sandbox(id), path, local).await?
            }
            _ => return Err(Failure::Usage(
                "cp needs exactly one side in a sandbox: `cp FILE ID:/path` or `cp ID:/path FILE`"
                    .into(),
            )),
        };
    if json {
        print_json(&Copied {
            source: src,
            destination,
            bytes: copied,
        })?;
    }
    Ok(0)
}

async fn upload(sb: &SandboxClient, local: &str, remote: &str) -> Result<(u64, String), Failure> {
    if !remote.starts_with('/') {
        return Err(Failure::Usage(format!(
            "'{remote}': the path in the sandbox must be absolute"
        )));
    }
    // A directory as destination (by a trailing / or by what is there) gets the file's name.
    let into_dir =
        remote.ends_with('/') || matches!(sb.stat(remote).await, Ok(e) if e.kind == "dir");
    let remote = if into_dir {
        let name = basename(local).filter(|_| local != "-").ok_or_else(|| {
            Failure::Usage(format!("'{remote}' is a directory: give the file's name"))
        })?;
        format!("{}/{name}", remote.trim_end_matches('/'))
    } else {
        remote.to_string()
    };
    let bar;
    if local == "-" {
        bar = progress_bar(None);
        sb.upload(&remote, tokio::io::stdin(), None).await?;
    } else {
        let file = tokio::fs::File::open(local)
            .await
            .map_err(|e| Failure::Other(format!("{local}: {e}")))?;
        let meta = file.metadata().await?;
        if meta.is_dir() {
            return Err(Failure::Other(format!(
                "{local} is a directory: cp copies files only (copy a tar archive of it)"
            )));
        }
        bar = progress_bar(Some(meta.len()));
        let shown = bar.clone();
        let progress: sandpit_client::Progress = Box::new(move |n| shown.set_position(n));
        sb.upload(&remote, file, Some(progress)).await?;
    }
    bar.finish_and_clear();
    let size = sb.stat(&remote).await.map(|e| e.size).unwrap_or(0);
    Ok((size, remote))
}

async fn download(sb: &SandboxClient, remote: &str, local: &str) -> Result<(u64, String), Failure> {
    let entry = sb.stat(remote).await?;
    if entry.kind == "dir" {
        return Err(Failure::Other(format!(
            "{}:{remote} is a directory: cp copies files only (make a tar archive of it with exec)",
            sb.id()
        )));
    }
    let bar = progress_bar(Some(entry.size));
    let shown = bar.clone();
    let progress: sandpit_client::Progress = Box::new(move |n| shown.set_position(n));
    if local == "-" {
        let mut out = tokio::io::stdout();
        let n = sb.download_to(remote, &mut out, Some(progress)).await?;
        bar.finish_and_clear();
        return Ok((n, "-".into()));
    }
    let mut target = PathBuf::from(local);
    if local.ends_with('/') || target.is_dir() {
        target.push(&entry.name);
    }
    // Written beside the target and renamed over it at the end: no half file on failure.
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // With the file's mode in the sandbox (an executable stays one).
    let mode = match entry.mode & 0o777 {
        0 => 0o644,
        m => m,
    };
    let tmp = tempfile::Builder::new()
        .prefix(".sandpit-cp-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .tempfile_in(&dir)
        .map_err(|e| Failure::Other(format!("{}: {e}", dir.display())))?;
    let mut out = tokio::fs::File::from_std(tmp.reopen()?);
    let n = sb.download_to(remote, &mut out, Some(progress)).await?;
    drop(out);
    bar.finish_and_clear();
    tmp.persist(&target)
        .map_err(|e| Failure::Other(format!("{}: {e}", target.display())))?;
    Ok((n, target.display().to_string()))
}

/// Puts the terminal in raw mode while alive.
struct RawMode;

impl RawMode {
    fn enable() -> Option<RawMode> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        crossterm::terminal::enable_raw_mode()
            .ok()
            .map(|()| RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// The terminal's size, 80x24 when unknown.
fn term_size() -> (u16, u16) {
    match crossterm::terminal::size() {
        Ok((c, r)) if c > 0 && r > 0 => (c, r),
        _ => (80, 24),
    }
}

enum ToPty {
    Input(Vec<u8>),
    Resize(u16, u16),
}

async fn shell(sb: &SandboxClient, command: Option<&str>) -> Outcome {
    use tokio::io::AsyncReadExt;
    let (cols, rows) = term_size();
    let pty = sb.pty(cols, rows, command).await?;
    let (mut writer, mut reader) = pty.split();
    let raw = RawMode::enable();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ToPty>(64);
    // Keystrokes. At the end of a terminal's input nothing more is typed (the terminal stays
    // open). At the end of piped input (stdin not a terminal) the input ends, so
    // `echo 'make test' | sandpit shell ID` exits with make's code: the shell is typed
    // `exit` (a ^D typed ahead while a command runs is lost by the line discipline), a
    // `--command` program gets ^D on an empty line (end of file for a canonical read).
    let keys = tx.clone();
    let piped = !std::io::stdin().is_terminal();
    let end_of_input: &'static [u8] = if command.is_none() {
        b"exit\n"
    } else {
        b"\x04"
    };
    let stdin_task = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 4096];
        let mut line_open = false;
        loop {
            match stdin.read(&mut buf).await {
                Ok(n) if n > 0 => {
                    line_open = buf[n - 1] != b'\n';
                    if keys.send(ToPty::Input(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
                _ => break,
            }
        }
        if piped {
            let mut end = if line_open {
                b"\n".to_vec()
            } else {
                Vec::new()
            };
            end.extend_from_slice(end_of_input);
            let _ = keys.send(ToPty::Input(end)).await;
        }
    });
    // SIGWINCH: the local terminal was resized.
    let resize_task = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut winch) = signal(SignalKind::window_change()) else {
            return;
        };
        while winch.recv().await.is_some() {
            let (c, r) = term_size();
            if tx.send(ToPty::Resize(c, r)).await.is_err() {
                break;
            }
        }
    });
    let writer_task = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let sent = match msg {
                ToPty::Input(data) => writer.send(&data).await,
                ToPty::Resize(c, r) => writer.resize(c, r).await,
            };
            if sent.is_err() {
                break;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let result = loop {
        match reader.next().await {
            Ok(Some(PtyEvent::Output(data))) => {
                if stdout
                    .write_all(&data)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    break Ok(1);
                }
            }
            Ok(Some(PtyEvent::Exit(code))) => break Ok(exit_code(code)),
            Ok(None) => {
                break Err(Failure::Api(Error::new(
                    "connection_error",
                    "the terminal closed without an exit code",
                )))
            }
            Err(e) => break Err(Failure::Api(e)),
        }
    };
    drop(raw);
    stdin_task.abort();
    resize_task.abort();
    writer_task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cp_places() {
        assert_eq!(
            place("sb-1:/workspace/a"),
            Place::Remote {
                id: "sb-1",
                path: "/workspace/a"
            }
        );
        assert_eq!(place("./a:b"), Place::Local("./a:b"));
        assert_eq!(place("/tmp/x"), Place::Local("/tmp/x"));
        assert_eq!(place("-"), Place::Local("-"));
    }

    #[test]
    fn exit_codes_fit_a_process_status() {
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(137), 137);
        assert_eq!(exit_code(-1), 1);
        assert_eq!(exit_code(300), 1);
    }
}
