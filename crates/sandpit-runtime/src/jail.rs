//! `sandpit jail`: the short-lived, single-threaded set-up step that turns a directory into
//! a running sandbox and execs the agent inside it. It is the only code that forks into
//! namespaces and mounts; the async server just spawns it and reads one JSON line back.
//!
//! Process chain: the jail process (host) forks a child that unshares the namespaces, the host
//! side writes the child's uid/gid maps, the child forks the sandbox's init (PID 1 of the new
//! pid namespace), which finishes the mounts, pivots into the sandbox root, drops
//! capabilities, installs seccomp and execs the agent (`sandpit agent`) from a descriptor of
//! the host's binary, which is never visible inside. The jail and the child then exit, so the
//! sandbox belongs to nobody's process tree but init's and outlives the server.
//!
//! The sandbox's root directory (`rootfs/`) is the sandbox's to write, between two starts as
//! much as while it runs, so everything the jail does in it goes through directory
//! descriptors that refuse symlinks ([`crate::beneath`]) and mounts attached to descriptors
//! ([`crate::mountfd`]): no path inside it is ever resolved by name, as host root or
//! otherwise. What the host keeps for itself (the socket, the log, records) lives next to
//! `rootfs/` in the sandbox directory, which only the host may enter (mode 0700).

use std::ffi::CString;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{
    chdir, fchdir, fork, pivot_root, sethostname, setresgid, setresuid, ForkResult, Gid, Pid, Uid,
};
use serde::{Deserialize, Serialize};

use crate::beneath::Dir;
use crate::{mountfd, Launched};

