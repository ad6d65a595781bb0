//! Unix socket paths longer than `sun_path` allows (108 bytes): such a path is reached through
//! `/proc/self/fd/N/<name>`, where N is an open descriptor of its directory.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

const SUN_PATH_MAX: usize = 100;

/// A socket path short enough to bind or connect to; keep it alive while using the path.
pub struct ShortPath {
    pub path: PathBuf,
    _dir: Option<OwnedFd>,
}

pub fn shorten(path: &Path) -> std::io::Result<ShortPath> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok(ShortPath {
            path: path.to_path_buf(),
            _dir: None,
        });
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("socket path has no file name"))?;
    let fd = open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
    Ok(ShortPath {
        path: short,
        _dir: Some(fd),
    })
}
