//! Lifecycle events and their webhooks: an in-memory bounded queue fed by
//! [`crate::SandboxManager::emit`] (which never waits), and a delivery task that POSTs each
//! event to every webhook subscribed to its kind, signed with HMAC-SHA256 and retried with
//! exponential backoff. A full queue drops the event with a warning and a metric.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};

use crate::model::{now_ms, rfc3339};

/// Events waiting for delivery before new ones are dropped.
const QUEUE: usize = 1024;
/// Deliveries in flight at once (each may be waiting out its backoff).
const IN_FLIGHT: usize = 64;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What happened to a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Slept,
    Woken,
    Expired,
    Deleted,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Created,
        EventKind::Slept,
        EventKind::Woken,
        EventKind::Expired,
        EventKind::Deleted,
    ];

    /// The event's `type`, as webhooks see it and subscribe to it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Created => "sandbox.created",
            EventKind::Slept => "sandbox.slept",
            EventKind::Woken => "sandbox.woken",
            EventKind::Expired => "sandbox.expired",
            EventKind::Deleted => "sandbox.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The shape of a webhook's deliveries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WebhookFormat {
    /// `{id, type, sandbox_id, timestamp, data}`, signed (`X-Sandpit-Signature`).
    #[default]
    Sandpit,
    /// AgentPod's: `{event, data: {sandboxId, ...}, timestamp}` with `Authorization:
    /// Bearer <token>` (and the signature too when a secret is set).
    Agentpod,
}

/// One webhook endpoint.
#[derive(Clone)]
pub struct Webhook {
    /// An `http://` URL (this build has no TLS client).
    pub url: String,
    /// Key of the HMAC-SHA256 signature.
    pub secret: String,
    /// Kinds delivered to it; empty means all.
    pub events: Vec<EventKind>,
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each.
    pub initial_backoff: Duration,
    /// Per attempt.
    pub timeout: Duration,
    /// The body's shape.
    pub format: WebhookFormat,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

/// Without the secret or the URL's query, so a logged config leaks neither.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.shown())
            .field("events", &self.events)
            .field("max_attempts", &self.max_attempts)
            .field("initial_backoff", &self.initial_backoff)
            .field("timeout", &self.timeout)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn new(url: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            secret: secret.into(),
            events: Vec::new(),
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            format: WebhookFormat::default(),
            token: None,
        }
    }

    fn wants(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }

    /// The URL for logs: no query string or credentials, which may carry secrets.
    fn shown(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(u) => {
                format!(
                    "{}://{}{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default()
                ) + u.path()
            }
            Err(_) => "<invalid url>".into(),
        }
    }
}

/// Checks a webhook's URL: `http://` or `https://` with a host. https verifies the
/// receiver's certificate against the system's roots (`SSL_CERT_FILE` / `SSL_CERT_DIR` name
/// others).
pub fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("webhook url '{url}': {e}"))?;
    match u.scheme() {
        "http" | "https" if u.host_str().is_some_and(|h| !h.is_empty()) => Ok(()),
        _ => Err(format!(
            "webhook url '{url}' must be an http:// or https:// URL with a host"
        )),
    }
}

/// An error and its causes, `outer: inner: ...`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// ISO-8601 UTC with milliseconds and `Z`, as JavaScript's `toISOString()` writes it.
fn iso_millis(ms: i64) -> String {
    let secs = rfc3339(ms);
    format!("{}.{:03}Z", secs.trim_end_matches('Z'), ms.rem_euclid(1000))
}

/// `sha256=<hex>` of HMAC-SHA256 over `timestamp + "." + body`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

struct Event {
    id: String,
    kind: EventKind,
    sandbox_id: String,
    body: Bytes,
    /// The same event in AgentPod's shape.
    agentpod_body: Bytes,
}

/// The sending side of the event queue; cheap to call from any request path.
pub struct Events {
    tx: Option<mpsc::Sender<Event>>,
}

