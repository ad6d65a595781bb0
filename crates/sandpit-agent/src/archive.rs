//! Snapshot archives, made and unpacked inside the sandbox as its own root: a tar stream
//! compressed with zstd, so files keep the sandbox's own owners, modes and symlinks, and a
//! hostile archive can only ever touch this sandbox. The server only moves the bytes.
//!
//! What an archive of `/` holds is everything the sandbox wrote: its root directory minus
//! the mount points the jail puts there (the host's system directories, `/proc`, `/dev`,
//! the agent binary) and the agent's own state in `/run/sandpit`.
//!
//! A clean unpack (a restore) is atomic: the archive is unpacked into a staging directory
//! inside the target (same filesystem, so it counts against the sandbox's disk), and only
//! once the whole archive arrived and unpacked is the old content renamed away, the staged
//! content renamed in and the old removed. Any failure removes the staging directory and
//! leaves the target exactly as it was.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use sandpit_proto::{
    read_frame, write_data, write_end, write_json, AgentError, Channel, ErrorCode, Frame,
    ProtoError, Reply, CHUNK,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Paths that are never archived, emptied or unpacked into: mount points and agent state.
const SKIP: &[&str] = &[
    "/proc",
    "/dev",
    "/sys",
    "/.sandpit",
    "/usr",
    "/etc",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/run/sandpit",
];

/// Chunks in flight between the blocking tar/zstd side and the socket.
const IN_FLIGHT: usize = 4;

/// Name prefix of a restore's staging directory (inside the target directory).
const STAGING_PREFIX: &str = ".sandpit-restore-";
/// Name prefix of the directory the old content is renamed into during a restore's swap.
const OLD_PREFIX: &str = ".sandpit-old-";

/// A restore's own scratch directories: never archived, moved or unpacked into.
fn is_scratch(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with(STAGING_PREFIX) || name.starts_with(OLD_PREFIX)
}

fn skipped(abs: &Path) -> bool {
    SKIP.iter().any(|s| abs.starts_with(s))
}

fn bad(code: ErrorCode, message: impl Into<String>) -> AgentError {
    AgentError::new(code, message)
}

/// An absolute path without `.`/`..` tricks; the directory an archive is made of or into.
fn checked_dir(path: &str) -> Result<PathBuf, AgentError> {
    let p = Path::new(path);
    if !path.starts_with('/') || path.contains('\0') {
        return Err(bad(
            ErrorCode::InvalidPath,
            format!("path '{path}' must be absolute"),
        ));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(bad(
            ErrorCode::InvalidPath,
            format!("path '{path}' must not contain '..'"),
        ));
    }
    let p: PathBuf = p.components().collect();
    if skipped(&p) {
        return Err(bad(
            ErrorCode::InvalidPath,
            format!(
                "'{path}' is not part of the sandbox's own files (system directories, /proc, /dev and agent state are not archived)"
            ),
        ));
    }
    Ok(p)
}

fn globs(excludes: &[String]) -> Result<GlobSet, AgentError> {
    let mut set = GlobSetBuilder::new();
    for pattern in excludes {
        let trimmed = pattern.trim_end_matches('/');
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        if trimmed.is_empty() {
            return Err(bad(ErrorCode::BadRequest, "an exclude pattern is empty"));
        }
        let glob = GlobBuilder::new(trimmed)
            .literal_separator(true)
            .build()
            .map_err(|e| {
                bad(
                    ErrorCode::BadRequest,
                    format!("exclude pattern '{pattern}': {e}"),
                )
            })?;
        set.add(glob);
    }
    set.build()
        .map_err(|e| bad(ErrorCode::BadRequest, format!("exclude patterns: {e}")))
}

