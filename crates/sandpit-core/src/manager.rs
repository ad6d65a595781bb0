//! The sandbox lifecycle: create, find, keep alive, expire, delete; re-attach after a server
//! restart; and the calls that run inside a sandbox (exec, files), which all count as activity.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use rand::Rng;
use sandpit_proto::{ContextInit, ExecSpec, Reply, Request, SessionInit};
use sandpit_runtime::{LaunchSpec, Limits, Runtime};
use tokio::sync::mpsc;

use crate::agent::{AgentClient, ByteStream, LogChunk, PtyInput, PtyOutput};
use crate::events::{EventKind, Events};
use crate::model::{
    now_ms, Context, CreateContext, CreateSandbox, CreateSession, Entry, ExecEvent, ExecRequest,
    ExecResult, Process, Record, RunCode, Sandbox, Session, StartProcess, Status, UpdateSandbox,
};
use crate::snapshot::ObjectStorage;
use crate::store::{PortToken, Store};
use crate::tenant::{self, Caller};
use crate::CoreError;

mod pool;
mod snapshots;

/// Settings of the core, read once by the binary from flags, env and the config file.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub data_dir: PathBuf,
    pub default_keepalive_seconds: u64,
    pub default_limits: Limits,
    pub default_timeout_ms: u64,
    /// Cap on each of stdout and stderr of a buffered exec.
    pub max_output_bytes: usize,
    /// Cap on the buffered output (raw and encoded) of all calls at once.
    pub max_buffered_output_bytes: u64,
    /// How often expiry is checked and activity is flushed to the store.
    pub reap_interval: Duration,
    /// Where lifecycle events are POSTed.
    pub webhooks: Vec<crate::events::Webhook>,
    /// Idle time after which a sandbox that does not say otherwise sleeps; 0 means never.
    pub default_sleep_after_seconds: u64,
    /// Ready sandboxes of the default spec kept for creates to take; 0 disables the pool.
    pub pool_size: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".sandpit"),
            default_keepalive_seconds: 600,
            default_limits: Limits {
                memory_mb: Some(2048),
                cpus: Some(2.0),
                pids: Some(1024),
                open_files: None,
                disk_mb: None,
            },
            default_timeout_ms: 120_000,
            max_output_bytes: 10 * 1024 * 1024,
            max_buffered_output_bytes: 512 * 1024 * 1024,
            reap_interval: Duration::from_secs(1),
            webhooks: Vec::new(),
            default_sleep_after_seconds: 0,
            pool_size: 2,
        }
    }
}

/// One sandbox the server knows.
struct Handle {
    record: Mutex<Record>,
    agent: AgentClient,
    /// Held while the sandbox starts or restarts; calls wait on it.
    life: tokio::sync::Mutex<()>,
    /// Read-held by a call from its readiness check until it reached the agent; a sleep
    /// write-holds it, so it never falls between a call's check and its request. Taken
    /// before `life`, never the other way round.
    calls: Arc<tokio::sync::RwLock<()>>,
    /// Activity not yet written to the store.
    dirty: std::sync::atomic::AtomicBool,
    /// Commands running now; a sandbox with any never expires under them.
    busy: Arc<std::sync::atomic::AtomicUsize>,
    /// Failed snapshots before expiry; after a few the sandbox expires without one.
    expiry_snapshot_failures: std::sync::atomic::AtomicU32,
}

/// Counts a running command for as long as it lives.
pub struct BusyGuard(Arc<std::sync::atomic::AtomicUsize>);

impl BusyGuard {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A sandbox ready for a call: no sleep starts while this is held (see `Handle::calls`).
struct Ready {
    handle: Arc<Handle>,
    _calls: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl std::ops::Deref for Ready {
    type Target = Arc<Handle>;
    fn deref(&self) -> &Arc<Handle> {
        &self.handle
    }
}

impl Ready {
    /// Lets sleeps in again, for a call that may wait long (a sleep then ends it).
    fn detach(self) -> Arc<Handle> {
        self.handle
    }

    /// The handle and the guard, for a call that hands the guard to its stream.
    fn into_parts(self) -> (Arc<Handle>, tokio::sync::OwnedRwLockReadGuard<()>) {
        (self.handle, self._calls)
    }
}

impl Handle {
    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct SandboxManager {
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn Store>,
    cfg: CoreConfig,
    sandboxes: RwLock<HashMap<String, Arc<Handle>>>,
    shell: &'static str,
    events: Events,
    /// Where snapshots go; the local default under the data dir unless set.
    storage: std::sync::OnceLock<Arc<ObjectStorage>>,
    /// Creation times (ms) of each tenant's sandboxes in the last minute, for its rate quota.
    creations: Mutex<HashMap<String, std::collections::VecDeque<i64>>>,
    /// The warm pool.
    pool: pool::Pool,
    /// What buffered command output may hold of the server's memory.
    output_budget: Arc<crate::budget::OutputBudget>,
}

/// The session that commands naming no other run in, created on first use.
pub const DEFAULT_SESSION: &str = "default";

/// The argv of a request: shell text run by the shell, or an argv as given.
fn argv_of(
    shell: &str,
    command: Option<String>,
    argv: Option<Vec<String>>,
) -> Result<Vec<String>, CoreError> {
    let argv = match (command, argv) {
        (Some(cmd), None) => {
            if cmd.trim().is_empty() {
                return Err(CoreError::BadRequest("command is empty".into()));
            }
            vec![shell.to_string(), "-c".to_string(), cmd]
        }
        (None, Some(argv)) if !argv.is_empty() => argv,
        (None, Some(_)) => return Err(CoreError::BadRequest("argv is empty".into())),
        (Some(_), Some(_)) => {
            return Err(CoreError::BadRequest(
                "give either command or argv, not both".into(),
            ))
        }
        (None, None) => return Err(CoreError::BadRequest("command or argv is required".into())),
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(CoreError::BadRequest("argv contains a NUL byte".into()));
    }
    Ok(argv)
}

fn absolute(path: String) -> Result<String, CoreError> {
    if !path.starts_with('/') {
        return Err(CoreError::Agent(sandpit_proto::AgentError::new(
            sandpit_proto::ErrorCode::InvalidPath,
            format!("cwd '{path}' must be an absolute path"),
        )));
    }
    Ok(path)
}

fn check_env(env: &BTreeMap<String, String>) -> Result<(), CoreError> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(CoreError::BadRequest(format!(
                "invalid environment variable '{k}'"
            )));
        }
    }
    Ok(())
}

/// Checks a client-chosen sandbox id.
pub fn valid_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn generate_id() -> String {
    random_id("sb-", 12)
}

