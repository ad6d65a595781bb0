//! File operations that host root (or the server's user) makes inside a tree a sandbox can
//! write: a sandbox's root directory and everything below it.
//!
//! Such a tree may hold anything the sandbox left there: symlinks to host directories,
//! directories swapped for symlinks between two calls (`renameat2(RENAME_EXCHANGE)`), files
//! where directories were. So nothing here resolves a path by name through the tree: every
//! step starts at a directory descriptor ([`Dir`]), every lookup goes through `openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS` (a symlink anywhere on the
//! way is an error, never followed), and ownership and modes are changed on the opened
//! descriptor (`fchown`, `fchmod`), never by path. What a descriptor names cannot be swapped
//! away under it, so there is no window between a check and its use.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// The resolution every lookup inside a sandbox's tree uses.
fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// An open directory; what is below it is reached through it only.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

/// What a name in a directory is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Missing,
    Dir,
    File,
    Symlink,
    Other,
}

fn io(e: Errno) -> std::io::Error {
    std::io::Error::from(e)
}

/// A single path component: no `/`, not `.` or `..`, not empty.
fn check_name(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("'{name}' is not a single path component"),
        ));
    }
    Ok(())
}

impl Dir {
    /// Opens a directory the host controls (every component of `path` is the host's, e.g.
    /// `<data>/sandboxes/<id>/rootfs`): its last component must not be a symlink.
    pub fn open_host(path: &Path) -> std::io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        Ok(Self { fd })
    }

    /// Wraps a descriptor of a directory (e.g. the root of a fresh mount).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// `/proc/self/fd/N`: the directory itself for calls that take a path (mount(2)); the
    /// kernel resolves it to this exact directory, never through a name.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Opens `rel` (one or more components) below this directory, refusing symlinks on the
    /// way and at the end.
    pub fn open_dir(&self, rel: &str) -> std::io::Result<Dir> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(resolve());
        let fd = openat2(self.fd.as_fd(), rel, how).map_err(io)?;
        Ok(Dir { fd })
    }

    /// Opens the file `rel` below this directory as an `O_PATH` descriptor (a mount target
    /// or a bind source), refusing symlinks.
    pub fn open_path(&self, rel: &str) -> std::io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(resolve());
        openat2(self.fd.as_fd(), rel, how).map_err(io)
    }

    /// What `name` is here, not following it.
    pub fn kind(&self, name: &str) -> std::io::Result<Kind> {
        check_name(name)?;
        match fstatat(
            self.fd.as_fd(),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => Ok(
                match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                    SFlag::S_IFDIR => Kind::Dir,
                    SFlag::S_IFREG => Kind::File,
                    SFlag::S_IFLNK => Kind::Symlink,
                    _ => Kind::Other,
                },
            ),
            Err(Errno::ENOENT) => Ok(Kind::Missing),
            Err(e) => Err(io(e)),
        }
    }

    /// Makes `name` a directory if it is missing (mode and owner set on its descriptor) and
    /// opens it. With `repair`, whatever else has the name (a symlink, a file) is removed
    /// first: for mount points, which must be real directories. Without it, anything but a
    /// directory is an error (`ELOOP` for a symlink).
    pub fn ensure_dir(
        &self,
        name: &str,
        mode: u32,
        owner: Option<(u32, u32)>,
        repair: bool,
    ) -> std::io::Result<Dir> {
        check_name(name)?;
        let kind = self.kind(name)?;
        if repair && !matches!(kind, Kind::Dir | Kind::Missing) {
            unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io)?;
        }
        let created = match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(io(e)),
        };
        let dir = self.open_dir(name)?;
        if created {
            if let Some((uid, gid)) = owner {
                fchown(
                    dir.fd.as_fd(),
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                )
                .map_err(io)?;
            }
            fchmod(dir.fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(io)?;
        }
        Ok(dir)
    }

    /// Makes `name` an empty regular file if it is missing (a mount point for a file) and
    /// opens it as an `O_PATH` descriptor; a symlink or other non-file there is replaced.
    pub fn ensure_file(&self, name: &str) -> std::io::Result<OwnedFd> {
        check_name(name)?;
        match self.kind(name)? {
            Kind::File => {}
            Kind::Missing => {}
            Kind::Dir => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    format!("'{name}' is a directory"),
                ))
            }
            Kind::Symlink | Kind::Other => {
                unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io)?
            }
        }
        let how = OpenHow::new()
            .flags(OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(0o644))
            .resolve(resolve());
        drop(openat2(self.fd.as_fd(), name, how).map_err(io)?);
        self.open_path(name)
    }

    /// Creates the symlink `name -> target` unless something has that name already.
    pub fn ensure_symlink(&self, target: &Path, name: &str) -> std::io::Result<()> {
        check_name(name)?;
        if self.kind(name)? != Kind::Missing {
            return Ok(());
        }
        match symlinkat(target, self.fd.as_fd(), OsStr::from_bytes(name.as_bytes())) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(io(e)),
        }
    }

    /// Sets this directory's owner and mode (on the descriptor).
    pub fn set_owner_mode(&self, owner: Option<(u32, u32)>, mode: u32) -> std::io::Result<()> {
        if let Some((uid, gid)) = owner {
            fchown(
                self.fd.as_fd(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
            )
            .map_err(io)?;
        }
        fchmod(self.fd.as_fd(), Mode::from_bits_truncate(mode)).map_err(io)
    }

    /// Names in this directory (without `.` and `..`).
    pub fn names(&self) -> std::io::Result<Vec<std::ffi::OsString>> {
        // A second descriptor: reading a directory moves the offset of the one it reads.
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(resolve());
        let fd = openat2(self.fd.as_fd(), ".", how).map_err(io)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(io)?;
        let mut out = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }
}

