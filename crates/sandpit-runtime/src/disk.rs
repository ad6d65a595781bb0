//! Per-sandbox disk quotas: a sparse ext4 image (`disk.img` in the sandbox directory)
//! loop-mounted on the host at the sandbox's `rootfs/`, so everything the sandbox can write
//! (its whole writable root: `/tmp`, `/workspace`, `/root`, ...) lives in a filesystem of
//! `disk_mb` megabytes and a full disk is `ENOSPC` inside, never on the data dir.
//!
//! The mount is made in the host's mount namespace, so it outlives the server like the
//! sandbox does; [`ensure_mounted`] is idempotent (a mounted rootfs is left alone, an image
//! whose mount is gone, e.g. after a reboot, is mounted again) and [`unmount`] is called
//! before the sandbox directory is removed. Only a root server can do this.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bytes an unprivileged writer can still use on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(path).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The image file of a sandbox with a disk limit.
pub fn image(sandbox_dir: &Path) -> PathBuf {
    sandbox_dir.join("disk.img")
}

fn rootfs(sandbox_dir: &Path) -> PathBuf {
    sandbox_dir.join("rootfs")
}

/// Whether the sandbox's rootfs is a mount point (its own filesystem, not the data dir's).
pub fn is_mounted(sandbox_dir: &Path) -> bool {
    match (fs::metadata(rootfs(sandbox_dir)), fs::metadata(sandbox_dir)) {
        (Ok(r), Ok(d)) => r.dev() != d.dev(),
        _ => false,
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("running {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Makes sure `rootfs/` of the sandbox is its own ext4 filesystem of `disk_mb` MB, owned by
/// `owner` (the host uid/gid of root inside): creates the image on first use.
pub fn ensure_mounted(sandbox_dir: &Path, disk_mb: u64, owner: (u32, u32)) -> Result<(), String> {
    if is_mounted(sandbox_dir) {
        return Ok(());
    }
    ensure_mounted_fresh(sandbox_dir, disk_mb, owner)?;
    // A limit raised while the sandbox slept applies when it starts again.
    match fs::metadata(image(sandbox_dir)) {
        Ok(m) if m.len() < disk_mb.saturating_mul(1024 * 1024) => grow(sandbox_dir, disk_mb),
        _ => Ok(()),
    }
}

fn ensure_mounted_fresh(sandbox_dir: &Path, disk_mb: u64, owner: (u32, u32)) -> Result<(), String> {
    fs::create_dir_all(sandbox_dir).map_err(|e| format!("mkdir {}: {e}", sandbox_dir.display()))?;
    let img = image(sandbox_dir);
    let root = rootfs(sandbox_dir);
    let fresh = !img.exists();
    if fresh {
        let f = fs::File::create(&img).map_err(|e| format!("creating {}: {e}", img.display()))?;
        // Sparse: the host pays only for blocks the sandbox writes.
        f.set_len(disk_mb.saturating_mul(1024 * 1024))
            .map_err(|e| format!("sizing {}: {e}", img.display()))?;
        drop(f);
        // No reserved blocks (root inside is not host root), lazy init for a fast create.
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
            ])
            .arg(&img))
        .inspect_err(|_| {
            let _ = fs::remove_file(&img);
        })?;
    }
    fs::create_dir_all(&root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
        .arg(&img)
        .arg(&root))?;
    if fresh {
        let _ = fs::remove_dir(root.join("lost+found"));
        let (uid, gid) = owner;
        std::os::unix::fs::chown(&root, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", root.display()))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("chmod {}: {e}", root.display()))?;
    }
    Ok(())
}

/// Detaches the sandbox's disk (if mounted); the loop device is freed with the last user.
pub fn unmount(sandbox_dir: &Path) -> Result<(), String> {
    let root = rootfs(sandbox_dir);
    while is_mounted(sandbox_dir) {
        nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH)
            .map_err(|e| format!("unmounting {}: {e}", root.display()))?;
    }
    Ok(())
}

/// Grows the mounted disk to `disk_mb` online (ext4 grows while mounted; it never shrinks).
pub fn grow(sandbox_dir: &Path, disk_mb: u64) -> Result<(), String> {
    let img = image(sandbox_dir);
    let meta = fs::metadata(&img).map_err(|_| {
        "limits.disk_mb can only be set when the sandbox is created (it has no disk of its own)"
            .to_string()
    })?;
    let bytes = disk_mb.saturating_mul(1024 * 1024);
    if bytes < meta.len() {
        return Err(format!(
            "limits.disk_mb cannot shrink a disk ({} MB now): it can only grow",
            meta.len() / (1024 * 1024)
        ));
    }
    if bytes == meta.len() {
        return Ok(());
    }
    if !is_mounted(sandbox_dir) {
        return Err("the sandbox's disk is not mounted".into());
    }
    let img = img.canonicalize().unwrap_or(img);
    let out = run(Command::new("losetup").arg("-j").arg(&img))?;
    let dev = out
        .lines()
        .next()
        .and_then(|l| l.split(':').next())
        .filter(|d| d.starts_with("/dev/"))
        .ok_or_else(|| format!("no loop device holds {}", img.display()))?
        .to_string();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .map_err(|e| format!("opening {}: {e}", img.display()))?;
    f.set_len(bytes)
        .map_err(|e| format!("growing {}: {e}", img.display()))?;
    let resized = run(Command::new("losetup").args(["-c", &dev]))
        .and_then(|_| run(Command::new("resize2fs").arg(&dev)));
    if let Err(e) = resized {
        // Back to the size the filesystem has, so a later grow is not taken as done.
        let _ = f.set_len(meta.len());
        let _ = run(Command::new("losetup").args(["-c", &dev]));
        if e.contains("Permission denied") {
            return Err(
                "limits.disk_mb cannot grow while the sandbox runs: an online ext4 resize needs \
                 CAP_SYS_RESOURCE, which this server lacks"
                    .into(),
            );
        }
        return Err(e);
    }
    Ok(())
}
