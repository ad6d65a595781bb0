//! Snapshots: compressed archives of a sandbox's files kept in object storage (a local
//! directory under the data dir by default, or S3-compatible storage), and their shapes as
//! clients see them. This module owns the storage side: keys, streaming uploads with
//! constant memory, downloads, and the sweep of half-written leftovers.
//!
//! Atomicity: each snapshot is written under a key of its own and recorded in the store
//! only after the object is complete, so a crash mid-write never damages an existing
//! snapshot, and the newest recorded one ("latest") is always whole. An S3 multipart upload
//! that fails or is cancelled is aborted; ones a crash left behind are aborted by the sweep
//! at the next start (`s3_leftovers.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, WriteMultipart};
use serde::{Deserialize, Serialize};

use crate::agent::ArchiveReader;
use crate::model::rfc3339;
use crate::CoreError;

/// Where snapshots go: the `[storage]` section of the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3://bucket/prefix` or `file:///dir`; default: `<data dir>/snapshots`.
    pub url: Option<String>,
    /// S3 endpoint of an S3-compatible service (MinIO, R2, ...).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Allow a plain `http://` endpoint.
    #[serde(default)]
    pub allow_http: bool,
}

/// Part size of multipart uploads (S3 wants at least 5 MiB).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once; with the part being filled, this bounds the memory per snapshot.
const PARTS_IN_FLIGHT: usize = 2;

/// Incomplete multipart uploads under the prefix older than this are aborted at start;
/// younger ones may be another server's (sharing the prefix), still being written.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(300);

/// The object store snapshots live in.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of every snapshot object.
    prefix: String,
    /// The directory of a local store (its half-written uploads are files there).
    local_dir: Option<PathBuf>,
    /// Keys being written now; the sweep leaves them alone.
    writing: Mutex<HashSet<String>>,
    /// The S3 bucket, for what `object_store` does not do (listing multipart uploads).
    s3: Option<crate::s3_leftovers::Bucket>,
    /// Shown in logs and errors.
    pub description: String,
}

fn storage_err(e: impl std::fmt::Display) -> CoreError {
    let message = e.to_string();
    if crate::error::is_no_space(&message) {
        return CoreError::NoSpace(format!("snapshot storage: {message}"));
    }
    CoreError::Storage(message)
}

impl ObjectStorage {
    /// Opens the configured store (checks the settings; does not contact the service).
    pub fn open(cfg: &StorageConfig, data_dir: &Path) -> Result<Self, CoreError> {
        match cfg.url.as_deref() {
            None => Self::local(&data_dir.join("snapshots")),
            Some(url) if url.starts_with("file://") => {
                Self::local(Path::new(url.trim_start_matches("file://")))
            }
            Some(url) if url.starts_with("s3://") => Self::s3(url, cfg),
            Some(url) => Err(CoreError::BadRequest(format!(
                "storage url '{url}': use s3://bucket/prefix or file:///dir"
            ))),
        }
    }

