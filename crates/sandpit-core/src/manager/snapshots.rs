//! The manager's snapshot, sleep and wake calls: archiving a sandbox into snapshot storage
//! and restoring it, putting sandboxes to sleep (on request or when idle) and waking them,
//! and the snapshot taken before expiry. Sleeping and waking emit `sandbox.slept` and
//! `sandbox.woken` events.

use std::sync::Arc;
use std::time::Duration;

use super::{generate_id, random_id, valid_id, BusyGuard, Handle, SandboxManager};
use crate::agent::AgentClient;
use crate::events::EventKind;
use crate::model::{now_ms, CreateSandbox, Sandbox, Status};
use crate::snapshot::{
    normalize_path, valid_name, CreateSnapshot, ObjectStorage, RestoreRequest, Snapshot,
    SnapshotRecord,
};
use crate::CoreError;

impl SandboxManager {
    /// A sandbox went to sleep (`reason`: `idle` or `request`): metrics, log, the
    /// `sandbox.slept` event.
    fn on_slept(&self, id: &str, reason: &str) {
        metrics::counter!("sandpit_sandboxes_slept_total").increment(1);
        tracing::info!(sandbox = %id, reason, "asleep");
        self.emit(
            EventKind::Slept,
            id,
            serde_json::json!({ "reason": reason }),
        );
    }

    /// A sleeping sandbox was started again (by a call or `/wake`): the `sandbox.woken` event.
    pub(super) fn on_woken(&self, id: &str) {
        metrics::counter!("sandpit_sandboxes_woken_total").increment(1);
        tracing::info!(sandbox = %id, "woken");
        self.emit(EventKind::Woken, id, serde_json::json!({}));
    }
}

/// Name of the snapshot taken before expiry (`snapshot_on_expiry`).
const EXPIRY_SNAPSHOT_NAME: &str = "expiry";
/// Failed snapshots before expiry after which the sandbox expires without one.
const EXPIRY_SNAPSHOT_ATTEMPTS: u32 = 3;
/// Longest the start-up sweep of snapshot storage may take before serving begins.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(10);

impl SandboxManager {
    /// Sets where snapshots go (before `recover`); the default is a local directory.
    pub fn set_storage(&self, storage: ObjectStorage) -> Result<(), CoreError> {
        self.storage
            .set(Arc::new(storage))
            .map_err(|_| CoreError::Internal("snapshot storage is already set".into()))
    }

    fn storage(&self) -> Result<Arc<ObjectStorage>, CoreError> {
        if let Some(s) = self.storage.get() {
            return Ok(s.clone());
        }
        let local = Arc::new(ObjectStorage::local(&self.cfg.data_dir.join("snapshots"))?);
        Ok(self.storage.get_or_init(|| local).clone())
    }

