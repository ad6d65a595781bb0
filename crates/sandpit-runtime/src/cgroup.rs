//! Per-sandbox cgroups on cgroup v1 (one directory per controller hierarchy) and v2 (one
//! unified directory), behind one interface. Where no cgroup can be created, sandboxes run
//! without limits and every sandbox says so in its warnings.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Limits;

const CPU_PERIOD_US: u64 = 100_000;

/// How this host exposes cgroups to us.
#[derive(Debug, Clone)]
pub enum CgroupSetup {
    /// v1: the parent directory for sandboxes in each hierarchy we use.
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// v2: the parent directory for sandboxes.
    V2 { parent: PathBuf },
    /// No usable cgroup; the reason is shown to users.
    Unavailable(String),
}

/// The cgroup directories of one sandbox.
#[derive(Debug, Clone, Default)]
pub struct SandboxCgroup {
    pub dirs: Vec<PathBuf>,
}

impl SandboxCgroup {
    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
}

/// What the host shows about cgroups: inputs of [`CgroupSetup::plan`], real or made up.
struct HostCgroups<'a> {
    mountinfo: &'a str,
    own: &'a str,
    is_root: bool,
    controllers: &'a dyn Fn(&Path) -> String,
    writable: &'a dyn Fn(&Path) -> bool,
}

