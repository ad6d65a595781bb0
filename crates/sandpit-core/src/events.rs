//! Lifecycle events and their webhooks, through a durable outbox. [`Events::emit`] (called
//! by [`crate::SandboxManager::emit`] on request paths, never waiting on a receiver) writes
//! one row per subscribed webhook into the store's `webhook_outbox` table in one small
//! SQLite commit, with the exact body that is sent, so an event whose `emit` returned
//! survives a stop or a `kill -9` of the server. One task per webhook delivers its rows in
//! order (the oldest first, one at a time), signed with HMAC-SHA256; a 2xx deletes the row,
//! a failure is retried with exponential backoff whose state (attempts, next attempt time)
//! is kept in the row, so a restarted server goes on with the schedule. A delivery is given
//! up (and counted) after the webhook's `max_attempts` or [`MAX_AGE`]. A webhook keeps at
//! most [`OUTBOX_CAP`] rows: more drop the oldest, with a warning and a metric. Webhooks are
//! known by a stable key (the URL without query or credentials, see [`Webhook::key`]); at
//! start, rows of webhooks no longer configured are dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::model::{now_ms, rfc3339};
use crate::store::{OutboxRow, Store};

/// Pending deliveries kept per webhook; more drop the oldest.
pub const OUTBOX_CAP: usize = 10_000;
/// Longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Age of an event after which a failed delivery is not tried again.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Wait after a failed store read or write before the delivery task tries again.
const STORE_RETRY: Duration = Duration::from_secs(1);

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
    /// Attempts per event, the first included (default 20); a delivery is also given up
    /// once its event is [`MAX_AGE`] old.
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
            max_attempts: 20,
            initial_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
            format: WebhookFormat::default(),
            token: None,
        }
    }

    /// The key its outbox rows carry: the URL without query or credentials (which may
    /// carry secrets, and may be rotated without losing what is pending).
    pub fn key(&self) -> String {
        self.shown()
    }

    /// The wait after `failures` failed attempts: the initial backoff doubled after each,
    /// at most [`MAX_BACKOFF`].
    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial_backoff
            .saturating_mul(1u32 << doublings)
            .min(MAX_BACKOFF)
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

/// The keys of the outbox rows of `hooks`, in order: [`Webhook::key`], with `#2`, `#3`, ...
/// after a key seen before (two webhooks that differ only in their query).
fn keys(hooks: &[Webhook]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::with_capacity(hooks.len());
    for hook in hooks {
        let base = hook.key();
        let mut key = base.clone();
        let mut n = 1;
        while keys.contains(&key) {
            n += 1;
            key = format!("{base}#{n}");
        }
        keys.push(key);
    }
    keys
}

/// One configured webhook and what its delivery task waits on.
struct Hook {
    hook: Webhook,
    key: String,
    /// Woken when a row is added.
    wake: Notify,
}

/// The webhooks, the store holding their outbox, and the rows pending per webhook.
struct Outbox {
    store: Arc<dyn Store>,
    hooks: Vec<Hook>,
    /// Rows in the outbox per webhook (same order as `hooks`). Held across every write to
    /// the table, so the cap is exact.
    pending: Mutex<Vec<usize>>,
    cap: usize,
}

impl Outbox {
    /// Drops the rows of webhooks no longer configured and counts the others.
    fn open(
        hooks: Vec<Webhook>,
        store: Arc<dyn Store>,
        cap: usize,
    ) -> Result<Self, crate::CoreError> {
        let keys = keys(&hooks);
        let (kept, dropped) = store.outbox_retain(&keys)?;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "webhook outbox: deliveries to webhooks no longer configured dropped"
            );
        }
        let pending = keys
            .iter()
            .map(|k| kept.iter().find(|(h, _)| h == k).map_or(0, |(_, n)| *n))
            .collect();
        let hooks = hooks
            .into_iter()
            .zip(keys)
            .map(|(hook, key)| Hook {
                hook,
                key,
                wake: Notify::new(),
            })
            .collect();
        let outbox = Self {
            store,
            hooks,
            pending: Mutex::new(pending),
            cap: cap.max(1),
        };
        outbox.publish(&outbox.pending());
        Ok(outbox)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, pending: &[usize]) {
        metrics::gauge!("sandpit_webhook_outbox_pending").set(pending.iter().sum::<usize>() as f64);
    }

    /// Deletes a delivery that is done (delivered or given up).
    fn remove(&self, index: usize, seq: i64) -> Result<(), crate::CoreError> {
        let mut pending = self.pending();
        if self.store.outbox_delete(seq)? {
            pending[index] = pending[index].saturating_sub(1);
        }
        self.publish(&pending);
        Ok(())
    }
}

