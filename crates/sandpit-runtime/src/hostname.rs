//! Sets a running sandbox's hostname from outside (its agent has no CAP_SYS_ADMIN): the
//! calling thread enters the sandbox's UTS namespace, sets the name and goes back to the
//! host's. A warm-pool hand-over is on a create's critical path: handing this to a thread of
//! its own cost 60-130 µs here (waking that thread, then being woken by it), the three calls
//! on the calling thread about 10 µs. Any thread of a multi-threaded process may enter a UTS
//! namespace, and one holds nothing but the host and domain names (every jail sets its own
//! hostname, so a process started from a thread that could not go back is unaffected).
//! The namespace is opened ahead (looking up `/proc/PID/ns/uts` took 50 µs here).

use std::fs::File;
use std::sync::OnceLock;

use nix::sched::{setns, CloneFlags};

/// The host's UTS namespace, opened on first use by a thread that has not left it.
static HOME: OnceLock<File> = OnceLock::new();

/// The UTS namespace of process `pid`, to give to [`set`].
pub fn namespace_of(pid: i32) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/ns/uts"))
}

/// Sets the hostname of the UTS namespace `ns` (from [`namespace_of`]) to `name`.
pub fn set(ns: &File, name: &str) -> std::io::Result<()> {
    let home = match HOME.get() {
        Some(home) => home,
        None => {
            let opened = File::open("/proc/thread-self/ns/uts")?;
            HOME.get_or_init(|| opened)
        }
    };
    setns(ns, CloneFlags::CLONE_NEWUTS)?;
    let set = nix::unistd::sethostname(name);
    if let Err(e) = setns(home, CloneFlags::CLONE_NEWUTS) {
        // Only this thread's view of the hostname is wrong; nothing it starts is affected.
        tracing::error!(error = %e, "could not go back to the host's UTS namespace");
    }
    Ok(set?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN over the child's UTS namespace); skipped otherwise.
    #[test]
    fn sets_the_name_in_the_namespace_and_comes_back() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let host = nix::unistd::gethostname().expect("hostname");
        // A process in a UTS namespace of its own that ends once it sees the new name.
        let mut child = std::process::Command::new("unshare")
            .args(["--uts", "sh", "-c"])
            .arg(
                "echo $$ > /dev/stdout; i=0; \
                 while [ \"$(cat /proc/sys/kernel/hostname)\" != sandpit-test ]; do \
                   i=$((i+1)); [ $i -gt 1000 ] && exit 1; sleep 0.01; done",
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        let out = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("pid");
        let pid: i32 = line.trim().parse().expect("pid");
        set(&namespace_of(pid).expect("namespace"), "sandpit-test").expect("set");
        assert!(
            child.wait().expect("wait").success(),
            "the child never saw its name"
        );
        // This thread is back in the host's namespace, whose name is unchanged.
        assert_eq!(nix::unistd::gethostname().expect("hostname"), host);
        assert_eq!(
            std::fs::read_link("/proc/thread-self/ns/uts").ok(),
            std::fs::read_link("/proc/self/ns/uts").ok()
        );
    }
}
