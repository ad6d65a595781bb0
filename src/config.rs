//! The server's configuration, read in one place: flags override the environment, which
//! overrides the config file (`--config sandpit.toml`), which overrides the defaults.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8787].
    #[arg(long)]
    pub listen: Option<String>,
    /// Directory for the store and the sandboxes' files [default: ./.sandpit]; the last
    /// one given wins.
    #[arg(long, overrides_with = "data_dir")]
    pub data_dir: Option<PathBuf>,
    /// Allow a non-loopback --listen without SANDPIT_AUTH_TOKEN.
    #[arg(long)]
    pub insecure: bool,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// A TOML file with any of the settings below and [defaults].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also serve this dialect (acontext, artifact, rlm, kapin) at `/`, for clients whose worker
    /// URL cannot carry a path; native routes win where paths collide.
    #[arg(long, value_name = "NAME")]
    pub root_dialect: Option<String>,
    /// Ready sandboxes kept for creates to take (0 disables the warm pool) [default: 2].
    #[arg(long)]
    pub pool_size: Option<usize>,
    /// Also serve the e2b dialect at the root of this address (for E2B_API_URL and
    /// E2B_SANDBOX_URL without a path).
    #[arg(long, value_name = "ADDR")]
    pub e2b_listen: Option<String>,
    /// Set `favordynmods` on the host's cgroup v2 mount at start (root, Linux 6.0+): joining
    /// a cgroup stops waiting for an RCU grace period, which made most of a cold create's
    /// time; forks and exits on the whole host get slightly dearer.
    #[arg(long)]
    pub cgroup_favordynmods: bool,
}

/// The config file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    insecure: Option<bool>,
    log_format: Option<String>,
    /// First host uid of the sandboxes' id ranges (root only).
    uid_base: Option<u32>,
    max_upload_mb: Option<u64>,
    root_dialect: Option<String>,
    e2b_listen: Option<String>,
    /// Host-based port addressing: `{port}-{id}.{ports_domain}`.
    ports_domain: Option<String>,
    #[serde(default)]
    webhooks: Vec<WebhookFile>,
    #[serde(default)]
    defaults: Defaults,
    /// Where snapshots go.
    #[serde(default)]
    storage: sandpit_core::snapshot::StorageConfig,
    #[serde(default)]
    tenants: Vec<TenantFile>,
    /// The warm pool.
    #[serde(default)]
    pool: PoolFile,
    /// See `--cgroup-favordynmods`.
    cgroup_favordynmods: Option<bool>,
}

/// `[pool]`: how many ready sandboxes of the default spec to keep.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    size: Option<usize>,
}

/// One `[[tenants]]` entry: its API keys (hex SHA-256, from `sandpit hash-key`) and quotas.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    name: String,
    key_sha256: Option<String>,
    #[serde(default)]
    keys_sha256: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    quotas: QuotasFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotasFile {
    max_sandboxes: Option<u64>,
    max_memory_mb: Option<u64>,
    creations_per_minute: Option<u64>,
}

