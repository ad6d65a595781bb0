//! File operations, run as the sandbox's root inside its own root filesystem: a path can only
//! ever name something in this sandbox, whatever `..` or symlinks it contains.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use std::path::Path;

use sandpit_proto::{
    read_frame, write_data, write_end, write_json, AgentError, Channel, Entry, EntryKind,
    ErrorCode, Frame, ProtoError, Reply, Request, CHUNK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

fn check(path: &str) -> Result<(), AgentError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(AgentError::new(
            ErrorCode::InvalidPath,
            format!("path '{path}' must be absolute"),
        ));
    }
    Ok(())
}

fn entry(path: &Path, meta: &std::fs::Metadata) -> Entry {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    Entry {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        kind,
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
        modified: meta.mtime(),
    }
}

/// Requests that answer with one reply and carry no data.
pub async fn handle(req: Request) -> Reply {
    let res = tokio::task::spawn_blocking(move || simple(req))
        .await
        .unwrap_or_else(|e| Err(AgentError::new(ErrorCode::Internal, e.to_string())));
    res.unwrap_or_else(Reply::Error)
}

fn io(path: &str) -> impl Fn(std::io::Error) -> AgentError + '_ {
    move |e| AgentError::from_io(&e, path)
}

fn simple(req: Request) -> Result<Reply, AgentError> {
    match req {
        Request::Stat { path } => {
            check(&path)?;
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            Ok(Reply::Entry(entry(Path::new(&path), &meta)))
        }
        Request::ListDir { path } => {
            check(&path)?;
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            if !meta.is_dir() {
                return Err(AgentError::new(
                    ErrorCode::NotADirectory,
                    format!("'{path}' is not a directory"),
                ));
            }
            let mut entries = Vec::new();
            for e in std::fs::read_dir(&path).map_err(io(&path))? {
                let e = e.map_err(io(&path))?;
                if let Ok(meta) = e.path().symlink_metadata() {
                    entries.push(entry(&e.path(), &meta));
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Reply::Entries { entries })
        }
        Request::Mkdir { path, parents } => {
            check(&path)?;
            let r = if parents {
                std::fs::create_dir_all(&path)
            } else {
                std::fs::create_dir(&path)
            };
            r.map_err(io(&path))?;
            Ok(Reply::Ok)
        }
        Request::Remove { path, recursive } => {
            check(&path)?;
            if path == "/" {
                return Err(AgentError::new(
                    ErrorCode::InvalidPath,
                    "refusing to remove '/'",
                ));
            }
            let meta = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            let r = if !meta.is_dir() {
                std::fs::remove_file(&path)
            } else if recursive {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_dir(&path)
            };
            r.map_err(io(&path))?;
            Ok(Reply::Ok)
        }
        Request::Rename { from, to } => {
            check(&from)?;
            check(&to)?;
            std::fs::symlink_metadata(&from).map_err(io(&from))?;
            if let Some(parent) = Path::new(&to).parent() {
                std::fs::create_dir_all(parent).map_err(io(&to))?;
            }
            std::fs::rename(&from, &to).map_err(io(&from))?;
            Ok(Reply::Ok)
        }
        other => Err(AgentError::new(
            ErrorCode::BadRequest,
            format!("unexpected request {other:?}"),
        )),
    }
}

/// Files that report a size of 0 (procfs, sysfs) are read whole, up to this much, so their
/// real size can be announced.
const MAX_UNSIZED: u64 = 16 * 1024 * 1024;

/// Opens `path` for reading without ever blocking (a FIFO would wait for a writer) and
/// refuses anything but a regular file (a device would stream forever).
async fn open_regular(path: &str) -> Result<(tokio::fs::File, u64), AgentError> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.read(true).custom_flags(libc::O_NONBLOCK);
    let file = opts
        .open(path)
        .await
        .map_err(|e| AgentError::from_io(&e, path))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| AgentError::from_io(&e, path))?;
    if meta.is_dir() {
        return Err(AgentError::new(
            ErrorCode::IsADirectory,
            format!("'{path}' is a directory"),
        ));
    }
    if !meta.is_file() {
        return Err(AgentError::new(
            ErrorCode::InvalidPath,
            format!("'{path}' is not a regular file"),
        ));
    }
    Ok((file, meta.len()))
}

