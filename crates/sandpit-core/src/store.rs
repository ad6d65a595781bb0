//! The store of record: which sandboxes exist, with their settings and the handle of their
//! running init, so a restarted server finds them again. SQLite in the data dir by default;
//! behind [`Store`] so a shared database can serve several nodes later.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection};

use crate::model::{Record, Status};
use crate::snapshot::SnapshotRecord;
use crate::CoreError;

pub trait Store: Send + Sync {
    /// Updates the record of an existing sandbox. A record that is not there (the sandbox
    /// was deleted meanwhile) is not written again: only `put_new` adds one, so a call that
    /// held a deleted sandbox's handle cannot bring its record back.
    fn put(&self, rec: &Record) -> Result<(), CoreError>;
    /// Writes the record of a sandbox being created and, in the same commit, drops port
    /// tokens a former sandbox of that id left.
    fn put_new(&self, rec: &Record) -> Result<(), CoreError>;
    fn delete(&self, id: &str) -> Result<(), CoreError>;
    fn all(&self) -> Result<Vec<Record>, CoreError>;
    /// Sets the public token of a sandbox's port (replacing one it had).
    fn put_port_token(&self, t: &PortToken) -> Result<(), CoreError>;
    /// Whether a token existed.
    fn delete_port_token(&self, sandbox_id: &str, port: u16) -> Result<bool, CoreError>;
    fn delete_port_tokens(&self, sandbox_id: &str) -> Result<(), CoreError>;
    fn port_tokens(&self, sandbox_id: &str) -> Result<Vec<PortToken>, CoreError>;
    /// Records a snapshot whose object is complete.
    fn put_snapshot(&self, snap: &SnapshotRecord) -> Result<(), CoreError>;
    fn delete_snapshot(&self, id: &str) -> Result<(), CoreError>;
    fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, CoreError>;
    /// Snapshots of one sandbox (or all), newest first.
    fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<SnapshotRecord>, CoreError>;
    /// Sets (replacing) what a dialect keeps about a sandbox, an opaque text; it goes with the
    /// sandbox (`delete`, `put_new`).
    fn put_dialect_meta(
        &self,
        sandbox_id: &str,
        dialect: &str,
        data: &str,
    ) -> Result<(), CoreError>;
    fn dialect_meta(&self, sandbox_id: &str, dialect: &str) -> Result<Option<String>, CoreError>;
    /// Adds webhook deliveries to the outbox (their `seq` is ignored: the store numbers
    /// them in order) and, in the same commit, drops the `n` oldest rows of each `(hook, n)`
    /// in `trim`. Answers how many rows the trim dropped, per entry of `trim`.
    fn outbox_push(
        &self,
        rows: &[OutboxRow],
        trim: &[(String, usize)],
    ) -> Result<Vec<usize>, CoreError>;
    /// The oldest delivery pending for a webhook.
    fn outbox_head(&self, hook: &str) -> Result<Option<OutboxRow>, CoreError>;
    /// Records a failed attempt: the attempts so far and when to try again.
    fn outbox_retry(&self, seq: i64, attempts: u32, next_at: i64) -> Result<(), CoreError>;
    /// Whether the delivery was still there.
    fn outbox_delete(&self, seq: i64) -> Result<bool, CoreError>;
    /// Drops the rows of webhooks not in `hooks`; answers the pending rows per webhook
    /// kept and how many were dropped.
    fn outbox_retain(&self, hooks: &[String]) -> Result<(Vec<(String, usize)>, usize), CoreError>;
}

/// One pending delivery of one event to one webhook, with the exact body that is signed
/// and sent on every attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Order of the outbox: deliveries to a webhook go out by increasing `seq`.
    pub seq: i64,
    /// The webhook's stable key (its URL without query, see `events::Webhook::key`).
    pub hook: String,
    pub event_id: String,
    /// `sandbox.created`, ...
    pub kind: String,
    pub sandbox_id: String,
    pub body: Vec<u8>,
    /// Milliseconds since the epoch, when the event happened.
    pub created_at: i64,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Milliseconds since the epoch, not before which the next attempt is made.
    pub next_at: i64,
}