impl TenantFile {
    fn into_core(self) -> sandpit_core::tenant::TenantConfig {
        let mut keys_sha256 = self.keys_sha256;
        keys_sha256.extend(self.key_sha256);
        sandpit_core::tenant::TenantConfig {
            name: self.name,
            keys_sha256,
            admin: self.admin,
            quotas: sandpit_core::tenant::Quotas {
                max_sandboxes: self.quotas.max_sandboxes,
                max_memory_mb: self.quotas.max_memory_mb,
                creations_per_minute: self.quotas.creations_per_minute,
            },
        }
    }
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookFile {
    url: String,
    /// Key of the HMAC signature; may be left out with `format = "agentpod"`.
    #[serde(default)]
    secret: String,
    /// `sandpit` (default) or `agentpod` (AgentPod's `{event, data, timestamp}` body).
    format: Option<String>,
    /// Sent as `Authorization: Bearer <token>`.
    token: Option<String>,
    /// Event types (`sandbox.created`, ...); empty or absent = all.
    #[serde(default)]
    events: Vec<String>,
    /// Attempts per event, the first included (default 20; at most 24 h anyway).
    max_attempts: Option<u32>,
    /// Wait before the first retry, doubled after each (at most 1 h).
    backoff_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

impl WebhookFile {
    fn into_core(self) -> anyhow::Result<sandpit_core::events::Webhook> {
        use sandpit_core::events::{check_url, EventKind, Webhook, WebhookFormat};
        check_url(&self.url).map_err(anyhow::Error::msg)?;
        let format = match self.format.as_deref() {
            None | Some("sandpit") => WebhookFormat::Sandpit,
            Some("agentpod") => WebhookFormat::Agentpod,
            Some(other) => anyhow::bail!(
                "webhook {}: format '{other}': use sandpit or agentpod",
                self.url
            ),
        };
        if self.token.as_deref() == Some("") {
            anyhow::bail!("webhook {}: token must not be empty", self.url);
        }
        let unauthenticated = format == WebhookFormat::Agentpod && self.token.is_none();
        if self.secret.is_empty() && (format == WebhookFormat::Sandpit || unauthenticated) {
            anyhow::bail!(
                "webhook {}: secret must not be empty (an agentpod webhook may use token instead)",
                self.url
            );
        }
        let mut hook = Webhook::new(self.url, self.secret);
        hook.format = format;
        hook.token = self.token;
        for name in &self.events {
            let kind = EventKind::parse(name).with_context(|| {
                let all: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("webhook event '{name}': use one of {}", all.join(", "))
            })?;
            hook.events.push(kind);
        }
        if let Some(n) = self.max_attempts {
            anyhow::ensure!(n >= 1, "webhook max_attempts must be at least 1");
            hook.max_attempts = n;
        }
        if let Some(ms) = self.backoff_ms {
            hook.initial_backoff = Duration::from_millis(ms);
        }
        if let Some(ms) = self.timeout_ms {
            anyhow::ensure!(ms >= 1, "webhook timeout_ms must be at least 1");
            hook.timeout = Duration::from_millis(ms);
        }
        Ok(hook)
    }
}

/// Defaults for sandboxes and commands that do not say otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    keepalive_seconds: Option<u64>,
    timeout_ms: Option<u64>,
    max_output_bytes: Option<usize>,
    /// Buffered command output the server may hold for all calls at once, in MiB.
    max_buffered_output_mb: Option<u64>,
    memory_mb: Option<u64>,
    cpus: Option<f64>,
    pids: Option<u64>,
    sleep_after_seconds: Option<u64>,
    open_files: Option<u64>,
    disk_mb: Option<u64>,
}

#[derive(Debug)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub insecure: bool,
    pub log_format: String,
    pub token: Option<String>,
    pub uid_base: u32,
    pub max_upload_bytes: u64,
    /// The dialect also mounted at `/`, checked to exist.
    pub root_dialect: Option<String>,
    /// Second listener serving only the e2b dialect at `/`.
    pub e2b_listen: Option<String>,
    /// Domain of host-based port addressing, without a leading dot.
    pub ports_domain: Option<String>,
    /// Every accepted API key (the tenants' and `SANDPIT_AUTH_TOKEN`), hashed.
    pub keys: sandpit_core::tenant::Keys,
    webhooks: Vec<sandpit_core::events::Webhook>,
    defaults: Defaults,
    /// Snapshot storage (`[storage]`); default: `<data dir>/snapshots`.
    pub storage: sandpit_core::snapshot::StorageConfig,
    /// Warm pool size (`--pool-size`, `[pool] size`); `None`: the core's default.
    pub pool_size: Option<usize>,
    /// Remount the cgroup v2 mount with `favordynmods` at start.
    pub cgroup_favordynmods: bool,
}