/// Sends an archive of `root`: `Ok`, data frames, end frame, then `Ok` or `Error`.
pub async fn send<W: AsyncWrite + Unpin>(
    root: &str,
    excludes: &[String],
    wr: &mut W,
) -> Result<(), ProtoError> {
    let prepared = checked_dir(root).and_then(|dir| {
        let meta = std::fs::metadata(&dir).map_err(|e| AgentError::from_io(&e, root))?;
        if !meta.is_dir() {
            return Err(bad(
                ErrorCode::NotADirectory,
                format!("'{root}' is not a directory"),
            ));
        }
        Ok((dir, meta.dev(), globs(excludes)?))
    });
    let (dir, dev, set) = match prepared {
        Ok(p) => p,
        Err(e) => return write_json(wr, &Reply::Error(e)).await,
    };
    write_json(wr, &Reply::Ok).await?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let task = tokio::task::spawn_blocking(move || build(&dir, dev, &set, tx));
    while let Some(chunk) = rx.recv().await {
        // A server that hung up drops `rx` here, which stops the builder.
        write_data(wr, Channel::Stdout, &chunk).await?;
    }
    let result = task
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
    write_end(wr, Channel::Stdout).await?;
    let reply = match result {
        Ok(()) => Reply::Ok,
        Err(e) => Reply::Error(AgentError::from_io(&e, root)),
    };
    write_json(wr, &reply).await
}

/// Buffers archive bytes into chunks for the socket.
struct ChunkWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn push(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "server hung up"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn build(
    root: &Path,
    dev: u64,
    excludes: &GlobSet,
    tx: mpsc::Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let out = ChunkWriter {
        tx,
        buf: Vec::with_capacity(CHUNK),
    };
    let mut encoder = zstd::Encoder::new(out, 3)?;
    // A damaged object is then caught on restore even where it still decompresses.
    encoder.include_checksum(true)?;
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    walk(&mut tar, root, Path::new(""), dev, excludes)?;
    let encoder = tar.into_inner()?;
    let mut out = encoder.finish()?;
    out.push()
}

fn walk<W: Write>(
    tar: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    dev: u64,
    excludes: &GlobSet,
) -> std::io::Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.file_name())).collect(),
        // Removed while we walked: nothing to archive.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let abs = root.join(&rel);
        if skipped(&abs)
            || is_scratch(&name)
            || excludes.is_match(&rel)
            || excludes.is_match(Path::new(&name))
        {
            continue;
        }
        let meta = match abs.symlink_metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let ft = meta.file_type();
        if ft.is_socket() || (ft.is_dir() && meta.dev() != dev) {
            // Sockets cannot be archived; another file system here is a mount point.
            continue;
        }
        match tar.append_path_with_name(&abs, &rel) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("/{}: {e}", rel.display()),
                ))
            }
        }
        if ft.is_dir() {
            walk(tar, root, &rel, dev, excludes)?;
        }
    }
    Ok(())
}

/// Receives an archive into `dir`: data frames until the end frame, then `Ok` or `Error`.
/// On failure the rest of the data is still read, so the connection stays usable. With
/// `clean` the archive replaces what is in `dir`, atomically (see the module comment).
pub async fn receive<R, W>(dir: &str, clean: bool, rd: &mut R, wr: &mut W) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel::<Vec<u8>>(IN_FLIGHT);
    let target = match checked_dir(dir) {
        Ok(target) => target,
        Err(e) => {
            drop(rx);
            drain(rd).await?;
            return write_json(wr, &Reply::Error(e)).await;
        }
    };
    let into = target.clone();
    let task = tokio::task::spawn_blocking(move || {
        let input = ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        if clean {
            unpack_staged(&into, input).map(Some)
        } else {
            unpack(&into, input).map(|()| None)
        }
    });
    let read = async {
        loop {
            match read_frame(rd).await? {
                // The unpacker may have stopped early on a bad archive; keep reading anyway.
                Frame::Data(Channel::Input, data) => {
                    let _ = tx.send(data).await;
                }
                Frame::End(Channel::Input) => return Ok(()),
                other => {
                    return Err(ProtoError::Malformed(format!(
                        "unexpected frame in archive: {other:?}"
                    )))
                }
            }
        }
    }
    .await;
    drop(tx);
    let unpacked = task
        .await
        .unwrap_or_else(|e| Err(bad(ErrorCode::Internal, e.to_string())));
    if let Err(e) = read {
        // The sender hung up mid-archive: what arrived is not the whole archive.
        if let Ok(Some(staging)) = unpacked {
            let _ = tokio::task::spawn_blocking(move || discard(&staging)).await;
        }
        return Err(e);
    }
    let result = match unpacked {
        Ok(Some(staging)) => tokio::task::spawn_blocking(move || swap_in(&target, &staging))
            .await
            .unwrap_or_else(|e| Err(bad(ErrorCode::Internal, e.to_string()))),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    write_json(wr, &result.map_or_else(Reply::Error, |()| Reply::Ok)).await
}