    /// Removes half-written snapshot objects a crash left behind. Runs before serving, so
    /// no snapshot is being written meanwhile.
    pub async fn sweep_snapshots(&self) {
        let storage = match self.storage() {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "snapshot storage unavailable"),
        };
        let recorded = match self.store.snapshots(None) {
            Ok(r) => r.into_iter().map(|r| r.object_key).collect(),
            Err(e) => return tracing::warn!(error = %e, "could not list snapshots"),
        };
        if tokio::time::timeout(SWEEP_TIMEOUT, storage.sweep(&recorded))
            .await
            .is_err()
        {
            tracing::warn!(storage = %storage.description, "snapshot storage sweep timed out");
        }
    }

    /// Puts a sandbox to sleep: its processes are killed and its memory and cgroups
    /// released; its files stay. The next call on it wakes it.
    pub async fn sleep(&self, id: &str) -> Result<Sandbox, CoreError> {
        let h = self.handle(id)?;
        Self::mark_active(&h);
        self.sleep_handle(&h, None).await?;
        let view = h.record().view();
        Ok(view)
    }

    /// With `idle_since` (the reaper), the sandbox sleeps only if no call came since then:
    /// a call marks activity before it waits for `life`, so none is cut off mid-way.
    pub(super) async fn sleep_handle(
        &self,
        h: &Handle,
        idle_since: Option<i64>,
    ) -> Result<(), CoreError> {
        // The idle sleep (the reaper) does not wait for calls: a call is activity anyway.
        let _calls = match idle_since {
            Some(_) => match h.calls.clone().try_write_owned() {
                Ok(g) => g,
                Err(_) => return Ok(()),
            },
            None => h.calls.clone().write_owned().await,
        };
        let _life = h.life.lock().await;
        if h.agent.is_deleted() {
            return Err(AgentClient::deleted_error(&h.record().id));
        }
        let (id, launched, status, last_active) = {
            let r = h.record();
            (r.id.clone(), r.launched, r.status, r.last_active_at)
        };
        let busy = h.busy.load(std::sync::atomic::Ordering::SeqCst) > 0;
        if status == Status::Sleeping || idle_since.is_some_and(|t| t != last_active || busy) {
            return Ok(());
        }
        // Commands and reads still streaming end with `Interrupted`, not as a lost agent.
        h.agent.interrupt();
        self.runtime
            .stop(&id, launched)
            .await
            .map_err(|e| CoreError::unavailable(&id, e))?;
        h.agent.reset();
        let rec = {
            let mut r = h.record();
            r.status = Status::Sleeping;
            r.launched = None;
            r.clone()
        };
        self.store.put(&rec)?;
        self.on_slept(
            &id,
            if idle_since.is_some() {
                "idle"
            } else {
                "request"
            },
        );
        Ok(())
    }

    /// Wakes a sleeping sandbox (any other call does too); a running one is left as it is.
    pub async fn wake(&self, id: &str) -> Result<Sandbox, CoreError> {
        let h = self.ready(id).await?;
        let view = h.record().view();
        Ok(view)
    }

    /// Archives a directory of the sandbox (default: all its files) into snapshot storage.
    pub async fn create_snapshot(
        &self,
        id: &str,
        req: CreateSnapshot,
    ) -> Result<Snapshot, CoreError> {
        self.handle(id)?;
        if let Some(name) = &req.name {
            if !valid_name(name) {
                return Err(CoreError::BadRequest(format!(
                    "invalid snapshot name '{name}': use 1-63 characters of A-Z, a-z, 0-9, '_', '-' and '.'"
                )));
            }
        }
        let path = normalize_path(req.path.as_deref().unwrap_or("/"))?;
        if req.excludes.len() > 256 || req.excludes.iter().any(|e| e.len() > 1024) {
            return Err(CoreError::BadRequest(
                "excludes: at most 256 patterns of at most 1024 bytes".into(),
            ));
        }
        let rec = self
            .on_agent(id, |h| {
                let (name, path, excludes) = (req.name.clone(), path.clone(), &req.excludes);
                async move { self.snapshot_handle(&h, name, path, excludes).await }
            })
            .await?;
        Ok(rec.view())
    }

    async fn snapshot_handle(
        &self,
        h: &Handle,
        name: Option<String>,
        path: String,
        excludes: &[String],
    ) -> Result<SnapshotRecord, CoreError> {
        let _busy = BusyGuard::new(&h.busy);
        let storage = self.storage()?;
        let (sandbox_id, tenant) = {
            let r = h.record();
            (r.id.clone(), r.tenant.clone())
        };
        let snapshot_id = random_id("snap-", 12);
        let key = storage.key(&sandbox_id, &snapshot_id);
        let mut archive = h.agent.archive(&path, excludes).await?;
        let size_bytes = storage.upload(&key, &mut archive).await?;
        let rec = SnapshotRecord {
            id: snapshot_id,
            sandbox_id,
            name,
            path,
            size_bytes,
            created_at: now_ms(),
            object_key: key,
            tenant,
        };
        if let Err(e) = self.store.put_snapshot(&rec) {
            let _ = storage.remove(&rec.object_key).await;
            return Err(e);
        }
        metrics::counter!("sandpit_snapshots_created_total").increment(1);
        tracing::info!(sandbox = %rec.sandbox_id, snapshot = %rec.id, size_bytes, "snapshot written");
        Ok(rec)
    }

    /// Snapshots an expiring sandbox (woken for it if asleep); whether it may expire now.
    pub(super) async fn snapshot_before_expiry(&self, h: &Handle) -> bool {
        let id = h.record().id.clone();
        let result = async {
            self.ensure_running(h).await?;
            self.snapshot_handle(h, Some(EXPIRY_SNAPSHOT_NAME.into()), "/".into(), &[])
                .await
        }
        .await;
        match result {
            Ok(_) => true,
            Err(e) => {
                let failures = h
                    .expiry_snapshot_failures
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;
                if failures >= EXPIRY_SNAPSHOT_ATTEMPTS {
                    tracing::error!(sandbox = %id, error = %e, failures, "expiring without a snapshot");
                    true
                } else {
                    tracing::warn!(sandbox = %id, error = %e, "snapshot before expiry failed; retrying");
                    false
                }
            }
        }
    }

    /// Snapshots of a sandbox, newest first; they outlive the sandbox.
    pub fn list_snapshots(&self, id: &str) -> Result<Vec<Snapshot>, CoreError> {
        if !valid_id(id) {
            return Err(CoreError::InvalidId(id.to_string()));
        }
        let snaps: Vec<SnapshotRecord> = self
            .store
            .snapshots(Some(id))?
            .into_iter()
            .filter(|r| crate::tenant::visible(&r.tenant))
            .collect();
        if snaps.is_empty() {
            self.handle(id)?;
        }
        Ok(snaps.iter().map(SnapshotRecord::view).collect())
    }

    fn snapshot_record(&self, snapshot_id: &str) -> Result<SnapshotRecord, CoreError> {
        self.store
            .snapshot(snapshot_id)?
            .filter(|r| crate::tenant::visible(&r.tenant))
            .ok_or_else(|| CoreError::SnapshotNotFound(format!("'{snapshot_id}'")))
    }

    pub fn get_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, CoreError> {
        Ok(self.snapshot_record(snapshot_id)?.view())
    }

    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), CoreError> {
        let rec = self.snapshot_record(snapshot_id)?;
        self.store.delete_snapshot(snapshot_id)?;
        if let Err(e) = self.storage()?.remove(&rec.object_key).await {
            // Unrecorded objects are removed by the sweep at the next start.
            tracing::warn!(snapshot = %snapshot_id, error = %e, "could not remove snapshot object");
        }
        Ok(())
    }

    /// The snapshot a restore into `target` means.
    fn resolve_snapshot(
        &self,
        target: &str,
        req: &RestoreRequest,
    ) -> Result<SnapshotRecord, CoreError> {
        let from = req.from_sandbox.as_deref().unwrap_or(target);
        match req.snapshot.as_deref() {
            None | Some("latest") => self
                .store
                .snapshots(Some(from))?
                .into_iter()
                .find(|r| crate::tenant::visible(&r.tenant))
                .ok_or_else(|| {
                    CoreError::SnapshotNotFound(format!("'latest' of sandbox '{from}'"))
                }),
            Some(sid) => {
                let rec = self.snapshot_record(sid)?;
                match &req.from_sandbox {
                    Some(f) if *f != rec.sandbox_id => Err(CoreError::SnapshotNotFound(format!(
                        "'{sid}' of sandbox '{f}'"
                    ))),
                    _ => Ok(rec),
                }
            }
        }
    }

    /// Replaces the files under the snapshot's path in a sandbox with the snapshot's, all at
    /// once: a restore that fails leaves them as they were.
    pub async fn restore(&self, id: &str, req: RestoreRequest) -> Result<Snapshot, CoreError> {
        self.handle(id)?;
        let rec = self.resolve_snapshot(id, &req)?;
        self.restore_into(id, &rec).await?;
        Ok(rec.view())
    }

    pub(super) async fn restore_into(
        &self,
        id: &str,
        rec: &SnapshotRecord,
    ) -> Result<(), CoreError> {
        let h = self.ready(id).await?;
        let _busy = BusyGuard::new(&h.busy);
        let body = self.storage()?.download(&rec.object_key).await?;
        // The agent swaps the files in only once the whole archive unpacked: on any error
        // the sandbox keeps its files as they were.
        h.agent
            .extract(&rec.path, true, body)
            .await
            .map_err(|e| match e {
                // The archive came from storage, not from the client: a damaged object.
                CoreError::Agent(a) if a.code == sandpit_proto::ErrorCode::BadRequest => {
                    CoreError::Storage(format!(
                        "snapshot '{}' could not be restored: {}",
                        rec.id, a.message
                    ))
                }
                e => e,
            })?;
        tracing::info!(sandbox = %id, snapshot = %rec.id, "restored");
        Ok(())
    }

    /// The snapshot a create request restores, checked before anything starts; fills in the
    /// id the sandbox gets.
    pub(super) fn prepare_restore(
        &self,
        req: &mut CreateSandbox,
        restore: RestoreRequest,
    ) -> Result<SnapshotRecord, CoreError> {
        let explicit = restore.from_sandbox.is_some()
            || restore.snapshot.as_deref().is_some_and(|s| s != "latest");
        let id = match req.id.take() {
            Some(id) => id,
            None if explicit => generate_id(),
            None => {
                return Err(CoreError::BadRequest(
                    "restore 'latest' needs the sandbox id (or from_sandbox)".into(),
                ))
            }
        };
        if !valid_id(&id) {
            return Err(CoreError::InvalidId(id));
        }
        if self.map().contains_key(&id) {
            return Err(CoreError::AlreadyExists(id));
        }
        let rec = self.resolve_snapshot(&id, &restore)?;
        req.id = Some(id);
        Ok(rec)
    }
}