fn random_id(prefix: &str, len: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

/// A client-chosen id of a session or process, or a generated one.
fn child_id(kind: &'static str, id: Option<String>, prefix: &str) -> Result<String, CoreError> {
    match id {
        Some(id) if valid_id(&id) => Ok(id),
        Some(id) => Err(CoreError::InvalidChildId { kind, id }),
        None => Ok(random_id(prefix, 8)),
    }
}

impl SandboxManager {
    pub fn new(runtime: Arc<dyn Runtime>, store: Arc<dyn Store>, cfg: CoreConfig) -> Arc<Self> {
        let shell = if std::path::Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        Arc::new(Self {
            events: Events::start(cfg.webhooks.clone(), store.clone()),
            pool: pool::Pool::new(if runtime.can_adopt() {
                cfg.pool_size
            } else {
                0
            }),
            runtime,
            store,
            sandboxes: RwLock::new(HashMap::new()),
            shell,
            storage: std::sync::OnceLock::new(),
            creations: Mutex::default(),
            output_budget: crate::budget::OutputBudget::new(cfg.max_buffered_output_bytes),
            cfg,
        })
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Handle>>> {
        self.sandboxes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Handle>>> {
        self.sandboxes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The one lookup of a sandbox by id: another tenant's sandbox is `NotFound`, exactly
    /// like one that does not exist.
    fn handle(&self, id: &str) -> Result<Arc<Handle>, CoreError> {
        self.map()
            .get(id)
            .filter(|h| tenant::visible(&h.record().tenant))
            .cloned()
            .ok_or_else(|| CoreError::NotFound(id.to_string()))
    }

    fn new_handle(&self, record: Record) -> Arc<Handle> {
        let socket = self.runtime.agent_socket(&record.id);
        Arc::new(Handle {
            agent: AgentClient::new(&record.id, socket),
            record: Mutex::new(record),
            life: tokio::sync::Mutex::new(()),
            calls: Arc::default(),
            dirty: false.into(),
            busy: Arc::default(),
            expiry_snapshot_failures: 0.into(),
        })
    }

    /// Loads the store and re-attaches every sandbox; one whose agent is gone (the host
    /// rebooted, or it was killed) is started again on its kept files.
    pub async fn recover(self: &Arc<Self>) -> Result<(), CoreError> {
        let records = self.store.all()?;
        tracing::info!(count = records.len(), "re-attaching sandboxes");
        // Files of sandboxes the store does not know (a delete whose clean-up failed, or a
        // crash between the two) are removed now.
        let known: HashSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
        for orphan in self.runtime.sandboxes_on_disk() {
            if !known.contains(orphan.as_str()) {
                tracing::info!(sandbox = %orphan, "removing leftover files");
                if let Err(e) = self.runtime.destroy(&orphan, None).await {
                    tracing::warn!(sandbox = %orphan, error = %e, "could not remove leftover files");
                }
            }
        }
        self.sweep_snapshots().await;
        for rec in records {
            let sleeping = rec.status == Status::Sleeping;
            let handle = self.new_handle(rec);
            let id = handle.record().id.clone();
            self.map_mut().insert(id.clone(), handle.clone());
            if sleeping {
                // It stays asleep until a call wakes it.
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.ensure_running(&handle).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not bring sandbox back");
                }
            });
        }
        Ok(())
    }

    /// Makes sure the sandbox's agent answers, restarting it on its files if it is gone.
    async fn ensure_running(&self, h: &Handle) -> Result<(), CoreError> {
        let _life = h.life.lock().await;
        let (launched, status) = {
            let r = h.record();
            (r.launched, r.status)
        };
        if status == Status::Running {
            if let Some(l) = launched {
                if self.runtime.is_alive(&l) {
                    match h.agent.ping().await {
                        Ok(()) => return Ok(()),
                        Err(e) => tracing::warn!(
                            sandbox = %h.record().id, error = %e,
                            "the agent runs but does not answer: restarting the sandbox"
                        ),
                    }
                }
            }
        }
        self.start(h).await
    }

    /// Starts (or restarts) the sandbox's agent. Caller holds `life`.
    async fn start(&self, h: &Handle) -> Result<(), CoreError> {
        // A call that found the handle before a delete took it away must not bring the
        // sandbox back (its record and files would return without an owner).
        if h.agent.is_deleted() {
            return Err(AgentClient::deleted_error(&h.record().id));
        }
        let (spec, waking) = {
            let mut r = h.record();
            let waking = r.status == Status::Sleeping;
            r.status = Status::Starting;
            (
                LaunchSpec {
                    id: r.id.clone(),
                    limits: r.limits,
                    slot: r.slot,
                    network: r.network.clone(),
                },
                waking,
            )
        };
        let old = h.record().launched;
        if old.is_some() {
            // Leftovers of a previous life (a half-dead init, a stale cgroup) go first.
            let _ = self.runtime.stop(&spec.id, old).await;
        }
        h.agent.reset();
        match self.runtime.start(&spec).await {
            Ok((launched, warnings)) => {
                let rec = {
                    let mut r = h.record();
                    r.status = Status::Running;
                    r.launched = Some(launched);
                    r.warnings = warnings;
                    r.clone()
                };
                self.store.put(&rec)?;
                h.agent.ping().await?;
                if waking {
                    self.on_woken(&spec.id);
                }
                Ok(())
            }
            Err(e) => {
                let rec = {
                    let mut r = h.record();
                    r.status = Status::Stopped;
                    r.launched = None;
                    r.clone()
                };
                let _ = self.store.put(&rec);
                Err(CoreError::unavailable(&spec.id, e))
            }
        }
    }

    pub async fn create(&self, mut req: CreateSandbox) -> Result<Sandbox, CoreError> {
        let started = std::time::Instant::now();
        let restore = match req.restore.take() {
            Some(source) => Some(self.prepare_restore(&mut req, source.into_request())?),
            None => None,
        };
        let id = match req.id {
            Some(id) if valid_id(&id) => id,
            Some(id) => return Err(CoreError::InvalidId(id)),
            None => generate_id(),
        };
        let mut limits = self.limits(&req.limits)?;
        self.check_data_dir_space()?;
        // (`disk_unsupported` looks for tools in PATH: only asked when a disk is.)
        if let Some(why) = limits.disk_mb.and_then(|_| self.runtime.disk_unsupported()) {
            if req.limits.disk_mb.is_some() {
                return Err(CoreError::NotSupported(why));
            }
            // Only the server's default asked for one (a warning at start says so).
            limits.disk_mb = None;
        }
        let network =
            crate::network::policy(self.runtime.as_ref(), req.network.as_deref(), &req.allow)
                .await?;
        let caller = tenant::current();
        let owner = caller
            .as_ref()
            .map_or(tenant::DEFAULT_TENANT.to_string(), |c| c.tenant.to_string());
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(CoreError::BadRequest(format!(
                    "invalid environment variable name '{key}'"
                )));
            }
        }
        let now = now_ms();
        let (handle, pooled) = {
            let mut map = self.map_mut();
            // Ids are one namespace for all tenants: the answer is the same whoever holds it.
            if map.contains_key(&id) {
                return Err(CoreError::AlreadyExists(id));
            }
            if let Some(c) = caller.as_ref().filter(|c| !c.admin) {
                self.check_quotas(&map, c, limits.memory_mb, None)?;
                self.check_rate(c)?;
            }
            // A create the warm pool can satisfy (default network, no restore) takes a ready
            // sandbox; limits, env, keepalive and the rest are applied at the hand-over.
            // A disk of another size than the pool's (the default) cannot be handed over.
            let pooled = (restore.is_none()
                && network == Default::default()
                && limits.disk_mb == self.cfg.default_limits.disk_mb)
                .then(|| self.pool.take())
                .flatten();
            let mut used: HashSet<u32> = map.values().map(|h| h.record().slot).collect();
            used.extend(self.pool.reserved_slots());
            let slot = match &pooled {
                Some(p) => p.slot,
                None => (0..).find(|s| !used.contains(s)).unwrap_or(0),
            };
            let handle = self.new_handle(Record {
                id: id.clone(),
                status: Status::Starting,
                created_at: now,
                last_active_at: now,
                keepalive_seconds: req
                    .keepalive_seconds
                    .unwrap_or(self.cfg.default_keepalive_seconds),
                limits,
                env: req.env,
                slot,
                launched: None,
                warnings: vec![],
                network,
                sleep_after_seconds: req
                    .sleep_after_seconds
                    .unwrap_or(self.cfg.default_sleep_after_seconds),
                snapshot_on_expiry: req.snapshot_on_expiry.unwrap_or(false),
                tenant: owner,
            });
            map.insert(id.clone(), handle.clone());
            (handle, pooled)
        };
        let life = handle.life.lock().await;
        let result = async {
            // `put_new` also drops tokens left by a sandbox of the same id (a delete racing a
            // token's creation): they must not open this one.
            if let Some(p) = pooled {
                match self.hand_over(&handle, p).await {
                    Ok(()) => {
                        return self
                            .store
                            .put_new(&handle.record().clone())
                            .map(|()| "pool")
                    }
                    // The pooled sandbox is gone; its slot is this record's: start cold.
                    Err(e) => tracing::warn!(sandbox = %id, error = %e, "pool hand-over failed"),
                }
            }
            self.store.put_new(&handle.record().clone())?;
            self.start(&handle).await.map(|()| "cold")
        }
        .await;
        drop(life);
        let source = match result {
            Ok(source) => source,
            Err(e) => {
                tracing::warn!(sandbox = %id, error = %e, "create failed");
                self.map_mut().remove(&id);
                let launched = handle.record().launched;
                let _ = self.runtime.destroy(&id, launched).await;
                let _ = self.store.delete(&id);
                return Err(e);
            }
        };
        if let Some(snapshot) = restore {
            if let Err(e) = self.restore_into(&id, &snapshot).await {
                tracing::warn!(sandbox = %id, error = %e, "restore at create failed");
                let _ = self.delete(&id).await;
                return Err(e);
            }
        }
        metrics::counter!("sandpit_sandboxes_created_total").increment(1);
        metrics::histogram!("sandpit_create_duration_seconds", "source" => source)
            .record(started.elapsed().as_secs_f64());
        tracing::info!(sandbox = %id, source, "created");
        let view = handle.record().view();
        self.emit(
            EventKind::Created,
            &id,
            serde_json::to_value(&view).unwrap_or_default(),
        );
        Ok(view)
    }

    /// Refuses new sandboxes while the data dir's disk is (nearly) full, before the kernel
    /// would fail them half-way: the store and running sandboxes keep what is left.
    fn check_data_dir_space(&self) -> Result<(), CoreError> {
        const MIN_FREE: u64 = 32 << 20;
        let Some(free) = sandpit_runtime::disk::free_bytes(&self.cfg.data_dir) else {
            return Ok(());
        };
        if free < MIN_FREE {
            return Err(CoreError::NoSpace(format!(
                "the data dir has {} MB free; a new sandbox needs at least {} MB",
                free >> 20,
                MIN_FREE >> 20
            )));
        }
        Ok(())
    }

    fn limits(&self, req: &crate::model::LimitsRequest) -> Result<Limits, CoreError> {
        let d = self.cfg.default_limits;
        let limits = Limits {
            memory_mb: req.memory_mb.or(d.memory_mb),
            cpus: req.cpus.or(d.cpus),
            pids: req.pids.or(d.pids),
            open_files: req.open_files.or(d.open_files),
            disk_mb: req.disk_mb.or(d.disk_mb),
        };
        check_limits(&limits)?;
        Ok(limits)
    }

    /// Refuses a sandbox (new, or one whose memory grows to `memory_mb`) that would take
    /// the caller's tenant past its sandbox count or memory quota. `replacing` is the id of
    /// a sandbox whose own memory is not counted (it is being changed).
    fn check_quotas(
        &self,
        map: &HashMap<String, Arc<Handle>>,
        c: &Caller,
        memory_mb: Option<u64>,
        replacing: Option<&str>,
    ) -> Result<(), CoreError> {
        let q = c.quotas;
        let mine: Vec<Limits> = map
            .values()
            .map(|h| h.record())
            .filter(|r| *r.tenant == *c.tenant && Some(r.id.as_str()) != replacing)
            .map(|r| r.limits)
            .collect();
        if let (Some(max), None) = (q.max_sandboxes, replacing) {
            if mine.len() as u64 >= max {
                return Err(refuse(
                    c,
                    format!(
                        "quota exceeded: tenant '{}' has {}/{max} sandboxes (max_sandboxes); \
                         delete one first",
                        c.tenant,
                        mine.len()
                    ),
                    5,
                ));
            }
        }
        if let Some(max) = q.max_memory_mb {
            let Some(want) = memory_mb else {
                return Err(CoreError::BadRequest(format!(
                    "limits.memory_mb is required: tenant '{}' has a memory quota and the \
                     server has no default memory limit",
                    c.tenant
                )));
            };
            let used: u64 = mine.iter().map(|l| l.memory_mb.unwrap_or(max)).sum();
            if used.saturating_add(want) > max {
                return Err(refuse(
                    c,
                    format!(
                        "quota exceeded: tenant '{}' uses {used}/{max} MB of memory \
                         (max_memory_mb) and this sandbox asks {want} MB",
                        c.tenant
                    ),
                    5,
                ));
            }
        }
        Ok(())
    }

    /// Counts a creation against the tenant's `creations_per_minute` (a 60-second sliding
    /// window), or refuses it with the seconds until the oldest one leaves the window.
    fn check_rate(&self, c: &Caller) -> Result<(), CoreError> {
        let Some(max) = c.quotas.creations_per_minute else {
            return Ok(());
        };
        let now = now_ms();
        let mut all = self.creations.lock().unwrap_or_else(|p| p.into_inner());
        let times = all.entry(c.tenant.to_string()).or_default();
        while times.front().is_some_and(|t| now - t >= 60_000) {
            times.pop_front();
        }
        if times.len() as u64 >= max {
            let oldest = times.front().copied().unwrap_or(now);
            let wait = ((oldest + 60_000 - now).max(0) as u64)
                .div_ceil(1000)
                .max(1);
            return Err(refuse(
                c,
                format!(
                    "quota exceeded: tenant '{}' created {}/{max} sandboxes in the last minute \
                     (creations_per_minute); retry in {wait} s",
                    c.tenant,
                    times.len()
                ),
                wait,
            ));
        }
        times.push_back(now);
        Ok(())
    }

    /// The caller's tenant, its quotas and what it uses of them.
    pub fn tenant_info(&self) -> tenant::TenantInfo {
        let c = tenant::current().unwrap_or_else(Caller::admin);
        let (mut sandboxes, mut memory_mb) = (0u64, 0u64);
        for h in self.map().values() {
            let r = h.record();
            if *r.tenant == *c.tenant {
                sandboxes += 1;
                memory_mb += r.limits.memory_mb.unwrap_or(0);
            }
        }
        let now = now_ms();
        let creations_last_minute = self
            .creations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&*c.tenant)
            .map_or(0, |t| {
                t.iter().filter(|t| now - **t < 60_000).count() as u64
            });
        tenant::TenantInfo {
            tenant: c.tenant.to_string(),
            admin: c.admin,
            quotas: c.quotas,
            usage: tenant::Usage {
                sandboxes,
                memory_mb,
                creations_last_minute,
            },
            server_limits: tenant::ServerLimits {
                max_output_bytes: self.cfg.max_output_bytes as u64,
                max_upload_bytes: 0,
            },
        }
    }
}

