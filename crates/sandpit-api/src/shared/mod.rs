//! What the native routes and the dialects both stand on, below both: the server's state,
//! who a request is (`caller`), the status of each core error (`status`), streamed output as
//! Server-Sent Events (`sse`), log following (`follow`) and the port proxy (`proxy`).
//! Nothing here imports from `routes` or `compat`.

pub mod caller;
pub mod follow;
pub mod proxy;
pub mod sse;
pub mod status;

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sandpit_core::SandboxManager;

#[derive(Clone)]
pub struct AppState {
    pub manager: Arc<SandboxManager>,
    /// Bearer token required on every route but `/health` and `/openapi.json`; `None` disables auth.
    pub token: Option<Arc<str>>,
    /// Every accepted API key (tenants' and the token), hashed; none = open API.
    pub keys: Arc<sandpit_core::tenant::Keys>,
    pub metrics: PrometheusHandle,
    /// Largest file upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// The dialect also served at `/` (`--root-dialect`); native routes win over its routes.
    pub root_dialect: Option<Arc<str>>,
    /// `ports_domain`: a request whose Host is `{port}-{id}.{domain}` goes to that port.
    pub ports_domain: Option<Arc<str>>,
}