async fn drain<R: AsyncRead + Unpin>(rd: &mut R) -> Result<(), ProtoError> {
    loop {
        match read_frame(rd).await? {
            Frame::Data(Channel::Input, _) => {}
            Frame::End(Channel::Input) => return Ok(()),
            other => {
                return Err(ProtoError::Malformed(format!(
                    "unexpected frame in archive: {other:?}"
                )))
            }
        }
    }
}

/// Archive bytes arriving from the socket, read by the blocking unpacker.
struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpacks over what is in `dir`.
fn unpack(dir: &Path, input: impl Read) -> Result<(), AgentError> {
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|e| AgentError::from_io(&e, &shown))?;
    unpack_entries(dir, dir, input)
}

/// Unpacks into a new staging directory inside `dir`; the staging directory once the whole
/// archive unpacked (and decompressed to its end), else nothing is left of it.
fn unpack_staged(dir: &Path, input: impl Read) -> Result<PathBuf, AgentError> {
    let shown = dir.display().to_string();
    let io = |e: std::io::Error| AgentError::from_io(&e, &shown);
    std::fs::create_dir_all(dir).map_err(io)?;
    remove_scratch(dir);
    let staging = dir.join(format!("{STAGING_PREFIX}{}", scratch_suffix()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io)?;
    match unpack_entries(&staging, dir, input) {
        Ok(()) => Ok(staging),
        Err(e) => {
            discard(&staging);
            Err(e)
        }
    }
}

/// A name part no other restore uses now.
fn scratch_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}-{n}-{nanos}", std::process::id())
}

/// Removes the scratch directories a restore cut off by a crash left in `dir`.
fn remove_scratch(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            if is_scratch(&entry.file_name()) {
                discard(&entry.path());
            }
        }
    }
}

fn discard(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("sandpit-agent: removing {}: {e}", path.display());
        }
    }
}

/// Unpacks the archive's entries into `into`; `dir` is where they end up (which paths are
/// skipped is decided there). The archive is read to its end, so a cut-off or damaged one
/// fails here even when its tar part looks complete.
fn unpack_entries(into: &Path, dir: &Path, input: impl Read) -> Result<(), AgentError> {
    let shown = dir.display().to_string();
    let io = |e: std::io::Error| AgentError::from_io(&e, &shown);
    let decoder = zstd::Decoder::new(input).map_err(io)?;
    let mut archive = tar::Archive::new(decoder);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    archive.set_unpack_xattrs(false);
    let invalid = |e: std::io::Error| bad(ErrorCode::BadRequest, format!("invalid archive: {e}"));
    for entry in archive.entries().map_err(invalid)? {
        let mut entry = entry.map_err(invalid)?;
        let path = entry.path().map_err(invalid)?.into_owned();
        let shown_entry = path.display().to_string();
        if !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(bad(
                ErrorCode::BadRequest,
                format!("invalid archive: entry '{shown_entry}' is absolute or contains '..'"),
            ));
        }
        if skipped(&dir.join(&path)) || path.iter().next().is_some_and(is_scratch) {
            continue;
        }
        // `unpack_in` refuses to write through a symlink that leads out of `into`.
        match entry.unpack_in(into) {
            Ok(true) => {}
            Ok(false) => {
                return Err(bad(
                    ErrorCode::BadRequest,
                    format!("invalid archive: entry '{shown_entry}' leads outside '{shown}'"),
                ))
            }
            // Not an OS error: the archive itself is at fault (an entry through a symlink
            // out of `dir`, a malformed header).
            Err(e) if e.raw_os_error().is_none() && os_cause(&e).is_none() => {
                return Err(bad(ErrorCode::BadRequest, format!("invalid archive: {e}")))
            }
            Err(e) => {
                let e = os_cause(&e).unwrap_or(e);
                return Err(AgentError::from_io(&e, &format!("{shown}/{shown_entry}")));
            }
        }
    }
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(invalid)?;
    Ok(())
}

