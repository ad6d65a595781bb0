//! sandpit-runtime: starts, inspects and ends sandboxes on this machine.
//!
//! The server talks to a [`Runtime`]; the only implementation today is [`NativeRuntime`],
//! which uses Linux namespaces, a per-sandbox root directory with the host's system
//! directories bound read-only, cgroups (v1 or v2) and a seccomp denylist. The dangerous part
//! (forking into namespaces, mounting, dropping privileges) happens in [`jail`], a separate
//! short-lived process (`sandpit jail`), never inside the async server.

pub mod beneath;
pub mod cgroup;
pub mod disk;
mod hostname;
pub mod jail;
pub mod mountfd;
mod native;
pub mod net;
pub mod seccomp;
pub mod sockpath;
pub mod tuning;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use native::{NativeRuntime, RuntimeOptions};
pub use net::NetworkPolicy;

/// Resource limits of one sandbox; `None` leaves a resource unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// RLIMIT_NOFILE of the agent and everything it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_files: Option<u64>,
    /// Size of the sandbox's own disk (its whole writable root), in MB; a root server only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
}

/// What the runtime needs to start (or restart) a sandbox.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub id: String,
    pub limits: Limits,
    /// Index of the sandbox's uid/gid range (distinct per live sandbox).
    pub slot: u32,
    /// Loopback only, or egress through a user-mode network stack.
    pub network: NetworkPolicy,
}

/// A running sandbox as the runtime knows it: enough to find it again after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launched {
    /// Host pid of the sandbox's init (the agent).
    pub pid: i32,
    /// Its start time in clock ticks since boot, so a recycled pid is never mistaken for it.
    pub start_time: u64,
    /// The sandbox's user-mode network stack (slirp4netns), when it has egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Helper>,
}

/// A host process that serves one sandbox and lives as long as it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Helper {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox '{id}': {message}")]
    Launch { id: String, message: String },
    #[error("sandbox '{id}': {source} ({path})")]
    Io {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Starts and ends sandboxes. Kept small so that other runtimes (a Kubernetes pod, a microVM)
/// are an added module: each only has to start the agent somewhere and say where its socket is.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync {
    /// Starts the sandbox's agent; also used to bring back a sandbox whose agent is gone.
    /// Returns the handle and warnings about limits that could not be applied.
    async fn start(&self, spec: &LaunchSpec) -> Result<(Launched, Vec<String>), RuntimeError>;
    /// Whether the handle still names a live sandbox init (and its network helper, if any).
    fn is_alive(&self, launched: &Launched) -> bool;
    /// Kills every process of the sandbox; its files stay.
    async fn stop(&self, id: &str, launched: Option<Launched>) -> Result<(), RuntimeError>;
    /// Stops the sandbox and removes its files and cgroups.
    async fn destroy(&self, id: &str, launched: Option<Launched>) -> Result<(), RuntimeError>;
    /// Ids of sandboxes that have files on this machine (known to the store or not).
    fn sandboxes_on_disk(&self) -> Vec<String>;
    /// The Unix socket the sandbox's agent listens on.
    fn agent_socket(&self, id: &str) -> PathBuf;
    /// Warnings that apply to every sandbox (e.g. no cgroup delegation).
    fn warnings(&self) -> Vec<String>;
    /// Why this runtime cannot give sandboxes egress networking, or `None` when it can.
    fn egress_unsupported(&self) -> Option<String> {
        Some("this runtime has no egress networking".into())
    }

    /// Changes the memory, cpu, pids and open-files limits of a running sandbox
    /// (`None` = unchanged; open files apply to processes started from then on);
    /// the error says what cannot be changed and why.
    fn update_limits(
        &self,
        id: &str,
        launched: Option<Launched>,
        limits: &Limits,
    ) -> Result<(), String> {
        let _ = (id, launched, limits);
        Err("this runtime cannot change limits of a running sandbox".into())
    }

    /// Whether [`Runtime::adopt`] works here (the warm pool needs it).
    fn can_adopt(&self) -> bool {
        false
    }

    /// Does ahead of time, while the sandbox waits in the warm pool, what [`Runtime::adopt`]
    /// would otherwise do during the hand-over.
    fn prepare_adopt(&self, id: &str, launched: Launched) -> Result<(), RuntimeError> {
        let _ = (id, launched);
        Ok(())
    }

    /// Gives the running sandbox `from` (made ahead of time for the warm pool) the id `to`,
    /// its hostname included: from then on every call names it `to`. Fails when `to` has
    /// files already.
    async fn adopt(&self, from: &str, to: &str, launched: Launched) -> Result<(), RuntimeError> {
        let _ = (from, launched);
        Err(RuntimeError::Launch {
            id: to.to_string(),
            message: "this runtime cannot rename a sandbox".into(),
        })
    }

    /// Why this runtime cannot give sandboxes a disk limit, or `None` when it can.
    fn disk_unsupported(&self) -> Option<String> {
        Some("this runtime has no per-sandbox disk limit".into())
    }

    /// Bytes used and total of the sandbox's own disk, when it has one.
    fn disk_usage(&self, id: &str) -> Option<(u64, u64)> {
        let _ = id;
        None
    }

    /// How many times the kernel's OOM killer killed a process of the sandbox.
    fn oom_kills(&self, id: &str) -> Option<u64> {
        let _ = id;
        None
    }
}
