//! The warm pool: sandboxes of the default spec (default limits, network none) started ahead
//! of time, so a create that such a sandbox can satisfy is a hand-over (rename, limits through
//! the cgroup, hostname) instead of a start. Pooled sandboxes are in neither the map nor the
//! store: list, tenants, quotas and metrics counts never see them; they are deleted on
//! shutdown, and after a crash the next start removes them as files the store does not know.
//! Refill runs in the background, one sandbox at a time, and waits for a pause in creates.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandpit_runtime::{LaunchSpec, Launched, Limits, NetworkPolicy};

use super::{random_id, Handle, SandboxManager};
use crate::agent::AgentClient;
use crate::model::{now_ms, Status};
use crate::CoreError;

/// A refill waits until no create has started for this long, so a burst of creates is not
/// slowed down by the sandboxes made to replace the ones it took.
const QUIET_MS: i64 = 50;
/// After a failed refill, the next try waits this long.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// One ready sandbox of the pool.
pub(super) struct Pooled {
    pub id: String,
    pub slot: u32,
    pub launched: Launched,
    pub limits: Limits,
    pub warnings: Vec<String>,
    /// Holds the connections opened while it was made; the hand-over keeps them.
    pub agent: AgentClient,
}

/// The pool's state, owned by the manager.
#[derive(Default)]
pub(super) struct Pool {
    size: usize,
    ready: Mutex<Vec<Pooled>>,
    /// Slots of ready sandboxes and of the one being made.
    reserved: Mutex<HashSet<u32>>,
    wake: tokio::sync::Notify,
    /// Held while a sandbox is being made; shutdown takes it to wait for that one.
    filling: tokio::sync::Mutex<()>,
    closed: AtomicBool,
    last_create_ms: AtomicI64,
}

impl Pool {
    pub fn new(size: usize) -> Self {
        Self {
            size,
            ..Self::default()
        }
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashSet<u32>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots the pool holds; the caller holds the manager's map lock.
    pub fn reserved_slots(&self) -> HashSet<u32> {
        self.reserved().clone()
    }

    /// Takes a ready sandbox (caller holds the map lock and puts its slot in the map).
    pub fn take(&self) -> Option<Pooled> {
        self.last_create_ms.store(now_ms(), Ordering::Relaxed);
        if self.size == 0 {
            return None;
        }
        let p = self.ready().pop();
        match &p {
            Some(p) => {
                self.reserved().remove(&p.slot);
                metrics::counter!("sandpit_pool_hits_total").increment(1);
            }
            None => metrics::counter!("sandpit_pool_misses_total").increment(1),
        }
        metrics::gauge!("sandpit_pool_ready").set(self.ready().len() as f64);
        self.wake.notify_one();
        p
    }
}

impl SandboxManager {
    /// Starts the background refill (after `recover`, which removes pooled sandboxes of a
    /// previous run). Does nothing with a pool size of 0.
    pub fn start_pool(self: &Arc<Self>) {
        if self.pool.size == 0 {
            if self.cfg.pool_size > 0 {
                tracing::info!("warm pool disabled: a rootless server cannot rename sandboxes");
            }
            return;
        }
        tracing::info!(size = self.pool.size, "warm pool");
        metrics::gauge!("sandpit_pool_ready").set(0.0);
        let this = self.clone();
        tokio::spawn(async move { this.refill_loop().await });
    }