/// A public token of one port of one sandbox; only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortToken {
    pub sandbox_id: String,
    pub port: u16,
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn db_err(e: impl std::fmt::Display) -> CoreError {
    let message = format!("store: {e}");
    if crate::error::is_no_space(&message) {
        return CoreError::NoSpace(message);
    }
    CoreError::Internal(message)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_active_at INTEGER NOT NULL,
    keepalive_seconds INTEGER NOT NULL,
    slot INTEGER NOT NULL,
    limits TEXT NOT NULL,
    env TEXT NOT NULL,
    launched TEXT,
    warnings TEXT NOT NULL
);
";

/// Snapshots (they outlive their sandbox) and the sleep settings of sandboxes, in tables of
/// their own so the sandboxes table stays as it is.
const SNAPSHOT_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    sandbox_id TEXT NOT NULL,
    name TEXT,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    object_key TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_by_sandbox ON snapshots (sandbox_id, created_at);
CREATE TABLE IF NOT EXISTS sandbox_sleep (
    id TEXT PRIMARY KEY,
    sleep_after_seconds INTEGER NOT NULL,
    snapshot_on_expiry INTEGER NOT NULL
);
";

const SNAPSHOT_COLUMNS: &str =
    "id, sandbox_id, name, path, size_bytes, created_at, object_key, tenant";

fn snapshot_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        id: row.get(0)?,
        sandbox_id: row.get(1)?,
        name: row.get(2)?,
        path: row.get(3)?,
        size_bytes: row.get::<_, i64>(4)?.max(0) as u64,
        created_at: row.get(5)?,
        object_key: row.get(6)?,
        tenant: row.get(7)?,
    })
}

/// Public port tokens, deleted with their sandbox.
const PORT_TOKENS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS port_tokens (
    sandbox_id TEXT NOT NULL,
    port INTEGER NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (sandbox_id, port)
);
";

/// What dialects keep about a sandbox beside sandpit's own record (E2B's template name and
/// metadata), deleted with the sandbox. A table of its own, so older stores gain it as is.
const DIALECT_META_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dialect_meta (
    sandbox_id TEXT NOT NULL,
    dialect TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (sandbox_id, dialect)
);
DELETE FROM dialect_meta WHERE sandbox_id NOT IN (SELECT id FROM sandboxes);
";

/// The webhook outbox: one row per (event, webhook) delivery not yet done, so events survive
/// a stop or a crash of the server. A table of its own, so older stores gain it as is.
const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    hook TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    sandbox_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_by_hook ON webhook_outbox (hook, seq);
";

const OUTBOX_COLUMNS: &str =
    "seq, hook, event_id, kind, sandbox_id, body, created_at, attempts, next_at";

fn outbox_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        seq: row.get(0)?,
        hook: row.get(1)?,
        event_id: row.get(2)?,
        kind: row.get(3)?,
        sandbox_id: row.get(4)?,
        body: row.get(5)?,
        created_at: row.get(6)?,
        attempts: row.get::<_, i64>(7)?.clamp(0, u32::MAX as i64) as u32,
        next_at: row.get(8)?,
    })
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, CoreError> {
        let conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;",
        )
        .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        conn.execute_batch(PORT_TOKENS_SCHEMA).map_err(db_err)?;
        migrate_network(&conn)?;
        conn.execute_batch(SNAPSHOT_SCHEMA).map_err(db_err)?;
        migrate(&conn)?;
        migrate_snapshot_tenant(&conn)?;
        conn.execute_batch(DIALECT_META_SCHEMA).map_err(db_err)?;
        conn.execute_batch(OUTBOX_SCHEMA).map_err(db_err)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Schema changes after the first version, each guarded by `PRAGMA user_version` and keeping
