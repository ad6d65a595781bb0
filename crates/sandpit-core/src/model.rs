//! The sandbox model and the requests the core accepts, shared by every API layer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use sandpit_proto::{Entry, EntryKind, ExitStatus};
pub use sandpit_runtime::{Launched, Limits, NetworkPolicy};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Starting,
    Running,
    Sleeping,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Sleeping => "sleeping",
            Self::Stopped => "stopped",
        }
    }
    pub fn parse(s: &str) -> Self {
        match s {
            "starting" => Self::Starting,
            "running" => Self::Running,
            "sleeping" => Self::Sleeping,
            _ => Self::Stopped,
        }
    }
}

/// Everything the store keeps about a sandbox.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    pub status: Status,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub last_active_at: i64,
    /// 0 means the sandbox never expires.
    pub keepalive_seconds: u64,
    pub limits: Limits,
    pub env: BTreeMap<String, String>,
    /// Index of the sandbox's uid range.
    pub slot: u32,
    pub launched: Option<Launched>,
    pub warnings: Vec<String>,
    /// Loopback only, or egress with its allow-list resolved at create time.
    pub network: NetworkPolicy,
    /// Idle time after which the sandbox goes to sleep; 0 means never.
    pub sleep_after_seconds: u64,
    /// Snapshot the sandbox (its whole writable root) before it expires.
    pub snapshot_on_expiry: bool,
    /// The tenant that owns it ([`crate::tenant::DEFAULT_TENANT`] without tenants).
    pub tenant: String,
}

impl Record {
    pub fn expires_at(&self) -> Option<i64> {
        (self.keepalive_seconds > 0).then(|| {
            self.last_active_at
                .saturating_add((self.keepalive_seconds as i64).saturating_mul(1000))
        })
    }

    pub fn view(&self) -> Sandbox {
        Sandbox {
            id: self.id.clone(),
            status: self.status,
            created_at: rfc3339(self.created_at),
            expires_at: self.expires_at().map(rfc3339),
            last_active_at: rfc3339(self.last_active_at),
            keepalive_seconds: self.keepalive_seconds,
            limits: self.limits,
            network: if self.network.egress {
                "egress"
            } else {
                "none"
            },
            allow: self.network.allow.iter().map(|n| n.to_string()).collect(),
            warnings: self.warnings.clone(),
            sleep_after_seconds: self.sleep_after_seconds,
            snapshot_on_expiry: self.snapshot_on_expiry,
            tenant: self.tenant.clone(),
            oom_kills: None,
            disk_used_mb: None,
        }
    }
}

/// A sandbox as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub status: Status,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_active_at: String,
    pub keepalive_seconds: u64,
    #[schema(value_type = LimitsRequest)]
    pub limits: Limits,
    /// `none` (loopback only) or `egress`.
    #[schema(value_type = String)]
    pub network: &'static str,
    /// With egress: the only IPv4 networks the sandbox may reach (hostnames resolved at
    /// create time); absent: anywhere outside the blocked ranges.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    pub warnings: Vec<String>,
    pub sleep_after_seconds: u64,
    pub snapshot_on_expiry: bool,
    /// The tenant that owns the sandbox.
    pub tenant: String,
    /// Processes of the sandbox the kernel's OOM killer killed so far (GET of one sandbox,
    /// when it has a memory cgroup).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// MB used on the sandbox's own disk (GET of one sandbox with `limits.disk_mb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandbox {
    pub id: Option<String>,
    pub keepalive_seconds: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: LimitsRequest,
    /// `none` (default: loopback only) or `egress` (outbound through a user-mode network
    /// stack; the host, private ranges and the metadata address stay unreachable).
    pub network: Option<String>,
    /// With egress: IPv4 addresses, CIDRs or hostnames the sandbox may reach, and nothing else.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Go to sleep after this much idle time (0: never; default from the server's config).
    pub sleep_after_seconds: Option<u64>,
    /// Snapshot the sandbox before it expires (default false).
    pub snapshot_on_expiry: Option<bool>,
    /// Start with the files of a snapshot: `"latest"` (of this id), a snapshot id, or
    /// `{"snapshot", "from_sandbox"}`.
    #[schema(value_type = Option<Object>)]
    pub restore: Option<crate::snapshot::RestoreSource>,
}

/// Resource limits; a missing or null limit is the server's default (in a request) or unlimited.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Limits)]
pub struct LimitsRequest {
    pub memory_mb: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<u64>,
    /// Most open files per process (RLIMIT_NOFILE), 64 to 1048576.
    pub open_files: Option<u64>,
    /// Size of the sandbox's own disk in MB (its whole writable root: /tmp, /workspace, ...),
    /// 16 to 1048576; a full disk is ENOSPC inside. Root servers only; can grow while running.
    pub disk_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSandbox {
    pub keepalive_seconds: Option<u64>,
    pub sleep_after_seconds: Option<u64>,
    pub snapshot_on_expiry: Option<bool>,
    /// New limits of the running sandbox (memory, cpus, pids; applied through its cgroup);
    /// a missing field keeps its current value.
    pub limits: Option<LimitsRequest>,
}

/// A command to run, as clients send it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Option<String>,
    pub argv: Option<Vec<String>>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub stdin: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Run in this session's shell (see the sessions API).
    pub session: Option<String>,
    /// Kill the command when the client disconnects before it ends (default: it runs on).
    #[serde(default)]
    pub kill_on_disconnect: bool,
}

