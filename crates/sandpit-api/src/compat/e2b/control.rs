//! E2B's control plane (the REST API at `E2B_API_URL`): create, get, list (paginated with
//! `nextToken` / `x-next-token`), kill, set timeout, refresh, connect, pause and resume
//! (sandpit's sleep and wake), metrics (none). E2B's `timeout` is sandpit's keepalive: the
//! sandbox ends that many seconds after its last activity (E2B counts from the create or the
//! last `set_timeout`; every call refreshes it here).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use sandpit_core::model::{CreateSandbox, Sandbox, Status, UpdateSandbox};
use serde_json::{json, Value};

use super::Json2b;
use super::{core_error, meta_of, request_key, set_meta, E2bError, Meta, ENVD_VERSION};
use crate::compat::Params;
use crate::shared::AppState;

/// Seconds a sandbox lives without a `timeout` (E2B's API default).
const DEFAULT_TIMEOUT: u64 = 300;
/// Longest timeout accepted (E2B's Pro limit: 24 hours).
const MAX_TIMEOUT: u64 = 86_400;
/// Page size of a list without `limit`.
const DEFAULT_LIMIT: usize = 100;

fn state_of(s: &Sandbox) -> &'static str {
    match s.status {
        Status::Running | Status::Starting => "running",
        Status::Sleeping | Status::Stopped => "paused",
    }
}

/// The create and connect answer (E2B's `Sandbox`).
fn created(s: &Sandbox, meta: &Meta, key: Option<&str>) -> Value {
    let mut v = json!({
        "sandboxID": s.id,
        "templateID": meta.template_id,
        "alias": meta.template_id,
        "clientID": "sandpit",
        "envdVersion": ENVD_VERSION,
    });
    if let Some(k) = key {
        v["envdAccessToken"] = k.into();
        v["trafficAccessToken"] = k.into();
    }
    v
}

/// E2B's `SandboxDetail` / `ListedSandbox`.
fn detail(s: &Sandbox, meta: &Meta, key: Option<&str>) -> Value {
    let mut v = json!({
        "sandboxID": s.id,
        "templateID": meta.template_id,
        "alias": meta.template_id,
        "clientID": "sandpit",
        "startedAt": s.created_at,
        "endAt": s.expires_at.clone().unwrap_or_else(|| "9999-12-31T23:59:59Z".into()),
        "envdVersion": ENVD_VERSION,
        "cpuCount": s.limits.cpus.map(|c| c.ceil().max(1.0) as u64).unwrap_or(1),
        "memoryMB": s.limits.memory_mb.unwrap_or(0),
        "diskSizeMB": 0,
        "state": state_of(s),
        "metadata": meta.metadata,
    });
    if let Some(k) = key {
        v["envdAccessToken"] = k.into();
    }
    v
}

fn timeout_of(body: &Value, field: &str) -> Result<Option<u64>, E2bError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(t) if (1..=MAX_TIMEOUT).contains(&t) => Ok(Some(t)),
            _ => Err(E2bError::bad_request(format!(
                "{field} must be a whole number of seconds from 1 to {MAX_TIMEOUT}"
            ))),
        },
    }
}

