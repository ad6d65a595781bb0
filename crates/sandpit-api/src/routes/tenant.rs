//! `/v1/tenant`: who the caller is, its quotas and what it uses of them.

use axum::extract::State;
use axum::Json;
use sandpit_core::tenant::TenantInfo;

use crate::AppState;

/// The caller's tenant, its quotas (`null` = unlimited) and its usage. The admin (the
/// `SANDPIT_AUTH_TOKEN`, an `admin = true` tenant, or everyone on an open server) is
/// `admin: true` and has no quotas. `server_limits` are the output and upload caps.
#[utoipa::path(get, path = "/v1/tenant", tag = "tenants", operation_id = "get_tenant",
    responses((status = 200, body = TenantInfo)))]
pub async fn get(State(s): State<AppState>) -> Json<TenantInfo> {
    let mut info = s.manager.tenant_info();
    info.server_limits.max_upload_bytes = s.max_upload_bytes;
    Json(info)
}