/// One step of a running command.
#[derive(Debug, Clone)]
pub enum ExecEvent {
    Started {
        pid: i32,
    },
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
    Exited(ExitStatus),
    /// The end of a code run: `execution_count`, `results`, `error`, `timed_out`, `locals`.
    CodeResult(serde_json::Value),
}

/// A finished command with its output collected (up to the configured cap).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    pub duration_ms: u64,
    pub timed_out: bool,
    pub truncated: bool,
}

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// RFC 3339 UTC with a `Z`, to the second.
pub fn rfc3339(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.format(&f).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_z() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn keepalive_zero_never_expires() {
        let mut r = Record {
            id: "a".into(),
            status: Status::Running,
            created_at: 0,
            last_active_at: 1000,
            keepalive_seconds: 0,
            limits: Limits::default(),
            env: BTreeMap::new(),
            slot: 0,
            launched: None,
            warnings: vec![],
            network: NetworkPolicy::default(),
            sleep_after_seconds: 0,
            snapshot_on_expiry: false,
            tenant: "default".into(),
        };
        assert_eq!(r.expires_at(), None);
        r.keepalive_seconds = 5;
        assert_eq!(r.expires_at(), Some(6000));
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub id: Option<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartProcess {
    pub id: Option<String>,
    pub command: Option<String>,
    pub argv: Option<Vec<String>>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A session as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub id: String,
    pub cwd: String,
    pub pid: i32,
    pub created_at: String,
}

impl From<sandpit_proto::SessionInfo> for Session {
    fn from(s: sandpit_proto::SessionInfo) -> Self {
        Self {
            id: s.id,
            cwd: s.cwd,
            pid: s.pid,
            created_at: rfc3339(s.created_at),
        }
    }
}

/// A background process as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Process {
    pub id: String,
    pub pid: i32,
    pub command: Vec<String>,
    pub cwd: String,
    /// `running` or `exited`.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub exit_code: Option<i32>,
    pub started_at: String,
    pub exited_at: Option<String>,
}

impl From<sandpit_proto::ProcInfo> for Process {
    fn from(p: sandpit_proto::ProcInfo) -> Self {
        Self {
            id: p.id,
            pid: p.pid,
            command: p.command,
            cwd: p.cwd,
            status: if p.running { "running" } else { "exited" },
            exit_code: p.exit_code,
            started_at: rfc3339(p.started_at),
            exited_at: p.exited_at.map(rfc3339),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateContext {
    pub id: Option<String>,
    /// `python` (default) or `javascript`.
    pub language: Option<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Preloaded as the variable `context`: a string, or a JSON object or array.
    pub context: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunCode {
    pub code: String,
    /// The context to run in; default: the sandbox's default context of `language`.
    pub context: Option<String>,
    pub language: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Also return `locals`: `{name: repr(value)}` of the user-defined names.
    #[serde(default)]
    pub locals: bool,
}

/// A code-interpreter context as clients see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Context {
    pub id: String,
    pub language: String,
    pub cwd: String,
    pub pid: i32,
    /// `running`, or `exited` after a crash (restart it).
    #[schema(value_type = String)]
    pub status: &'static str,
    pub version: String,
    pub created_at: String,
}

impl From<sandpit_proto::ContextInfo> for Context {
    fn from(c: sandpit_proto::ContextInfo) -> Self {
        Self {
            id: c.id,
            language: c.language,
            cwd: c.cwd,
            pid: c.pid,
            status: if c.alive { "running" } else { "exited" },
            version: c.version,
            created_at: rfc3339(c.created_at),
        }
    }
}

/// Clone a git repository into the sandbox, or update it when `dir` holds one already.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitClone {
    /// `https://`, `http://`, `git://` or `ssh://` URL. Credentials in it are taken out and
    /// used like `username`/`token`, never stored in the checkout.
    pub url: String,
    /// Branch or tag to check out (clone) or fetch and fast-forward to (pull).
    pub branch: Option<String>,
    /// Shallow clone of this many commits (a pull fetches every new commit, so that it can
    /// fast-forward).
    pub depth: Option<u32>,
    /// Absolute target directory; default `/workspace/<repository name>`.
    pub dir: Option<String>,
    /// Password or access token for HTTP(S); given to git through a credential helper in
    /// its environment, never in argv, `.git/config`, logs or answers.
    pub token: Option<String>,
    /// User name that goes with `token` (default `x-access-token`).
    pub username: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// The checkout after a clone or pull.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GitCheckout {
    /// `clone` or `pull`.
    #[schema(value_type = String)]
    pub action: &'static str,
    pub dir: String,
    /// The commit checked out (full hash).
    pub commit: String,
    /// The branch checked out (`HEAD` when detached, e.g. at a tag).
    pub branch: String,
}
