//! Mounts made through descriptors (the kernel's `open_tree`, `mount_setattr` and
//! `move_mount`), so that the jail never names a mount point by a path inside a tree the
//! sandbox can write: the target is a directory (or file) opened with [`crate::beneath`],
//! and the mount lands on exactly that inode.
//!
//! New filesystems (`proc`, `tmpfs`, `devpts`) are mounted with mount(2) onto
//! `/proc/self/fd/N` of such a descriptor: the kernel resolves that magic link to the
//! descriptor's own directory, never through a name.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

// From <linux/mount.h>; the libc crate does not carry them yet.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// `struct mount_attr`, version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cstring(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// A detached copy of the mount tree at `path` (a host path the host controls), with every
/// mount below it when `recursive`.
pub fn clone_host_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c = cstring(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree with a valid NUL-terminated path and integer flags; the returned
    // descriptor is owned right away.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    owned(fd)
}

/// A detached, recursive copy of the mount tree whose root is the directory `dir`.
pub fn clone_tree_at(dir: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | AT_RECURSIVE
        | libc::AT_EMPTY_PATH as libc::c_uint;
    // SAFETY: open_tree on a descriptor we hold with an empty path (AT_EMPTY_PATH); the
    // returned descriptor is owned right away.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), c"".as_ptr(), flags) };
    owned(fd)
}

fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sets mount attributes (`MOUNT_ATTR_*`) on a tree and every mount below it; attributes
/// not named stay as they are (locked ones included).
pub fn set_attrs(tree: BorrowedFd<'_>, set: u64) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr on a descriptor we hold, with a pointer to a live, correctly
    // sized mount_attr for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches the detached tree `tree` onto `target` (an open directory or file).
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: move_mount between two descriptors we hold, both with empty paths.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds the host path `src` onto `target`, read-only and nosuid (recursively for a
/// directory); the source's other flags (nodev, noexec, ...) are kept.
pub fn bind_ro(src: &Path, target: BorrowedFd<'_>) -> std::io::Result<()> {
    let tree = clone_host_tree(src, true)?;
    set_attrs(
        std::os::fd::AsFd::as_fd(&tree),
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
    )?;
    attach(std::os::fd::AsFd::as_fd(&tree), target)
}

/// Binds the host path `src` (a device node, a file) onto `target` as it is.
pub fn bind(src: &Path, target: BorrowedFd<'_>) -> std::io::Result<()> {
    let tree = clone_host_tree(src, false)?;
    attach(std::os::fd::AsFd::as_fd(&tree), target)
}