/// A quota refusal; the caller's scope carries `retry_after` to the HTTP answer.
fn refuse(c: &Caller, message: String, retry_after: u64) -> CoreError {
    c.retry_after
        .store(retry_after, std::sync::atomic::Ordering::Relaxed);
    CoreError::QuotaExceeded {
        message,
        retry_after,
    }
}

/// Checks limits a client asked for (or the defaults). The inner block keeps the checks
/// at their old indentation (they were the body of `limits`), for easy merges.
fn check_limits(limits: &Limits) -> Result<(), CoreError> {
    {
        if let Some(m) = limits.memory_mb {
            if !(16..=1 << 24).contains(&m) {
                return Err(CoreError::BadRequest(format!(
                    "limits.memory_mb must be between 16 and {}",
                    1u64 << 24
                )));
            }
        }
        if let Some(c) = limits.cpus {
            if !(c.is_finite() && c > 0.0 && c <= 1024.0) {
                return Err(CoreError::BadRequest(
                    "limits.cpus must be above 0 and at most 1024".into(),
                ));
            }
        }
        if let Some(p) = limits.pids {
            if !(8..=1 << 22).contains(&p) {
                return Err(CoreError::BadRequest(format!(
                    "limits.pids must be between 8 and {}",
                    1u64 << 22
                )));
            }
        }
        if let Some(n) = limits.open_files {
            if !(64..=1 << 20).contains(&n) {
                return Err(CoreError::BadRequest(format!(
                    "limits.open_files must be between 64 and {}",
                    1u64 << 20
                )));
            }
        }
        if let Some(n) = limits.disk_mb {
            if !(16..=1 << 20).contains(&n) {
                return Err(CoreError::BadRequest(format!(
                    "limits.disk_mb must be between 16 and {}",
                    1u64 << 20
                )));
            }
        }
    }
    Ok(())
}

