//! Terminals: `GET /v1/sandboxes/{id}/pty` upgraded to a WebSocket, driven with a blocking
//! tungstenite client. Every read is bounded, so a broken server fails instead of hanging.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::{Message, WebSocket};

/// How long any single expectation may wait for the terminal.
const WAIT: Duration = Duration::from_secs(15);

/// An open terminal and everything it has sent so far.
struct Term {
    ws: WebSocket<TcpStream>,
    /// Terminal output (binary messages), concatenated.
    out: Vec<u8>,
    /// Text messages, parsed.
    texts: Vec<Value>,
    /// Anything that arrived after the `exit` text message.
    after_exit: Vec<String>,
    closed: bool,
}

/// Opens the WebSocket; `Err((status, body))` when the server refused the upgrade.
fn try_connect(
    server: &Server,
    id: &str,
    query: &str,
    token: Option<&str>,
) -> Result<Term, (u16, String)> {
    let url = format!(
        "ws://127.0.0.1:{}/v1/sandboxes/{id}/pty?{query}",
        server.port
    );
    let mut req = url.into_client_request().expect("ws request");
    if let Some(t) = token {
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {t}").parse().expect("header value"),
        );
    }
    let tcp = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    tcp.set_write_timeout(Some(WAIT)).expect("write timeout");
    let deadline = Instant::now() + WAIT;
    let mut attempt = tungstenite::client(req, tcp);
    loop {
        match attempt {
            Ok((ws, _resp)) => {
                return Ok(Term {
                    ws,
                    out: Vec::new(),
                    texts: Vec::new(),
                    after_exit: Vec::new(),
                    closed: false,
                })
            }
            Err(HandshakeError::Interrupted(mid)) => {
                assert!(Instant::now() < deadline, "WebSocket handshake hangs");
                attempt = mid.handshake();
            }
            Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err((resp.status().as_u16(), body));
            }
            Err(HandshakeError::Failure(e)) => panic!("WebSocket handshake failed: {e}"),
        }
    }
}

#[track_caller]
fn connect(server: &Server, id: &str, query: &str) -> Term {
    match try_connect(server, id, query, server.token.as_deref()) {
        Ok(t) => t,
        Err((status, body)) => panic!("pty upgrade refused: {status} {body}"),
    }
}

