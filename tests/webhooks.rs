//! Webhooks: lifecycle events POSTed to receivers the test runs on 127.0.0.1, signed with
//! HMAC-SHA256 over `timestamp + "." + body`, retried after a failure, filtered by type, and
//! never holding up the request that caused them.

mod common;

use common::hooks::{receiver, Delivery};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Bound on the wait for one delivery (retries back off 100 ms, 200 ms, ...).
const WAIT: Duration = Duration::from_secs(60);

/// Signature checks on a delivery.
trait Signed {
    fn assert_signed(&self, secret: &str);
}

impl Signed for Delivery {
    /// Checks `X-Sandpit-Signature` with the hmac crate.
    #[track_caller]
    fn assert_signed(&self, secret: &str) {
        let sig = self.header("x-sandpit-signature");
        let hex_sig = sig.strip_prefix("sha256=").expect("sha256= prefix");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(self.header("x-sandpit-timestamp").as_bytes());
        mac.update(b".");
        mac.update(&self.body);
        mac.verify_slice(&hex::decode(hex_sig).expect("hex signature"))
            .unwrap_or_else(|_| panic!("bad signature on {self:?}"));
        // And a signature with the wrong secret does not verify.
        let mut wrong = Hmac::<Sha256>::new_from_slice(b"wrong").expect("key");
        wrong.update(self.header("x-sandpit-timestamp").as_bytes());
        wrong.update(b".");
        wrong.update(&self.body);
        assert!(wrong
            .verify_slice(&hex::decode(hex_sig).expect("hex"))
            .is_err());
    }
}

/// A receiver that accepts and reads, and never answers; counts its connections.
fn stuck_receiver() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, count)
}

/// Collects deliveries until one matches, within [`WAIT`]; returns it and those before it.
#[track_caller]
fn wait_for(
    rx: &mpsc::Receiver<Delivery>,
    all: &mut Vec<Delivery>,
    what: &str,
    pred: impl Fn(&Delivery) -> bool,
) -> Delivery {
    let deadline = Instant::now() + WAIT;
    if let Some(d) = all.iter().find(|d| pred(d)) {
        return d.clone();
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(d) => {
                all.push(d.clone());
                if pred(&d) {
                    return d;
                }
            }
            Err(_) => panic!("no delivery of {what} within {WAIT:?}; got {all:?}"),
        }
    }
}

fn is(d: &Delivery, kind: &str, sandbox: &str) -> bool {
    let v = d.json();
    v["type"] == kind && v["sandbox_id"] == sandbox
}

#[test]
fn events_are_signed_retried_filtered_and_never_block_requests() {
    let (p1, rx1) = receiver(1);
    let (p2, rx2) = receiver(0);
    let (p3, stuck) = stuck_receiver();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sandpit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
url = "http://127.0.0.1:{p1}/hook?key=in-the-query"
secret = "s3cret"
backoff_ms = 100

[[webhooks]]
url = "http://127.0.0.1:{p2}/deleted-only"
secret = "other"
events = ["sandbox.deleted"]

[[webhooks]]
url = "http://127.0.0.1:{p3}/stuck"
secret = "x"
timeout_ms = 600000
"#
        ),
    )
    .expect("config");
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    });
    let mut all1 = Vec::new();
    let mut all2 = Vec::new();

    // created: refused once with 500, delivered again, the same event both times.
    let a = unique("hooks");
    let view = server.create(&json!({"id": a, "keepalive_seconds": 0}));
    let first = wait_for(&rx1, &mut all1, "created (first try)", |d| {
        is(d, "sandbox.created", &a)
    });
    assert_eq!(first.answered, 500);
    let again = wait_for(&rx1, &mut all1, "created (retry)", |d| {
        is(d, "sandbox.created", &a) && d.answered == 200
    });
    assert_eq!(
        first.header("x-sandpit-delivery"),
        again.header("x-sandpit-delivery")
    );
    assert_eq!(first.body, again.body);
    for d in [&first, &again] {
        d.assert_signed("s3cret");
        assert_eq!(d.path, "/hook?key=in-the-query");
        assert_eq!(d.header("x-sandpit-event"), "sandbox.created");
        assert_eq!(d.header("content-type"), "application/json");
        let ts: i64 = d
            .header("x-sandpit-timestamp")
            .parse()
            .expect("unix seconds");
        assert!((ts as f64 - now_unix()).abs() < 3600.0, "timestamp {ts}");
    }
    let body = again.json();
    assert_eq!(body["id"], again.header("x-sandpit-delivery"));
    assert!(body["id"].as_str().is_some_and(|s| s.starts_with("evt_")));
    assert_eq!(body["data"]["id"], a.as_str());
    assert_eq!(body["data"]["created_at"], view["created_at"]);
    let at = body["timestamp"].as_str().expect("timestamp");
    assert!(at.ends_with('Z') && parse_utc(at).is_some(), "{at}");

    // The receiver that never answers holds deliveries open; requests go on regardless.
    let more: Vec<String> = (0..3)
        .map(|_| {
            let id = unique("hooks");
            server.create(&json!({"id": id, "keepalive_seconds": 0}));
            id
        })
        .collect();
    for id in &more {
        wait_for(&rx1, &mut all1, "created of another sandbox", |d| {
            is(d, "sandbox.created", id)
        })
        .assert_signed("s3cret");
    }
    assert!(
        stuck.load(Ordering::SeqCst) >= 1,
        "the stuck receiver got no delivery"
    );

    // deleted: to both receivers; the filtered one gets nothing else.
    server.delete_sandbox(&a);
    let d = wait_for(&rx1, &mut all1, "deleted", |d| is(d, "sandbox.deleted", &a));
    d.assert_signed("s3cret");
    assert_eq!(d.json()["data"], json!({}));
    let d2 = wait_for(&rx2, &mut all2, "deleted (filtered hook)", |d| {
        is(d, "sandbox.deleted", &a)
    });
    d2.assert_signed("other");
    assert_eq!(d2.path, "/deleted-only");

    // expired, then deleted, when the keepalive runs out.
    let e = unique("hooks");
    server.create(&json!({"id": e, "keepalive_seconds": 1}));
    let x = wait_for(&rx1, &mut all1, "expired", |d| is(d, "sandbox.expired", &e));
    x.assert_signed("s3cret");
    assert_eq!(x.header("x-sandpit-event"), "sandbox.expired");
    assert_eq!(x.json()["data"]["keepalive_seconds"], 1);
    wait_for(&rx1, &mut all1, "deleted after expiry", |d| {
        is(d, "sandbox.deleted", &e)
    })
    .assert_signed("s3cret");
    wait_for(&rx2, &mut all2, "deleted after expiry (filtered)", |d| {
        is(d, "sandbox.deleted", &e)
    });
    assert!(
        all2.iter().all(|d| d.json()["type"] == "sandbox.deleted"),
        "the deleted-only hook got {all2:?}"
    );
    // Secrets stay out of the log.
    let log = server.log();
    assert!(log.contains("webhook delivered"), "deliveries are logged");
    assert!(
        !log.contains("s3cret") && !log.contains("in-the-query"),
        "{log}"
    );
}