impl Events {
    /// Starts the delivery task (inside a tokio runtime) when there is any webhook.
    pub fn start(hooks: Vec<Webhook>) -> Self {
        if hooks.is_empty() {
            return Self { tx: None };
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("webhooks configured outside a runtime: events are not delivered");
            return Self { tx: None };
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        rt.spawn(dispatch(rx, hooks.into_iter().map(Arc::new).collect()));
        Self { tx: Some(tx) }
    }

    /// Queues an event; never waits. `data` is the event's `data` object. False when it
    /// was dropped (no webhooks, or the queue is full).
    pub fn emit(&self, kind: EventKind, sandbox_id: &str, data: serde_json::Value) -> bool {
        let Some(tx) = &self.tx else { return false };
        let id = format!("evt_{}", crate::manager::random_token(24));
        let now = now_ms();
        let mut agentpod_data = serde_json::json!({ "sandboxId": sandbox_id });
        if let (Some(fields), Some(extra)) = (agentpod_data.as_object_mut(), data.as_object()) {
            for (k, v) in extra {
                fields.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        let agentpod_body = serde_json::json!({
            "event": kind.as_str(),
            "data": agentpod_data,
            "timestamp": iso_millis(now),
        });
        let body = serde_json::json!({
            "id": id,
            "type": kind.as_str(),
            "sandbox_id": sandbox_id,
            "timestamp": rfc3339(now),
            "data": data,
        });
        let (Ok(body), Ok(agentpod_body)) = (
            serde_json::to_vec(&body),
            serde_json::to_vec(&agentpod_body),
        ) else {
            return false;
        };
        let event = Event {
            id,
            kind,
            sandbox_id: sandbox_id.to_string(),
            body: Bytes::from(body),
            agentpod_body: Bytes::from(agentpod_body),
        };
        if let Err(e) = tx.try_send(event) {
            let event = match e {
                mpsc::error::TrySendError::Full(ev) | mpsc::error::TrySendError::Closed(ev) => ev,
            };
            metrics::counter!("sandpit_webhook_events_dropped_total").increment(1);
            tracing::warn!(event = %event.id, kind = kind.as_str(), sandbox = %event.sandbox_id,
                "webhook queue full: event dropped");
            return false;
        }
        true
    }
}

async fn dispatch(mut rx: mpsc::Receiver<Event>, hooks: Vec<Arc<Webhook>>) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "webhook client: events are not delivered");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(event) = rx.recv().await {
        let event = Arc::new(event);
        for hook in hooks.iter().filter(|h| h.wants(event.kind)) {
            // Waiting here backs the queue up, and emit then drops: memory stays bounded.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, hook, event) = (client.clone(), hook.clone(), event.clone());
            tokio::spawn(async move {
                deliver(&client, &hook, &event).await;
                drop(slot);
            });
        }
    }
}

async fn deliver(client: &reqwest::Client, hook: &Webhook, event: &Event) {
    let url = hook.shown();
    let mut backoff = hook.initial_backoff;
    let attempts = hook.max_attempts.max(1);
    for attempt in 1..=attempts {
        let timestamp = (now_ms() / 1000).to_string();
        let body = match hook.format {
            WebhookFormat::Sandpit => &event.body,
            WebhookFormat::Agentpod => &event.agentpod_body,
        };
        let mut request = client.post(&hook.url);
        if let Some(token) = &hook.token {
            request = request.bearer_auth(token);
        }
        if !hook.secret.is_empty() {
            request = request.header(
                "x-sandpit-signature",
                signature(&hook.secret, &timestamp, body),
            );
        }
        let sent = request
            .timeout(hook.timeout)
            .header("content-type", "application/json")
            .header("user-agent", concat!("sandpit/", env!("CARGO_PKG_VERSION")))
            .header("x-sandpit-event", event.kind.as_str())
            .header("x-sandpit-delivery", &event.id)
            .header("x-sandpit-timestamp", &timestamp)
            .body(body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(resp) if resp.status().is_success() => {
                metrics::counter!("sandpit_webhook_deliveries_total", "result" => "ok")
                    .increment(1);
                tracing::info!(event = %event.id, kind = event.kind.as_str(), sandbox = %event.sandbox_id,
                    %url, attempt, status = resp.status().as_u16(), "webhook delivered");
                return;
            }
            Ok(resp) => format!("answered {}", resp.status()),
            // Without the URL: reqwest's message would carry its query string. The causes
            // say why (refused, a certificate not trusted, ...).
            Err(e) => error_chain(&e.without_url()),
        };
        metrics::counter!("sandpit_webhook_deliveries_total", "result" => "retry").increment(1);
        tracing::info!(event = %event.id, kind = event.kind.as_str(), %url, attempt,
            error = %failure, "webhook attempt failed");
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            metrics::counter!("sandpit_webhook_deliveries_total", "result" => "failed")
                .increment(1);
            tracing::warn!(event = %event.id, kind = event.kind.as_str(), sandbox = %event.sandbox_id,
                %url, attempts, error = %failure, "webhook delivery gave up");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(EventKind::parse("sandbox.nope"), None);
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"Jefe", b"what do ya want.for nothing?", hashlib.sha256)
        assert_eq!(
            signature("Jefe", "what do ya want", b"for nothing?"),
            "sha256=e33f91577b90d4b3bbd73cb61803074f1965d27701b5527942dd9ea9443af37c"
        );
    }

    #[test]
    fn a_full_queue_drops_without_waiting() {
        let (tx, mut rx) = mpsc::channel(2);
        let events = Events { tx: Some(tx) };
        let data = || serde_json::json!({"n": 1});
        assert!(events.emit(EventKind::Created, "a", data()));
        assert!(events.emit(EventKind::Deleted, "a", data()));
        assert!(
            !events.emit(EventKind::Created, "b", data()),
            "a third does not fit"
        );
        let first = rx.try_recv().expect("queued");
        let v: serde_json::Value = serde_json::from_slice(&first.body).expect("JSON");
        assert_eq!(v["type"], "sandbox.created");
        assert_eq!(v["sandbox_id"], "a");
        assert_eq!(v["id"], first.id.as_str());
        assert_eq!(v["data"], data());
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(!Events::start(Vec::new()).emit(EventKind::Created, "a", data()));
    }

    #[test]
    fn urls_are_checked_and_shown_without_query() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("ftp://example.com/hook").is_err());
        assert!(check_url("ftp://example.com/").is_err());
        let h = Webhook::new("http://u:p@h.example:81/x?key=secret", "hunter2");
        assert_eq!(h.shown(), "http://h.example:81/x");
        let debug = format!("{h:?}");
        assert!(
            !debug.contains("secret") && !debug.contains("hunter2"),
            "{debug}"
        );
    }
}