/// Sends a file: `FileInfo`, its bytes as data frames, an end frame. Exactly the announced
/// number of bytes is sent (a file that grows meanwhile is cut at its size when opened).
pub async fn read<W: AsyncWrite + Unpin>(path: &str, wr: &mut W) -> Result<(), ProtoError> {
    let opened = match check(path) {
        Ok(()) => open_regular(path).await,
        Err(e) => Err(e),
    };
    let (file, size) = match opened {
        Ok(pair) => pair,
        Err(e) => return write_json(wr, &Reply::Error(e)).await,
    };
    if size == 0 {
        let mut whole = Vec::new();
        if let Err(e) = file.take(MAX_UNSIZED).read_to_end(&mut whole).await {
            return write_json(wr, &Reply::Error(AgentError::from_io(&e, path))).await;
        }
        write_json(
            wr,
            &Reply::FileInfo {
                size: whole.len() as u64,
            },
        )
        .await?;
        for part in whole.chunks(CHUNK) {
            write_data(wr, Channel::Input, part).await?;
        }
        return write_end(wr, Channel::Input).await;
    }
    write_json(wr, &Reply::FileInfo { size }).await?;
    let mut file = file.take(size);
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => write_data(wr, Channel::Input, &buf[..n]).await?,
            // The size was already announced; a short stream tells the server it failed.
            Err(_) => return Err(ProtoError::Closed),
        }
    }
    write_end(wr, Channel::Input).await
}

/// Receives a file: data frames until the end frame, then answers `Ok` or an error. Parent
/// directories are created. On failure the rest of the upload is still consumed, so the
/// connection stays usable.
pub async fn write<R, W>(
    path: &str,
    mode: Option<u32>,
    rd: &mut R,
    wr: &mut W,
) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut failure = check(path).err();
    let mut upload = None;
    if failure.is_none() {
        match Upload::start(path, mode).await {
            Ok(u) => upload = Some(u),
            Err(e) => failure = Some(AgentError::from_io(&e, path)),
        }
    }
    // A dropped connection returns early here; the upload's temporary file goes with it and
    // the previous contents of `path` stay.
    loop {
        match read_frame(rd).await? {
            Frame::Data(Channel::Input, data) => {
                if let (Some(u), None) = (upload.as_mut(), &failure) {
                    if let Err(e) = u.file.write_all(&data).await {
                        failure = Some(AgentError::from_io(&e, path));
                    }
                }
            }
            Frame::End(Channel::Input) => break,
            other => {
                return Err(ProtoError::Malformed(format!(
                    "unexpected frame in upload: {other:?}"
                )))
            }
        }
    }
    if let (Some(u), None) = (upload, &failure) {
        if let Err(e) = u.finish().await {
            failure = Some(AgentError::from_io(&e, path));
        }
    }
    let reply = failure.map_or(Reply::Ok, Reply::Error);
    write_json(wr, &reply).await
}

/// Bytes gathered before each write of an upload.
const UPLOAD_BUFFER: usize = 4 * 1024 * 1024;

/// An upload in progress: written to a temporary file beside the target and renamed over it
/// only once complete, so a reader never sees half a file and an interrupted upload leaves
/// the previous contents in place.
struct Upload {
    /// Buffered so that a large upload becomes few large writes: each write of a tokio file
    /// is a trip through the blocking thread pool.
    file: tokio::io::BufWriter<tokio::fs::File>,
    temp: std::path::PathBuf,
    target: std::path::PathBuf,
    done: bool,
}

impl Upload {
    async fn start(path: &str, mode: Option<u32>) -> std::io::Result<Self> {
        // Writing through a symlink writes its target, as writing the path in place would.
        let target = match tokio::fs::canonicalize(path).await {
            Ok(t) => t,
            Err(_) => std::path::PathBuf::from(path),
        };
        let mut perms = mode.unwrap_or(0o644);
        let mut owner = None;
        match tokio::fs::metadata(&target).await {
            Ok(m) if m.is_dir() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory",
                ))
            }
            Ok(m) if !m.is_file() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a regular file",
                ))
            }
            Ok(m) => {
                // The replacement keeps the owner and (unless given) the mode of the file.
                owner = Some((m.uid(), m.gid()));
                if mode.is_none() {
                    perms = m.permissions().mode() & 0o7777;
                }
            }
            _ => {}
        }
        let dir = target.parent().unwrap_or(Path::new("/")).to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(".{name}.sandpit-upload-{n}"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(perms)
            .open(&temp)
            .await?;
        if let Some((uid, gid)) = owner {
            let _ = std::os::unix::fs::chown(&temp, Some(uid), Some(gid));
        }
        let _ = tokio::fs::set_permissions(&temp, std::fs::Permissions::from_mode(perms)).await;

        Ok(Self {
            file: tokio::io::BufWriter::with_capacity(UPLOAD_BUFFER, file),
            temp,
            target,
            done: false,
        })
    }

    async fn finish(mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.temp, &self.target).await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