/// Removes escape sequences (CSI, OSC, two-byte escapes) from terminal output.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('[') => {
                // Parameters and intermediates, then one final byte in @..~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                // Up to BEL or ESC \.
                while let Some(c) = chars.next() {
                    if c == '\x07' {
                        break;
                    }
                    if c == '\x1b' {
                        chars.next();
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

impl Term {
    fn send_bytes(&mut self, data: &[u8]) {
        self.ws
            .send(Message::Binary(data.to_vec().into()))
            .expect("send keystrokes");
    }

    fn send_json(&mut self, v: &Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .expect("send text message");
    }

    /// The output as text, without escape sequences.
    fn text(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(&self.out))
    }

    /// The output split into lines at `\r` and `\n` (what a terminal would show, roughly).
    fn lines(&self) -> Vec<String> {
        self.text()
            .split(['\r', '\n'])
            .map(|l| l.trim_end().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    fn has_line(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// Reads one message if one arrives within the socket's read timeout.
    /// Returns false once the connection is closed.
    fn pump(&mut self) -> bool {
        if self.closed {
            return false;
        }
        match self.ws.read() {
            Ok(Message::Binary(b)) => {
                if self.exit().is_some() {
                    self.after_exit
                        .push(format!("binary {:?}", String::from_utf8_lossy(&b)));
                }
                self.out.extend_from_slice(&b);
            }
            Ok(Message::Text(t)) => {
                if self.exit().is_some() {
                    self.after_exit.push(format!("text {}", t.as_str()));
                }
                let v = serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("text message is not JSON ({e}): {t:?}"));
                self.texts.push(v);
            }
            Ok(Message::Close(_)) => {
                // Keep reading: tungstenite answers the close and then reports it closed.
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.closed = true;
            }
            Err(tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
            )) => {
                self.closed = true;
            }
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
                ) =>
            {
                self.closed = true;
            }
            Err(e) => panic!(
                "reading the terminal: {e}\noutput so far: {:?}",
                self.text()
            ),
        }
        !self.closed
    }

    /// Reads until `done` holds; panics after [`WAIT`] with what arrived.
    #[track_caller]
    fn read_until(&mut self, what: &str, done: impl Fn(&Term) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "terminal: no {what} after {WAIT:?}; output so far: {:?}; messages: {:?}",
                self.text(),
                self.texts
            );
            if !self.pump() && !done(self) {
                panic!(
                    "terminal closed before {what}; output: {:?}; messages: {:?}",
                    self.text(),
                    self.texts
                );
            }
        }
    }

    /// Waits for an output line that is exactly `line`.
    #[track_caller]
    fn expect_line(&mut self, line: &str) {
        self.read_until(&format!("line {line:?}"), |t| t.has_line(line));
    }

    /// Runs shell text (typed, then Enter) and waits for the output line `expect`.
    #[track_caller]
    fn run(&mut self, command: &str, expect: &str) {
        self.send_bytes(format!("{command}\n").as_bytes());
        self.expect_line(expect);
    }

    fn exit(&self) -> Option<&Value> {
        self.texts.iter().find(|v| v["type"] == "exit")
    }

    /// Waits for the `exit` message and then for the socket to close; returns the message.
    #[track_caller]
    fn expect_exit_and_close(&mut self) -> Value {
        self.read_until("exit message", |t| t.exit().is_some());
        let exit = self.exit().cloned().unwrap();
        let deadline = Instant::now() + WAIT;
        while self.pump() {
            assert!(
                Instant::now() < deadline,
                "socket still open {WAIT:?} after the exit message"
            );
        }
        assert!(
            self.after_exit.is_empty(),
            "messages after the exit message: {:?}",
            self.after_exit
        );
        exit
    }
}

#[test]
fn runs_commands_and_streams_output() {
    let server = Server::start();
    let id = server.new_sandbox();
    let mut t = connect(&server, &id, "cols=80&rows=24");
    // The terminal echoes the input; only the command's output is a line `42`.
    t.run("echo $((6*7))", "42");
    // Keystrokes as a text `input` message.
    t.send_json(&json!({ "type": "input", "data": "echo $((6*7+1))\n" }));
    t.expect_line("43");
    // Output that arrives over time.
    t.run("for i in 1 2 3; do echo n$((i*10)); done", "n30");
    assert!(t.has_line("n10") && t.has_line("n20"), "{:?}", t.text());
    t.send_bytes(b"exit\n");
    let exit = t.expect_exit_and_close();
    assert_eq!(exit, json!({ "type": "exit", "exit_code": 0 }));
}

#[test]
fn resize_changes_the_window_size() {
    let server = Server::start();
    let id = server.new_sandbox();
    let mut t = connect(&server, &id, "cols=100&rows=30");
    t.run("stty size", "30 100");
    t.send_json(&json!({ "type": "resize", "cols": 120, "rows": 40 }));
    // Poll: the resize may be applied asynchronously to the keystrokes.
    let deadline = Instant::now() + WAIT;
    let mut n = 0;
    while !t.has_line("40 120") {
        assert!(
            Instant::now() < deadline,
            "no `40 120` after the resize: {:?}",
            t.text()
        );
        n += 1;
        // A marker line tells when each `stty size` answered.
        t.run(
            &format!("stty size; echo mark$((1000+{n}))"),
            &format!("mark{}", 1000 + n),
        );
    }
}

#[test]
fn utf8_round_trips() {
    let server = Server::start();
    let id = server.new_sandbox();
    let mut t = connect(&server, &id, "cols=80&rows=24");
    t.run("echo héllo", "héllo");
    // Multibyte output from a program, not typed: no echo can produce it.
    t.run(
        "printf '\\xc3\\xbc\\xe2\\x82\\xac\\xf0\\x9f\\x98\\x80\\n'",
        "ü€😀",
    );
    let raw = String::from_utf8(t.out.clone());
    assert!(
        raw.is_ok(),
        "terminal output is not valid UTF-8: {:?}",
        t.out
    );
}

