//! Sets a running sandbox's hostname from outside (its agent has no CAP_SYS_ADMIN): one
//! long-lived thread enters the sandbox's UTS namespace, sets the name and goes back to the
//! host's. A warm-pool hand-over is on a create's critical path, and a thread made per call
//! cost about as much as the rest of the hand-over; this thread is made once, on first use.
//! The namespace is opened ahead (looking up `/proc/PID/ns/uts` took 50 µs here).

use std::fs::File;
use std::sync::mpsc;
use std::sync::Mutex;

use nix::sched::{setns, CloneFlags};

type Reply = tokio::sync::oneshot::Sender<std::io::Result<()>>;

struct Job {
    ns: File,
    name: String,
    reply: Reply,
}

/// The setter thread's queue, made with the thread.
static SETTER: Mutex<Option<mpsc::Sender<Job>>> = Mutex::new(None);

/// The UTS namespace of process `pid`, to give to [`set`].
pub fn namespace_of(pid: i32) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/ns/uts"))
}

/// Sets the hostname of the UTS namespace `ns` (from [`namespace_of`]) to `name`.
pub async fn set(ns: File, name: &str) -> std::io::Result<()> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let job = Job {
        ns,
        name: name.to_string(),
        reply,
    };
    let sent = {
        let mut slot = SETTER.lock().unwrap_or_else(|p| p.into_inner());
        let tx = match slot.as_ref() {
            Some(tx) => tx.clone(),
            None => {
                let tx = start()?;
                *slot = Some(tx.clone());
                tx
            }
        };
        match tx.send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(job)) => {
                // The thread is gone (it could not get back to the host's namespace): the
                // next call makes a new one; this one runs on a thread of its own.
                *slot = None;
                Err(job)
            }
        }
    };
    match sent {
        Ok(()) => answer
            .await
            .map_err(|_| std::io::Error::other("the hostname thread stopped"))?,
        Err(job) => {
            let (ns, name) = (job.ns, job.name);
            std::thread::spawn(move || enter_and_set(&ns, &name))
                .join()
                .map_err(|_| std::io::Error::other("the hostname thread panicked"))?
        }
    }
}

fn start() -> std::io::Result<mpsc::Sender<Job>> {
    let home = File::open("/proc/thread-self/ns/uts")?;
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("sandpit-hostname".into())
        .spawn(move || {
            for job in rx {
                let _ = job.reply.send(enter_and_set(&job.ns, &job.name));
                // Back home, so the thread holds no sandbox's namespace; if that fails the
                // thread ends and the next call starts another.
                if setns(&home, CloneFlags::CLONE_NEWUTS).is_err() {
                    return;
                }
            }
        })?;
    Ok(tx)
}

fn enter_and_set(ns: &File, name: &str) -> std::io::Result<()> {
    setns(ns, CloneFlags::CLONE_NEWUTS)?;
    nix::unistd::sethostname(name)?;
    Ok(())
}