/// existing rows.
fn migrate(conn: &Connection) -> Result<(), CoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db_err)?;
    if version < 2 {
        // 2: the owning tenant; sandboxes from before tenants belong to the default one.
        let has_tenant = conn
            .prepare("SELECT 1 FROM pragma_table_info('sandboxes') WHERE name = 'tenant'")
            .and_then(|mut st| st.exists([]))
            .map_err(db_err)?;
        if !has_tenant {
            conn.execute_batch(
                "ALTER TABLE sandboxes ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';",
            )
            .map_err(db_err)?;
        }
        conn.execute_batch("PRAGMA user_version = 2;")
            .map_err(db_err)?;
    }
    Ok(())
}

/// Writes a sandbox's rows (the record, its network, its sleep settings) inside the caller's
/// transaction.
fn write_record(conn: &Connection, r: &Record) -> Result<(), CoreError> {
    let launched = r
        .launched
        .map(|l| serde_json::to_string(&l))
        .transpose()
        .map_err(db_err)?;
    conn.prepare_cached(
        "INSERT INTO sandboxes (id, status, created_at, last_active_at, keepalive_seconds, slot, limits, env, launched, warnings, tenant, network)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT(id) DO UPDATE SET status=?2, created_at=?3, last_active_at=?4, keepalive_seconds=?5,
           slot=?6, limits=?7, env=?8, launched=?9, warnings=?10, tenant=?11, network=?12",
    )
    .and_then(|mut st| {
        st.execute(params![
            r.id,
            r.status.as_str(),
            r.created_at,
            r.last_active_at,
            r.keepalive_seconds as i64,
            r.slot,
            serde_json::to_string(&r.limits).map_err(db_to_sql)?,
            serde_json::to_string(&r.env).map_err(db_to_sql)?,
            launched,
            serde_json::to_string(&r.warnings).map_err(db_to_sql)?,
            r.tenant,
            serde_json::to_string(&r.network).map_err(db_to_sql)?,
        ])
    })
    .map_err(db_err)?;
    conn.prepare_cached(
        "INSERT INTO sandbox_sleep (id, sleep_after_seconds, snapshot_on_expiry) VALUES (?1, ?2, ?3)
         ON CONFLICT(id) DO UPDATE SET sleep_after_seconds=?2, snapshot_on_expiry=?3",
    )
    .and_then(|mut st| st.execute(params![r.id, r.sleep_after_seconds as i64, r.snapshot_on_expiry]))
    .map_err(db_err)?;
    Ok(())
}

/// A JSON encoding failure as the error rusqlite's closures return.
fn db_to_sql(e: serde_json::Error) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

impl SqliteStore {
    /// Runs `f` in one transaction: all of its writes land, or none (one commit, too).
    fn in_transaction<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db_err)?;
        let out = f(&tx)?;
        tx.commit().map_err(db_err)?;
        Ok(out)
    }
}

