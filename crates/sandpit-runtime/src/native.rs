//! The native runtime: sandboxes as namespaces on this machine, started through `sandpit jail`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;

use crate::cgroup::{self, CgroupSetup};
use crate::jail::{live_start_time, JailConfig, SubordinateIds};
use crate::{LaunchSpec, Launched, Limits, Runtime, RuntimeError};

/// How many uids/gids each sandbox gets when the server runs as root.
pub const IDS_PER_SANDBOX: u32 = 65536;

#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub data_dir: PathBuf,
    /// The `sandpit` binary: run as `sandpit jail` and bound into sandboxes as the agent.
    pub binary: PathBuf,
    /// First host uid of sandbox id ranges (root only); slot N gets `uid_base + N * 65536`.
    pub uid_base: u32,
}

pub struct NativeRuntime {
    opts: RuntimeOptions,
    cgroups: CgroupSetup,
    privileged: bool,
    /// Rootless: the user's subordinate ids, when it has them and newuidmap is installed.
    subordinate: Option<SubordinateIds>,
    /// UTS namespaces of warm-pool sandboxes, opened by `prepare_adopt` for `adopt`.
    uts: std::sync::Mutex<std::collections::HashMap<String, std::fs::File>>,
}

impl NativeRuntime {
    /// At a clean shutdown: removes this server's own cgroup directories (one per v1
    /// hierarchy, or the v2 one) unless sandboxes still have theirs in them.
    pub fn remove_instance_cgroups(&self) {
        for dir in self.cgroups.remove_parents() {
            tracing::info!(dir = %dir.display(), "instance cgroup kept: sandboxes still use it");
        }
    }

    pub fn new(opts: RuntimeOptions) -> Self {
        let instance = instance_name(&opts.data_dir);
        let cgroups = CgroupSetup::detect(&instance);
        if let Some(w) = cgroups.warning() {
            tracing::warn!("{w}");
        }
        tracing::info!(?cgroups, "cgroups");
        let privileged = nix::unistd::geteuid().is_root();
        let subordinate = if privileged { None } else { subordinate_ids() };
        if !privileged {
            match subordinate {
                Some(s) => tracing::info!(count = s.count, "rootless: mapping subordinate ids with newuidmap"),
                None => tracing::warn!(
                    "rootless without subordinate ids (no /etc/subuid entry or no newuidmap): only root exists inside sandboxes"
                ),
            }
        }
        Self {
            opts,
            cgroups,
            privileged,
            subordinate,
            uts: Default::default(),
        }
    }

    /// The part of the user's subordinate ids that sandbox `slot` gets: a range of its own
    /// while the user's ranges last, shared beyond that.
    fn subordinate_for(&self, slot: u32) -> Option<SubordinateIds> {
        let sub = self.subordinate?;
        let per = sub.count.min(IDS_PER_SANDBOX - 1);
        let ranges = (sub.count / per).max(1);
        let offset = (slot % ranges) * per;
        Some(SubordinateIds {
            uid_start: sub.uid_start + offset,
            gid_start: sub.gid_start + offset,
            count: per,
        })
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.opts.data_dir.join("sandboxes").join(id)
    }

