//! Tenants: who is calling, which API keys map to whom, and each tenant's quotas.
//!
//! The API's auth layer resolves a request's key to a [`Caller`] and runs the rest of the
//! request inside [`scope`]; the manager reads [`current`] in its single sandbox lookup, in
//! `list` and in `create`, so no route or dialect can forget the check. Code outside any
//! scope (the reaper, re-attach at start) is the server itself and sees every sandbox: a
//! task spawned from a request must carry the caller with [`inherit`].

use std::future::Future;
use std::sync::Arc;

use subtle::ConstantTimeEq;

/// The tenant that sandboxes belong to when no tenants are configured (and the admin's own).
pub const DEFAULT_TENANT: &str = "default";

/// Per-tenant limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Quotas {
    /// Sandboxes that exist at once.
    pub max_sandboxes: Option<u64>,
    /// Sum of `limits.memory_mb` of the tenant's sandboxes (no limit counts as the default).
    pub max_memory_mb: Option<u64>,
    /// Creations in any 60-second window.
    pub creations_per_minute: Option<u64>,
}

/// What a tenant uses of its quotas.
#[derive(Debug, Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub sandboxes: u64,
    /// Sum of the memory limits of its sandboxes.
    pub memory_mb: u64,
    pub creations_last_minute: u64,
}

/// `GET /v1/tenant`: the caller's tenant, quotas and usage.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TenantInfo {
    pub tenant: String,
    pub admin: bool,
    pub quotas: Quotas,
    pub usage: Usage,
    /// Caps of the server that apply to every sandbox.
    pub server_limits: ServerLimits,
}

/// Server-wide caps: output kept per stream of a buffered exec (more is cut and the
/// answer says `truncated: true`), and the largest file upload (more answers 413).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ServerLimits {
    pub max_output_bytes: u64,
    pub max_upload_bytes: u64,
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Arc<str>,
    /// Sees and touches every tenant's sandboxes.
    pub admin: bool,
    pub quotas: Quotas,
    /// Set by a refusal for a quota: seconds until a retry may succeed (the API layer turns
    /// it into `Retry-After` on the 429, whichever dialect answered).
    pub retry_after: Arc<std::sync::atomic::AtomicU64>,
}

impl Caller {
    /// The admin (the `SANDPIT_AUTH_TOKEN`, or everyone in open mode).
    pub fn admin() -> Self {
        Self {
            tenant: DEFAULT_TENANT.into(),
            admin: true,
            quotas: Quotas::default(),
            retry_after: Arc::default(),
        }
    }

    /// A caller that owns nothing and sees nothing (unauthenticated public paths).
    pub fn nobody() -> Self {
        Self {
            tenant: "".into(),
            admin: false,
            quotas: Quotas::default(),
            retry_after: Arc::default(),
        }
    }

    /// The same caller, for a new request (its own `retry_after`).
    pub fn fresh(&self) -> Self {
        Self {
            retry_after: Arc::default(),
            ..self.clone()
        }
    }

    /// Seconds of the `Retry-After` a quota refusal asked for, if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self.retry_after.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Whether this caller may see a sandbox of `tenant`.
    pub fn sees(&self, tenant: &str) -> bool {
        self.admin || (!self.tenant.is_empty() && *self.tenant == *tenant)
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` as `caller`.
pub async fn scope<F: Future>(caller: Caller, f: F) -> F::Output {
    CALLER.scope(caller, f).await
}

/// The caller of the current request; `None` outside any request (the server itself).
pub fn current() -> Option<Caller> {
    CALLER.try_with(Caller::clone).ok()
}

/// `f` running as the current caller, for a task spawned from a request (task-locals are
/// not inherited by `tokio::spawn`). Outside a request it runs as a caller who sees nothing,
/// so a forgotten scope fails closed.
pub fn inherit<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let caller = current().unwrap_or_else(Caller::nobody);
    CALLER.scope(caller, f)
}

/// Whether the current caller may see a sandbox of `tenant`.
pub fn visible(tenant: &str) -> bool {
    CALLER.try_with(|c| c.sees(tenant)).unwrap_or(true)
}

/// Lowercase hex SHA-256 of an API key, as written in the config.
pub fn hash_key(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// One configured tenant.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub name: String,
    /// Hex SHA-256 of each of its keys.
    pub keys_sha256: Vec<String>,
    pub admin: bool,
    pub quotas: Quotas,
}

/// The API keys the server accepts, each bound to a caller. Only hashes are kept.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<([u8; 32], Caller)>,
}

impl Keys {
    /// From the config's tenants and `SANDPIT_AUTH_TOKEN` (an admin key).
    pub fn new(tenants: &[TenantConfig], admin_token: Option<&str>) -> Result<Self, String> {
        let mut entries = Vec::new();
        let mut names = std::collections::HashSet::new();
        for t in tenants {
            if !crate::valid_id(&t.name) {
                return Err(format!(
                    "tenant name '{}': use 1-63 characters of A-Z, a-z, 0-9, '_' and '-'",
                    t.name
                ));
            }
            if !names.insert(t.name.as_str()) {
                return Err(format!("tenant '{}' is configured twice", t.name));
            }
            if t.keys_sha256.is_empty() {
                return Err(format!("tenant '{}' has no key_sha256", t.name));
            }
            for hex_key in &t.keys_sha256 {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(hex_key.trim(), &mut hash).map_err(|_| {
                    format!(
                        "tenant '{}': key_sha256 must be 64 hex digits (sandpit hash-key prints it)",
                        t.name
                    )
                })?;
                if entries.iter().any(|(h, _)| *h == hash) {
                    return Err(format!("tenant '{}': a key is configured twice", t.name));
                }
                entries.push((
                    hash,
                    Caller {
                        tenant: t.name.as_str().into(),
                        admin: t.admin,
                        quotas: t.quotas,
                        retry_after: Arc::default(),
                    },
                ));
            }
        }
        if let Some(token) = admin_token {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&sha2_digest(token));
            entries.push((hash, Caller::admin()));
        }
        Ok(Self { entries })
    }

    /// Whether any key is configured (otherwise the API is open).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The caller a key belongs to. Every configured hash is compared, in constant time.
    pub fn resolve(&self, key: &str) -> Option<Caller> {
        let given = sha2_digest(key);
        let mut found = None;
        for (hash, caller) in &self.entries {
            if bool::from(hash.ct_eq(&given)) && found.is_none() {
                found = Some(caller);
            }
        }
        found.map(Caller::fresh)
    }
}

fn sha2_digest(s: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_to_their_tenant() {
        let t = TenantConfig {
            name: "acme".into(),
            keys_sha256: vec![hash_key("k1"), hash_key("k2").to_uppercase()],
            admin: false,
            quotas: Quotas::default(),
        };
        let keys = Keys::new(&[t], Some("root")).unwrap();
        assert_eq!(&*keys.resolve("k1").unwrap().tenant, "acme");
        assert_eq!(&*keys.resolve("k2").unwrap().tenant, "acme");
        assert!(keys.resolve("root").unwrap().admin);
        assert!(keys.resolve("k3").is_none());
        assert!(keys.resolve("").is_none());
        let bad = TenantConfig {
            name: "x".into(),
            keys_sha256: vec!["zz".into()],
            admin: false,
            quotas: Quotas::default(),
        };
        assert!(Keys::new(&[bad], None).is_err());
    }

    #[test]
    fn nobody_sees_nothing() {
        assert!(!Caller::nobody().sees(""));
        assert!(!Caller::nobody().sees(DEFAULT_TENANT));
        assert!(Caller::admin().sees("acme"));
    }
}