/// Replaces the content of `dir` with that of `staging` (inside it): the old entries are
/// renamed into a scratch directory, the staged ones renamed in, the old removed. Renames
/// within one filesystem need no space; should one fail all are undone.
fn swap_in(dir: &Path, staging: &Path) -> Result<(), AgentError> {
    let shown = dir.display().to_string();
    let io = |e: std::io::Error| AgentError::from_io(&e, &shown);
    let result = (|| {
        let dev = std::fs::metadata(dir)?.dev();
        let old = dir.join(format!("{OLD_PREFIX}{}", scratch_suffix()));
        std::fs::DirBuilder::new().mode(0o700).create(&old)?;
        let mut moved = Vec::new();
        let mut placed = Vec::new();
        let swapped =
            move_away(dir, dev, &old, &mut moved).and_then(|()| move_in(staging, dir, &mut placed));
        if let Err(e) = swapped {
            for p in placed.iter().rev() {
                let _ = std::fs::rename(p, staging.join(format!("undo-{}", scratch_suffix())));
            }
            for (from, to) in moved.iter().rev() {
                let _ = std::fs::rename(to, from);
            }
            discard(&old);
            return Err(e);
        }
        discard(&old);
        Ok(())
    })();
    discard(staging);
    result.map_err(io)
}

/// Renames everything in `dir` but mount points, agent state and scratch directories into
/// `old`, noting each (from, to).
fn move_away(
    dir: &Path,
    dev: u64,
    old: &Path,
    moved: &mut Vec<(PathBuf, PathBuf)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if skipped(&path) || is_scratch(&entry.file_name()) {
            continue;
        }
        let meta = path.symlink_metadata()?;
        if meta.is_dir()
            && (SKIP.iter().any(|s| Path::new(s).starts_with(&path)) || meta.dev() != dev)
        {
            // Holds something kept (like `/run` holds `/run/sandpit`), or is a mount.
            if meta.dev() == dev {
                move_away(&path, dev, old, moved)?;
            }
            continue;
        }
        let to = old.join(moved.len().to_string());
        std::fs::rename(&path, &to)?;
        moved.push((path, to));
    }
    Ok(())
}