#[test]
fn bad_webhook_settings_refuse_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (toml, says) in [
        (
            "[[webhooks]]\nurl = \"ftp://example.com/h\"\nsecret = \"s\"\n",
            "must be an http:// or https:// URL",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s\"\nevents = [\"sandbox.nope\"]\n",
            "webhook event 'sandbox.nope'",
        ),
        (
            "[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"\"\n",
            "secret must not be empty",
        ),
        ("[[webhooks]]\nurl = \"not a url\"\nsecret = \"s\"\n", "webhook url"),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).expect("config");
        let data = dir.path().join("data");
        let listen = format!("127.0.0.1:{}", free_port());
        let (status, out) = run_binary(
            &[
                "serve",
                "--listen",
                &listen,
                "--data-dir",
                &data.display().to_string(),
                "--config",
                &config.display().to_string(),
            ],
            Duration::from_secs(30),
        )
        .expect("the server exits on a bad config");
        assert!(!status.success(), "started with {toml}");
        assert!(out.contains(says), "{toml} => {out}");
    }
}

/// An HTTPS receiver: python's http.server behind TLS with a self-signed certificate for
/// 127.0.0.1 made by openssl. Each request comes back as one JSON line on its stdout.
struct TlsReceiver {
    port: u16,
    cert: std::path::PathBuf,
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

const TLS_RECEIVER: &str = r#"
import base64, http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
        print(json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "body": base64.b64encode(body).decode()}), flush=True)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

impl TlsReceiver {
    fn start(dir: &std::path::Path, name: &str) -> TlsReceiver {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            // A leaf, not a CA: webpki refuses a CA certificate as the server's own.
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(made.status.success(), "openssl: {made:?}");
        let mut child = std::process::Command::new("python3")
            .args(["-c", TLS_RECEIVER])
            .arg(&cert)
            .arg(&key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 https receiver");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let port = lines
            .recv_timeout(WAIT)
            .expect("receiver port")
            .trim()
            .parse()
            .expect("port number");
        TlsReceiver {
            port,
            cert,
            child,
            lines,
        }
    }

    fn next(&self, timeout: Duration) -> Option<Delivery> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        let v: Value = serde_json::from_str(&line).expect("receiver line");
        let headers = v["headers"]
            .as_object()
            .expect("headers")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        use base64::Engine as _;
        let body = base64::engine::general_purpose::STANDARD
            .decode(v["body"].as_str().expect("body"))
            .expect("base64 body");
        Some(Delivery {
            path: v["path"].as_str().unwrap_or_default().to_string(),
            headers,
            body,
            answered: 200,
        })
    }
}

impl Drop for TlsReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_webhooks_verify_the_receivers_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trusted = TlsReceiver::start(dir.path(), "trusted");
    let untrusted = TlsReceiver::start(dir.path(), "untrusted");
    let config = dir.path().join("sandpit.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
url = "https://127.0.0.1:{}/tls-hook"
secret = "tls-secret"

[[webhooks]]
url = "https://127.0.0.1:{}/not-trusted"
secret = "x"
max_attempts = 1
"#,
            trusted.port, untrusted.port
        ),
    )
    .expect("config");
    // Only the first receiver's certificate is a trusted root for the server.
    let server = Server::start_with(ServerOpts {
        args: vec!["--config".into(), config.display().to_string()],
        env: vec![("SSL_CERT_FILE".into(), trusted.cert.display().to_string())],
        ..Default::default()
    });
    let id = server.new_sandbox();
    let got = trusted.next(WAIT).expect("an https delivery");
    assert_eq!(got.path, "/tls-hook");
    got.assert_signed("tls-secret");
    assert_eq!(got.json()["type"], "sandbox.created", "{:?}", got.json());
    assert_eq!(got.json()["sandbox_id"], id.as_str());
    // The other receiver's certificate is not trusted: the delivery fails, nothing arrives.
    let failed = (0..600).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        server
            .request(reqwest::Method::GET, "/metrics")
            .text()
            .lines()
            .any(|l| l.starts_with("sandpit_webhook_deliveries_total{result=\"failed\"}"))
    });
    assert!(failed, "the untrusted delivery was not reported as failed");
    assert!(untrusted.next(Duration::from_millis(200)).is_none());
}