    /// The name of the sandbox's cgroups: its id, or the id it was made under when it came
    /// from the warm pool (cgroup v2 cannot rename a cgroup), as recorded by `adopt`.
    fn cgroup_name(&self, id: &str) -> String {
        std::fs::read_to_string(self.sandbox_dir(id).join(CGROUP_NAME_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| id.to_string())
    }

    /// What `adopt` needs done ahead: records the cgroup name, which stays that of the pooled
    /// id after the rename, and opens the sandbox's UTS namespace for the hostname.
    fn prepared(&self, id: &str, launched: Launched) -> Result<std::fs::File, RuntimeError> {
        let name = self.sandbox_dir(id).join(CGROUP_NAME_FILE);
        std::fs::write(&name, self.cgroup_name(id)).map_err(|source| RuntimeError::Io {
            id: id.to_string(),
            path: name.clone(),
            source,
        })?;
        let ns = crate::hostname::namespace_of(launched.pid)
            .map_err(|e| Self::err(id, format!("opening its UTS namespace: {e}")))?;
        // Opened by pid: it is this sandbox's only if the process is still the one started.
        if !self.is_alive(&launched) {
            return Err(Self::err(id, "the sandbox stopped while it was prepared"));
        }
        Ok(ns)
    }

    fn uts_namespaces(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, std::fs::File>> {
        self.uts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(id: &str, message: impl Into<String>) -> RuntimeError {
        RuntimeError::Launch {
            id: id.to_string(),
            message: message.into(),
        }
    }

    /// Rootless with subordinate ids: files owned by the sandbox's other users are removed
    /// from inside a user namespace with the same id map (`sandpit jail --remove`).
    async fn remove_with_subordinate_ids(
        &self,
        id: &str,
        sub: SubordinateIds,
    ) -> Result<(), RuntimeError> {
        let cfg = JailConfig {
            id: id.to_string(),
            sandbox_dir: self.sandbox_dir(id),
            agent_binary: self.opts.binary.clone(),
            host_uid: nix::unistd::geteuid().as_raw(),
            host_gid: nix::unistd::getegid().as_raw(),
            id_count: 1,
            privileged: false,
            cgroup_procs: vec![],
            subordinate: Some(sub),
            network: Default::default(),
        };
        self.run_jail(&cfg, &["jail", "--remove"]).await.map(drop)
    }

    /// Runs `sandpit jail` with `cfg` on stdin; its stdout on success.
    async fn run_jail(&self, cfg: &JailConfig, args: &[&str]) -> Result<Vec<u8>, RuntimeError> {
        let id = &cfg.id;
        let input = serde_json::to_vec(cfg).map_err(|e| Self::err(id, e.to_string()))?;
        let mut child = tokio::process::Command::new(&self.opts.binary)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Self::err(id, format!("spawning the jail: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(&input)
                .await
                .map_err(|e| Self::err(id, format!("configuring the jail: {e}")))?;
        }
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| Self::err(id, "the jail did not finish within 30 s"))?
            .map_err(|e| Self::err(id, format!("waiting for the jail: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(Self::err(id, format!("jail failed: {stderr}")));
        }
        Ok(out.stdout)
    }

    async fn kill_init(&self, launched: Option<Launched>) {
        let Some(l) = launched else { return };
        if !self.is_alive(&l) {
            return;
        }
        // Killing the init of a pid namespace kills every process in it.
        let _ = kill(Pid::from_raw(l.pid), Signal::SIGKILL);
        for _ in 0..200 {
            if !self.is_alive(&l) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(tool).exists()))
}

/// The server user's subordinate uid and gid ranges, if it has both and the helpers exist.
/// Sets RLIMIT_NOFILE (soft and hard) of the sandbox's agent, which every process it
/// starts inherits.
fn set_open_files(pid: i32, n: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: n as libc::rlim_t,
        rlim_max: n as libc::rlim_t,
    };
    // SAFETY: prlimit on a pid with a valid, initialized rlimit and no old-limit pointer.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn subordinate_ids() -> Option<SubordinateIds> {
    let helpers = ["newuidmap", "newgidmap"].iter().all(|h| in_path(h));
    if !helpers {
        return None;
    }
    let uid = nix::unistd::geteuid();
    let name = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name);
    let find = |file: &str| -> Option<(u32, u32)> {
        let text = std::fs::read_to_string(file).ok()?;
        parse_subid(&text, name.as_deref(), uid.as_raw())
    };
    let (uid_start, uid_count) = find("/etc/subuid")?;
    let (gid_start, gid_count) = find("/etc/subgid")?;
    let count = uid_count.min(gid_count);
    (count > 0).then_some(SubordinateIds {
        uid_start,
        gid_start,
        count,
    })
}

/// The first `name:start:count` (or `uid:start:count`) line of a subid file for this user.
fn parse_subid(text: &str, name: Option<&str>, uid: u32) -> Option<(u32, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let me = Some(who) == name || who.parse::<u32>().ok() == Some(uid);
        me.then(|| Some((start.parse().ok()?, count.parse().ok()?)))
            .flatten()
    })
}

/// A short, stable name for this data dir, so two servers on one host keep their cgroups apart.
fn instance_name(data_dir: &Path) -> String {
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in canonical.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// File in a sandbox's directory naming its cgroups when they are not named by its id.
const CGROUP_NAME_FILE: &str = "cgroup-name";

#[async_trait::async_trait]
impl Runtime for NativeRuntime {
    async fn start(&self, spec: &LaunchSpec) -> Result<(Launched, Vec<String>), RuntimeError> {
        let id = spec.id.clone();
        let cgroups = self.cgroups.clone();
        let limits = spec.limits;
        let cg_id = self.cgroup_name(&id);
        let (cg, mut warnings) =
            tokio::task::spawn_blocking(move || cgroups.create(&cg_id, &limits))
                .await
                .map_err(|e| Self::err(&id, e.to_string()))?
                .map_err(|e| Self::err(&id, format!("creating cgroup: {e}")))?;
        warnings.extend(self.cgroups.warning());
        let (host_uid, host_gid, id_count) = if self.privileged {
            let base = self.opts.uid_base + spec.slot * IDS_PER_SANDBOX;
            (base, base, IDS_PER_SANDBOX)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
                1,
            )
        };
        if let Some(mb) = spec.limits.disk_mb {
            let dir = self.sandbox_dir(&id);
            let owner = (host_uid, host_gid);
            let mounted = match self.disk_unsupported() {
                Some(why) => Err(why),
                None => tokio::task::spawn_blocking(move || {
                    crate::disk::ensure_mounted(&dir, mb, owner)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r),
            };
            if let Err(e) = mounted {
                cgroup::destroy(&cg);
                return Err(Self::err(&id, format!("setting up limits.disk_mb: {e}")));
            }
        }
        let cfg = JailConfig {
            id: id.clone(),
            sandbox_dir: self.sandbox_dir(&id),
            agent_binary: self.opts.binary.clone(),
            host_uid,
            host_gid,
            id_count,
            privileged: self.privileged,
            cgroup_procs: cg.procs_files(),
            subordinate: self.subordinate_for(spec.slot),
            network: spec.network.clone(),
        };
        let stdout = match self.run_jail(&cfg, &["jail"]).await {
            Ok(out) => out,
            Err(e) => {
                cgroup::destroy(&cg);
                return Err(e);
            }
        };
        let launched: Launched = serde_json::from_slice(&stdout).map_err(|e| {
            Self::err(
                &id,
                format!(
                    "the jail answered '{}': {e}",
                    String::from_utf8_lossy(&stdout)
                ),
            )
        })?;
        if let Some(n) = spec.limits.open_files {
            if let Err(e) = set_open_files(launched.pid, n) {
                self.kill_init(Some(launched)).await;
                cgroup::destroy(&cg);
                return Err(Self::err(&id, format!("setting limits.open_files: {e}")));
            }
        }
        Ok((launched, warnings))
    }

    fn is_alive(&self, launched: &Launched) -> bool {
        live_start_time(launched.pid) == Some(launched.start_time)
            && launched.network.as_ref().is_none_or(crate::net::is_alive)
    }

    async fn stop(&self, id: &str, launched: Option<Launched>) -> Result<(), RuntimeError> {
        self.uts_namespaces().remove(id);
        self.kill_init(launched).await;
        if let Some(helper) = launched.and_then(|l| l.network) {
            crate::net::kill(&helper);
        }
        crate::net::kill_recorded(&self.sandbox_dir(id));
        let cg = self.cgroups.dirs_of(&self.cgroup_name(id));
        tokio::task::spawn_blocking(move || cgroup::destroy(&cg))
            .await
            .map_err(|e| Self::err(id, e.to_string()))?;
        Ok(())
    }

    async fn destroy(&self, id: &str, launched: Option<Launched>) -> Result<(), RuntimeError> {
        self.stop(id, launched).await?;
        let dir = self.sandbox_dir(id);
        if let (false, Some(sub)) = (self.privileged, self.subordinate) {
            if dir.exists() {
                self.remove_with_subordinate_ids(id, sub).await?;
            }
        }
        tokio::task::spawn_blocking(move || {
            crate::disk::unmount(&dir).map_err(|e| (dir.clone(), std::io::Error::other(e)))?;
            remove_tree(&dir)
        })
        .await
        .map_err(|e| Self::err(id, e.to_string()))?
        .map_err(|(path, source)| RuntimeError::Io {
            id: id.to_string(),
            path,
            source,
        })
    }

    fn sandboxes_on_disk(&self) -> Vec<String> {
        std::fs::read_dir(self.opts.data_dir.join("sandboxes"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().to_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn agent_socket(&self, id: &str) -> PathBuf {
        self.sandbox_dir(id).join("agent.sock")
    }

    fn warnings(&self) -> Vec<String> {
        self.cgroups.warning().into_iter().collect()
    }

    fn egress_unsupported(&self) -> Option<String> {
        if !self.privileged {
            return Some(
                "network \"egress\" needs a server running as root: a rootless server cannot make a network namespace that root inside the sandbox could not reconfigure".into(),
            );
        }
        ["slirp4netns", "unshare", "nsenter", "ip"]
            .into_iter()
            .find(|tool| !in_path(tool))
            .map(|tool| format!("network \"egress\" needs {tool}, which is not installed"))
    }

    fn update_limits(
        &self,
        id: &str,
        launched: Option<Launched>,
        limits: &Limits,
    ) -> Result<(), String> {
        if let (Some(n), Some(l)) = (limits.open_files, launched) {
            if self.is_alive(&l) {
                set_open_files(l.pid, n).map_err(|e| match e.raw_os_error() {
                    Some(libc::EPERM) => format!(
                        "limits.open_files cannot be raised to {n} above the sandbox's current \
                         hard limit: the server lacks CAP_SYS_RESOURCE (lowering works)"
                    ),
                    _ => format!("limits.open_files: {e}"),
                })?;
            }
        }
        if let Some(mb) = limits.disk_mb {
            if let Some(why) = self.disk_unsupported() {
                return Err(why);
            }
            crate::disk::grow(&self.sandbox_dir(id), mb)?;
        }
        self.cgroups.update(&self.cgroup_name(id), limits)
    }

    /// Setting the hostname from outside needs CAP_SYS_ADMIN on the host: root only.
    fn can_adopt(&self) -> bool {
        self.privileged
    }

    fn prepare_adopt(&self, id: &str, launched: Launched) -> Result<(), RuntimeError> {
        let ns = self.prepared(id, launched)?;
        self.uts_namespaces().insert(id.to_string(), ns);
        Ok(())
    }

    async fn adopt(&self, from: &str, to: &str, launched: Launched) -> Result<(), RuntimeError> {
        let (old, new) = (self.sandbox_dir(from), self.sandbox_dir(to));
        if new.symlink_metadata().is_ok() {
            return Err(Self::err(
                to,
                "files of a sandbox with this id are still on disk",
            ));
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RuntimeError::Io {
                id: to.to_string(),
                path,
                source,
            }
        };
        // Prepared while it waited in the pool, or now.
        let prepared = self.uts_namespaces().remove(from);
        let ns = match prepared {
            Some(ns) => ns,
            None => self.prepared(from, launched)?,
        };
        // The sandbox's mounts hold its directories, not their paths: renaming the directory
        // on the host leaves the running sandbox as it is, and its agent's socket moves along.
        std::fs::rename(&old, &new).map_err(io(&old))?;
        // The agent has no CAP_SYS_ADMIN: the server sets the hostname from outside.
        crate::hostname::set(&ns, to).map_err(|e| Self::err(to, format!("setting hostname: {e}")))
    }

    fn disk_unsupported(&self) -> Option<String> {
        if !self.privileged {
            return Some(
                "limits.disk_mb needs a server running as root: a rootless server cannot loop-mount a disk image per sandbox".into(),
            );
        }
        ["mkfs.ext4", "mount", "losetup", "resize2fs"]
            .into_iter()
            .find(|tool| !in_path(tool))
            .map(|tool| format!("limits.disk_mb needs {tool}, which is not installed"))
    }

    fn disk_usage(&self, id: &str) -> Option<(u64, u64)> {
        let dir = self.sandbox_dir(id);
        if !crate::disk::is_mounted(&dir) {
            return None;
        }
        let st = nix::sys::statvfs::statvfs(&dir.join("rootfs")).ok()?;
        let frag = st.fragment_size() as u64;
        let total = st.blocks() as u64 * frag;
        let free = st.blocks_free() as u64 * frag;
        Some((total.saturating_sub(free), total))
    }

    fn oom_kills(&self, id: &str) -> Option<u64> {
        self.cgroups.oom_kills(&self.cgroup_name(id))
    }
}

/// Removes a sandbox directory (see [`crate::beneath::remove_tree`]).
pub(crate) fn remove_tree(dir: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    crate::beneath::remove_tree(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn subid_lines() {
        let text = "alice:100000:65536\n1001:165536:65536\n";
        assert_eq!(
            super::parse_subid(text, Some("alice"), 5),
            Some((100000, 65536))
        );
        assert_eq!(
            super::parse_subid(text, Some("bob"), 1001),
            Some((165536, 65536))
        );
        assert_eq!(super::parse_subid(text, Some("carol"), 7), None);
    }

    #[test]
    fn instance_name_is_stable_and_distinct() {
        let a = super::instance_name(std::path::Path::new("/nonexistent/a"));
        assert_eq!(
            a,
            super::instance_name(std::path::Path::new("/nonexistent/a"))
        );
        assert_ne!(
            a,
            super::instance_name(std::path::Path::new("/nonexistent/b"))
        );
        assert_eq!(a.len(), 8);
    }
}