impl SandboxManager {
    /// A sandbox's state; asking about a sandbox counts as activity on it.
    pub fn get(&self, id: &str) -> Result<Sandbox, CoreError> {
        let mut view = self.touch(id)?;
        view.oom_kills = self.runtime.oom_kills(&view.id);
        view.disk_used_mb = self
            .runtime
            .disk_usage(&view.id)
            .map(|(used, _)| used.div_ceil(1024 * 1024));
        Ok(view)
    }

    /// The caller's sandboxes (every sandbox for the admin).
    pub fn list(&self) -> Vec<Sandbox> {
        let mut all: Vec<Sandbox> = self
            .map()
            .values()
            .map(|h| h.record())
            .filter(|r| tenant::visible(&r.tenant))
            .map(|r| r.view())
            .collect();
        all.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// Counts sandboxes by status, for metrics.
    pub fn count_by_status(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for s in [
            Status::Starting,
            Status::Running,
            Status::Sleeping,
            Status::Stopped,
        ] {
            counts.insert(s.as_str(), 0);
        }
        for h in self.map().values() {
            *counts.entry(h.record().status.as_str()).or_insert(0) += 1;
        }
        counts
    }

    pub fn update(&self, id: &str, req: UpdateSandbox) -> Result<Sandbox, CoreError> {
        let h = self.handle(id)?;
        if let Some(l) = req.limits {
            self.update_limits(&h, l)?;
        }
        let rec = {
            let mut r = h.record();
            if let Some(k) = req.keepalive_seconds {
                r.keepalive_seconds = k;
            }
            if let Some(s) = req.sleep_after_seconds {
                r.sleep_after_seconds = s;
            }
            if let Some(s) = req.snapshot_on_expiry {
                r.snapshot_on_expiry = s;
            }
            r.last_active_at = now_ms();
            r.clone()
        };
        self.store.put(&rec)?;
        Ok(rec.view())
    }

    /// Changes the limits of a sandbox: through its cgroup (and the agent's RLIMIT_NOFILE)
    /// while it runs, and in its record, so a restart applies them too.
    fn update_limits(&self, h: &Handle, req: crate::model::LimitsRequest) -> Result<(), CoreError> {
        // Held across the check and the change, so two updates cannot both pass a quota.
        let map = self.map_mut();
        let (id, current, running, launched) = {
            let r = h.record();
            (
                r.id.clone(),
                r.limits,
                r.status == Status::Running,
                r.launched,
            )
        };
        let merged = Limits {
            memory_mb: req.memory_mb.or(current.memory_mb),
            cpus: req.cpus.or(current.cpus),
            pids: req.pids.or(current.pids),
            open_files: req.open_files.or(current.open_files),
            disk_mb: req.disk_mb.or(current.disk_mb),
        };
        check_limits(&merged)?;
        if let Some(c) = tenant::current().filter(|c| !c.admin) {
            if req.memory_mb.is_some() {
                self.check_quotas(&map, &c, merged.memory_mb, Some(&id))?;
            }
        }
        let change = Limits {
            memory_mb: req.memory_mb,
            cpus: req.cpus,
            pids: req.pids,
            open_files: req.open_files,
            disk_mb: req.disk_mb,
        };
        if running {
            self.runtime
                .update_limits(&id, launched, &change)
                .map_err(|e| CoreError::BadRequest(format!("cannot change limits: {e}")))?;
        }
        h.record().limits = merged;
        drop(map);
        tracing::info!(sandbox = %id, ?merged, "limits changed");
        Ok(())
    }

    /// Marks activity on the sandbox: its expiry moves out.
    pub fn touch(&self, id: &str) -> Result<Sandbox, CoreError> {
        let h = self.handle(id)?;
        Self::mark_active(&h);
        let view = h.record().view();
        Ok(view)
    }

    fn mark_active(h: &Handle) {
        h.record().last_active_at = now_ms();
        h.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub async fn delete(&self, id: &str) -> Result<(), CoreError> {
        let h = {
            let mut map = self.map_mut();
            let mine = map
                .get(id)
                .is_some_and(|h| tenant::visible(&h.record().tenant));
            mine.then(|| map.remove(id)).flatten()
        }
        .ok_or_else(|| CoreError::NotFound(id.to_string()))?;
        h.agent.mark_deleted();
        let _life = h.life.lock().await;
        let launched = h.record().launched;
        if let Err(e) = self.runtime.destroy(id, launched).await {
            // Its processes are gone; what is left on disk is removed at the next start.
            tracing::warn!(sandbox = %id, error = %e, "clean-up incomplete");
        }
        self.store.delete(id)?;
        if let Err(e) = self.store.delete_port_tokens(id) {
            tracing::warn!(sandbox = %id, error = %e, "port tokens not removed");
        }
        metrics::counter!("sandpit_sandboxes_deleted_total").increment(1);
        tracing::info!(sandbox = %id, "deleted");
        self.emit(EventKind::Deleted, id, serde_json::json!({}));
        Ok(())
    }

    /// Ends every sandbox idle past its keepalive and writes pending activity to the store.
    pub async fn reap_once(&self) {
        let now = now_ms();
        let handles: Vec<Arc<Handle>> = self.map().values().cloned().collect();
        for h in handles {
            let (id, expired, sleepy, rec) = {
                let r = h.record();
                let idle = h.busy.load(std::sync::atomic::Ordering::SeqCst) == 0;
                let sleep_at = r
                    .last_active_at
                    .saturating_add((r.sleep_after_seconds as i64).saturating_mul(1000));
                (
                    r.id.clone(),
                    idle && r.expires_at().is_some_and(|t| t <= now),
                    idle && r.status == Status::Running
                        && r.sleep_after_seconds > 0
                        && sleep_at <= now,
                    r.clone(),
                )
            };
            if expired && h.life.try_lock().is_ok() {
                if rec.snapshot_on_expiry && !self.snapshot_before_expiry(&h).await {
                    continue;
                }
                tracing::info!(sandbox = %id, "keepalive expired");
                metrics::counter!("sandpit_sandboxes_expired_total").increment(1);
                self.emit(
                    EventKind::Expired,
                    &id,
                    serde_json::json!({"keepalive_seconds": rec.keepalive_seconds,
                        "last_active_at": crate::model::rfc3339(rec.last_active_at)}),
                );
                if let Err(e) = self.delete(&id).await {
                    tracing::warn!(sandbox = %id, error = %e, "expiry failed");
                }
            } else if sleepy && h.life.try_lock().is_ok() {
                if let Err(e) = self.sleep_handle(&h, Some(rec.last_active_at)).await {
                    tracing::warn!(sandbox = %id, error = %e, "could not put sandbox to sleep");
                }
            } else if h.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = self.store.put(&rec) {
                    tracing::warn!(sandbox = %id, error = %e, "store write failed");
                }
            }
        }
    }

    /// Runs [`Self::reap_once`] forever.
    pub fn spawn_reaper(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.cfg.reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                this.reap_once().await;
            }
        })
    }

    /// Writes all pending activity to the store (on shutdown).
    pub fn flush(&self) {
        for h in self.map().values() {
            if h.dirty.swap(false, std::sync::atomic::Ordering::Relaxed) {
                let _ = self.store.put(&h.record().clone());
            }
        }
    }

    /// The handle of a sandbox ready for calls: activity is recorded and a sandbox whose agent
    /// is gone is brought back first.
    /// A sleep waits until the call has reached the agent (the returned guard is dropped).
    async fn ready(&self, id: &str) -> Result<Ready, CoreError> {
        let h = self.handle(id)?;
        Self::mark_active(&h);
        let calls = h.calls.clone().read_owned().await;
        let healthy = {
            let _life = h.life.lock().await;
            let r = h.record();
            r.status == Status::Running
                && r.launched.is_some_and(|l| self.runtime.is_alive(&l))
                // An agent that went silent is pinged (and the sandbox restarted) first.
                && !h.agent.is_suspect()
        };
        if !healthy {
            self.ensure_running(&h).await?;
        }
        Ok(Ready {
            handle: h,
            _calls: calls,
        })
    }

    /// The environment every command starts from: the base, then the sandbox's own.
    fn base_env(&self, h: &Handle) -> BTreeMap<String, String> {
        let r = h.record();
        let mut env: BTreeMap<String, String> = [
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
            ("HOME", "/root"),
            ("USER", "root"),
            ("LANG", "C.UTF-8"),
            ("TERM", "xterm-256color"),
            ("SHELL", self.shell),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.insert("HOSTNAME".into(), r.id.clone());
        env.extend(r.env.clone());
        env
    }

    fn exec_spec(&self, h: &Handle, req: ExecRequest) -> Result<ExecSpec, CoreError> {
        let argv = argv_of(self.shell, req.command, req.argv)?;
        let cwd = match (&req.session, req.cwd) {
            // In a session, no cwd means the session's own current directory.
            (Some(_), None) => String::new(),
            (_, cwd) => absolute(cwd.unwrap_or_else(|| "/workspace".to_string()))?,
        };
        check_env(&req.env)?;
        let (env, session_init) = match &req.session {
            Some(name) => {
                if !valid_id(name) {
                    return Err(CoreError::InvalidChildId {
                        kind: "session",
                        id: name.clone(),
                    });
                }
                let init = (name == DEFAULT_SESSION).then(|| SessionInit {
                    id: name.clone(),
                    cwd: "/workspace".into(),
                    env: self.base_env(h),
                });
                (req.env, init)
            }
            None => {
                let mut env = self.base_env(h);
                env.extend(req.env);
                (env, None)
            }
        };
        Ok(ExecSpec {
            argv,
            env,
            cwd,
            has_stdin: req.stdin.is_some(),
            timeout_ms: Some(req.timeout_ms.unwrap_or(self.cfg.default_timeout_ms)),
            session: req.session,
            session_init,
            kill_on_disconnect: req.kill_on_disconnect,
        })
    }

    /// Starts a command and streams its events.
    pub async fn exec_stream(
        &self,
        id: &str,
        req: ExecRequest,
    ) -> Result<mpsc::Receiver<Result<ExecEvent, CoreError>>, CoreError> {
        let h = self.handle(id)?;
        let stdin = req.stdin.clone().map(Bytes::from);
        let spec = self.exec_spec(&h, req)?;
        let h = self.ready(id).await?;
        metrics::counter!("sandpit_exec_total").increment(1);
        h.agent.exec(spec, stdin, BusyGuard::new(&h.busy)).await
    }

    /// Runs a command to its end and collects its output.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecResult, CoreError> {
        let started = std::time::Instant::now();
        let mut rx = self.exec_stream(id, req).await?;
        let c = collect(id, &mut rx, self.cfg.max_output_bytes, &self.output_budget).await?;
        match c.end {
            ExecEvent::Exited(status) => {
                metrics::histogram!("sandpit_exec_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                Ok(ExecResult {
                    stdout: utf8_lossy(c.out),
                    stderr: utf8_lossy(c.err),
                    exit_code: status.exit_code,
                    duration_ms: status.duration_ms,
                    timed_out: status.timed_out,
                    truncated: c.truncated,
                })
            }
            other => Err(CoreError::Internal(format!("exec ended with {other:?}"))),
        }
    }

    pub async fn read_file(&self, id: &str, path: &str) -> Result<(u64, ByteStream), CoreError> {
        // No sleep cuts the download off: the guard goes with its stream.
        let (h, calls) = self.ready(id).await?.into_parts();
        h.agent.read_file(path, calls).await
    }

    pub async fn write_file<S, E>(&self, id: &str, path: &str, body: S) -> Result<(), CoreError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: Into<CoreError>,
    {
        self.ready(id).await?.agent.write_file(path, body).await
    }

    async fn call(&self, id: &str, req: Request) -> Result<Reply, CoreError> {
        self.on_agent(id, |h| {
            let req = &req;
            async move { h.agent.call(req).await }
        })
        .await
    }

    /// Runs `op` on a ready sandbox. A sleep (or a restart) that ran while it was in flight
    /// breaks its agent connection: once the sandbox is up again on a new life, `op` runs
    /// once more there. On the same life the agent itself failed, and that error stands.
    async fn on_agent<T, F, Fut>(&self, id: &str, op: F) -> Result<T, CoreError>
    where
        F: Fn(Arc<Handle>) -> Fut,
        Fut: std::future::Future<Output = Result<T, CoreError>>,
    {
        let h = self.ready(id).await?;
        let life = h.record().launched;
        let first = op(h.handle.clone()).await;
        // (Released before waiting for readiness again: a sleep may be queued behind it.)
        drop(h);
        match first {
            Err(e @ CoreError::Unavailable { .. }) if life.is_some() => {
                let again = self.ready(id).await?;
                if again.record().launched == life {
                    tracing::debug!(sandbox = %id, error = %e, "agent call failed on the same life");
                    return Err(e);
                }
                tracing::debug!(sandbox = %id, error = %e, "agent call sent again on the sandbox's new life");
                op(again.handle.clone()).await
            }
            other => other,
        }
    }

    pub async fn list_dir(&self, id: &str, path: &str) -> Result<Vec<Entry>, CoreError> {
        match self
            .call(id, Request::ListDir { path: path.into() })
            .await?
        {
            Reply::Entries { entries } => Ok(entries),
            other => Err(CoreError::Internal(format!(
                "unexpected agent reply {other:?}"
            ))),
        }
    }

    pub async fn stat(&self, id: &str, path: &str) -> Result<Entry, CoreError> {
        match self.call(id, Request::Stat { path: path.into() }).await? {
            Reply::Entry(e) => Ok(e),
            other => Err(CoreError::Internal(format!(
                "unexpected agent reply {other:?}"
            ))),
        }
    }

    pub async fn mkdir(&self, id: &str, path: &str, parents: bool) -> Result<(), CoreError> {
        self.call(
            id,
            Request::Mkdir {
                path: path.into(),
                parents,
            },
        )
        .await
        .map(drop)
    }

    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), CoreError> {
        self.call(
            id,
            Request::Remove {
                path: path.into(),
                recursive,
            },
        )
        .await
        .map(drop)
    }

    pub async fn rename(&self, id: &str, from: &str, to: &str) -> Result<(), CoreError> {
        self.call(
            id,
            Request::Rename {
                from: from.into(),
                to: to.into(),
            },
        )
        .await
        .map(drop)
    }
}