    pub fn local(dir: &Path) -> Result<Self, CoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| storage_err(format!("creating {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir).map_err(storage_err)?;
        Ok(Self {
            store: Arc::new(store),
            prefix: String::new(),
            local_dir: Some(dir.to_path_buf()),
            writing: Mutex::default(),
            s3: None,
            description: dir.display().to_string(),
        })
    }

    fn s3(url: &str, cfg: &StorageConfig) -> Result<Self, CoreError> {
        let rest = url.trim_start_matches("s3://");
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(CoreError::BadRequest(format!(
                "storage url '{url}' names no bucket"
            )));
        }
        // AWS_* variables fill in what the config leaves out (credentials stay out of files).
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_allow_http(cfg.allow_http);
        if let Some(r) = &cfg.region {
            b = b.with_region(r);
        }
        if let Some(e) = &cfg.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let endpoint = b.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let region = b
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".into());
        let store = Arc::new(
            b.build()
                .map_err(|e| CoreError::BadRequest(format!("storage '{url}': {e}")))?,
        );
        let prefix = prefix.trim_matches('/');
        let bucket_url = match endpoint {
            Some(e) => format!("{}/{bucket}", e.trim_end_matches('/')),
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        let s3 = crate::s3_leftovers::Bucket {
            store: store.clone(),
            url: bucket_url,
            region,
            max_age: ABANDONED_AFTER,
        };
        Ok(Self {
            store,
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            local_dir: None,
            writing: Mutex::default(),
            s3: Some(s3),
            description: url.to_string(),
        })
    }

    fn writing(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of a new snapshot object.
    pub fn key(&self, sandbox_id: &str, snapshot_id: &str) -> String {
        format!("{}{sandbox_id}/{snapshot_id}.tar.zst", self.prefix)
    }

    /// Streams an archive into the object `key`; its size once complete. On any failure the
    /// upload is aborted and nothing is left under `key`.
    pub async fn upload(&self, key: &str, archive: &mut ArchiveReader) -> Result<u64, CoreError> {
        self.writing().insert(key.to_string());
        let result = self.upload_inner(key, archive).await;
        self.writing().remove(key);
        result
    }

    async fn upload_inner(&self, key: &str, archive: &mut ArchiveReader) -> Result<u64, CoreError> {
        // The upload is created in a task of its own: a request cancelled while the service
        // creates it would otherwise leave an upload nobody knows of. Once created it is in an
        // `AbortOnDrop`, which aborts it should this future (or that task's unread answer) be
        // dropped mid-way.
        let store = self.store.clone();
        let location = ObjPath::from(key);
        let created = tokio::spawn(async move {
            let upload = store.put_multipart(&location).await?;
            Ok::<_, object_store::Error>(AbortOnDrop(Some(WriteMultipart::new_with_chunk_size(
                upload, PART_SIZE,
            ))))
        });
        let mut guard = created
            .await
            .map_err(|e| CoreError::Internal(format!("creating the upload: {e}")))?
            .map_err(storage_err)?;
        let mut size = 0u64;
        loop {
            let Some(writer) = guard.0.as_mut() else {
                return Err(CoreError::Internal("upload already ended".into()));
            };
            let next = match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                Ok(()) => archive.next().await,
                Err(e) => Err(storage_err(e)),
            };
            match next {
                Ok(Some(chunk)) => {
                    size += chunk.len() as u64;
                    writer.put(chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    if let Some(writer) = guard.0.take() {
                        if let Err(abort) = writer.abort().await {
                            tracing::warn!(%key, error = %abort, "aborting a failed upload failed");
                        }
                    }
                    return Err(e);
                }
            }
        }
        // `finish` aborts the upload itself when it fails.
        match guard.0.take() {
            Some(writer) => writer.finish().await.map_err(storage_err)?,
            None => return Err(CoreError::Internal("upload already ended".into())),
        };
        Ok(size)
    }

    /// The bytes of a snapshot object.
    pub async fn download(
        &self,
        key: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, CoreError>>, CoreError> {
        let got = self
            .store
            .get(&ObjPath::from(key))
            .await
            .map_err(storage_err)?;
        Ok(got.into_stream().map_err(storage_err).boxed())
    }

    pub async fn remove(&self, key: &str) -> Result<(), CoreError> {
        match self.store.delete(&ObjPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_err(e)),
        }
    }

    /// Removes what a crash left behind: objects no recorded snapshot names (written but
    /// never recorded), for a local store half-written upload files, and for S3 incomplete
    /// multipart uploads under the prefix older than five minutes.
    pub async fn sweep(&self, recorded: &HashSet<String>) {
        if let Some(s3) = &self.s3 {
            let writing = self.writing().clone();
            s3.abort_abandoned(&self.prefix, &writing).await;
        }
        if let Some(dir) = &self.local_dir {
            let dir = dir.clone();
            let recorded = recorded.clone();
            let writing = self.writing().clone();
            let _ = tokio::task::spawn_blocking(move || sweep_dir(&dir, &dir, &recorded, &writing))
                .await;
            return;
        }
        let prefix = ObjPath::from(self.prefix.trim_end_matches('/'));
        let listed: Vec<_> = self
            .store
            .list((!self.prefix.is_empty()).then_some(&prefix))
            .collect()
            .await;
        for meta in listed {
            let meta = match meta {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "listing snapshot storage failed");
                    return;
                }
            };
            let key = meta.location.to_string();
            if key.ends_with(".tar.zst")
                && !recorded.contains(&key)
                && !self.writing().contains(&key)
            {
                tracing::info!(%key, "removing unrecorded snapshot object");
                let _ = self.store.delete(&meta.location).await;
            }
        }
    }
}

/// A multipart upload that is aborted if dropped before it ended.
struct AbortOnDrop(Option<WriteMultipart>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Err(e) = writer.abort().await {
                        tracing::warn!(error = %e, "aborting a cancelled upload failed");
                    }
                });
            }
        }
    }
}