/// The sending side of the outbox; cheap to call from any request path.
pub struct Events {
    outbox: Option<Arc<Outbox>>,
}

impl Events {
    /// Opens the outbox in `store` and starts a delivery task per webhook (inside a tokio
    /// runtime). With no webhook, drops whatever the outbox holds and delivers nothing.
    pub fn start(hooks: Vec<Webhook>, store: Arc<dyn Store>) -> Self {
        let disabled = Self { outbox: None };
        let outbox = match Outbox::open(hooks, store, OUTBOX_CAP) {
            Ok(o) => Arc::new(o),
            Err(e) => {
                tracing::error!(error = %e, "webhook outbox cannot be opened: events are not delivered");
                return disabled;
            }
        };
        if outbox.hooks.is_empty() {
            return disabled;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("webhooks configured outside a runtime: events are not delivered");
            return disabled;
        };
        let client = match reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client: events are not delivered");
                return disabled;
            }
        };
        for index in 0..outbox.hooks.len() {
            rt.spawn(deliver_all(outbox.clone(), index, client.clone()));
        }
        Self {
            outbox: Some(outbox),
        }
    }

    /// Writes the event's deliveries to the outbox (one small commit; never waits on a
    /// receiver). `data` is the event's `data` object. False when nothing was written (no
    /// webhook wants it, or the store failed).
    pub fn emit(&self, kind: EventKind, sandbox_id: &str, data: serde_json::Value) -> bool {
        let Some(outbox) = &self.outbox else {
            return false;
        };
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
        let wanted: Vec<usize> = (0..outbox.hooks.len())
            .filter(|&i| outbox.hooks[i].hook.wants(kind))
            .collect();
        if wanted.is_empty() {
            return false;
        }
        let rows: Vec<OutboxRow> = wanted
            .iter()
            .map(|&i| OutboxRow {
                seq: 0,
                hook: outbox.hooks[i].key.clone(),
                event_id: id.clone(),
                kind: kind.as_str().to_string(),
                sandbox_id: sandbox_id.to_string(),
                body: match outbox.hooks[i].hook.format {
                    WebhookFormat::Sandpit => body.clone(),
                    WebhookFormat::Agentpod => agentpod_body.clone(),
                },
                created_at: now,
                attempts: 0,
                next_at: now,
            })
            .collect();
        {
            let mut pending = outbox.pending();
            let trim: Vec<(String, usize)> = wanted
                .iter()
                .filter(|&&i| pending[i] + 1 > outbox.cap)
                .map(|&i| (outbox.hooks[i].key.clone(), pending[i] + 1 - outbox.cap))
                .collect();
            let dropped = match outbox.store.outbox_push(&rows, &trim) {
                Ok(d) => d,
                Err(e) => {
                    drop(pending);
                    metrics::counter!("sandpit_webhook_events_dropped_total", "reason" => "store")
                        .increment(1);
                    tracing::warn!(event = %id, kind = kind.as_str(), sandbox = %sandbox_id,
                        error = %e, "webhook outbox write failed: event dropped");
                    return false;
                }
            };
            for &i in &wanted {
                pending[i] += 1;
            }
            for ((key, _), gone) in trim.iter().zip(dropped) {
                if let Some(i) = outbox.hooks.iter().position(|h| &h.key == key) {
                    pending[i] = pending[i].saturating_sub(gone);
                    metrics::counter!("sandpit_webhook_events_dropped_total", "reason" => "outbox_full")
                        .increment(gone as u64);
                    tracing::warn!(url = %key, dropped = gone, cap = outbox.cap,
                        "webhook outbox full: the oldest pending deliveries dropped");
                }
            }
            outbox.publish(&pending);
        }
        for &i in &wanted {
            outbox.hooks[i].wake.notify_one();
        }
        true
    }
}