/// Renames the entries of `src` into `dst`; a directory that is still there (one that holds
/// something kept) is merged into.
fn move_in(src: &Path, dst: &Path, placed: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if skipped(&to) {
            continue;
        }
        match to.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::rename(entry.path(), &to)?;
                placed.push(to);
            }
            Ok(m) if m.is_dir() && entry.file_type()?.is_dir() => {
                move_in(&entry.path(), &to, placed)?;
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The OS error under one of the tar crate's wrapped errors, if there is one.
fn os_cause(e: &std::io::Error) -> Option<std::io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|c| c as _);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(std::io::Error::from_raw_os_error(code));
            }
        }
        cause = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_checked() {
        assert_eq!(checked_dir("/").unwrap(), PathBuf::from("/"));
        assert_eq!(
            checked_dir("/workspace/./a/").unwrap(),
            PathBuf::from("/workspace/a")
        );
        for bad in [
            "workspace",
            "/a/../etc",
            "/usr",
            "/usr/lib",
            "/proc/1",
            "/run/sandpit",
        ] {
            assert!(checked_dir(bad).is_err(), "{bad}");
        }
    }

    /// A tar.zst with entries named as given (raw names, so `..` and `/` get through).
    fn hostile(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        for (name, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            let body: &[u8] = if *kind == tar::EntryType::Regular {
                b"pwned"
            } else {
                b""
            };
            h.set_size(body.len() as u64);
            h.set_cksum();
            tar.append(&h, body).unwrap();
        }
        zstd::encode_all(&tar.into_inner().unwrap()[..], 1).unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("sandpit-archive-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn hostile_archives_cannot_write_outside_the_target() {
        let base = scratch("hostile");
        let dst = base.join("dst");
        let outside = base.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let file = tar::EntryType::Regular;
        let cases = [
            hostile(&[("../escape", file, "")]),
            hostile(&[("ok/../../escape", file, "")]),
            hostile(&[(&format!("{}/escape", outside.display()), file, "")]),
            hostile(&[
                (
                    "link",
                    tar::EntryType::Symlink,
                    &outside.display().to_string(),
                ),
                ("link/escape", file, ""),
            ]),
        ];
        for (n, archive) in cases.iter().enumerate() {
            let r = restore(&dst, &archive[..]);
            assert!(
                r.as_ref().is_err_and(|e| e.code == ErrorCode::BadRequest),
                "case {n}: {r:?}"
            );
            assert!(!outside.join("escape").exists(), "case {n} escaped");
            assert!(!base.join("escape").exists(), "case {n} escaped");
        }
        // A well-formed archive unpacks, and `clean` removes what was there before.
        std::fs::write(dst.join("old"), b"x").unwrap();
        restore(&dst, &hostile(&[("a/b", file, "")])[..]).unwrap();
        assert_eq!(std::fs::read(dst.join("a/b")).unwrap(), b"pwned");
        assert!(!dst.join("old").exists());
        assert_eq!(entries(&dst), ["a"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// What a restore does: unpack staged, then swap in.
    fn restore(dst: &Path, archive: &[u8]) -> Result<(), AgentError> {
        let staging = unpack_staged(dst, archive)?;
        swap_in(dst, &staging)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_restore_leaves_the_target_as_it_was() {
        let base = scratch("atomic");
        let dst = base.join("dst");
        std::fs::create_dir_all(dst.join("keep/deep")).unwrap();
        std::fs::write(dst.join("keep/deep/f"), b"old").unwrap();
        std::fs::write(dst.join("top"), b"old").unwrap();
        let file = tar::EntryType::Regular;
        // Compressed as `build` does, with a checksum.
        let tar = zstd::decode_all(&hostile(&[("new", file, ""), ("x/y", file, "")])[..]).unwrap();
        let mut enc = zstd::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_checksum(true).unwrap();
        enc.write_all(&tar).unwrap();
        let good = enc.finish().unwrap();
        let cut = &good[..good.len() / 2];
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0xff;
        for (n, archive) in [cut, &flipped[..], b"not an archive"].iter().enumerate() {
            let r = restore(&dst, archive);
            assert!(r.is_err(), "case {n}: {r:?}");
            assert_eq!(entries(&dst), ["keep", "top"], "case {n}");
            assert_eq!(std::fs::read(dst.join("keep/deep/f")).unwrap(), b"old");
        }
        restore(&dst, &good).unwrap();
        assert_eq!(entries(&dst), ["new", "x"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn excludes_match_paths_and_names() {
        let set = globs(&["*.log".into(), "workspace/cache/".into()]).unwrap();
        assert!(set.is_match("a.log"));
        assert!(set.is_match("workspace/cache"));
        assert!(!set.is_match("workspace/cache.txt"));
        assert!(globs(&["a[".into()]).is_err());
        assert!(globs(&["".into()]).is_err());
    }
}