/// Removes a directory tree that a sandbox could write, even where the sandbox made parts of
/// it unreadable (mode 0 directories, which stop a rootless server): the standard library's
/// removal first (it never follows symlinks), then every directory below is opened through
/// descriptors, made 0700 and the removal tried again.
pub fn remove_tree(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    fn open_up(d: &Dir, depth: usize) {
        if depth > 4096 {
            return;
        }
        let _ = fchmod(d.fd(), Mode::from_bits_truncate(0o700));
        let Ok(names) = d.names() else { return };
        for name in names {
            let Some(name) = name.to_str() else { continue };
            if let Ok(Kind::Dir) = d.kind(name) {
                if let Ok(child) = d.open_dir(name) {
                    open_up(&child, depth + 1);
                }
            }
        }
    }
    if let Ok(top) = Dir::open_host(dir) {
        open_up(&top, 0);
    }
    std::fs::remove_dir_all(dir).map_err(|e| (dir.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    #[test]
    fn symlinks_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let mode_before = std::fs::metadata(&outside).unwrap().mode();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(&outside, root.join("var")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        symlink(&outside, root.join("real/inner")).unwrap();
        let d = Dir::open_host(&root).unwrap();

        // Lookups through or at a symlink fail.
        assert_eq!(d.kind("var").unwrap(), Kind::Symlink);
        assert!(d.open_dir("var").is_err());
        assert!(d.open_dir("real/inner").is_err());
        assert!(d.open_dir("../root").is_err());
        assert!(d.open_dir("/tmp").is_err());
        // Without repair a symlink is an error; nothing lands outside.
        assert!(d.ensure_dir("var", 0o755, None, false).is_err());
        let real = d.open_dir("real").unwrap();
        assert!(real.ensure_dir("inner", 0o1777, None, false).is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(&outside).unwrap().mode(), mode_before);
        // With repair the symlink itself is replaced by a directory.
        let var = d.ensure_dir("var", 0o755, None, true).unwrap();
        drop(var);
        assert!(root.join("var").symlink_metadata().unwrap().is_dir());
        assert!(outside.exists());
    }

    #[test]
    fn files_and_symlinks_are_made_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Dir::open_host(tmp.path()).unwrap();
        let sub = d.ensure_dir("a", 0o1777, None, false).unwrap();
        let meta = std::fs::metadata(tmp.path().join("a")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o1777);
        drop(sub);
        let outside = tempfile::NamedTempFile::new().unwrap();
        symlink(outside.path(), tmp.path().join("f")).unwrap();
        let _fd = d.ensure_file("f").unwrap();
        assert!(tmp.path().join("f").symlink_metadata().unwrap().is_file());
        d.ensure_symlink(Path::new("usr/bin"), "bin").unwrap();
        assert_eq!(
            std::fs::read_link(tmp.path().join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert!(d.ensure_dir("x/y", 0o755, None, false).is_err());
    }

    #[test]
    fn a_tree_with_unreadable_directories_is_removed_and_links_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let keep = tmp.path().join("keep");
        std::fs::create_dir(&keep).unwrap();
        std::fs::write(keep.join("file"), b"x").unwrap();
        std::fs::set_permissions(&keep, std::fs::Permissions::from_mode(0o500)).unwrap();
        let tree = tmp.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        symlink(&keep, tree.join("a/link")).unwrap();
        std::fs::set_permissions(tree.join("a"), std::fs::Permissions::from_mode(0o0)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(keep.join("file").exists());
        assert_eq!(
            std::fs::metadata(&keep).unwrap().permissions().mode() & 0o777,
            0o500
        );
    }
}