/// Host directories that make up the default base, bound read-only (or recreated as the same
/// symlink, on merged-/usr systems).
pub const BASE_DIRS: &[&str] = &[
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Device nodes bound from the host into the sandbox's `/dev`.
const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// Capabilities root keeps inside a sandbox (Docker's default set); all others are dropped
/// from the bounding set.
const KEPT_CAPS: &[u32] = &[0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Everything the jail needs, passed as JSON on its standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JailConfig {
    pub id: String,
    /// Holds `rootfs/`, `agent.sock` and `agent.log`.
    pub sandbox_dir: PathBuf,
    /// The `sandpit` binary: opened by the jail and executed from that descriptor as the
    /// agent, so no path inside the sandbox names it.
    pub agent_binary: PathBuf,
    /// Host uid and gid that root inside maps to, and how many ids are mapped.
    pub host_uid: u32,
    pub host_gid: u32,
    pub id_count: u32,
    /// The server runs as root (writes any id map); otherwise only the own uid is mapped.
    pub privileged: bool,
    /// `cgroup.procs` files to join before forking.
    pub cgroup_procs: Vec<PathBuf>,
    /// Rootless only: subordinate ids (from /etc/subuid and /etc/subgid) for ids 1.. inside,
    /// mapped with the setuid helpers newuidmap/newgidmap.
    #[serde(default)]
    pub subordinate: Option<SubordinateIds>,
    /// Loopback only (default) or egress through slirp4netns (root servers only).
    #[serde(default)]
    pub network: crate::NetworkPolicy,
}

/// A range of subordinate ids granted to the server's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubordinateIds {
    pub uid_start: u32,
    pub gid_start: u32,
    pub count: u32,
}

impl JailConfig {
    pub fn rootfs(&self) -> PathBuf {
        self.sandbox_dir.join("rootfs")
    }
    pub fn socket(&self) -> PathBuf {
        self.sandbox_dir.join("agent.sock")
    }
    pub fn log(&self) -> PathBuf {
        self.sandbox_dir.join("agent.log")
    }
    /// The resolv.conf bound over `/etc/resolv.conf` of an egress sandbox.
    pub fn resolv_conf(&self) -> PathBuf {
        self.sandbox_dir.join("resolv.conf")
    }
    /// The network namespace is made by host root, owned by the initial user namespace.
    fn host_owned_net(&self) -> bool {
        self.privileged && self.network.egress
    }
}

type Fallible<T> = Result<T, String>;

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> Fallible<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Entry point of `sandpit jail`: reads the config from stdin, starts the sandbox, prints the
/// [`Launched`] handle as JSON on stdout. Returns the process exit code.
/// With `remove`, the sandbox's files are removed instead (see [`remove_as_sandbox_root`]).
pub fn main(remove: bool) -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("sandpit jail: reading config: {e}");
        return 2;
    }
    let cfg: JailConfig = match serde_json::from_str(&input) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sandpit jail: bad config: {e}");
            return 2;
        }
    };
    if remove {
        return match remove_as_sandbox_root(&cfg) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    match launch(&cfg) {
        Ok(launched) => {
            println!("{}", serde_json::to_string(&launched).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn launch(cfg: &JailConfig) -> Fallible<Launched> {
    if cfg.network.egress && !cfg.privileged {
        return Err(format!(
            "sandbox '{}': egress networking needs a server running as root",
            cfg.id
        ));
    }
    prepare_rootfs(cfg)?;
    let agent = ctx(
        nix::fcntl::open(
            &cfg.agent_binary,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ),
        || format!("opening the agent binary {}", cfg.agent_binary.display()),
    )?;
    if cfg.network.egress {
        ctx(
            fs::write(
                cfg.resolv_conf(),
                format!("nameserver {}\n", crate::net::DNS),
            ),
            || format!("writing {}", cfg.resolv_conf().display()),
        )?;
    }
    let listener = bind_socket(cfg)?;
    let log = ctx(
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(cfg.log()),
        || format!("opening {}", cfg.log().display()),
    )?;
    let me = std::process::id().to_string();
    for procs in &cfg.cgroup_procs {
        ctx(fs::write(procs, &me), || {
            format!("joining cgroup {}", procs.display())
        })?;
    }
    // Leave the server's session so that signals to its terminal never reach the sandbox.
    let _ = nix::unistd::setsid();
    let mut init: Option<i32> = None;
    let mut ready = false;
    fork_with_id_maps(
        cfg,
        |h| child(cfg, h, &listener, &log, &agent),
        |line| {
            if let Some(pid) = line.strip_prefix("P ") {
                init = pid.parse().ok();
            } else if line == "R" {
                ready = true;
            }
        },
    )
    .map_err(|e| format!("sandbox '{}': {e}", cfg.id))?;
    match (init, ready) {
        (Some(pid), true) => {
            let start_time =
                start_time(pid).ok_or_else(|| format!("sandbox init {pid} vanished"))?;
            let network = if cfg.network.egress {
                match crate::net::attach(&cfg.network, pid, &cfg.sandbox_dir) {
                    Ok(helper) => Some(helper),
                    Err(e) => {
                        let _ = nix::sys::signal::kill(
                            Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        return Err(format!("sandbox '{}': {e}", cfg.id));
                    }
                }
            } else {
                None
            };
            Ok(Launched {
                pid,
                start_time,
                network,
            })
        }
        _ => Err(format!(
            "sandbox '{}': init exited during set-up (see {})",
            cfg.id,
            cfg.log().display()
        )),
    }
}

/// The child's end of the id-map handshake: its status pipe to the host side, and the pipe
/// on which the host side says the maps are written.
struct Handshake {
    status: fs::File,
    go: fs::File,
}

impl Handshake {
    /// After unsharing the user namespace: asks the host side for id maps, waits for them,
    /// and becomes root in the namespace.
    fn request_maps(&mut self, privileged: bool) -> Fallible<()> {
        ctx(say(&self.status, "U"), || "asking for id maps".into())?;
        ctx(self.go.read_exact(&mut [0u8; 1]), || {
            "waiting for id maps".into()
        })?;
        become_root(privileged)
    }
}

/// Forks a child that runs `body`. The host side writes the child's id maps when it asks
/// (`U`), hands every other status line to `on_line`, and returns the child's error (`E`)
/// if it reported one, once the status pipe has closed and the child has been reaped.
fn fork_with_id_maps(
    cfg: &JailConfig,
    body: impl FnOnce(&mut Handshake) -> Fallible<()>,
    mut on_line: impl FnMut(&str),
) -> Fallible<()> {
    let (status_r, status_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), || {
        "pipe".into()
    })?;
    let (go_r, go_w) = ctx(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC), || {
        "pipe".into()
    })?;
    // SAFETY: this process is single-threaded (the jail runs no runtime and spawns no
    // threads), so the child may use any function after fork.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop((status_r, go_w));
            let mut h = Handshake {
                status: fs::File::from(status_w),
                go: fs::File::from(go_r),
            };
            let code = match body(&mut h) {
                Ok(()) => 0,
                Err(e) => {
                    let _ = say(&h.status, &format!("E {}", e.replace('\n', " ")));
                    1
                }
            };
            // SAFETY: _exit ends the forked child without running the parent's destructors
            // or flushing buffers it shares with the parent.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop((status_w, go_r));
            let mut go = fs::File::from(go_w);
            let answer = || -> Fallible<Option<String>> {
                for line in BufReader::new(fs::File::from(status_r)).lines() {
                    let line = line.map_err(|e| format!("reading jail status: {e}"))?;
                    if line == "U" {
                        write_id_maps(cfg, child)?;
                        ctx(go.write_all(b"g"), || "signalling child".into())?;
                    } else if let Some(msg) = line.strip_prefix("E ") {
                        return Ok(Some(msg.to_string()));
                    } else {
                        on_line(&line);
                    }
                }
                Ok(None)
            };
            let result = answer();
            // On any failure the child sees its pipes close and exits; reap it either way.
            drop(go);
            let _ = waitpid(child, None);
            match result? {
                Some(msg) => Err(msg),
                None => Ok(()),
            }
        }
    }
}

/// Removes the sandbox's directory from inside a user namespace with the sandbox's id map:
/// rootless with subordinate ids, files the sandbox's other users own are not the server
/// user's to delete on the host.
fn remove_as_sandbox_root(cfg: &JailConfig) -> Fallible<()> {
    fork_with_id_maps(
        cfg,
        |h| {
            ctx(unshare(CloneFlags::CLONE_NEWUSER), || {
                "unshare(user)".into()
            })?;
            h.request_maps(false)?;
            crate::native::remove_tree(&cfg.sandbox_dir)
                .map_err(|(p, e)| format!("removing {}: {e}", p.display()))
        },
        |_| {},
    )
}

fn write_id_maps(cfg: &JailConfig, child: Pid) -> Fallible<()> {
    let proc_dir = PathBuf::from(format!("/proc/{child}"));
    let w = |file: &str, text: String| {
        ctx(fs::write(proc_dir.join(file), &text), || {
            format!("writing {file} '{}'", text.trim())
        })
    };
    if cfg.privileged {
        w("uid_map", format!("0 {} {}\n", cfg.host_uid, cfg.id_count))?;
        w("gid_map", format!("0 {} {}\n", cfg.host_gid, cfg.id_count))?;
    } else if let Some(sub) = cfg.subordinate {
        for (helper, own, start) in [
            ("newuidmap", cfg.host_uid, sub.uid_start),
            ("newgidmap", cfg.host_gid, sub.gid_start),
        ] {
            let out = ctx(
                std::process::Command::new(helper)
                    .args([child.to_string(), "0".into(), own.to_string(), "1".into()])
                    .args(["1".to_string(), start.to_string(), sub.count.to_string()])
                    .output(),
                || format!("running {helper}"),
            )?;
            if !out.status.success() {
                return Err(format!(
                    "{helper}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    } else {
        w("setgroups", "deny".into())?;
        w("uid_map", format!("0 {} 1\n", cfg.host_uid))?;
        w("gid_map", format!("0 {} 1\n", cfg.host_gid))?;
    }
    Ok(())
}

/// Reads the start time (clock ticks after boot) of `pid` from `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_of(pid).map(|(_, start)| start)
}

/// The start time of `pid` while it runs: `None` once it has exited, reaped or not. A killed
/// sandbox init stays a zombie until the host's init reaps it (up to a second here), though
/// its pid namespace is empty by then.
pub fn live_start_time(pid: i32) -> Option<u64> {
    stat_of(pid).and_then(|(state, start)| (!matches!(state, 'Z' | 'X')).then_some(start))
}

/// The state letter and the start time of `pid`.
fn stat_of(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let state = after.chars().next()?;
    Some((state, after.split(' ').nth(19)?.parse().ok()?))
}

/// The child: enters the namespaces, becomes root there, forks the sandbox's init.
fn child(
    cfg: &JailConfig,
    h: &mut Handshake,
    listener: &UnixListener,
    log: &fs::File,
    agent: &OwnedFd,
) -> Fallible<()> {
    let rest = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWCGROUP;
    if cfg.privileged {
        // Host root does the binds, so that paths only root may traverse still work; the
        // second mount namespace, owned by the sandbox's user namespace, locks them.
        ctx(unshare(CloneFlags::CLONE_NEWNS), || "unshare(mount)".into())?;
        host_mounts(cfg)?;
        let rest = if cfg.host_owned_net() {
            // Made here, by host root, the namespace is not the sandbox's to reconfigure.
            ctx(unshare(CloneFlags::CLONE_NEWNET), || "unshare(net)".into())?;
            loopback_up()?;
            crate::net::namespace_sysctls()?;
            rest - CloneFlags::CLONE_NEWNET
        } else {
            rest
        };
        ctx(
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS | rest),
            || "unshare(user, mount, pid, net, uts, ipc, cgroup)".into(),
        )?;
        h.request_maps(cfg.privileged)?;
    } else {
        ctx(
            unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS),
            || "unshare(user, mount)".into(),
        )?;
        h.request_maps(cfg.privileged)?;
        host_mounts(cfg)?;
        ctx(unshare(rest), || {
            "unshare(pid, net, uts, ipc, cgroup)".into()
        })?;
    }
    // Descriptors name mounts of the namespace they were opened in; unshare moved the
    // working directory (left at the root by host_mounts) into the new one.
    let root = ctx(Dir::open_host(Path::new(".")), || {
        "opening the sandbox root".into()
    })?;
    // SAFETY: still single-threaded; see `fork_with_id_maps`.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork of init: {e}")),
        Ok(ForkResult::Parent { child }) => {
            ctx(say(&h.status, &format!("P {child}")), || {
                "reporting init pid".into()
            })?;
            Ok(())
        }
        Ok(ForkResult::Child) => {
            let err = match init(cfg, &h.status, listener, log, root, agent) {
                Ok(never) => match never {},
                Err(e) => e,
            };
            let _ = say(&h.status, &format!("E {}", err.replace('\n', " ")));
            // SAFETY: see `fork_with_id_maps`.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Writes one status line with a single write(2): the child and the init share the pipe,
/// and a line split over several writes could interleave with the other's.
fn say(mut status: &fs::File, line: &str) -> std::io::Result<()> {
    status.write_all(format!("{line}\n").as_bytes())
}

fn become_root(privileged: bool) -> Fallible<()> {
    if privileged {
        ctx(nix::unistd::setgroups(&[]), || "setgroups".into())?;
    }
    ctx(
        setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0)),
        || "setresgid(0)".into(),
    )?;
    ctx(
        setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)),
        || "setresuid(0)".into(),
    )
}