impl Store for SqliteStore {
    fn put(&self, r: &Record) -> Result<(), CoreError> {
        self.in_transaction(|conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM sandboxes WHERE id = ?1")
                .and_then(|mut st| st.exists(params![r.id]))
                .map_err(db_err)?;
            if exists {
                write_record(conn, r)?;
            }
            Ok(())
        })
    }

    fn put_new(&self, r: &Record) -> Result<(), CoreError> {
        self.in_transaction(|conn| {
            // Cached statements: a create from the warm pool spends a third of its time here.
            for sql in [
                "DELETE FROM port_tokens WHERE sandbox_id = ?1",
                "DELETE FROM dialect_meta WHERE sandbox_id = ?1",
            ] {
                conn.prepare_cached(sql)
                    .and_then(|mut st| st.execute(params![r.id]))
                    .map_err(db_err)?;
            }
            write_record(conn, r)
        })
    }

    fn delete(&self, id: &str) -> Result<(), CoreError> {
        self.in_transaction(|conn| {
            conn.execute("DELETE FROM sandboxes WHERE id = ?1", params![id])
                .map_err(db_err)?;
            conn.execute("DELETE FROM sandbox_sleep WHERE id = ?1", params![id])
                .map_err(db_err)?;
            conn.execute(
                "DELETE FROM dialect_meta WHERE sandbox_id = ?1",
                params![id],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn all(&self) -> Result<Vec<Record>, CoreError> {
        let conn = self.conn();
        let sleep: std::collections::HashMap<String, (i64, bool)> = conn
            .prepare("SELECT id, sleep_after_seconds, snapshot_on_expiry FROM sandbox_sleep")
            .and_then(|mut st| {
                st.query_map([], |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))))?
                    .collect()
            })
            .map_err(db_err)?;
        let mut stmt = conn
            .prepare("SELECT id, status, created_at, last_active_at, keepalive_seconds, slot, limits, env, launched, warnings, tenant FROM sandboxes")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, u32>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, String>(9)?,
                    row.get::<_, String>(10)?,
                ))
            })
            .map_err(db_err)?;
        let mut out = Vec::new();
        for row in rows {
            let (
                id,
                status,
                created_at,
                last_active_at,
                keepalive,
                slot,
                limits,
                env,
                launched,
                warnings,
                tenant,
            ) = row.map_err(db_err)?;
            let (sleep_after, snapshot_on_expiry) = sleep.get(&id).copied().unwrap_or((0, false));
            out.push(Record {
                sleep_after_seconds: sleep_after.max(0) as u64,
                snapshot_on_expiry,
                id,
                status: Status::parse(&status),
                created_at,
                last_active_at,
                keepalive_seconds: keepalive.max(0) as u64,
                limits: serde_json::from_str(&limits).map_err(db_err)?,
                env: serde_json::from_str(&env).map_err(db_err)?,
                slot,
                launched: launched
                    .map(|l| serde_json::from_str(&l))
                    .transpose()
                    .map_err(db_err)?,
                warnings: serde_json::from_str(&warnings).map_err(db_err)?,
                network: Default::default(),
                tenant,
            });
        }
        let mut stmt = conn
            .prepare("SELECT id, network FROM sandboxes WHERE network IS NOT NULL")
            .map_err(db_err)?;
        let networks = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(db_err)?;
        for row in networks {
            let (id, network) = row.map_err(db_err)?;
            if let Some(rec) = out.iter_mut().find(|r| r.id == id) {
                rec.network = serde_json::from_str(&network).map_err(db_err)?;
            }
        }
        Ok(out)
    }

    fn put_snapshot(&self, snap: &SnapshotRecord) -> Result<(), CoreError> {
        self.conn()
            .execute(
                &format!("INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                params![
                    snap.id,
                    snap.sandbox_id,
                    snap.name,
                    snap.path,
                    snap.size_bytes as i64,
                    snap.created_at,
                    snap.object_key,
                    snap.tenant
                ],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn delete_snapshot(&self, id: &str) -> Result<(), CoreError> {
        self.conn()
            .execute("DELETE FROM snapshots WHERE id = ?1", params![id])
            .map_err(db_err)?;
        Ok(())
    }

    fn snapshot(&self, id: &str) -> Result<Option<SnapshotRecord>, CoreError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE id = ?1"
            ))
            .map_err(db_err)?;
        let mut rows = st.query_map(params![id], snapshot_row).map_err(db_err)?;
        rows.next().transpose().map_err(db_err)
    }

    fn snapshots(&self, sandbox_id: Option<&str>) -> Result<Vec<SnapshotRecord>, CoreError> {
        let conn = self.conn();
        // rowid breaks ties between snapshots made within the same millisecond.
        let mut st = conn
            .prepare(&format!(
                "SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE ?1 IS NULL OR sandbox_id = ?1
                 ORDER BY created_at DESC, rowid DESC"
            ))
            .map_err(db_err)?;
        let rows = st
            .query_map(params![sandbox_id], snapshot_row)
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }

    fn put_port_token(&self, t: &PortToken) -> Result<(), CoreError> {
        self.conn()
            .execute(
                "INSERT INTO port_tokens (sandbox_id, port, token_sha256, created_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(sandbox_id, port) DO UPDATE SET token_sha256=?3, created_at=?4",
                params![t.sandbox_id, t.port, t.token_sha256, t.created_at],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn delete_port_token(&self, sandbox_id: &str, port: u16) -> Result<bool, CoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM port_tokens WHERE sandbox_id = ?1 AND port = ?2",
                params![sandbox_id, port],
            )
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn delete_port_tokens(&self, sandbox_id: &str) -> Result<(), CoreError> {
        self.conn()
            .execute(
                "DELETE FROM port_tokens WHERE sandbox_id = ?1",
                params![sandbox_id],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn put_dialect_meta(
        &self,
        sandbox_id: &str,
        dialect: &str,
        data: &str,
    ) -> Result<(), CoreError> {
        self.conn()
            .execute(
                "INSERT INTO dialect_meta (sandbox_id, dialect, data) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sandbox_id, dialect) DO UPDATE SET data=?3",
                params![sandbox_id, dialect, data],
            )
            .map_err(db_err)?;
        Ok(())
    }

    fn dialect_meta(&self, sandbox_id: &str, dialect: &str) -> Result<Option<String>, CoreError> {
        use rusqlite::OptionalExtension;
        self.conn()
            .query_row(
                "SELECT data FROM dialect_meta WHERE sandbox_id = ?1 AND dialect = ?2",
                params![sandbox_id, dialect],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_err)
    }

    fn outbox_push(
        &self,
        rows: &[OutboxRow],
        trim: &[(String, usize)],
    ) -> Result<Vec<usize>, CoreError> {
        self.in_transaction(|conn| {
            for r in rows {
                conn.prepare_cached(
                    "INSERT INTO webhook_outbox (hook, event_id, kind, sandbox_id, body, created_at, attempts, next_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        r.hook,
                        r.event_id,
                        r.kind,
                        r.sandbox_id,
                        r.body,
                        r.created_at,
                        r.attempts,
                        r.next_at
                    ])
                })
                .map_err(db_err)?;
            }
            let mut dropped = Vec::with_capacity(trim.len());
            for (hook, n) in trim {
                let gone = conn
                    .prepare_cached(
                        "DELETE FROM webhook_outbox WHERE seq IN
                         (SELECT seq FROM webhook_outbox WHERE hook = ?1 ORDER BY seq LIMIT ?2)",
                    )
                    .and_then(|mut st| st.execute(params![hook, *n as i64]))
                    .map_err(db_err)?;
                dropped.push(gone);
            }
            Ok(dropped)
        })
    }

    fn outbox_head(&self, hook: &str) -> Result<Option<OutboxRow>, CoreError> {
        use rusqlite::OptionalExtension;
        self.conn()
            .prepare_cached(&format!(
                "SELECT {OUTBOX_COLUMNS} FROM webhook_outbox WHERE hook = ?1 ORDER BY seq LIMIT 1"
            ))
            .and_then(|mut st| st.query_row(params![hook], outbox_row).optional())
            .map_err(db_err)
    }

    fn outbox_retry(&self, seq: i64, attempts: u32, next_at: i64) -> Result<(), CoreError> {
        self.conn()
            .prepare_cached("UPDATE webhook_outbox SET attempts = ?2, next_at = ?3 WHERE seq = ?1")
            .and_then(|mut st| st.execute(params![seq, attempts, next_at]))
            .map_err(db_err)?;
        Ok(())
    }

    fn outbox_delete(&self, seq: i64) -> Result<bool, CoreError> {
        let n = self
            .conn()
            .prepare_cached("DELETE FROM webhook_outbox WHERE seq = ?1")
            .and_then(|mut st| st.execute(params![seq]))
            .map_err(db_err)?;
        Ok(n > 0)
    }

    fn outbox_retain(&self, hooks: &[String]) -> Result<(Vec<(String, usize)>, usize), CoreError> {
        self.in_transaction(|conn| {
            let counts: Vec<(String, usize)> = conn
                .prepare("SELECT hook, COUNT(*) FROM webhook_outbox GROUP BY hook")
                .and_then(|mut st| {
                    st.query_map([], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?.max(0) as usize,
                        ))
                    })?
                    .collect()
                })
                .map_err(db_err)?;
            let mut kept = Vec::new();
            let mut dropped = 0;
            for (hook, n) in counts {
                if hooks.contains(&hook) {
                    kept.push((hook, n));
                } else {
                    dropped += conn
                        .execute("DELETE FROM webhook_outbox WHERE hook = ?1", params![hook])
                        .map_err(db_err)?;
                }
            }
            Ok((kept, dropped))
        })
    }

    fn port_tokens(&self, sandbox_id: &str) -> Result<Vec<PortToken>, CoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT port, token_sha256, created_at FROM port_tokens WHERE sandbox_id = ?1 ORDER BY port")
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![sandbox_id], |row| {
                Ok(PortToken {
                    sandbox_id: sandbox_id.to_string(),
                    port: row.get(0)?,
                    token_sha256: row.get(1)?,
                    created_at: row.get(2)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<Result<_, _>>().map_err(db_err)
    }
}

/// Adds the `network` column (a JSON `NetworkPolicy`; NULL is loopback only) to stores made
/// before it existed.
fn migrate_network(conn: &Connection) -> Result<(), CoreError> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('sandboxes') WHERE name = 'network'")
        .and_then(|mut s| s.exists([]))
        .map_err(db_err)?;
    if !has {
        conn.execute_batch("ALTER TABLE sandboxes ADD COLUMN network TEXT")
            .map_err(db_err)?;
    }
    Ok(())
}