/// The delivery task of one webhook: its outbox rows, the oldest first, one at a time.
async fn deliver_all(outbox: Arc<Outbox>, index: usize, client: reqwest::Client) {
    let Hook { hook, key, wake } = &outbox.hooks[index];
    loop {
        let row = match outbox.store.outbox_head(key) {
            Ok(Some(row)) => row,
            Ok(None) => {
                wake.notified().await;
                continue;
            }
            Err(e) => {
                tracing::warn!(url = %key, error = %e, "webhook outbox read failed");
                tokio::time::sleep(STORE_RETRY).await;
                continue;
            }
        };
        let wait = row.next_at.saturating_sub(now_ms());
        if wait > 0 {
            // Then read the head again: it may have been dropped by the cap meanwhile.
            tokio::time::sleep(Duration::from_millis(wait as u64).min(MAX_BACKOFF)).await;
            continue;
        }
        let attempt = row.attempts.saturating_add(1);
        let failure = match send(&client, hook, &row).await {
            Ok(status) => {
                metrics::counter!("sandpit_webhook_deliveries_total", "result" => "ok")
                    .increment(1);
                tracing::info!(event = %row.event_id, kind = %row.kind, sandbox = %row.sandbox_id,
                    url = %key, attempt, status, "webhook delivered");
                if let Err(e) = outbox.remove(index, row.seq) {
                    // Delivered again later: receivers deduplicate on the event id.
                    tracing::warn!(event = %row.event_id, error = %e, "webhook outbox: delivered row not removed");
                    tokio::time::sleep(STORE_RETRY).await;
                }
                continue;
            }
            Err(failure) => failure,
        };
        metrics::counter!("sandpit_webhook_deliveries_total", "result" => "retry").increment(1);
        tracing::info!(event = %row.event_id, kind = %row.kind, url = %key, attempt,
            error = %failure, "webhook attempt failed");
        let age = now_ms().saturating_sub(row.created_at);
        if attempt >= hook.max_attempts.max(1) || age >= MAX_AGE.as_millis() as i64 {
            metrics::counter!("sandpit_webhook_deliveries_total", "result" => "failed")
                .increment(1);
            tracing::warn!(event = %row.event_id, kind = %row.kind, sandbox = %row.sandbox_id,
                url = %key, attempts = attempt, error = %failure, "webhook delivery gave up");
            if let Err(e) = outbox.remove(index, row.seq) {
                tracing::warn!(event = %row.event_id, error = %e, "webhook outbox: row not removed");
                tokio::time::sleep(STORE_RETRY).await;
            }
            continue;
        }
        let backoff = hook.backoff(attempt);
        let next_at = now_ms().saturating_add(backoff.as_millis() as i64);
        if let Err(e) = outbox.store.outbox_retry(row.seq, attempt, next_at) {
            // The row still says the earlier attempt: wait here so the receiver is not
            // hammered.
            tracing::warn!(event = %row.event_id, error = %e, "webhook outbox: retry not recorded");
            tokio::time::sleep(backoff).await;
        }
    }
}