/// Binds the host's system directories and device nodes into the rootfs, every mount
/// attached to a descriptor opened beneath it, and leaves the working directory at the root
/// of the sandbox's tree: a bind of `rootfs/` onto itself (pivot_root needs a mount point),
/// below which the other mounts go.
fn host_mounts(cfg: &JailConfig) -> Fallible<()> {
    let rootfs = cfg.rootfs();
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ),
        || "making / private".into(),
    )?;
    let below = ctx(Dir::open_host(&rootfs), || {
        format!("opening {}", rootfs.display())
    })?;
    let root = stack_on_itself(&below)
        .map_err(|e| format!("binding {} onto itself: {e}", rootfs.display()))?;
    let open = |rel: &str| ctx(root.open_dir(rel), || format!("opening /{rel}"));
    for dir in BASE_DIRS {
        let host = Path::new(dir);
        let Ok(meta) = fs::symlink_metadata(host) else {
            continue;
        };
        if meta.is_dir() {
            let target = open(dir.trim_start_matches('/'))?;
            ctx(mountfd::bind_ro(host, target.fd()), || {
                format!("binding {dir}")
            })?;
        }
    }
    if cfg.network.egress {
        // Over the host's own /etc/resolv.conf when it is a file (not a symlink).
        let etc = open("etc")?;
        if let Ok(target) = etc.open_path("resolv.conf") {
            let is_file = nix::sys::stat::fstat(target.as_fd())
                .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
            if is_file {
                ctx(mountfd::bind_ro(&cfg.resolv_conf(), target.as_fd()), || {
                    "binding /etc/resolv.conf".into()
                })?;
            }
        }
    }
    let dev_point = open("dev")?;
    ctx(
        mount(
            Some("tmpfs"),
            &dev_point.proc_path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755,size=1m,nr_inodes=256"),
        ),
        || "mounting /dev".into(),
    )?;
    drop(dev_point);
    // The tmpfs just mounted, not the directory below it.
    let dev = open("dev")?;
    for name in DEVICES {
        let target = ctx(dev.ensure_file(name), || format!("creating /dev/{name}"))?;
        ctx(
            mountfd::bind(&Path::new("/dev").join(name), target.as_fd()),
            || format!("binding /dev/{name}"),
        )?;
    }
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ctx(dev.ensure_symlink(Path::new(target), link), || {
            format!("/dev/{link}")
        })?;
    }
    for dir in ["pts", "shm"] {
        ctx(dev.ensure_dir(dir, 0o755, None, false), || {
            format!("/dev/{dir}")
        })?;
    }
    ctx(fchdir(root.fd()), || "entering the sandbox root".into())
}