/// Adds the owning tenant to snapshots (they outlive their sandbox, so they carry their own
/// owner): older rows get the owner of their sandbox if it still exists, else the default
/// tenant. Guarded by the column's presence, not `user_version`, so it merges with others.
fn migrate_snapshot_tenant(conn: &Connection) -> Result<(), CoreError> {
    let has = conn
        .prepare("SELECT 1 FROM pragma_table_info('snapshots') WHERE name = 'tenant'")
        .and_then(|mut s| s.exists([]))
        .map_err(db_err)?;
    if !has {
        conn.execute_batch(
            "BEGIN;
             ALTER TABLE snapshots ADD COLUMN tenant TEXT NOT NULL DEFAULT 'default';
             UPDATE snapshots SET tenant = COALESCE(
                 (SELECT tenant FROM sandboxes WHERE sandboxes.id = snapshots.sandbox_id),
                 'default');
             COMMIT;",
        )
        .map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Limits;

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let rec = Record {
            id: "a".into(),
            status: Status::Running,
            created_at: 1,
            last_active_at: 2,
            keepalive_seconds: 600,
            limits: Limits {
                memory_mb: Some(64),
                cpus: Some(0.5),
                pids: None,
                open_files: None,
                disk_mb: None,
            },
            env: [("K".to_string(), "V".to_string())].into(),
            slot: 3,
            launched: Some(sandpit_runtime::Launched {
                pid: 10,
                start_time: 20,
                network: None,
            }),
            warnings: vec!["w".into()],
            network: crate::model::NetworkPolicy {
                egress: true,
                allow: vec!["10.1.0.0/16".parse().unwrap()],
            },
            sleep_after_seconds: 30,
            snapshot_on_expiry: true,
            tenant: "acme".into(),
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put_new(&rec).unwrap();
            s.put(&rec).unwrap();
            s.put_new(&Record {
                id: "b".into(),
                ..rec.clone()
            })
            .unwrap();
            s.delete("b").unwrap();
            // A put after a delete does not bring the record back.
            s.put(&Record {
                id: "b".into(),
                ..rec.clone()
            })
            .unwrap();
        }
        let all = SqliteStore::open(&path).unwrap().all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].slot, 3);
        assert_eq!(all[0].env["K"], "V");
        assert_eq!(all[0].launched.unwrap().pid, 10);
        assert_eq!(all[0].limits.cpus, Some(0.5));
        assert!(all[0].network.egress);
        assert_eq!(all[0].network.allow[0].to_string(), "10.1.0.0/16");
        assert_eq!(all[0].sleep_after_seconds, 30);
        assert!(all[0].snapshot_on_expiry);
        assert_eq!(all[0].tenant, "acme");
    }

    #[test]
    fn snapshots_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let snap = |id: &str, sb: &str, at: i64| SnapshotRecord {
            id: id.into(),
            sandbox_id: sb.into(),
            name: None,
            path: "/".into(),
            size_bytes: 5,
            created_at: at,
            object_key: format!("{sb}/{id}.tar.zst"),
            tenant: "acme".into(),
        };
        s.put_snapshot(&snap("s1", "a", 1)).unwrap();
        s.put_snapshot(&snap("s2", "a", 1)).unwrap();
        s.put_snapshot(&snap("s3", "b", 0)).unwrap();
        let a: Vec<_> = s
            .snapshots(Some("a"))
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(a, ["s2", "s1"]);
        assert_eq!(s.snapshots(None).unwrap().len(), 3);
        assert_eq!(s.snapshot("s3").unwrap(), Some(snap("s3", "b", 0)));
        s.delete_snapshot("s3").unwrap();
        assert_eq!(s.snapshot("s3").unwrap(), None);
    }

    #[test]
    fn snapshots_from_before_owners_get_their_sandboxes_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(SNAPSHOT_SCHEMA).unwrap();
            migrate_network(&conn).unwrap();
            migrate(&conn).unwrap();
            conn.execute_batch(
                "INSERT INTO sandboxes (id, status, created_at, last_active_at, keepalive_seconds, slot, limits, env, warnings, tenant)
                 VALUES ('live', 'running', 0, 0, 0, 0, '{}', '{}', '[]', 'acme');
                 INSERT INTO snapshots (id, sandbox_id, path, size_bytes, created_at, object_key)
                 VALUES ('s1', 'live', '/', 1, 0, 'k1'), ('s2', 'gone', '/', 1, 0, 'k2');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.snapshot("s1").unwrap().unwrap().tenant, "acme");
        assert_eq!(s.snapshot("s2").unwrap().unwrap().tenant, "default");
        drop(s);
        // Opening again changes nothing.
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.snapshots(None).unwrap().len(), 2);
    }

    #[test]
    fn a_store_from_before_tenants_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("PRAGMA user_version = 1;").unwrap();
            c.execute(
                "INSERT INTO sandboxes VALUES ('old', 'running', 1, 2, 600, 0, '{\"memory_mb\":64,\"cpus\":null,\"pids\":null}', '{}', NULL, '[]')",
                [],
            )
            .unwrap();
        }
        for _ in 0..2 {
            let all = SqliteStore::open(&path).unwrap().all().unwrap();
            assert_eq!(all.len(), 1);
            assert_eq!(all[0].tenant, "default");
            assert_eq!(all[0].limits.memory_mb, Some(64));
        }
    }

    #[test]
    fn dialect_meta_survives_reopening_and_goes_with_its_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let rec = |id: &str| Record {
            id: id.into(),
            status: Status::Running,
            created_at: 1,
            last_active_at: 2,
            keepalive_seconds: 600,
            limits: Limits {
                memory_mb: None,
                cpus: None,
                pids: None,
                open_files: None,
                disk_mb: None,
            },
            env: Default::default(),
            slot: 1,
            launched: None,
            warnings: vec![],
            network: Default::default(),
            sleep_after_seconds: 0,
            snapshot_on_expiry: false,
            tenant: "default".into(),
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put_new(&rec("a")).unwrap();
            s.put_new(&rec("b")).unwrap();
            s.put_dialect_meta("a", "e2b", "{\"x\":1}").unwrap();
            s.put_dialect_meta("a", "e2b", "{\"x\":2}").unwrap();
            s.put_dialect_meta("b", "e2b", "b").unwrap();
            // A row whose sandbox is gone is dropped when the store is opened.
            s.put_dialect_meta("gone", "e2b", "g").unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.dialect_meta("a", "e2b").unwrap().as_deref(),
            Some("{\"x\":2}")
        );
        assert_eq!(s.dialect_meta("a", "other").unwrap(), None);
        assert_eq!(s.dialect_meta("gone", "e2b").unwrap(), None);
        s.delete("a").unwrap();
        assert_eq!(s.dialect_meta("a", "e2b").unwrap(), None);
        s.put_new(&rec("b")).unwrap();
        assert_eq!(s.dialect_meta("b", "e2b").unwrap(), None);
    }

    #[test]
    fn outbox_rows_survive_reopening_in_order_with_their_retry_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let row = |hook: &str, ev: &str| OutboxRow {
            seq: 0,
            hook: hook.into(),
            event_id: ev.into(),
            kind: "sandbox.created".into(),
            sandbox_id: "a".into(),
            body: ev.as_bytes().to_vec(),
            created_at: 1,
            attempts: 0,
            next_at: 1,
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.outbox_push(&[row("h1", "e1"), row("h2", "e1")], &[])
                .unwrap();
            s.outbox_push(&[row("h1", "e2")], &[]).unwrap();
            let head = s.outbox_head("h1").unwrap().unwrap();
            assert_eq!(head.event_id, "e1");
            s.outbox_retry(head.seq, 3, 99).unwrap();
            // Trimming one of h1 in the same commit as a third row drops e1.
            let dropped = s
                .outbox_push(&[row("h1", "e3")], &[("h1".into(), 1)])
                .unwrap();
            assert_eq!(dropped, [1]);
        }
        let s = SqliteStore::open(&path).unwrap();
        let head = s.outbox_head("h1").unwrap().unwrap();
        assert_eq!(
            (head.event_id.as_str(), head.body.as_slice()),
            ("e2", &b"e2"[..])
        );
        assert!(s.outbox_delete(head.seq).unwrap());
        assert!(!s.outbox_delete(head.seq).unwrap());
        assert_eq!(s.outbox_head("h1").unwrap().unwrap().event_id, "e3");
        let (kept, dropped) = s.outbox_retain(&["h1".to_string()]).unwrap();
        assert_eq!((kept, dropped), (vec![("h1".to_string(), 1)], 1));
        assert!(s.outbox_head("h2").unwrap().is_none());
        let h2 = s.outbox_head("h1").unwrap().unwrap();
        s.outbox_retry(h2.seq, 2, 50).unwrap();
        let again = s.outbox_head("h1").unwrap().unwrap();
        assert_eq!((again.attempts, again.next_at), (2, 50));
    }

    #[test]
    fn port_tokens_survive_reopening_and_go_with_their_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let tok = |id: &str, port, h: &str| PortToken {
            sandbox_id: id.into(),
            port,
            token_sha256: h.into(),
            created_at: 5,
        };
        {
            let s = SqliteStore::open(&path).unwrap();
            s.put_port_token(&tok("a", 80, "h1")).unwrap();
            s.put_port_token(&tok("a", 80, "h2")).unwrap();
            s.put_port_token(&tok("a", 81, "h3")).unwrap();
            s.put_port_token(&tok("b", 80, "h4")).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(
            s.port_tokens("a").unwrap(),
            vec![tok("a", 80, "h2"), tok("a", 81, "h3")]
        );
        assert!(s.delete_port_token("a", 81).unwrap());
        assert!(!s.delete_port_token("a", 81).unwrap());
        s.delete_port_tokens("a").unwrap();
        assert!(s.port_tokens("a").unwrap().is_empty());
        assert_eq!(s.port_tokens("b").unwrap().len(), 1);
    }
}