/// One attempt: the row's body, signed with a timestamp of now. The status of a 2xx, or why
/// it failed.
async fn send(client: &reqwest::Client, hook: &Webhook, row: &OutboxRow) -> Result<u16, String> {
    let timestamp = (now_ms() / 1000).to_string();
    let mut request = client.post(&hook.url);
    if let Some(token) = &hook.token {
        request = request.bearer_auth(token);
    }
    if !hook.secret.is_empty() {
        request = request.header(
            "x-sandpit-signature",
            signature(&hook.secret, &timestamp, &row.body),
        );
    }
    let sent = request
        .timeout(hook.timeout)
        .header("content-type", "application/json")
        .header("user-agent", concat!("sandpit/", env!("CARGO_PKG_VERSION")))
        .header("x-sandpit-event", &row.kind)
        .header("x-sandpit-delivery", &row.event_id)
        .header("x-sandpit-timestamp", &timestamp)
        .body(row.body.clone())
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Ok(resp.status().as_u16()),
        Ok(resp) => Err(format!("answered {}", resp.status())),
        // Without the URL: reqwest's message would carry its query string. The causes say
        // why (refused, a certificate not trusted, ...).
        Err(e) => Err(error_chain(&e.without_url())),
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

    fn outbox_of(hooks: Vec<Webhook>, cap: usize) -> (tempfile::TempDir, Arc<dyn Store>, Events) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(crate::store::SqliteStore::open(&dir.path().join("s.db")).expect("store"));
        let outbox = Outbox::open(hooks, store.clone(), cap).expect("outbox");
        let events = Events {
            outbox: Some(Arc::new(outbox)),
        };
        (dir, store, events)
    }

    #[test]
    fn emit_writes_a_row_per_webhook_and_the_cap_drops_the_oldest() {
        let mut deleted_only = Webhook::new("http://127.0.0.1:9/b?k=1", "s");
        deleted_only.events = vec![EventKind::Deleted];
        let mut agentpod = Webhook::new("http://127.0.0.1:9/b?k=2", "s");
        agentpod.format = WebhookFormat::Agentpod;
        let hooks = vec![
            Webhook::new("http://127.0.0.1:9/a", "s"),
            deleted_only,
            agentpod,
        ];
        assert_eq!(
            keys(&hooks),
            [
                "http://127.0.0.1:9/a",
                "http://127.0.0.1:9/b",
                "http://127.0.0.1:9/b#2"
            ]
        );
        let (_dir, store, events) = outbox_of(hooks.clone(), 2);
        let data = || serde_json::json!({"n": 1});
        assert!(events.emit(EventKind::Created, "a", data()));
        let head = store
            .outbox_head("http://127.0.0.1:9/a")
            .unwrap()
            .expect("a row");
        let v: serde_json::Value = serde_json::from_slice(&head.body).expect("JSON");
        assert_eq!(v["type"], "sandbox.created");
        assert_eq!(v["sandbox_id"], "a");
        assert_eq!(v["id"], head.event_id.as_str());
        assert_eq!(v["data"], data());
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!((head.attempts, head.kind.as_str()), (0, "sandbox.created"));
        assert!(
            store.outbox_head("http://127.0.0.1:9/b").unwrap().is_none(),
            "filtered"
        );
        let ap = store
            .outbox_head("http://127.0.0.1:9/b#2")
            .unwrap()
            .expect("agentpod row");
        let v: serde_json::Value = serde_json::from_slice(&ap.body).expect("JSON");
        assert_eq!(
            (v["event"].as_str(), v["data"]["sandboxId"].as_str()),
            (Some("sandbox.created"), Some("a"))
        );
        assert_eq!(ap.event_id, head.event_id);

        // A cap of 2: the third event drops the oldest of that webhook only.
        assert!(events.emit(EventKind::Deleted, "a", data()));
        assert!(events.emit(EventKind::Created, "b", data()));
        let head = store
            .outbox_head("http://127.0.0.1:9/a")
            .unwrap()
            .expect("a row");
        assert_eq!(head.kind, "sandbox.deleted");
        assert!(store.outbox_head("http://127.0.0.1:9/b").unwrap().is_some());
        let outbox = events.outbox.as_ref().expect("outbox");
        assert_eq!(*outbox.pending(), [2, 1, 2]);

        // Reopened with one webhook removed: its rows go, the others are counted.
        drop(events);
        let reopened = Outbox::open(vec![hooks[0].clone(), hooks[2].clone()], store.clone(), 2)
            .expect("reopen");
        // Keys follow the config's order: the hook that was b#2 is now b (and gets b's row).
        assert_eq!(*reopened.pending(), [2, 1]);
        assert!(store
            .outbox_head("http://127.0.0.1:9/b#2")
            .unwrap()
            .is_none());
        assert!(!Events { outbox: None }.emit(EventKind::Created, "a", data()));
    }

    #[test]
    fn backoff_doubles_up_to_its_bound() {
        let h = Webhook::new("http://127.0.0.1:9/a", "s");
        assert_eq!(h.backoff(1), Duration::from_millis(500));
        assert_eq!(h.backoff(3), Duration::from_secs(2));
        assert_eq!(h.backoff(40), MAX_BACKOFF);
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
