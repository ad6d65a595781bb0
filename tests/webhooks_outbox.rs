//! The webhook outbox: events that happen while receivers are down (a closed port, a 503)
//! survive a SIGTERM and a `kill -9` of the server, and are delivered after the restart,
//! each event exactly once, in the order they happened, with the same id and body as the
//! attempts before the stop; the retry schedule goes on from where it was.

mod common;

use common::hooks::{receiver_answering, Delivery};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Bound on the wait for deliveries (the retries back off from 50 ms, doubling).
const WAIT: Duration = Duration::from_secs(90);

/// A receiver on `listener` answering the status in `status` (changed by the test).
fn receiver_on(listener: TcpListener, status: Arc<AtomicU16>) -> mpsc::Receiver<Delivery> {
    receiver_answering(listener, move || status.load(Ordering::SeqCst))
}

/// Two webhooks: one on a port nobody listens on yet, one on a receiver answering 503.
struct Setup {
    config: std::path::PathBuf,
    _dir: tempfile::TempDir,
    /// Bound, not listening: connections are refused, and no one else takes the port.
    closed: socket2::Socket,
    status: Arc<AtomicU16>,
    busy: mpsc::Receiver<Delivery>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    closed
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let closed_port = closed
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound address")
        .port();
    let status = Arc::new(AtomicU16::new(503));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_port = listener.local_addr().expect("addr").port();
    let busy = receiver_on(listener, status.clone());
    let config = dir.path().join("sandpit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
url = "http://127.0.0.1:{closed_port}/down?key=k1"
secret = "s1"
backoff_ms = 50
max_attempts = 1000

[[webhooks]]
url = "http://127.0.0.1:{busy_port}/busy"
secret = "s2"
backoff_ms = 50
max_attempts = 1000
"#
        ),
    )
    .expect("config");
    Setup {
        config,
        _dir: dir,
        closed,
        status,
        busy,
    }
}

impl Setup {
    fn server(&self) -> Server {
        Server::start_with(ServerOpts {
            args: vec!["--config".into(), self.config.display().to_string()],
            ..Default::default()
        })
    }

    /// Brings both receivers up, restarts the server and collects what each got: the
    /// `expected` events, each once, in order. Answers (closed port's, busy one's).
    fn restart_and_deliver(
        &self,
        server: &mut Server,
        expected: &[(String, String)],
    ) -> (Vec<Delivery>, Vec<Delivery>) {
        let down = self.receivers_up();
        server.restart();
        let from_down = delivered(server, &down, expected.len());
        let from_busy = delivered(server, &self.busy, expected.len());
        assert_once_each(&from_down);
        assert_once_each(&from_busy);
        assert_eq!(events_of(&from_down, "s1"), expected);
        assert_eq!(events_of(&from_busy, "s2"), expected);
        (from_down, from_busy)
    }

    /// Opens the closed port (a receiver answering 200) and makes the busy one answer 200.
    fn receivers_up(&self) -> mpsc::Receiver<Delivery> {
        self.status.store(200, Ordering::SeqCst);
        self.closed.listen(128).expect("listen on the refused port");
        let listener = TcpListener::from(self.closed.try_clone().expect("socket"));
        receiver_on(listener, Arc::new(AtomicU16::new(200)))
    }
}

/// Waits for the first attempt at the busy receiver (answered 503).
fn first_refusal(busy: &mpsc::Receiver<Delivery>) -> Delivery {
    let d = busy
        .recv_timeout(WAIT)
        .expect("an attempt at the busy receiver");
    assert_eq!(d.answered, 503);
    d
}