#[test]
fn exit_code_then_close() {
    let server = Server::start();
    let id = server.new_sandbox();
    let mut t = connect(&server, &id, "cols=80&rows=24");
    t.run("echo ready", "ready");
    t.send_bytes(b"exit 3\n");
    let exit = t.expect_exit_and_close();
    assert_eq!(exit, json!({ "type": "exit", "exit_code": 3 }));
}

#[test]
fn command_parameter_runs_that_command() {
    let server = Server::start();
    let id = server.new_sandbox();
    let query = format!(
        "cols=80&rows=24&command={}",
        enc("echo from-command $((2*21)); exit 5")
    );
    let mut t = connect(&server, &id, &query);
    t.expect_line("from-command 42");
    let exit = t.expect_exit_and_close();
    assert_eq!(exit, json!({ "type": "exit", "exit_code": 5 }));
}

#[test]
fn terminal_runs_inside_the_sandbox() {
    let server = Server::start();
    let id = unique("tty");
    server.create(&json!({ "id": id }));
    let mut t = connect(&server, &id, "cols=80&rows=24");
    t.run(
        "echo host=$(cat /proc/sys/kernel/hostname)",
        &format!("host={id}"),
    );
    t.run("echo cwd=$(pwd)", "cwd=/workspace");
    t.run("echo term=$TERM", "term=xterm-256color");
    t.run("echo tty=$(test -t 0 && echo yes)", "tty=yes");
    // Files written in the terminal are the sandbox's files.
    t.run(
        "echo from-pty > /workspace/pty.txt && echo written",
        "written",
    );
    assert_eq!(server.get_file(&id, "/workspace/pty.txt"), b"from-pty\n");
    // And the sandbox's processes are what the terminal sees.
    server.run_ok(&id, "nohup sleep 1007 >/dev/null 2>&1 &");
    server.wait_for_process(&id, "sleep 1007");
    t.run(
        "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -c '^sleep 1007 $' | sed 's/^/count=/'",
        "count=1",
    );
}

#[test]
fn closing_the_socket_hangs_up_the_terminal() {
    let server = Server::start();
    let id = server.new_sandbox();
    let mut t = connect(&server, &id, "cols=80&rows=24");
    t.run("echo ready", "ready");
    t.send_bytes(b"sleep 1008\n");
    server.wait_for_process(&id, "sleep 1008");
    let _ = t.ws.close(None);
    // Flush the close frame; then drop the connection.
    let deadline = Instant::now() + Duration::from_secs(3);
    while t.pump() && Instant::now() < deadline {}
    drop(t);
    assert_processes_gone(&server, &id, &["sleep 1008"]);
}

#[test]
fn unknown_sandbox_is_404_before_upgrade() {
    let server = Server::start();
    match try_connect(&server, "no-such-sandbox", "cols=80&rows=24", None) {
        Ok(_) => panic!("upgraded a terminal for a sandbox that does not exist"),
        Err((status, body)) => {
            assert_eq!(status, 404, "{body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("404 body is not JSON ({e}): {body:?}"));
            assert_eq!(v["error"]["code"], "not_found", "{v}");
        }
    }
}

#[test]
fn terminal_needs_the_token() {
    let server = Server::start_with(ServerOpts {
        token: Some("pty-secret-token".into()),
        ..Default::default()
    });
    let id = server.new_sandbox();
    match try_connect(&server, &id, "cols=80&rows=24", None) {
        Ok(_) => panic!("terminal opened without a token"),
        Err((status, body)) => assert_eq!(status, 401, "{body}"),
    }
    match try_connect(&server, &id, "cols=80&rows=24", Some("wrong-token")) {
        Ok(_) => panic!("terminal opened with a wrong token"),
        Err((status, body)) => assert_eq!(status, 401, "{body}"),
    }
    let mut t = connect(&server, &id, "cols=80&rows=24");
    t.run("echo $((6*7))", "42");
}