    async fn refill_loop(self: Arc<Self>) {
        loop {
            if self.pool.closed.load(Ordering::SeqCst) {
                return;
            }
            if self.pool.ready().len() >= self.pool.size {
                // Bounded wait: a missed notification only delays the refill.
                let _ =
                    tokio::time::timeout(Duration::from_secs(1), self.pool.wake.notified()).await;
                continue;
            }
            let quiet_for = now_ms() - self.pool.last_create_ms.load(Ordering::Relaxed);
            if quiet_for < QUIET_MS {
                tokio::time::sleep(Duration::from_millis((QUIET_MS - quiet_for) as u64)).await;
                continue;
            }
            let filling = self.pool.filling.lock().await;
            if self.pool.closed.load(Ordering::SeqCst) {
                return;
            }
            match self.make_pooled().await {
                Ok(p) => {
                    tracing::debug!(sandbox = %p.id, "pooled sandbox ready");
                    // Pushed while `filling` is held: shutdown drains after this.
                    let n = {
                        let mut ready = self.pool.ready();
                        ready.push(p);
                        ready.len()
                    };
                    drop(filling);
                    metrics::gauge!("sandpit_pool_ready").set(n as f64);
                }
                Err(e) => {
                    drop(filling);
                    tracing::warn!(error = %e, "could not make a pooled sandbox");
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        }
    }

    /// Starts one sandbox of the default spec and checks its agent answers.
    async fn make_pooled(&self) -> Result<Pooled, CoreError> {
        let (id, slot) = {
            let map = self.map_mut();
            let mut reserved = self.pool.reserved();
            let used: HashSet<u32> = map.values().map(|h| h.record().slot).collect();
            let slot = (0..)
                .find(|s| !used.contains(s) && !reserved.contains(s))
                .unwrap_or(0);
            reserved.insert(slot);
            let id = loop {
                let id = random_id("pool-", 12);
                if !map.contains_key(&id) {
                    break id;
                }
            };
            (id, slot)
        };
        let limits = self.cfg.default_limits;
        let spec = LaunchSpec {
            id: id.clone(),
            limits,
            slot,
            network: NetworkPolicy::default(),
        };
        let started = match self.runtime.start(&spec).await {
            Ok(s) => Ok(s),
            Err(e) => Err(CoreError::unavailable(&id, e)),
        };
        let result = match started {
            Ok((launched, warnings)) => {
                let agent = AgentClient::new(&id, self.runtime.agent_socket(&id));
                let ready = async {
                    agent.ping().await?;
                    self.warm_up(&agent).await?;
                    self.runtime
                        .prepare_adopt(&id, launched)
                        .map_err(|e| CoreError::unavailable(&id, e))
                };
                match ready.await {
                    Ok(()) => Ok(Pooled {
                        id: id.clone(),
                        slot,
                        launched,
                        limits,
                        warnings,
                        agent,
                    }),
                    Err(e) => {
                        let _ = self.runtime.destroy(&id, Some(launched)).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                let _ = self.runtime.destroy(&id, None).await;
                Err(e)
            }
        };
        if result.is_err() {
            self.pool.reserved().remove(&slot);
        }
        result
    }

    /// Runs the shell once in a new pooled sandbox, so the first command of whoever takes it
    /// does not pay for what a first exec costs (the agent's first spawn, the overlay's
    /// first look-ups of the shell and the C library): measured at about a third of a
    /// millisecond.
    async fn warm_up(&self, agent: &AgentClient) -> Result<(), CoreError> {
        let spec = sandpit_proto::ExecSpec {
            argv: vec![self.shell.to_string(), "-c".into(), "exec true".into()],
            env: [(
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            )]
            .into(),
            cwd: "/workspace".into(),
            has_stdin: false,
            timeout_ms: Some(10_000),
            session: None,
            session_init: None,
            kill_on_disconnect: true,
        };
        let mut rx = agent.exec(spec, None, ()).await?;
        while let Some(event) = rx.recv().await {
            event?;
        }
        Ok(())
    }

    /// Makes the pooled sandbox `p` the sandbox of `h` (whose record has `p`'s slot and the
    /// requested limits): renames it, applies the limits that differ from the pool's and sets
    /// its hostname. On failure the pooled sandbox is gone and `h` can be started cold.
    pub(super) async fn hand_over(&self, h: &Handle, p: Pooled) -> Result<(), CoreError> {
        let (id, limits) = {
            let r = h.record();
            (r.id.clone(), r.limits)
        };
        if let Err(e) = self.runtime.adopt(&p.id, &id, p.launched).await {
            let _ = self.runtime.destroy(&p.id, Some(p.launched)).await;
            let _ = self.runtime.destroy(&id, Some(p.launched)).await;
            return Err(CoreError::unavailable(&id, e));
        }
        h.agent.take_connections(&p.agent);
        let differs = |a: Option<u64>, b: Option<u64>| if a != b { a } else { None };
        let change = Limits {
            memory_mb: differs(limits.memory_mb, p.limits.memory_mb),
            cpus: (limits.cpus != p.limits.cpus)
                .then_some(limits.cpus)
                .flatten(),
            pids: differs(limits.pids, p.limits.pids),
            open_files: differs(limits.open_files, p.limits.open_files),
            // Creates with another disk_mb than the pool's never take a pooled sandbox.
            disk_mb: None,
        };
        let result = if change.memory_mb.is_some()
            || change.cpus.is_some()
            || change.pids.is_some()
            || change.open_files.is_some()
        {
            self.runtime
                .update_limits(&id, Some(p.launched), &change)
                .map_err(|e| CoreError::BadRequest(format!("cannot apply limits: {e}")))
        } else {
            Ok(())
        };
        if let Err(e) = result {
            let _ = self.runtime.destroy(&id, Some(p.launched)).await;
            return Err(e);
        }
        let mut r = h.record();
        r.status = Status::Running;
        r.launched = Some(p.launched);
        r.warnings = p.warnings;
        Ok(())
    }

    /// Stops the refill and deletes every pooled sandbox (on shutdown).
    pub async fn close_pool(&self) {
        self.pool.closed.store(true, Ordering::SeqCst);
        self.pool.wake.notify_one();
        // Waits for a sandbox being made, which the loop then drops as closed.
        let _filling = self.pool.filling.lock().await;
        let all: Vec<Pooled> = std::mem::take(&mut *self.pool.ready());
        for p in all {
            if let Err(e) = self.runtime.destroy(&p.id, Some(p.launched)).await {
                tracing::warn!(sandbox = %p.id, error = %e, "could not delete pooled sandbox");
            }
            self.pool.reserved().remove(&p.slot);
        }
        metrics::gauge!("sandpit_pool_ready").set(0.0);
    }
}
