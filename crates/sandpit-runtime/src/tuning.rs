//! Host tuning the server may apply at start: `favordynmods` on the cgroup v2 mount.
//!
//! Moving a process into a cgroup takes the kernel's global `cgroup_threadgroup_rwsem` for
//! writing, which by default waits for an RCU grace period: on the benchmark host each of
//! the three cgroup v1 joins of a sandbox start took about 3 ms, most of a cold create
//! (docs/BENCHMARKS.md, "Joining cgroups"). The `favordynmods` mount option (Linux 6.0+)
//! makes that lock cheap to take for writing, at the cost of slightly dearer forks and exits
//! on the whole host. The lock is global, so setting the option on any cgroup v2 mount helps
//! v1 hierarchies too. It is a host-wide change: opt-in (`cgroup_favordynmods = true`).

use std::path::PathBuf;

/// Whether any cgroup mount of this host has `favordynmods` set.
pub fn favordynmods_on() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let on = cgroup_mounts(&mounts)
        .any(|(_, _, options)| options.split(',').any(|o| o == "favordynmods"));
    on
}

/// The first cgroup v2 mount point in `mounts` (the text of `/proc/self/mounts`).
fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    cgroup_mounts(mounts)
        .find_map(|(point, kind, _)| (kind == "cgroup2").then(|| PathBuf::from(point)))
}

/// The cgroup v1 and v2 mounts in `mounts`: mount point, file system type, options.
fn cgroup_mounts(mounts: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    mounts.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.len() > 3 && matches!(f[2], "cgroup" | "cgroup2")).then(|| (f[1], f[2], f[3]))
    })
}

/// Sets `favordynmods` on the host's cgroup v2 mount (a remount; root only). Returns the
/// mount point, or why it could not.
pub fn enable_favordynmods() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("reading /proc/self/mounts: {e}"))?;
    let target = cgroup2_mount(&mounts).ok_or("this host has no cgroup v2 mount")?;
    nix::mount::mount(
        None::<&str>,
        &target,
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT,
        Some("favordynmods"),
    )
    .map_err(|e| format!("remounting {} with favordynmods: {e}", target.display()))?;
    if !favordynmods_on() {
        return Err(format!(
            "{} was remounted but does not show favordynmods (a kernel older than 6.0?)",
            target.display()
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_v2_mount_of_a_hybrid_host() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("cgroup /a cgroup rw 0 0\n"), None);
    }
}