fn sweep_dir(root: &Path, dir: &Path, recorded: &HashSet<String>, writing: &HashSet<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sweep_dir(root, &path, recorded, writing);
            let _ = std::fs::remove_dir(&path); // only when empty
            continue;
        }
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy();
        // A staged upload is `<key>#<n>`.
        let key = rel.split('#').next().unwrap_or_default();
        let staged = rel.contains('#');
        if (staged || !recorded.contains(key)) && !writing.contains(key) {
            tracing::info!(file = %path.display(), "removing half-written snapshot");
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// A snapshot as the store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: Option<String>,
    /// The directory archived, inside the sandbox (`/` for all its files).
    pub path: String,
    pub size_bytes: u64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub object_key: String,
    /// The tenant that owns it: the owner of its sandbox when it was made.
    pub tenant: String,
}

impl SnapshotRecord {
    pub fn view(&self) -> Snapshot {
        Snapshot {
            id: self.id.clone(),
            name: self.name.clone(),
            sandbox_id: self.sandbox_id.clone(),
            path: self.path.clone(),
            size_bytes: self.size_bytes,
            created_at: rfc3339(self.created_at),
            tenant: self.tenant.clone(),
        }
    }
}

/// A snapshot as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    pub id: String,
    pub name: Option<String>,
    pub sandbox_id: String,
    pub path: String,
    /// Size of the compressed archive.
    pub size_bytes: u64,
    pub created_at: String,
    /// The tenant that owns the snapshot (and may use it after its sandbox is deleted).
    pub tenant: String,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// 1-63 characters of A-Z, a-z, 0-9, '_', '-' and '.'.
    pub name: Option<String>,
    /// Directory to archive; default `/`: every file the sandbox wrote.
    pub path: Option<String>,
    /// Globs of paths (relative to `path`) or names to leave out, e.g. `node_modules`, `*.log`.
    #[serde(default)]
    pub excludes: Vec<String>,
}

/// Which snapshot to restore.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A snapshot id, or `latest` (the default): the newest snapshot of `from_sandbox`.
    pub snapshot: Option<String>,
    /// Whose snapshots `latest` means; default: the sandbox restored into.
    pub from_sandbox: Option<String>,
}

/// `restore` of a create request: `"latest"`, a snapshot id, or a [`RestoreRequest`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RestoreSource {
    Snapshot(String),
    Request(RestoreRequest),
}

impl RestoreSource {
    pub fn into_request(self) -> RestoreRequest {
        match self {
            Self::Snapshot(s) => RestoreRequest {
                snapshot: Some(s),
                from_sandbox: None,
            },
            Self::Request(r) => r,
        }
    }
}

/// Checks a snapshot name.
pub fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// An absolute directory inside a sandbox, normalized; `..` is refused.
pub fn normalize_path(path: &str) -> Result<String, CoreError> {
    let invalid = |why: &str| {
        CoreError::Agent(sandpit_proto::AgentError::new(
            sandpit_proto::ErrorCode::InvalidPath,
            format!("path '{path}' {why}"),
        ))
    };
    if !path.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if path.contains('\0') || path.len() > 4096 {
        return Err(invalid("is not a valid path"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("must not contain '..'")),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_names() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("//workspace/./a/").unwrap(), "/workspace/a");
        assert!(normalize_path("workspace").is_err());
        assert!(normalize_path("/a/../b").is_err());
        assert!(valid_name("nightly-1.2_x"));
        assert!(!valid_name("a b") && !valid_name("") && !valid_name("a/b"));
    }

    #[test]
    fn sweep_keeps_recorded_and_in_flight_objects() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sb/")).unwrap();
        for f in [
            "sb/a.tar.zst",
            "sb/b.tar.zst",
            "sb/b.tar.zst#3",
            "sb/c.tar.zst#1",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let recorded: HashSet<String> = ["sb/a.tar.zst".to_string()].into();
        let writing: HashSet<String> = ["sb/c.tar.zst".to_string()].into();
        sweep_dir(root, root, &recorded, &writing);
        assert!(root.join("sb/a.tar.zst").exists());
        assert!(!root.join("sb/b.tar.zst").exists());
        assert!(!root.join("sb/b.tar.zst#3").exists());
        assert!(root.join("sb/c.tar.zst#1").exists());
    }
}