impl Config {
    pub fn load(args: ServeArgs) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let root_dialect = args.root_dialect.or(file.root_dialect);
        if let Some(name) = &root_dialect {
            sandpit_api::validate_root_dialect(name).map_err(anyhow::Error::msg)?;
        }
        let ports_domain = file
            .ports_domain
            .map(|d| d.trim_matches('.').to_ascii_lowercase())
            .filter(|d| !d.is_empty());
        let webhooks = file
            .webhooks
            .into_iter()
            .map(WebhookFile::into_core)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let token = std::env::var("SANDPIT_AUTH_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let tenants: Vec<_> = file
            .tenants
            .into_iter()
            .map(TenantFile::into_core)
            .collect();
        let keys = sandpit_core::tenant::Keys::new(&tenants, token.as_deref())
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:8787".into()),
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from(".sandpit")),
            insecure: args.insecure || file.insecure.unwrap_or(false),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or_else(|| "text".into()),
            token,
            uid_base: file.uid_base.unwrap_or(1 << 28),
            max_upload_bytes: file.max_upload_mb.unwrap_or(4096) * 1024 * 1024,
            root_dialect,
            e2b_listen: args.e2b_listen.or(file.e2b_listen),
            ports_domain,
            keys,
            webhooks,
            defaults: file.defaults,
            storage: file.storage,
            pool_size: args.pool_size.or(file.pool.size),
            cgroup_favordynmods: args.cgroup_favordynmods
                || file.cgroup_favordynmods.unwrap_or(false),
        })
    }

    /// The core's settings.
    pub fn core(&self, data_dir: PathBuf) -> sandpit_core::CoreConfig {
        let base = sandpit_core::CoreConfig::default();
        let d = &self.defaults;
        sandpit_core::CoreConfig {
            data_dir,
            default_keepalive_seconds: d
                .keepalive_seconds
                .unwrap_or(base.default_keepalive_seconds),
            default_limits: sandpit_runtime::Limits {
                memory_mb: d.memory_mb.or(base.default_limits.memory_mb),
                cpus: d.cpus.or(base.default_limits.cpus),
                pids: d.pids.or(base.default_limits.pids),
                open_files: d.open_files.or(base.default_limits.open_files),
                disk_mb: d.disk_mb.or(base.default_limits.disk_mb),
            },
            default_timeout_ms: d.timeout_ms.unwrap_or(base.default_timeout_ms),
            max_output_bytes: d.max_output_bytes.unwrap_or(base.max_output_bytes),
            max_buffered_output_bytes: d
                .max_buffered_output_mb
                .map_or(base.max_buffered_output_bytes, |mb| {
                    mb.saturating_mul(1024 * 1024)
                }),
            reap_interval: Duration::from_secs(1),
            webhooks: self.webhooks.clone(),
            default_sleep_after_seconds: d
                .sleep_after_seconds
                .unwrap_or(base.default_sleep_after_seconds),
            pool_size: self.pool_size.unwrap_or(base.pool_size),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1\"\nlog_format = \"json\"\n[defaults]\nmemory_mb = 64\n",
        )
        .unwrap();
        let cfg = Config::load(ServeArgs {
            listen: Some("127.0.0.1:2".into()),
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:2");
        assert_eq!(cfg.log_format, "json");
        assert_eq!(
            cfg.core(PathBuf::from("/x")).default_limits.memory_mb,
            Some(64)
        );
    }

    #[test]
    fn root_dialect_is_checked() {
        let ok = Config::load(ServeArgs {
            root_dialect: Some("rlm".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.root_dialect.as_deref(), Some("rlm"));
        let err = Config::load(ServeArgs {
            root_dialect: Some("nope".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--root-dialect 'nope'"), "{err}");
    }

    #[test]
    fn storage_and_sleep_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[defaults]\nsleep_after_seconds = 30\n[storage]\nurl = \"s3://b/p\"\nendpoint = \"http://127.0.0.1:9\"\nallow_http = true\n",
        )
        .unwrap();
        let cfg = Config::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.storage.url.as_deref(), Some("s3://b/p"));
        assert!(cfg.storage.allow_http);
        assert_eq!(
            cfg.core(PathBuf::from("/x")).default_sleep_after_seconds,
            30
        );
    }

    #[test]
    fn tenants_are_read_with_their_keys_and_quotas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let h = sandpit_core::tenant::hash_key;
        std::fs::write(
            &path,
            format!(
                "[[tenants]]\nname = \"acme\"\nkey_sha256 = \"{}\"\nkeys_sha256 = [\"{}\"]\n\
                 [tenants.quotas]\nmax_sandboxes = 2\n\
                 [[tenants]]\nname = \"ops\"\nkey_sha256 = \"{}\"\nadmin = true\n",
                h("a1"),
                h("a2"),
                h("o")
            ),
        )
        .unwrap();
        let cfg = Config::load(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap();
        let a = cfg.keys.resolve("a2").unwrap();
        assert_eq!((&*a.tenant, a.quotas.max_sandboxes), ("acme", Some(2)));
        assert!(cfg.keys.resolve("a1").is_some());
        assert!(cfg.keys.resolve("o").unwrap().admin);
        assert!(cfg.keys.resolve("x").is_none());
        std::fs::write(
            &path,
            "[[tenants]]\nname = \"bad\"\nkey_sha256 = \"nothex\"\n",
        )
        .unwrap();
        let err = Config::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(Config::load(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .is_err());
    }
}
