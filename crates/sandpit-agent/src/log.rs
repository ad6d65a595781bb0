//! The agent's own log. The jail hands the agent the host's `agent.log` as stdout and
//! stderr; the agent moves that file to a descriptor of its own and makes stdout and stderr
//! a pipe that one thread copies into it, starting the file over whenever it would grow past
//! [`MAX_BYTES`]. Whatever a sandbox provokes the agent to write, the host file stays small.
//! (The file itself is out of the sandbox's reach: the agent is not dumpable, so no process of
//! the sandbox can take its descriptors.)

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Largest size of the host's log file.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// Routes stdout and stderr through the capping thread. On any failure the descriptors stay
/// as they were (the log is then uncapped, which only a broken set-up can cause).
pub fn capture() {
    // SAFETY: duplicates descriptor 1, which the jail set up; the copy is owned right away.
    let copy = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 100) };
    if copy < 0 {
        return;
    }
    // SAFETY: `copy` is a fresh descriptor nothing else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(copy) });
    let Ok((rd, wr)) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) else {
        return;
    };
    let reader = std::fs::File::from(rd);
    let spawned = std::thread::Builder::new()
        .name("agent-log".into())
        .spawn(move || copy_capped(reader, file, MAX_BYTES));
    if spawned.is_err() {
        return;
    }
    for target in [1, 2] {
        // SAFETY: moves the pipe's write end onto stdout and stderr; descriptors only.
        unsafe { libc::dup2(wr.as_raw_fd(), target) };
    }
}

/// Copies everything from `from` to `to` (opened for appending), truncating `to` first when
/// it would pass `max` bytes. Never stops reading while the pipe is open: a stalled reader
/// would block every write to stderr.
fn copy_capped(mut from: std::fs::File, mut to: std::fs::File, max: u64) {
    use std::io::Read;
    let mut size = to.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if size + n as u64 > max {
            let _ = to.set_len(0);
            let note = format!("sandpit agent: log restarted at {max} bytes\n");
            let _ = to.write_all(note.as_bytes());
            size = note.len() as u64;
        }
        if to.write_all(&buf[..n]).is_ok() {
            size += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_never_passes_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let to = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let t = std::thread::spawn(move || super::copy_capped(std::fs::File::from(rd), to, 10_000));
        let mut w = std::fs::File::from(wr);
        use std::io::Write;
        for i in 0..2000 {
            writeln!(w, "line {i} of a sandbox that will not stop talking").unwrap();
        }
        writeln!(w, "the last line").unwrap();
        drop(w);
        t.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 10_000, "{}", text.len());
        assert!(text.starts_with("sandpit agent: log restarted"), "{text}");
        assert!(text.ends_with("the last line\n"));
    }
}