impl CgroupSetup {
    /// Finds where sandboxes' cgroups can live; `instance` keeps two servers apart.
    pub fn detect(instance: &str) -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::plan(
            &HostCgroups {
                mountinfo: &mountinfo,
                own: &own,
                is_root: nix::unistd::geteuid().is_root(),
                controllers: &|p: &Path| {
                    fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
                },
                writable: &writable_parent,
            },
            instance,
        )
    }

    /// The decision of [`Self::detect`], from what the host shows.
    fn plan(host: &HostCgroups<'_>, instance: &str) -> Self {
        let (mountinfo, own) = (host.mountinfo, host.own);
        let name = format!("sandpit-{instance}");
        let mut v1 = (None, None, None);
        let mut v2_mount = None;
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 5 || r.len() < 3 {
                continue;
            }
            let (root, mount_point) = (l[3], l[4]);
            match r[0] {
                "cgroup2" => {
                    let controllers = (host.controllers)(Path::new(mount_point));
                    if controllers
                        .split_whitespace()
                        .any(|c| c == "memory" || c == "pids")
                    {
                        v2_mount = Some((root.to_string(), PathBuf::from(mount_point)));
                    }
                }
                "cgroup" => {
                    let opts: Vec<&str> = r[2].split(',').collect();
                    for (ctl, slot) in [("memory", 0), ("pids", 1), ("cpu", 2)] {
                        if opts.contains(&ctl) {
                            let own_path = own_path(own, ctl);
                            let rel = own_path.strip_prefix(root).unwrap_or(&own_path);
                            let dir = Path::new(mount_point)
                                .join(rel.trim_start_matches('/'))
                                .join(&name);
                            match slot {
                                0 => v1.0 = Some(dir),
                                1 => v1.1 = Some(dir),
                                _ => v1.2 = Some(dir),
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if v1.0.is_some() || v1.1.is_some() {
            let usable = |p: Option<PathBuf>| p.filter(|p| (host.writable)(p));
            let (memory, pids, cpu) = (usable(v1.0), usable(v1.1), usable(v1.2));
            if memory.is_none() && pids.is_none() {
                return Self::Unavailable(
                    "cgroup v1 hierarchies are not writable by this user (no delegation)".into(),
                );
            }
            return Self::V1 { memory, pids, cpu };
        }
        if let Some((root, mount)) = v2_mount {
            let own_path = own_path(own, "");
            let rel = own_path
                .strip_prefix(&root)
                .unwrap_or(&own_path)
                .to_string();
            // As root: a tree at the top of the hierarchy. Otherwise: beside our own cgroup,
            // which works where the service manager delegated the subtree to us.
            let parent = if host.is_root {
                mount.join(&name)
            } else {
                let own_dir = mount.join(rel.trim_start_matches('/'));
                own_dir.parent().unwrap_or(&mount).join(&name)
            };
            if !(host.writable)(&parent) {
                return Self::Unavailable(format!(
                    "cgroup v2 directory {} is not writable (no delegation)",
                    parent.display()
                ));
            }
            return Self::V2 { parent };
        }
        Self::Unavailable("no cgroup hierarchy with the memory or pids controller".into())
    }

    /// Removes this instance's parent directories (at a clean shutdown). A cgroup directory
    /// with a sandbox's cgroup (or a process) in it cannot be removed: those stay, for the
    /// sandboxes that outlive the server. Returns the directories left in place.
    pub fn remove_parents(&self) -> Vec<PathBuf> {
        let parents: Vec<&PathBuf> = match self {
            Self::V1 { memory, pids, cpu } => [memory, pids, cpu].into_iter().flatten().collect(),
            Self::V2 { parent } => vec![parent],
            Self::Unavailable(_) => vec![],
        };
        parents
            .into_iter()
            .filter(|p| p.exists() && fs::remove_dir(p).is_err())
            .cloned()
            .collect()
    }

    /// A warning to show on every sandbox, if limits cannot be applied.
    pub fn warning(&self) -> Option<String> {
        match self {
            Self::Unavailable(why) => Some(format!("resource limits are not enforced: {why}")),
            Self::V1 { cpu: None, .. } => {
                Some("cpu limit is not enforced: no cpu hierarchy".into())
            }
            _ => None,
        }
    }

    /// Creates the sandbox's cgroup and applies `limits`; returns it and any warnings.
    pub fn create(
        &self,
        id: &str,
        limits: &Limits,
    ) -> std::io::Result<(SandboxCgroup, Vec<String>)> {
        let mut cg = SandboxCgroup::default();
        let mut warnings = Vec::new();
        match self {
            Self::Unavailable(_) => {}
            Self::V1 { memory, pids, cpu } => {
                if let Some(parent) = memory {
                    let dir = make_dir(parent, id)?;
                    if let Some(mb) = limits.memory_mb {
                        let bytes = (mb * 1024 * 1024).to_string();
                        write(&dir, "memory.limit_in_bytes", &bytes)?;
                        // Without this, a capped sandbox would spill into swap instead of being held.
                        if dir.join("memory.memsw.limit_in_bytes").exists() {
                            write(&dir, "memory.memsw.limit_in_bytes", &bytes)?;
                        } else {
                            let _ = write(&dir, "memory.swappiness", "0");
                        }
                    }
                    cg.dirs.push(dir);
                } else if limits.memory_mb.is_some() {
                    warnings.push("memory limit is not enforced: no writable memory cgroup".into());
                }
                if let Some(parent) = pids {
                    let dir = make_dir(parent, id)?;
                    if let Some(n) = limits.pids {
                        write(&dir, "pids.max", &n.to_string())?;
                    }
                    cg.dirs.push(dir);
                } else if limits.pids.is_some() {
                    warnings.push("pids limit is not enforced: no writable pids cgroup".into());
                }
                if let Some(parent) = cpu {
                    let dir = make_dir(parent, id)?;
                    if let Some(cpus) = limits.cpus {
                        write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                        write(&dir, "cpu.cfs_quota_us", &quota(cpus).to_string())?;
                    }
                    cg.dirs.push(dir);
                }
            }
            Self::V2 { parent } => {
                enable_controllers(parent)?;
                let dir = make_dir(parent, id)?;
                if let Some(mb) = limits.memory_mb {
                    write(&dir, "memory.max", &(mb * 1024 * 1024).to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(&dir, "memory.swap.max", "0")?;
                    }
                }
                if let Some(n) = limits.pids {
                    write(&dir, "pids.max", &n.to_string())?;
                }
                if let Some(cpus) = limits.cpus {
                    write(&dir, "cpu.max", &format!("{} {CPU_PERIOD_US}", quota(cpus)))?;
                }
                cg.dirs.push(dir);
            }
        }
        Ok((cg, warnings))
    }

    /// Changes the limits of a sandbox's existing cgroup (a `None` limit is left as it is).
    /// Errors say what the kernel or this host cannot do.
    pub fn update(&self, id: &str, limits: &Limits) -> Result<(), String> {
        let io = |e: std::io::Error| match e.raw_os_error() {
            Some(16) => {
                "the kernel refused: the sandbox uses more than the new limit and it cannot be \
                 reclaimed (EBUSY)"
                    .to_string()
            }
            _ => e.to_string(),
        };
        let existing = |parent: &Path| {
            let dir = parent.join(id);
            dir.is_dir().then_some(dir).ok_or_else(|| {
                format!("the sandbox has no cgroup at {}", parent.join(id).display())
            })
        };
        match self {
            Self::Unavailable(why) => Err(format!("limits cannot be changed: {why}")),
            Self::V1 { memory, pids, cpu } => {
                if let Some(mb) = limits.memory_mb {
                    let parent = memory.as_ref().ok_or("no writable memory cgroup")?;
                    let dir = existing(parent)?;
                    let bytes = (mb * 1024 * 1024).to_string();
                    let memsw = dir.join("memory.memsw.limit_in_bytes").exists();
                    // memsw must stay at least the memory limit: raise it first, lower it last.
                    if memsw {
                        let _ = write(&dir, "memory.memsw.limit_in_bytes", &bytes);
                    }
                    write(&dir, "memory.limit_in_bytes", &bytes).map_err(io)?;
                    if memsw {
                        write(&dir, "memory.memsw.limit_in_bytes", &bytes).map_err(io)?;
                    }
                }
                if let Some(n) = limits.pids {
                    let parent = pids.as_ref().ok_or("no writable pids cgroup")?;
                    write(&existing(parent)?, "pids.max", &n.to_string()).map_err(io)?;
                }
                if let Some(cpus) = limits.cpus {
                    let parent = cpu
                        .as_ref()
                        .ok_or("the cpu limit cannot be changed: no cpu hierarchy")?;
                    let dir = existing(parent)?;
                    write(&dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string()).map_err(io)?;
                    write(&dir, "cpu.cfs_quota_us", &quota(cpus).to_string()).map_err(io)?;
                }
                Ok(())
            }
            Self::V2 { parent } => {
                let dir = existing(parent)?;
                if let Some(mb) = limits.memory_mb {
                    write(&dir, "memory.max", &(mb * 1024 * 1024).to_string()).map_err(io)?;
                }
                if let Some(n) = limits.pids {
                    write(&dir, "pids.max", &n.to_string()).map_err(io)?;
                }
                if let Some(cpus) = limits.cpus {
                    write(&dir, "cpu.max", &format!("{} {CPU_PERIOD_US}", quota(cpus)))
                        .map_err(io)?;
                }
                Ok(())
            }
        }
    }

    /// How many processes of the sandbox the OOM killer killed (`oom_kill` in v2's
    /// `memory.events`, v1's `memory.oom_control`); `None` without a memory cgroup.
    pub fn oom_kills(&self, id: &str) -> Option<u64> {
        let file = match self {
            Self::Unavailable(_) => return None,
            Self::V1 { memory, .. } => memory.as_ref()?.join(id).join("memory.oom_control"),
            Self::V2 { parent } => parent.join(id).join("memory.events"),
        };
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            let (key, value) = l.split_once(' ')?;
            (key == "oom_kill")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
    }

    /// The cgroup directories `id` would have (whether or not they exist).
    pub fn dirs_of(&self, id: &str) -> SandboxCgroup {
        let dirs = match self {
            Self::Unavailable(_) => vec![],
            Self::V1 { memory, pids, cpu } => [memory, pids, cpu]
                .into_iter()
                .flatten()
                .map(|p| p.join(id))
                .collect(),
            Self::V2 { parent } => vec![parent.join(id)],
        };
        SandboxCgroup { dirs }
    }
}

/// Kills every process in the sandbox's cgroups and removes them.
pub fn destroy(cg: &SandboxCgroup) {
    for dir in &cg.dirs {
        if !dir.exists() {
            continue;
        }
        if dir.join("cgroup.kill").exists() {
            let _ = fs::write(dir.join("cgroup.kill"), "1");
        }
        for _ in 0..100 {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<i32> = procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            for pid in &pids {
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            if pids.is_empty() && fs::remove_dir(dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn quota(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64) as u64).max(1000)
}

fn own_path(proc_cgroup: &str, controller: &str) -> String {
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctls), Some(path)) = (ctls, path) else {
            continue;
        };
        let hit = if controller.is_empty() {
            ctls.is_empty()
        } else {
            ctls.split(',').any(|c| c == controller)
        };
        if hit {
            return path.to_string();
        }
    }
    "/".into()
}

fn writable_parent(dir: &Path) -> bool {
    let existing = if dir.exists() {
        dir
    } else {
        match dir.parent() {
            Some(p) => p,
            None => return false,
        }
    };
    nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn make_dir(parent: &Path, id: &str) -> std::io::Result<PathBuf> {
    fs::create_dir_all(parent)?;
    let dir = parent.join(id);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e),
    }
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    fs::write(dir.join(file), value)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

/// Enables the controllers we use in `parent` and, where we may, in its own parent.
fn enable_controllers(parent: &Path) -> std::io::Result<()> {
    if let Some(grand) = parent.parent() {
        let _ = fs::write(grand.join("cgroup.subtree_control"), "+memory +pids +cpu");
    }
    fs::create_dir_all(parent)?;
    let _ = fs::write(parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_path_finds_v1_and_v2_lines() {
        let text = "4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/user.slice\n";
        assert_eq!(own_path(text, "memory"), "/a/b");
        assert_eq!(own_path(text, "cpu"), "/c");
        assert_eq!(own_path(text, ""), "/user.slice");
        assert_eq!(own_path(text, "pids"), "/");
    }

    const HYBRID: &str = "\
35 27 0:30 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
37 27 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 27 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
42 27 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const UNIFIED: &str = "31 27 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";

    fn host<'a>(
        mountinfo: &'a str,
        own: &'a str,
        is_root: bool,
        writable: &'a dyn Fn(&Path) -> bool,
    ) -> HostCgroups<'a> {
        HostCgroups {
            mountinfo,
            own,
            is_root,
            controllers: &|p: &Path| {
                if p == Path::new("/sys/fs/cgroup") {
                    "cpu memory pids".into()
                } else {
                    String::new()
                }
            },
            writable,
        }
    }

    #[test]
    fn hybrid_hosts_use_v1_under_our_own_cgroup() {
        let own = "4:memory:/svc/a\n8:pids:/\n1:cpu:/\n0::/\n";
        let plan = CgroupSetup::plan(&host(HYBRID, own, true, &|_| true), "abc");
        match plan {
            CgroupSetup::V1 { memory, pids, cpu } => {
                assert_eq!(
                    memory.unwrap(),
                    Path::new("/sys/fs/cgroup/memory/svc/a/sandpit-abc")
                );
                assert_eq!(pids.unwrap(), Path::new("/sys/fs/cgroup/pids/sandpit-abc"));
                assert_eq!(cpu.unwrap(), Path::new("/sys/fs/cgroup/cpu/sandpit-abc"));
            }
            other => panic!("{other:?}"),
        }
        let denied = CgroupSetup::plan(&host(HYBRID, own, false, &|_| false), "abc");
        assert!(matches!(denied, CgroupSetup::Unavailable(_)));
        assert!(denied.warning().unwrap().contains("not enforced"));
    }

    #[test]
    fn unified_hosts_use_v2_at_the_top_as_root_and_beside_us_when_delegated() {
        let own = "0::/user.slice/user-1000.slice/app.scope\n";
        let root = CgroupSetup::plan(&host(UNIFIED, own, true, &|_| true), "abc");
        assert!(
            matches!(&root, CgroupSetup::V2 { parent } if parent == Path::new("/sys/fs/cgroup/sandpit-abc"))
        );
        let user = CgroupSetup::plan(&host(UNIFIED, own, false, &|_| true), "abc");
        assert!(matches!(&user, CgroupSetup::V2 { parent }
            if parent == Path::new("/sys/fs/cgroup/user.slice/user-1000.slice/sandpit-abc")));
        let undelegated = CgroupSetup::plan(&host(UNIFIED, own, false, &|_| false), "abc");
        assert!(matches!(undelegated, CgroupSetup::Unavailable(_)));
    }

    #[test]
    fn v2_limits_are_written_in_v2_files() {
        let dir = tempfile::tempdir().unwrap();
        let setup = CgroupSetup::V2 {
            parent: dir.path().join("sandpit-x"),
        };
        let limits = Limits {
            memory_mb: Some(64),
            cpus: Some(0.5),
            pids: Some(32),
            open_files: None,
            disk_mb: None,
        };
        let (cg, warnings) = setup.create("sb", &limits).unwrap();
        assert!(warnings.is_empty());
        let read = |f: &str| fs::read_to_string(cg.dirs[0].join(f)).unwrap();
        assert_eq!(read("memory.max"), (64 * 1024 * 1024).to_string());
        assert_eq!(read("pids.max"), "32");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(
            cg.procs_files(),
            vec![dir.path().join("sandpit-x/sb/cgroup.procs")]
        );
    }

    #[test]
    fn v1_limits_are_written_per_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let setup = CgroupSetup::V1 {
            memory: Some(dir.path().join("memory")),
            pids: Some(dir.path().join("pids")),
            cpu: None,
        };
        let limits = Limits {
            memory_mb: Some(16),
            cpus: Some(1.0),
            pids: Some(8),
            open_files: None,
            disk_mb: None,
        };
        let (cg, _) = setup.create("sb", &limits).unwrap();
        assert_eq!(cg.dirs.len(), 2);
        assert_eq!(
            fs::read_to_string(dir.path().join("memory/sb/memory.limit_in_bytes")).unwrap(),
            "16777216"
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("pids/sb/pids.max")).unwrap(),
            "8"
        );
        assert!(setup.warning().unwrap().contains("cpu"));
    }

    #[test]
    fn quota_has_a_floor() {
        assert_eq!(quota(1.5), 150_000);
        assert_eq!(quota(0.0), 1000);
    }
}