/// The successful deliveries of a receiver until `n` distinct events arrived, then until the
/// server's outbox is empty (nothing is left to send); every 2xx delivery, duplicates
/// included, in arrival order.
fn delivered(server: &Server, rx: &mpsc::Receiver<Delivery>, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Delivery> = Vec::new();
    let distinct = |got: &[Delivery]| {
        got.iter()
            .map(|d| d.header("x-sandpit-delivery").to_string())
            .collect::<HashSet<_>>()
            .len()
    };
    while distinct(&got) < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(d) if d.answered == 200 => got.push(d),
            Ok(_) => {}
            Err(_) => panic!(
                "{} of {n} events delivered within {WAIT:?}: {got:?}",
                got.len()
            ),
        }
    }
    // Every row is deleted once delivered: an empty outbox sends nothing more.
    let empty = (0..900).any(|_| {
        let metrics = server.request(reqwest::Method::GET, "/metrics").text();
        if metrics
            .lines()
            .any(|l| l.trim() == "sandpit_webhook_outbox_pending 0")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    assert!(empty, "the outbox did not empty");
    while let Ok(d) = rx.recv_timeout(Duration::from_millis(300)) {
        if d.answered == 200 {
            got.push(d);
        }
    }
    got
}

/// `(type, sandbox_id)` of each delivery, checking each is signed with `secret` and its
/// header id is the body's.
fn events_of(got: &[Delivery], secret: &str) -> Vec<(String, String)> {
    got.iter()
        .map(|d| {
            let v = d.json();
            assert_eq!(v["id"], d.header("x-sandpit-delivery"), "{d:?}");
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
            mac.update(d.header("x-sandpit-timestamp").as_bytes());
            mac.update(b".");
            mac.update(&d.body);
            let sig = d.header("x-sandpit-signature");
            let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
            mac.verify_slice(&hex::decode(hex_sig).expect("hex signature"))
                .unwrap_or_else(|_| panic!("bad signature on {d:?}"));
            (
                v["type"].as_str().unwrap_or_default().to_string(),
                v["sandbox_id"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Each event id once.
#[track_caller]
fn assert_once_each(got: &[Delivery]) {
    let ids: Vec<&str> = got.iter().map(|d| d.header("x-sandpit-delivery")).collect();
    let distinct: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(
        ids.len(),
        distinct.len(),
        "an event delivered twice: {ids:?}"
    );
}

/// The log without ANSI colour sequences.
fn plain_log(server: &Server) -> String {
    let log = server.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The attempt number logged with the delivery of `event`.
fn delivered_at_attempt(server: &Server, event: &str) -> u32 {
    let log = plain_log(server);
    let line = log
        .lines()
        .find(|l| l.contains("webhook delivered") && l.contains(event))
        .unwrap_or_else(|| panic!("no delivery of {event} logged"));
    let at = line.find("attempt=").expect("attempt in the log line") + "attempt=".len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("attempt number in {line}"))
}

#[test]
fn events_pending_at_a_sigterm_are_delivered_after_the_restart_once_in_order() {
    let s = setup();
    let mut server = s.server();
    let (a, b, c) = (unique("obx"), unique("obx"), unique("obx"));
    for id in [&a, &b, &c] {
        server.create(&json!({"id": id, "keepalive_seconds": 0}));
    }
    server.delete_sandbox(&b);
    let expected: Vec<(String, String)> = [
        ("sandbox.created", &a),
        ("sandbox.created", &b),
        ("sandbox.created", &c),
        ("sandbox.deleted", &b),
    ]
    .iter()
    .map(|(k, id)| (k.to_string(), id.to_string()))
    .collect();
    // Tried and refused before the stop (the busy receiver gets the oldest event first).
    let refused = first_refusal(&s.busy);
    assert_eq!(refused.json()["type"], "sandbox.created");
    assert_eq!(refused.json()["sandbox_id"], a.as_str());
    let status = server.terminate().expect("the server was running");
    assert!(status.success(), "SIGTERM: {status}");
    while s.busy.try_recv().is_ok() {}
    let log = plain_log(&server);
    assert!(
        log.lines().any(|l| l.contains("webhook attempt failed")
            && l.contains("/down")
            && l.contains("refused")),
        "the closed port was tried and refused: {log}"
    );
    assert!(!log.contains("key=k1"), "the query logged: {log}");

    let (from_down, from_busy) = s.restart_and_deliver(&mut server, &expected);
    assert!(from_down.iter().all(|d| d.path == "/down?key=k1"));
    // The same event, byte for byte, as the attempt refused before the stop.
    let first = &from_busy[0];
    assert_eq!(
        first.header("x-sandpit-delivery"),
        refused.header("x-sandpit-delivery")
    );
    assert_eq!(first.body, refused.body);
    // Its retry schedule went on: the delivery is not counted as a first attempt.
    let attempt = delivered_at_attempt(&server, first.header("x-sandpit-delivery"));
    assert!(attempt >= 2, "delivered at attempt {attempt}");
    // The two webhooks got the same event ids.
    let ids = |got: &[Delivery]| -> Vec<String> {
        got.iter()
            .map(|d| d.header("x-sandpit-delivery").to_string())
            .collect()
    };
    assert_eq!(ids(&from_down), ids(&from_busy));
}

#[test]
fn events_of_a_request_answered_just_before_a_kill_9_are_delivered_after_the_restart() {
    let s = setup();
    let mut server = s.server();
    let (a, b) = (unique("obx"), unique("obx"));
    server.create(&json!({"id": a, "keepalive_seconds": 0}));
    server.create(&json!({"id": b, "keepalive_seconds": 0}));
    server.delete_sandbox(&a);
    // Killed right after the delete answered: nothing had time to be delivered.
    server.kill9();
    let expected: Vec<(String, String)> = [
        ("sandbox.created", &a),
        ("sandbox.created", &b),
        ("sandbox.deleted", &a),
    ]
    .iter()
    .map(|(k, id)| (k.to_string(), id.to_string()))
    .collect();
    let mut before: Vec<Delivery> = Vec::new();
    while let Ok(d) = s.busy.try_recv() {
        before.push(d);
    }
    assert!(
        before.iter().all(|d| d.answered == 503),
        "nothing was accepted before the kill"
    );

    let (_, from_busy) = s.restart_and_deliver(&mut server, &expected);
    // Any attempt made before the kill carried the id and body delivered after it.
    for early in &before {
        let id = early.header("x-sandpit-delivery");
        let late = from_busy
            .iter()
            .find(|d| d.header("x-sandpit-delivery") == id)
            .unwrap_or_else(|| panic!("{id} refused before the kill, never delivered"));
        assert_eq!(late.body, early.body);
    }
    // The sandbox that outlived the server is still there.
    assert_eq!(server.sandbox(&b)["id"], b.as_str());
}