fn string_map(body: &Value, field: &str) -> Result<BTreeMap<String, String>, E2bError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(E2bError::bad_request(format!(
                    "{field}.{k} must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(E2bError::bad_request(format!("{field} must be an object"))),
    }
}

/// `POST /sandboxes` and `/v2/sandboxes` `{templateID, timeout, metadata, envVars, ...}`:
/// 201 with the sandbox. Any template name is accepted (sandpit has one image) and recorded.
pub async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    Json2b(body): Json2b,
) -> Result<Response, E2bError> {
    if !body.is_object() {
        return Err(E2bError::bad_request("body must be a JSON object"));
    }
    let template = match body.get("templateID") {
        None | Some(Value::Null) => "base".to_string(),
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(_) => return Err(E2bError::bad_request("templateID must be a string")),
    };
    let timeout = timeout_of(&body, "timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    let metadata = string_map(&body, "metadata")?;
    let env = string_map(&body, "envVars")?;
    let network = match body.get("allow_internet_access") {
        Some(Value::Bool(true)) => Some("egress".to_string()),
        _ => None,
    };
    let sandbox = s
        .manager
        .create(CreateSandbox {
            keepalive_seconds: Some(timeout),
            env,
            network,
            ..CreateSandbox::default()
        })
        .await
        .map_err(E2bError::from)?;
    let meta = Meta {
        template_id: template,
        metadata,
    };
    if let Err(e) = set_meta(&s.manager, &sandbox.id, &meta) {
        // Not half made: without its metadata the sandbox would not be the one asked for.
        let _ = s.manager.delete(&sandbox.id).await;
        return Err(E2bError::from(e));
    }
    let key = request_key(&s, &headers);
    Ok((
        StatusCode::CREATED,
        Json(created(&sandbox, &meta, key.as_deref())),
    )
        .into_response())
}

/// `GET /sandboxes/{id}`: E2B's `SandboxDetail`.
pub async fn info(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, E2bError> {
    let sandbox = s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    let meta = meta_of(&s.manager, &sandbox.id);
    Ok(Json(detail(
        &sandbox,
        &meta,
        request_key(&s, &headers).as_deref(),
    )))
}

/// The caller's sandboxes that pass the list filters (`state`, `metadata`), oldest first.
fn filtered(s: &AppState, q: &Params) -> Result<Vec<(Sandbox, Meta)>, E2bError> {
    let states: Option<Vec<String>> = q.non_empty("state").map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(bad) = states
        .iter()
        .flatten()
        .find(|s| *s != "running" && *s != "paused")
    {
        return Err(E2bError::bad_request(format!(
            "state '{bad}': use running or paused"
        )));
    }
    // `metadata` is itself a query string: `k1=v1&k2=v2`.
    let wanted: Vec<(String, String)> = q
        .non_empty("metadata")
        .map(|m| {
            form_urlencoded::parse(m.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let mut all: Vec<(Sandbox, Meta)> = s
        .manager
        .list()
        .into_iter()
        .filter(|sb| {
            states
                .as_ref()
                .is_none_or(|st| st.iter().any(|x| x == state_of(sb)))
        })
        .map(|sb| {
            let meta = meta_of(&s.manager, &sb.id);
            (sb, meta)
        })
        .filter(|(_, meta)| wanted.iter().all(|(k, v)| meta.metadata.get(k) == Some(v)))
        .collect();
    all.sort_by(|(a, _), (b, _)| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    if q.get("order").as_deref() == Some("desc") {
        all.reverse();
    }
    Ok(all)
}

/// `GET /sandboxes`: every sandbox, unpaginated.
pub async fn list_v1(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Params,
) -> Result<Json<Value>, E2bError> {
    let key = request_key(&s, &headers);
    let all = filtered(&s, &q)?;
    Ok(Json(Value::Array(
        all.iter()
            .map(|(sb, meta)| detail(sb, meta, key.as_deref()))
            .collect(),
    )))
}

/// `GET /v2/sandboxes?state=&metadata=&limit=&nextToken=`: a page, and `x-next-token` when
/// more follow (the token is the offset of the next page).
pub async fn list_v2(
    State(s): State<AppState>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, E2bError> {
    let limit = match q.non_empty("limit") {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| E2bError::bad_request("limit must be a number from 1 to 1000"))?,
    };
    let start = match q.non_empty("nextToken") {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| E2bError::bad_request(format!("nextToken '{t}' is not valid")))?,
    };
    let key = request_key(&s, &headers);
    let all = filtered(&s, &q)?;
    let page: Vec<Value> = all
        .iter()
        .skip(start)
        .take(limit)
        .map(|(sb, meta)| detail(sb, meta, key.as_deref()))
        .collect();
    let next = start.saturating_add(limit);
    let mut resp = Json(Value::Array(page)).into_response();
    if next < all.len() {
        if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
            resp.headers_mut().insert("x-next-token", v);
        }
    }
    Ok(resp)
}

/// `DELETE /sandboxes/{id}`: 204, or 404 when there is no such sandbox.
pub async fn kill(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    s.manager
        .delete(&id)
        .await
        .map_err(|e| core_error(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sets the keepalive to `timeout` seconds from now.
fn extend(s: &AppState, id: &str, timeout: u64) -> Result<Sandbox, E2bError> {
    s.manager
        .update(
            id,
            UpdateSandbox {
                keepalive_seconds: Some(timeout),
                ..UpdateSandbox::default()
            },
        )
        .map_err(|e| core_error(id, e))?;
    s.manager.touch(id).map_err(|e| core_error(id, e))
}

/// `POST /sandboxes/{id}/timeout {timeout}`: the sandbox ends `timeout` seconds from now
/// (unless used meanwhile).
pub async fn set_timeout(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json2b(body): Json2b,
) -> Result<StatusCode, E2bError> {
    let timeout = timeout_of(&body, "timeout")?
        .ok_or_else(|| E2bError::bad_request("timeout is required"))?;
    extend(&s, &id, timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/refreshes {duration}`: keeps the sandbox alive.
pub async fn refresh(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Json2b(body): Json2b,
) -> Result<StatusCode, E2bError> {
    match timeout_of(&body, "duration")? {
        Some(t) => extend(&s, &id, t).map(drop)?,
        None => s
            .manager
            .touch(&id)
            .map(drop)
            .map_err(|e| core_error(&id, e))?,
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/connect` (and `/v2/...`) `{timeout}`: the sandbox, woken if it
/// sleeps (201 then, 200 when it was running).
pub async fn connect(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json2b(body): Json2b,
) -> Result<Response, E2bError> {
    let timeout = timeout_of(&body, "timeout")?;
    let before = s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    let resumed = before.status == Status::Sleeping;
    let mut sandbox = if resumed {
        s.manager.wake(&id).await.map_err(|e| core_error(&id, e))?
    } else {
        s.manager.touch(&id).map_err(|e| core_error(&id, e))?
    };
    if let Some(t) = timeout {
        sandbox = extend(&s, &id, t)?;
    }
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let key = request_key(&s, &headers);
    Ok((
        status,
        Json(created(
            &sandbox,
            &meta_of(&s.manager, &sandbox.id),
            key.as_deref(),
        )),
    )
        .into_response())
}

/// `POST /sandboxes/{id}/pause`: sandpit's sleep (the sandbox's files are kept, its
/// processes end); 409 when it already sleeps.
pub async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    let sandbox = s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    if sandbox.status == Status::Sleeping {
        return Err(E2bError::new(
            StatusCode::CONFLICT,
            format!("sandbox \"{id}\" is already paused"),
        ));
    }
    s.manager.sleep(&id).await.map_err(|e| core_error(&id, e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /sandboxes/{id}/resume {timeout}`: sandpit's wake; 201 with the sandbox.
pub async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json2b(body): Json2b,
) -> Result<Response, E2bError> {
    let timeout = timeout_of(&body, "timeout")?;
    let mut sandbox = s.manager.wake(&id).await.map_err(|e| core_error(&id, e))?;
    if let Some(t) = timeout {
        sandbox = extend(&s, &id, t)?;
    }
    let key = request_key(&s, &headers);
    Ok((
        StatusCode::CREATED,
        Json(created(
            &sandbox,
            &meta_of(&s.manager, &sandbox.id),
            key.as_deref(),
        )),
    )
        .into_response())
}

/// `GET /sandboxes/{id}/metrics`: sandpit keeps no metric history, so the list is empty.
pub async fn metrics(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, E2bError> {
    s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    Ok(Json(json!([])))
}