/// Binds the tree at `dir` (with every mount below it) onto `dir` itself and opens the root
/// of that new mount.
fn stack_on_itself(dir: &Dir) -> std::io::Result<Dir> {
    let tree = mountfd::clone_tree_at(dir.fd())?;
    mountfd::attach(tree.as_fd(), dir.fd())?;
    Dir::from_fd(tree).open_dir(".")
}

/// PID 1 of the sandbox: finishes the mounts, pivots, drops privileges, execs the agent.
fn init(
    cfg: &JailConfig,
    status: &fs::File,
    listener: &UnixListener,
    log: &fs::File,
    root: Dir,
    agent: &OwnedFd,
) -> Fallible<std::convert::Infallible> {
    let root = if cfg.privileged {
        // pivot_root refuses a new root that is locked, as every mount made by host root is
        // here: stack an own bind of it on top and step onto that.
        ctx(stack_on_itself(&root), || "re-binding the root".into())?
    } else {
        root
    };
    let open = |rel: &str| ctx(root.open_dir(rel), || format!("opening /{rel}"));
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    ctx(
        mount(
            Some("proc"),
            &open("proc")?.proc_path(),
            Some("proc"),
            nodev,
            None::<&str>,
        ),
        || "mounting /proc".into(),
    )?;
    let pts_opts = if cfg.privileged {
        "newinstance,ptmxmode=0666,mode=0620,gid=5"
    } else {
        "newinstance,ptmxmode=0666,mode=0620"
    };
    ctx(
        mount(
            Some("devpts"),
            &open("dev/pts")?.proc_path(),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some(pts_opts),
        ),
        || "mounting /dev/pts".into(),
    )?;
    ctx(
        mount(
            Some("shm"),
            &open("dev/shm")?.proc_path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777,size=64m"),
        ),
        || "mounting /dev/shm".into(),
    )?;
    ctx(sethostname(&cfg.id), || "sethostname".into())?;
    if !cfg.host_owned_net() {
        loopback_up()?;
    }
    ctx(fchdir(root.fd()), || "entering the root".into())?;
    drop(root);
    ctx(pivot_root(".", "."), || "pivot_root".into())?;
    ctx(umount2(".", MntFlags::MNT_DETACH), || {
        "detaching the host root".into()
    })?;
    ctx(chdir("/"), || "chdir /".into())?;

    let devnull = ctx(fs::File::open("/dev/null"), || "opening /dev/null".into())?;
    let listener_fd = high_dup(listener.as_raw_fd())?;
    let log_fd = high_dup(log.as_raw_fd())?;
    let null_fd = high_dup(devnull.as_raw_fd())?;
    let agent_fd = high_dup(agent.as_raw_fd())?;
    for (from, to) in [(null_fd, 0), (log_fd, 1), (log_fd, 2), (listener_fd, 3)] {
        // SAFETY: plain descriptor juggling on descriptors this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: marks every descriptor above the agent's socket close-on-exec; no memory involved.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            4u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
    drop_capabilities()?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
    }
    let filters = crate::seccomp::filters().map_err(|e| e.to_string())?;
    crate::seccomp::install(&filters).map_err(|e| e.to_string())?;

    ctx(say(status, "R"), || "reporting readiness".into())?;
    let args = [c"sandpit".to_owned(), c"agent".to_owned()];
    let env: Vec<CString> = [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        "HOME=/root".to_string(),
        "SANDPIT_AGENT_FD=3".to_string(),
        format!("SANDPIT_SANDBOX_ID={}", cfg.id),
    ]
    .into_iter()
    .filter_map(|s| CString::new(s).ok())
    .collect();
    // SAFETY: the descriptor is ours (a high duplicate, close-on-exec: the agent, an ELF
    // binary, needs no path to itself).
    let agent = unsafe { std::os::fd::BorrowedFd::borrow_raw(agent_fd) };
    let err =
        nix::unistd::execveat(agent, c"", &args, &env, nix::fcntl::AtFlags::AT_EMPTY_PATH).err();
    Err(format!("exec of the agent: {err:?}"))
}

