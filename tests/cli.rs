//! The client subcommands of the `sandpit` binary (`create`, `ls`, `info`, `exec`, `shell`,
//! `cp`, `logs`, `start`, `kill`, `clone`, `expose`, `sleep`, `wake`, `snapshot`, `rm`), run as a user would against a real server: exit codes,
//! stdout and stderr, `--json` outputs, errors, and where the URL and token come from.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// How to run the CLI against one server: its URL in `SANDPIT_URL`, no token unless given,
/// and a `HOME` of its own (so no real config file is read).
struct Cli {
    url: String,
    token: Option<String>,
    home: tempfile::TempDir,
}

impl Cli {
    fn new(server: &Server) -> Cli {
        Cli {
            url: server.url(""),
            token: server.token.clone(),
            home: tempfile::tempdir().expect("home dir"),
        }
    }

    /// The command, not yet run.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env_remove("SANDPIT_AUTH_TOKEN")
            .env_remove("XDG_CONFIG_HOME")
            .env("SANDPIT_URL", &self.url)
            .env("HOME", self.home.path())
            .stdin(Stdio::null());
        if let Some(t) = &self.token {
            cmd.env("SANDPIT_AUTH_TOKEN", t);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run the CLI")
    }

    /// Runs and asserts exit code 0; answers stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "sandpit {args:?}: stdout {:?} stderr {:?}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs with `--json` appended and parses stdout.
    #[track_caller]
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} --json ({e}): {out}"))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts a failed run: `code` as exit code and `needle` in stderr.
#[track_caller]
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stdout {:?} stderr {stderr:?}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains(needle),
        "stderr {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn create_ls_info_exec_rm() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = unique("cli");
    let created = cli.ok(&[
        "create",
        "--id",
        &id,
        "--env",
        "GREETING=hello there",
        "--keepalive",
        "300",
    ]);
    assert_eq!(created.trim(), id, "create prints the id");
    assert_eq!(server.sandbox(&id)["keepalive_seconds"], 300);

    let ls = cli.ok(&["ls"]);
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().next() == Some(id.as_str())),
        "ls: {ls}"
    );
    let list = cli.json(&["ls"]);
    let ids: Vec<&str> = list
        .as_array()
        .expect("ls --json is an array")
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert!(ids.contains(&id.as_str()), "ls --json: {list}");

    let info = cli.ok(&["info", &id]);
    assert!(
        info.contains(&id) && info.contains("running"),
        "info: {info}"
    );
    let info = cli.json(&["info", &id]);
    assert_eq!(info["id"], id.as_str());
    assert_eq!(info["status"], "running");
    assert_eq!(info["keepalive_seconds"], 300);

    // Shell text: stdout and stderr apart, the sandbox's env, the exit code propagated.
    let out = cli.run(&["exec", &id, "echo \"$GREETING\"; echo oops >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "hello there\n");
    assert_eq!(text(&out.stderr), "oops\n");
    // An argv after `--` runs without a shell: `$HOME` stays literal.
    let out = cli.ok(&[
        "exec",
        &id,
        "--cwd",
        "/tmp",
        "--env",
        "X=1",
        "--",
        "sh",
        "-c",
        "pwd; echo $X",
        "$HOME",
    ]);
    assert_eq!(out, "/tmp\n1\n");
    let out = cli.ok(&["exec", &id, "--", "echo", "$HOME", "a b"]);
    assert_eq!(out, "$HOME a b\n");
    // Sessions keep their state between two CLI runs.
    cli.ok(&["exec", &id, "--session", "s1", "cd /tmp && export KEPT=yes"]);
    assert_eq!(
        cli.ok(&["exec", &id, "--session", "s1", "echo $KEPT; pwd"]),
        "yes\n/tmp\n"
    );
    // stdin on request.
    let mut child = cli
        .command(&["exec", &id, "-i", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"shout\n")
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(text(&out.stdout), "SHOUT\n");
    // --json: the whole result, and still the command's exit code.
    let out = cli.run(&["exec", &id, "--json", "printf out; printf err >&2; exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&out.stdout).expect("exec --json");
    assert_eq!(
        (
            v["stdout"].as_str(),
            v["stderr"].as_str(),
            v["exit_code"].as_i64()
        ),
        (Some("out"), Some("err"), Some(3))
    );
    assert_eq!(v["timed_out"], false);
    // A timeout is said on stderr.
    let out = cli.run(&["exec", &id, "--timeout-ms", "300", "sleep 30"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );

    // rm: several at once; --json lists what was deleted.
    let other = cli.ok(&["create"]).trim().to_string();
    assert!(other.starts_with("sb-"), "generated id {other}");
    let v = cli.json(&["rm", &other]);
    assert_eq!(v["deleted"], json!([other]));
    assert_eq!(cli.ok(&["rm", &id]).trim(), id);
    assert!(!server.list_ids().contains(&id));
    assert_fails(
        &cli.run(&["info", &id]),
        1,
        &format!("sandbox '{id}' does not exist (not_found)"),
    );
    // rm of one missing id among good ones: the others go, exit 1.
    let third = cli.ok(&["create"]).trim().to_string();
    let out = cli.run(&["rm", "no-such-box", &third]);
    assert_fails(&out, 1, "(not_found)");
    assert!(!server.list_ids().contains(&third));
}

#[test]
fn exec_streams_output_as_it_is_printed() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    // The command prints one line, then waits (up to 60 s) for a file the test creates only
    // once it has read that line: buffered output could never show `second`.
    let script = "echo first; echo first-err >&2; \
        for i in $(seq 600); do [ -e /workspace/go ] && break; sleep 0.1; done; \
        if [ -e /workspace/go ]; then echo second; else echo never-saw-go; fi; exit 4";
    let mut child = cli
        .command(&["exec", &id, script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read stdout");
    assert_eq!(line, "first\n");
    let mut err_line = String::new();
    stderr.read_line(&mut err_line).expect("read stderr");
    assert_eq!(err_line, "first-err\n");
    server.put_file(&id, "/workspace/go", b"");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read the rest");
    assert_eq!(rest, "second\n");
    assert_eq!(child.wait().expect("wait").code(), Some(4));
}

#[test]
fn cp_both_ways_with_a_20_mb_file() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let content = pseudo_random_bytes(20 * 1024 * 1024, 9);
    let local = dir.path().join("big.bin");
    std::fs::write(&local, &content).expect("write local file");
    let local_s = local.to_str().expect("utf-8 path");

    let v = cli.json(&["cp", local_s, &format!("{id}:/workspace/big.bin")]);
    assert_eq!(v["bytes"], content.len());
    assert_eq!(v["destination"], format!("{id}:/workspace/big.bin"));
    assert!(
        server.get_file(&id, "/workspace/big.bin") == content,
        "uploaded content differs"
    );
    // Into a directory: the file keeps its name.
    cli.ok(&["cp", local_s, &format!("{id}:/tmp/")]);
    assert_eq!(
        server.exec(&id, "stat -c %s /tmp/big.bin").stdout.trim(),
        content.len().to_string()
    );

    server.run_ok(
        &id,
        "printf '\\nmore' >> /workspace/big.bin; chmod 755 /workspace/big.bin",
    );
    let back = dir.path().join("back.bin");
    cli.ok(&[
        "cp",
        &format!("{id}:/workspace/big.bin"),
        back.to_str().expect("utf-8"),
    ]);
    let got = std::fs::read(&back).expect("read downloaded file");
    assert_eq!(got.len(), content.len() + 5);
    assert!(
        got[..content.len()] == content[..] && &got[content.len()..] == b"\nmore",
        "downloaded content differs"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&back).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o755, "the sandbox file's mode is kept");
    // Into a local directory; and to stdout with `-`.
    cli.ok(&[
        "cp",
        &format!("{id}:/workspace/big.bin"),
        &format!("{}/", dir.path().display()),
    ]);
    assert_eq!(
        std::fs::read(dir.path().join("big.bin"))
            .expect("read")
            .len(),
        content.len() + 5
    );
    server.put_file(&id, "/workspace/small.txt", b"small\n");
    assert_eq!(
        cli.ok(&["cp", &format!("{id}:/workspace/small.txt"), "-"]),
        "small\n"
    );

    // Errors: a missing file, a directory, two local paths, a relative sandbox path.
    assert_fails(
        &cli.run(&["cp", &format!("{id}:/workspace/none"), local_s]),
        1,
        "(not_found)",
    );
    assert_fails(
        &cli.run(&["cp", &format!("{id}:/workspace"), local_s]),
        1,
        "directory",
    );
    assert_fails(
        &cli.run(&[
            "cp",
            dir.path().to_str().expect("utf-8"),
            &format!("{id}:/tmp/d"),
        ]),
        1,
        "directory",
    );
    assert_fails(
        &cli.run(&["cp", local_s, "/tmp/elsewhere"]),
        2,
        "exactly one side",
    );
    assert_fails(
        &cli.run(&["cp", local_s, &format!("{id}:relative")]),
        2,
        "absolute",
    );
    assert!(!Path::new("/tmp/elsewhere").exists());
}

#[test]
fn logs_of_a_background_process() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    // The process waits for a file, so following starts before it is done.
    let r = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes"),
        &json!({"id": "worker", "command": "echo out1; echo err1 >&2; \
            for i in $(seq 600); do [ -e /workspace/go ] && break; sleep 0.1; done; echo out2; exit 5"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let mut child = cli
        .command(&["logs", &id, "worker", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read");
    assert_eq!(line, "out1\n");
    server.put_file(&id, "/workspace/go", b"");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).expect("read");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(rest, "out2\n");
    assert_eq!(text(&out.stderr), "err1\n");

    // Once exited: plain logs, and --json.
    let out = cli.run(&["logs", &id, "worker"]);
    assert_eq!(
        (text(&out.stdout), text(&out.stderr)),
        ("out1\nout2\n".into(), "err1\n".into())
    );
    let v = cli.json(&["logs", &id, "worker"]);
    assert_eq!(v["status"], "exited");
    assert_eq!(v["exit_code"], 5);
    assert_eq!(v["stdout"], "out1\nout2\n");
    // --follow --json: one event per line, ending with the exit.
    let out = cli.ok(&["logs", &id, "worker", "--follow", "--json"]);
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(events.last().expect("events")["event"], "exit");
    assert_eq!(events.last().expect("events")["exit_code"], 5);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "stderr" && e["data"] == "err1\n"),
        "{out}"
    );
    assert_fails(&cli.run(&["logs", &id, "nope"]), 1, "(not_found)");
}

#[test]
fn errors_and_usage() {
    let server = Server::start_with(ServerOpts {
        token: Some(unique("tok")),
        ..Default::default()
    });
    let cli = Cli::new(&server);
    assert_fails(
        &cli.run(&["info", "ghost"]),
        1,
        "sandbox 'ghost' does not exist (not_found)",
    );
    assert_fails(&cli.run(&["exec", "ghost", "true"]), 1, "(not_found)");
    assert_fails(&cli.run(&["create", "--id", "bad id!"]), 1, "(invalid_id)");
    // Usage: exit 2.
    assert_fails(&cli.run(&["exec"]), 2, "Usage");
    assert_fails(&cli.run(&["exec", "some-id"]), 2, "Usage");
    assert_fails(&cli.run(&["no-such-command"]), 2, "unrecognized subcommand");
    assert_fails(&cli.run(&["create", "--env", "NOEQUALS"]), 2, "K=V");
    assert_fails(&cli.run(&["ls", "--url", "not a url"]), 2, "server URL");
    // A wrong token, and none.
    assert_fails(&cli.run(&["ls", "--token", "wrong"]), 1, "(unauthorized)");
    let mut cmd = cli.command(&["ls"]);
    cmd.env_remove("SANDPIT_AUTH_TOKEN");
    assert_fails(&cmd.output().expect("run"), 1, "(unauthorized)");
    // Nobody listening.
    let out = cli.run(&["ls", "--url", &format!("http://127.0.0.1:{}", free_port())]);
    assert_fails(&out, 1, "(connection_error)");
}

#[test]
fn url_and_token_from_flags_env_and_config_file() {
    let token = unique("tok");
    let server = Server::start_with(ServerOpts {
        token: Some(token.clone()),
        ..Default::default()
    });
    let mut cli = Cli::new(&server);
    // From the environment (set by `Cli`).
    cli.ok(&["ls"]);
    // The flag wins over the environment.
    let mut cmd = cli.command(&["ls", "--token", &token]);
    cmd.env("SANDPIT_AUTH_TOKEN", "wrong");
    assert_eq!(cmd.output().expect("run").status.code(), Some(0));
    let mut cmd = cli.command(&["ls", "--token", "wrong"]);
    assert_fails(&cmd.output().expect("run"), 1, "(unauthorized)");

    // The config file, for both URL and token, when neither flag nor env says.
    let conf = cli.home.path().join(".config/sandpit");
    std::fs::create_dir_all(&conf).expect("mkdir");
    std::fs::write(
        conf.join("cli.toml"),
        format!("url = \"{}\"\ntoken = \"{token}\"\n", server.url("")),
    )
    .expect("write config");
    cli.token = None;
    let mut cmd = cli.command(&["ls", "--json"]);
    cmd.env_remove("SANDPIT_URL");
    let out = cmd.output().expect("run");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .is_array());
    // The environment wins over the file.
    let mut cmd = cli.command(&["ls"]);
    cmd.env("SANDPIT_AUTH_TOKEN", "wrong");
    assert_fails(&cmd.output().expect("run"), 1, "(unauthorized)");
    let mut cmd = cli.command(&["ls"]);
    cmd.env("SANDPIT_URL", format!("http://127.0.0.1:{}", free_port()));
    assert_fails(&cmd.output().expect("run"), 1, "(connection_error)");
    // A broken file is named in the error.
    std::fs::write(conf.join("cli.toml"), "url = [").expect("write config");
    let mut cmd = cli.command(&["ls"]);
    cmd.env_remove("SANDPIT_URL");
    assert_fails(&cmd.output().expect("run"), 1, "cli.toml");
}

/// `script` (util-linux) runs the CLI on a pseudo-terminal of its own; the test types into
/// it through script's stdin.
#[test]
fn shell_through_a_pseudo_terminal() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let line = format!("{BIN} shell {id}");
    let mut cmd = Command::new("script");
    cmd.args(["-qefc", &line, "/dev/null"])
        .env_remove("SANDPIT_AUTH_TOKEN")
        .env("SANDPIT_URL", &cli.url)
        .env("HOME", cli.home.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut proc = cmd.spawn().expect("spawn script (util-linux)");
    let mut stdin = proc.stdin.take().expect("stdin");
    // The sum is computed by the sandbox's bash: the echo of the typed line cannot show it.
    stdin
        .write_all(b"echo $((40+2))hi; stty size; exit 3\n")
        .expect("type");
    stdin.flush().expect("flush");
    let out = proc.wait_with_output().expect("wait for script");
    drop(stdin);
    let screen = text(&out.stdout);
    assert!(
        screen.contains("42hi"),
        "terminal output: {screen:?} stderr {:?}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "terminal output: {screen:?}");
    // `script` gives its terminal a size; the sandbox's terminal has a real one too.
    let size = screen.lines().map(|l| l.trim()).find(|l| {
        let parts: Vec<_> = l.split(' ').collect();
        parts.len() == 2 && parts.iter().all(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
    });
    assert!(size.is_some(), "no `stty size` answer in {screen:?}");
}

/// `sandpit shell` with stdin a pipe (no terminal, no raw mode): the input is typed, and its
/// end ends the shell, so the CLI exits with the shell's code.
#[test]
fn shell_with_piped_input() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    // An explicit exit: its code comes through. The sum is computed by the sandbox's bash,
    // so the echo of the typed line cannot show it.
    let out = piped_shell(&cli, &["shell", &id], b"echo $((40+2))hi; exit 3\n");
    assert!(
        text(&out.stdout).contains("42hi"),
        "{:?}",
        text(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(3), "stderr {:?}", text(&out.stderr));
    // No exit: the end of the input ends the shell, with the last command's code, also
    // when it comes while a command still runs and the last line has no newline.
    let out = piped_shell(&cli, &["shell", &id], b"sleep 1; echo $((1+2))X; false");
    assert!(text(&out.stdout).contains("3X"), "{:?}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", text(&out.stderr));
    let out = piped_shell(&cli, &["shell", &id], b"echo $((2+2))Y\n");
    assert!(text(&out.stdout).contains("4Y"), "{:?}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", text(&out.stderr));
    // A --command program reading its input gets an end of file.
    let out = piped_shell(
        &cli,
        &["shell", &id, "--command", "cat >/workspace/got; exit 4"],
        b"piped line\n",
    );
    assert_eq!(out.status.code(), Some(4), "stderr {:?}", text(&out.stderr));
    assert_eq!(server.get_file(&id, "/workspace/got"), b"piped line\n");
}

/// Runs the CLI with `input` on a pipe as stdin, closed after; waits for it to exit (a CLI
/// that never does is killed after two minutes: a hang, not a slow run).
fn piped_shell(cli: &Cli, args: &[&str], input: &[u8]) -> Output {
    let mut proc = cli
        .command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the CLI");
    let mut stdin = proc.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write stdin");
    drop(stdin);
    for _ in 0..1200 {
        if proc.try_wait().expect("try_wait").is_some() {
            return proc.wait_with_output().expect("output");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = proc.kill();
    let out = proc.wait_with_output().expect("output");
    panic!(
        "sandpit {args:?} did not exit at the end of its input; stdout {:?}",
        text(&out.stdout)
    );
}

#[test]
fn snapshot_commands_when_the_server_has_them() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    server.put_file(&id, "/workspace/keep.txt", b"v1");
    let out = cli.run(&["snapshot", &id, "--name", "first", "--json"]);
    if out.status.code() == Some(1) && text(&out.stderr).contains("(route_not_found)") {
        assert!(text(&out.stderr).contains("does not support snapshots"));
        eprintln!("skipped: this server has no snapshot routes");
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "snapshot: {}",
        text(&out.stderr)
    );
    let snap: Value = serde_json::from_slice(&out.stdout).expect("snapshot --json");
    let sid = snap["id"].as_str().expect("snapshot id").to_string();
    assert_eq!(snap["sandbox_id"], id.as_str());
    assert_eq!(snap["name"], "first");
    let list = cli.json(&["snapshots", &id]);
    assert!(
        list.as_array()
            .expect("array")
            .iter()
            .any(|s| s["id"] == sid.as_str()),
        "{list}"
    );
    assert!(cli.ok(&["snapshots", &id]).contains(&sid));
    server.put_file(&id, "/workspace/keep.txt", b"v2");
    cli.ok(&["restore", &id, &sid]);
    assert_eq!(server.get_file(&id, "/workspace/keep.txt"), b"v1");
    assert_fails(&cli.run(&["restore", &id, "no-such-snapshot"]), 1, "(");
}

/// Terminal output read from a pty master in a thread, searched as it comes.
struct Screen {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    /// Reads until `needle` shows after `from` (a byte offset in what was seen); answers
    /// where it ends. Panics only if the terminal closes, or stays silent for two minutes.
    #[track_caller]
    fn wait_for(&mut self, needle: &str, from: usize) -> usize {
        loop {
            if let Some(at) = self.seen[from..].find(needle) {
                return from + at + needle.len();
            }
            match self
                .chunks
                .recv_timeout(std::time::Duration::from_secs(120))
            {
                Ok(c) => self.seen.push_str(&String::from_utf8_lossy(&c)),
                Err(e) => panic!(
                    "waiting for {needle:?} ({e}); the terminal showed {:?}",
                    self.seen
                ),
            }
        }
    }
}

fn set_size(fd: i32, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; fd is an open pty master.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// The CLI on a pseudo-terminal the test opens itself (its controlling terminal): the
/// sandbox's terminal starts at the local size and follows a resize (SIGWINCH).
#[test]
fn shell_follows_the_terminal_size() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    assert_contained(&server, &id);
    let (mut master, mut slave) = (0, 0);
    let ws = libc::winsize {
        ws_row: 30,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds to valid pointers; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut cmd = cli.command(&["shell", &id]);
    cmd.stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the pty (stdin) the
    // child's controlling terminal, as a terminal emulator does.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("spawn the CLI on a pty");
    drop(slave);
    let master_fd = master.as_raw_fd();
    let mut reader = std::fs::File::from(master.try_clone().expect("dup master"));
    let mut writer = std::fs::File::from(master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = Screen {
        chunks: rx,
        seen: String::new(),
    };
    writer
        .write_all(b"echo A$((1+1)); stty size\n")
        .expect("type");
    let at = screen.wait_for("A2", 0);
    screen.wait_for("30 100", at);

    set_size(master_fd, 40, 120);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: kill with a valid signal to our own child.
    unsafe { libc::kill(pid, libc::SIGWINCH) };
    // The resize travels beside the keystrokes: ask until the new size shows.
    let mut resized = false;
    for i in 0..100 {
        let marker = format!("B{}", 1000 + i);
        let from = screen.seen.len();
        writer
            .write_all(format!("echo B$((1000+{i})); stty size\n").as_bytes())
            .expect("type");
        // The marker is computed by bash, so the echo of the typed line cannot match it.
        let at = screen.wait_for(&marker, from);
        let end = screen.wait_for("\n", at);
        let size_line_end = screen.wait_for("\n", end);
        if screen.seen[end..size_line_end].trim() == "40 120" {
            resized = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        resized,
        "the sandbox's terminal never became 40x120: {:?}",
        screen.seen
    );
    writer.write_all(b"exit 5\n").expect("type");
    assert_eq!(child.wait().expect("wait").code(), Some(5));
}

#[test]
fn cp_draws_a_progress_bar_on_a_terminal_only() {
    let server = Server::start();
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("big.bin");
    std::fs::write(&local, pseudo_random_bytes(24 * 1024 * 1024, 5)).expect("write local file");
    let local_s = local.to_str().expect("utf-8 path");
    let dest = format!("{id}:/workspace/big.bin");

    // Not a terminal: no bar on stderr.
    let out = cli.run(&["cp", local_s, &dest]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stderr).contains("MiB"), "{}", text(&out.stderr));

    // On a terminal (`script` gives the CLI one): the bar shows the total size.
    let line = format!("{BIN} cp {local_s} {dest}");
    let out = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .env_remove("SANDPIT_AUTH_TOKEN")
        .env("SANDPIT_URL", &cli.url)
        .env("HOME", cli.home.path())
        .stdin(Stdio::null())
        .output()
        .expect("spawn script (util-linux)");
    let screen = text(&out.stdout);
    assert!(out.status.success(), "{screen:?}");
    assert!(
        screen.contains("24.00 MiB"),
        "no progress bar in {screen:?}"
    );
    assert_eq!(
        server
            .exec(&id, "stat -c %s /workspace/big.bin")
            .stdout
            .trim(),
        (24 * 1024 * 1024).to_string()
    );
}

#[test]
fn start_kill_clone_expose_sleep_wake() {
    let server = Server::start_with(ServerOpts {
        token: Some("cli-token".into()),
        ..Default::default()
    });
    let cli = Cli::new(&server);
    let id = server.new_sandbox();
    // A bare repository served over git's dumb HTTP protocol on the sandbox's loopback.
    server.run_ok(
        &id,
        "set -e; git init -q -b main /srv/src && cd /srv/src && echo hi > README \
         && git add README && git -c user.email=t@t -c user.name=t commit -qm first \
         && git clone -q --bare /srv/src /srv/www/repo.git \
         && git -C /srv/www/repo.git update-server-info && echo page > /srv/www/index.html",
    );
    let web = cli.ok(&[
        "start",
        &id,
        "--name",
        "web",
        "--cwd",
        "/srv/www",
        "--",
        "python3",
        "-m",
        "http.server",
        "8131",
        "--bind",
        "127.0.0.1",
    ]);
    assert_eq!(web.trim(), "web");
    let ready = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes/web/wait-port"),
        &json!({"port": 8131, "timeout_ms": 30000}),
    );
    assert_eq!(ready.status, 200, "{}", ready.text());

    // clone: the commit is printed; the token comes only from the environment.
    let out = cli.ok(&[
        "clone",
        &id,
        "http://127.0.0.1:8131/repo.git",
        "--branch",
        "main",
        "--dir",
        "/workspace/r",
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[..2], ["clone", "/workspace/r"], "{out}");
    let head = server.run_ok(&id, "git -C /workspace/r rev-parse HEAD");
    assert_eq!(words[2], head.trim());
    let again = cli.json(&[
        "clone",
        &id,
        "http://127.0.0.1:8131/repo.git",
        "--dir",
        "/workspace/r",
    ]);
    assert_eq!(again["action"], "pull");
    assert_fails(
        &cli.run(&[
            "clone",
            &id,
            "http://127.0.0.1:8131/repo.git",
            "--token-env",
            "SANDPIT_TEST_NO_SUCH_VAR",
        ]),
        2,
        "SANDPIT_TEST_NO_SUCH_VAR",
    );

    // expose: a URL that works without the API token, for that port only; unexpose ends it.
    let url = cli.ok(&["expose", &id, "8131"]);
    let url = url.trim();
    let plain = reqwest::blocking::Client::new();
    let page = plain.get(url).send().expect("GET the public URL");
    assert_eq!(page.status().as_u16(), 200);
    assert_eq!(page.text().expect("body"), "page\n");
    let bare = url.split('?').next().expect("url");
    assert_eq!(plain.get(bare).send().expect("GET").status().as_u16(), 401);
    cli.ok(&["unexpose", &id, "8131"]);
    assert_eq!(plain.get(url).send().expect("GET").status().as_u16(), 401);
    assert_fails(&cli.run(&["unexpose", &id, "8131"]), 1, "(not_found)");

    // kill: the process ends by the signal.
    cli.ok(&["kill", &id, "web", "--signal", "SIGKILL"]);
    let waited = server.request_json(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes/web/wait"),
        &json!({"timeout_ms": 30000}),
    );
    assert_eq!(waited.json()["status"], "exited", "{}", waited.text());

    // sleep and wake keep the files.
    assert_eq!(cli.ok(&["sleep", &id]).trim(), format!("{id} sleeping"));
    assert_eq!(cli.json(&["wake", &id])["status"], "running");
    assert_eq!(server.run_ok(&id, "cat /workspace/r/README"), "hi\n");
    assert_fails(&cli.run(&["sleep", "no-such-sandbox"]), 1, "(not_found)");
}