impl SandboxManager {
    pub async fn create_session(&self, id: &str, req: CreateSession) -> Result<Session, CoreError> {
        let h = self.handle(id)?;
        check_env(&req.env)?;
        let mut env = self.base_env(&h);
        env.extend(req.env);
        let init = SessionInit {
            id: child_id("session", req.id, "s-")?,
            cwd: absolute(req.cwd.unwrap_or_else(|| "/workspace".into()))?,
            env,
        };
        match self.call(id, Request::SessionCreate(init)).await? {
            Reply::Session(s) => Ok(s.into()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn list_sessions(&self, id: &str) -> Result<Vec<Session>, CoreError> {
        match self.call(id, Request::SessionList).await? {
            Reply::Sessions { sessions } => Ok(sessions.into_iter().map(Into::into).collect()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get_session(&self, id: &str, sid: &str) -> Result<Session, CoreError> {
        match self
            .call(id, Request::SessionGet { id: sid.into() })
            .await?
        {
            Reply::Session(s) => Ok(s.into()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete_session(&self, id: &str, sid: &str) -> Result<(), CoreError> {
        self.call(id, Request::SessionDelete { id: sid.into() })
            .await
            .map(drop)
    }

    pub async fn start_process(&self, id: &str, req: StartProcess) -> Result<Process, CoreError> {
        let h = self.handle(id)?;
        check_env(&req.env)?;
        let mut env = self.base_env(&h);
        env.extend(req.env);
        let spec = ExecSpec {
            argv: argv_of(self.shell, req.command, req.argv)?,
            env,
            cwd: absolute(req.cwd.unwrap_or_else(|| "/workspace".into()))?,
            ..ExecSpec::default()
        };
        let pid = child_id("process", req.id, "p-")?;
        process(self.call(id, Request::ProcStart { id: pid, spec }).await?)
    }

    pub async fn list_processes(&self, id: &str) -> Result<Vec<Process>, CoreError> {
        match self.call(id, Request::ProcList).await? {
            Reply::Processes { processes } => Ok(processes.into_iter().map(Into::into).collect()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get_process(&self, id: &str, pid: &str) -> Result<Process, CoreError> {
        process(self.call(id, Request::ProcGet { id: pid.into() }).await?)
    }

    pub async fn process_logs(
        &self,
        id: &str,
        pid: &str,
        offsets: (u64, u64),
        max_bytes: u64,
    ) -> Result<LogChunk, CoreError> {
        self.ready(id)
            .await?
            .agent
            .proc_logs(pid, offsets, max_bytes)
            .await
    }

    pub async fn process_stdin(
        &self,
        id: &str,
        pid: &str,
        data: &[u8],
        eof: bool,
    ) -> Result<(), CoreError> {
        self.ready(id).await?.agent.proc_stdin(pid, data, eof).await
    }

    pub async fn signal_process(&self, id: &str, pid: &str, signal: i32) -> Result<(), CoreError> {
        self.call(
            id,
            Request::ProcSignal {
                id: pid.into(),
                signal,
            },
        )
        .await
        .map(drop)
    }

    pub async fn wait_process(
        &self,
        id: &str,
        pid: &str,
        timeout_ms: u64,
    ) -> Result<Process, CoreError> {
        let h = self.ready(id).await?.detach();
        let _busy = BusyGuard::new(&h.busy);
        process(
            h.agent
                .call(&Request::ProcWait {
                    id: pid.into(),
                    timeout_ms,
                })
                .await?,
        )
    }

    pub async fn wait_port(
        &self,
        id: &str,
        pid: &str,
        port: u16,
        timeout_ms: u64,
    ) -> Result<(), CoreError> {
        let h = self.ready(id).await?.detach();
        let _busy = BusyGuard::new(&h.busy);
        h.agent
            .call(&Request::ProcWaitPort {
                id: pid.into(),
                port,
                timeout_ms,
            })
            .await
            .map(drop)
    }

    pub async fn remove_process(&self, id: &str, pid: &str) -> Result<(), CoreError> {
        self.call(id, Request::ProcRemove { id: pid.into() })
            .await
            .map(drop)
    }

    /// Opens a terminal running `command` (bash when absent) in the sandbox.
    pub async fn pty(
        &self,
        id: &str,
        command: Option<String>,
        cols: u16,
        rows: u16,
    ) -> Result<(PtyInput, PtyOutput, BusyGuard), CoreError> {
        let h = self.ready(id).await?;
        let argv = match command {
            Some(c) => argv_of(self.shell, Some(c), None)?,
            None => vec![self.shell.to_string(), "-l".to_string()],
        };
        let spec = ExecSpec {
            argv,
            env: self.base_env(&h),
            cwd: "/workspace".into(),
            ..ExecSpec::default()
        };
        let (input, output) = h.agent.pty(spec, cols, rows).await?;
        Ok((input, output, BusyGuard::new(&h.busy)))
    }
}

/// Ports inside a sandbox: tunnels through the agent and public tokens.
impl SandboxManager {
    /// A tunnel to `port` on the sandbox's loopback, and a guard that keeps the sandbox
    /// from expiring while the tunnel is in use. Nothing listening: `Agent(NotRunning)`.
    pub async fn connect_port(
        &self,
        id: &str,
        port: u16,
    ) -> Result<(tokio::net::UnixStream, BusyGuard), CoreError> {
        if port == 0 {
            return Err(CoreError::BadRequest("port must be 1-65535".into()));
        }
        let h = self.ready(id).await?;
        let conn = h.agent.connect_port(port).await?;
        metrics::counter!("sandpit_port_tunnels_total").increment(1);
        Ok((conn, BusyGuard::new(&h.busy)))
    }

    /// Makes a new public token for a port of the sandbox (replacing the port's previous
    /// one) and returns it; only its hash is kept.
    pub fn create_port_token(&self, id: &str, port: u16) -> Result<(String, i64), CoreError> {
        self.handle(id)?;
        if port == 0 {
            return Err(CoreError::BadRequest("port must be 1-65535".into()));
        }
        let token = format!("spt_{}", random_token(40));
        let created_at = now_ms();
        self.store.put_port_token(&PortToken {
            sandbox_id: id.to_string(),
            port,
            token_sha256: sha256_hex(&token),
            created_at,
        })?;
        tracing::info!(sandbox = %id, port, "port made public");
        Ok((token, created_at))
    }

    /// Sets what `dialect` keeps about sandbox `id` (an opaque text, replacing what it had);
    /// it is stored with the sandbox and deleted with it, by whichever route.
    pub fn set_dialect_meta(&self, id: &str, dialect: &str, data: &str) -> Result<(), CoreError> {
        self.handle(id)?;
        self.store.put_dialect_meta(id, dialect, data)
    }

    /// What `dialect` keeps about sandbox `id`, if anything.
    pub fn dialect_meta(&self, id: &str, dialect: &str) -> Result<Option<String>, CoreError> {
        self.handle(id)?;
        self.store.dialect_meta(id, dialect)
    }

    /// Revokes a port's public token.
    pub fn revoke_port_token(&self, id: &str, port: u16) -> Result<(), CoreError> {
        self.handle(id)?;
        if self.store.delete_port_token(id, port)? {
            tracing::info!(sandbox = %id, port, "port made private");
            Ok(())
        } else {
            Err(CoreError::Agent(sandpit_proto::AgentError::new(
                sandpit_proto::ErrorCode::NotFound,
                format!("port {port} of sandbox '{id}' has no public token"),
            )))
        }
    }

    /// The sandbox's public ports: `(port, created_at)`.
    pub fn port_tokens(&self, id: &str) -> Result<Vec<(u16, i64)>, CoreError> {
        self.handle(id)?;
        Ok(self
            .store
            .port_tokens(id)?
            .into_iter()
            .map(|t| (t.port, t.created_at))
            .collect())
    }

    /// Whether `token` is the public token of this sandbox's `port`.
    pub fn port_token_valid(&self, id: &str, port: u16, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        if self.handle(id).is_err() {
            return false;
        }
        let given = sha256_hex(token);
        self.store.port_tokens(id).is_ok_and(|all| {
            all.iter().any(|t| {
                t.port == port && bool::from(t.token_sha256.as_bytes().ct_eq(given.as_bytes()))
            })
        })
    }

    /// Queues a lifecycle event for the webhooks; never waits.
    pub fn emit(&self, kind: EventKind, id: &str, data: serde_json::Value) {
        let _queued = self.events.emit(kind, id, data);
    }
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// `len` random lowercase alphanumerics (about 5.2 bits each).
pub(crate) fn random_token(len: usize) -> String {
    random_id("", len)
}

/// Default timeout of a code run.
const DEFAULT_RUN_TIMEOUT_MS: u64 = 60_000;

impl SandboxManager {
    fn context_init(&self, h: &Handle, req: CreateContext) -> Result<ContextInit, CoreError> {
        check_env(&req.env)?;
        let language = req.language.unwrap_or_else(|| "python".into());
        if !matches!(language.as_str(), "python" | "javascript") {
            return Err(CoreError::BadRequest(format!(
                "language '{language}' is not supported: use python or javascript"
            )));
        }
        let mut env = self.base_env(h);
        env.extend(req.env);
        let payload = match req.context {
            None | Some(serde_json::Value::Null) => None,
            // Sent as JSON text, so a string stays a string even when it looks like JSON.
            Some(
                v @ (serde_json::Value::String(_)
                | serde_json::Value::Object(_)
                | serde_json::Value::Array(_)),
            ) => Some(v.to_string()),

            Some(_) => {
                return Err(CoreError::BadRequest(
                    "context must be a string, a JSON object or a JSON array".into(),
                ))
            }
        };
        Ok(ContextInit {
            id: child_id("context", req.id, "c-")?,

            language,
            cwd: absolute(req.cwd.unwrap_or_else(|| "/workspace".into()))?,
            env,
            payload,
        })
    }

    pub async fn create_context(&self, id: &str, req: CreateContext) -> Result<Context, CoreError> {
        let h = self.handle(id)?;
        let init = self.context_init(&h, req)?;
        context(self.call(id, Request::ContextCreate(init)).await?)
    }

    pub async fn list_contexts(&self, id: &str) -> Result<Vec<Context>, CoreError> {
        match self.call(id, Request::ContextList).await? {
            Reply::Contexts { contexts } => Ok(contexts.into_iter().map(Into::into).collect()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get_context(&self, id: &str, cid: &str) -> Result<Context, CoreError> {
        context(
            self.call(id, Request::ContextGet { id: cid.into() })
                .await?,
        )
    }

    pub async fn delete_context(&self, id: &str, cid: &str) -> Result<(), CoreError> {
        self.call(id, Request::ContextDelete { id: cid.into() })
            .await
            .map(drop)
    }

    pub async fn restart_context(&self, id: &str, cid: &str) -> Result<Context, CoreError> {
        context(
            self.call(id, Request::ContextRestart { id: cid.into() })
                .await?,
        )
    }

    /// Runs code and streams its events; the last one is `CodeResult`.
    pub async fn run_code_stream(
        &self,
        id: &str,
        req: RunCode,
    ) -> Result<mpsc::Receiver<Result<ExecEvent, CoreError>>, CoreError> {
        let h = self.ready(id).await?;
        let language = req.language.clone().unwrap_or_else(|| "python".into());
        // Without a context, code runs in the sandbox's default context of its language,
        // created on first use.
        let (context, init) = match req.context {
            Some(c) => (c, None),
            None => {
                let mut init = self.context_init(
                    &h,
                    CreateContext {
                        language: Some(language.clone()),
                        ..CreateContext::default()
                    },
                )?;
                init.id = format!("default-{language}");
                (init.id.clone(), Some(init))
            }
        };
        let run = Request::RunCode {
            context,
            code: req.code,
            timeout_ms: req.timeout_ms.unwrap_or(DEFAULT_RUN_TIMEOUT_MS),
            locals: req.locals,
            init,
        };
        metrics::counter!("sandpit_code_runs_total").increment(1);
        h.agent
            .stream(run, None, false, BusyGuard::new(&h.busy))
            .await
    }

    /// Runs code to its end: output, results, error, execution count.
    pub async fn run_code(&self, id: &str, req: RunCode) -> Result<serde_json::Value, CoreError> {
        let mut rx = self.run_code_stream(id, req).await?;
        let c = collect(id, &mut rx, self.cfg.max_output_bytes, &self.output_budget).await?;
        match c.end {
            ExecEvent::CodeResult(mut result) => {
                result["stdout"] = utf8_lossy(c.out).into();
                result["stderr"] = utf8_lossy(c.err).into();
                result["truncated"] = c.truncated.into();
                Ok(result)
            }
            other => Err(CoreError::Internal(format!(
                "code run ended with {other:?}"
            ))),
        }
    }
}

fn context(reply: Reply) -> Result<Context, CoreError> {
    match reply {
        Reply::Context(c) => Ok(c.into()),
        other => Err(unexpected(other)),
    }
}

/// Output collected from a command's or code run's events (up to `cap` bytes per stream),
/// and the event that ended it. Its charge on the output budget is held by the request.
struct Collected {
    out: Vec<u8>,
    err: Vec<u8>,
    truncated: bool,
    end: ExecEvent,
}

async fn collect(
    id: &str,
    rx: &mut mpsc::Receiver<Result<ExecEvent, CoreError>>,
    cap: usize,
    budget: &Arc<crate::budget::OutputBudget>,
) -> Result<Collected, CoreError> {
    let (mut out, mut err, mut truncated) = (Vec::new(), Vec::new(), false);
    let mut charge = budget.charge();
    let mut append = |buf: &mut Vec<u8>, data: &Bytes| -> Result<(), CoreError> {
        let room = cap.saturating_sub(buf.len());
        if data.len() > room {
            truncated = true;
        }
        let take = &data[..data.len().min(room)];
        charge.add(take.len() as u64)?;
        buf.extend_from_slice(take);
        Ok(())
    };
    while let Some(event) = rx.recv().await {
        match event? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout(d) => append(&mut out, &d)?,
            ExecEvent::Stderr(d) => append(&mut err, &d)?,
            end => {
                // The answer's JSON is made from these bytes while they are still held.
                // (Twice: the buffer it is written into grows by doubling.)
                let json = crate::budget::json_len(&out) + crate::budget::json_len(&err);
                charge.add(json.saturating_mul(2))?;
                charge.hold();
                return Ok(Collected {
                    out,
                    err,
                    truncated,
                    end,
                });
            }
        }
    }
    Err(CoreError::unavailable(
        id,
        "the agent stopped answering mid-run",
    ))
}

/// The text of output bytes, without a copy when they are valid UTF-8.
fn utf8_lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn unexpected(reply: Reply) -> CoreError {
    CoreError::Internal(format!("unexpected agent reply {reply:?}"))
}

fn process(reply: Reply) -> Result<Process, CoreError> {
    match reply {
        Reply::Process(p) => Ok(p.into()),
        other => Err(unexpected(other)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids() {
        for ok in ["a", "demo", "A-b_9", &"x".repeat(63)] {
            assert!(super::valid_id(ok), "{ok}");
        }
        for bad in ["", "a b", "../x", "é", &"x".repeat(64), "a/b", "a.b"] {
            assert!(!super::valid_id(bad), "{bad}");
        }
        let g = super::generate_id();
        assert!(super::valid_id(&g) && g.starts_with("sb-") && g.len() == 15);
    }
}