fn high_dup(fd: RawFd) -> Fallible<RawFd> {
    // SAFETY: duplicates a descriptor this process owns.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    if new < 0 {
        return Err(format!("dup: {}", std::io::Error::last_os_error()));
    }
    Ok(new)
}

fn drop_capabilities() -> Fallible<()> {
    let last: u32 = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    for cap in 0..=last {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(format!(
                "dropping capability {cap}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Brings `lo` up in the sandbox's fresh network namespace.
fn loopback_up() -> Fallible<()> {
    // SAFETY: a datagram socket for the ioctl below; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we pass, which lives on our
    // stack for the duration of the calls; the union field used is the flags one.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(format!(
                "SIOCSIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn bind_socket(cfg: &JailConfig) -> Fallible<UnixListener> {
    let path = cfg.socket();
    let _ = fs::remove_file(&path);
    let short = ctx(crate::sockpath::shorten(&path), || {
        format!("socket path {}", path.display())
    })?;
    let listener = ctx(UnixListener::bind(&short.path), || {
        format!("binding {}", path.display())
    })?;
    ctx(
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)),
        || format!("chmod {}", path.display()),
    )?;
    Ok(listener)
}

/// Creates the sandbox directory (the host's only: mode 0700) and the skeleton of its root
/// (idempotent: a restart reuses it). Mount points are repaired into real directories when
/// the sandbox replaced them; the sandbox's own directories (`/tmp`, `/var`, ...) are made
/// when missing and otherwise left as the sandbox made them, nothing ever made through a
/// symlink it left.
fn prepare_rootfs(cfg: &JailConfig) -> Fallible<()> {
    let owner = cfg.privileged.then_some((cfg.host_uid, cfg.host_gid));
    let dir = &cfg.sandbox_dir;
    ctx(fs::create_dir_all(dir), || {
        format!("mkdir {}", dir.display())
    })?;
    ctx(
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)),
        || format!("chmod {}", dir.display()),
    )?;
    let rootfs = cfg.rootfs();
    let fresh = match fs::create_dir(&rootfs) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(format!("mkdir {}: {e}", rootfs.display())),
    };
    let root = ctx(Dir::open_host(&rootfs), || {
        format!("opening {}", rootfs.display())
    })?;
    if fresh {
        ctx(root.set_owner_mode(owner, 0o755), || {
            format!("chown {}", rootfs.display())
        })?;
    }
    let what = |rel: &'static str| move || format!("preparing /{rel} of the sandbox");
    for dir in BASE_DIRS {
        let rel = dir.trim_start_matches('/');
        match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = ctx(fs::read_link(dir), || format!("readlink {dir}"))?;
                ctx(root.ensure_symlink(&target, rel), what(rel))?;
            }
            Ok(m) if m.is_dir() => drop(ctx(root.ensure_dir(rel, 0o755, None, true), what(rel))?),
            _ => {}
        }
    }
    for (rel, mode) in [("proc", 0o555), ("dev", 0o755)] {
        drop(ctx(root.ensure_dir(rel, mode, None, true), what(rel))?);
    }
    let own = |parent: &Dir, rel: &str, mode: u32| -> Fallible<Option<Dir>> {
        match parent.ensure_dir(rel, mode, owner, false) {
            Ok(d) => Ok(Some(d)),
            // A symlink or a file the sandbox put there: its own business.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
                Ok(None)
            }
            Err(e) => Err(format!("preparing /{rel} of the sandbox: {e}")),
        }
    };
    for (rel, mode) in [
        ("tmp", 0o1777),
        ("workspace", 0o755),
        ("root", 0o700),
        ("home", 0o755),
        ("run", 0o755),
        ("mnt", 0o755),
    ] {
        own(&root, rel, mode)?;
    }
    if let Some(var) = own(&root, "var", 0o755)? {
        own(&var, "tmp", 0o1777)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        assert!(super::start_time(me).is_some());
        assert!(super::start_time(i32::MAX).is_none());
    }

    #[test]
    fn an_exited_process_is_not_live_before_it_is_reaped() {
        let me = std::process::id() as i32;
        assert_eq!(super::live_start_time(me), super::start_time(me));
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id() as i32;
        // Not waited for: it stays a zombie, with its start time still in /proc.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while super::live_start_time(pid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(super::start_time(pid).is_some(), "reaped too early");
        assert!(
            super::live_start_time(pid).is_none(),
            "a zombie counted as live"
        );
        let _ = child.wait();
    }
}
