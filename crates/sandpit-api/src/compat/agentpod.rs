//! The `agentpod` dialect: AgentPod's sandbox worker (`/health`, `/sandbox`, `/sandbox/:id`,
//! `wake`, `sync`, `opencode/*`, `message`). A sandbox gets a workspace `directory` (default
//! `/home/user/workspace`), cloned from `gitUrl` when one is given; `sync` saves it as a
//! snapshot named `agentpod-sync` (the synced workspace outlives the sandbox), `wake` wakes a
//! sleeping sandbox or makes a deleted or expired one again with its last sync, and this
//! dialect's `DELETE` removes the sandbox and its syncs. `opencode/*` is the port proxy to
//! port 4096 inside the sandbox (HTTP and WebSocket), and `message` speaks the OpenCode
//! server API there. Errors are `{"error": "..."}`; unknown routes a plain-text `Not Found`.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use sandpit_core::model::{CreateSandbox, ExecRequest, GitClone, StartProcess};
use sandpit_core::snapshot::{CreateSnapshot, RestoreSource, Snapshot};
use sandpit_core::CoreError;
use serde_json::{json, Value};

use super::{iso_now, text, AuthFailure, Body, CompatError, Dialect};
use crate::shared::proxy::{proxy, Target};
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "agentpod",
    router,
    public: &["/health"],
    unauthorized,
};

/// Where the OpenCode server listens inside the sandbox.
pub const OPENCODE_PORT: u16 = 4096;
/// The workspace when a create names none.
pub const DEFAULT_DIRECTORY: &str = "/home/user/workspace";
/// Environment variable that keeps a sandbox's workspace directory (read by `sync`).
const DIRECTORY_VAR: &str = "AGENTPOD_DIRECTORY";
/// Environment variable that keeps the `userId` a sandbox was created for.
const USER_VAR: &str = "AGENTPOD_USER_ID";
/// Name of the snapshots `sync` makes.
pub const SYNC_NAME: &str = "agentpod-sync";
/// Left out of a sync (counted as `skippedFiles`).
const SYNC_EXCLUDES: [&str; 1] = ["node_modules"];
/// Largest OpenCode answer `message` reads.
const MAX_OPENCODE_ANSWER: usize = 16 * 1024 * 1024;
/// A prompt runs a model: it may take minutes.
const OPENCODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/sandbox", post(create))
        .route("/sandbox/{id}", get(info).delete(remove))
        .route("/sandbox/{id}/message", post(message))
        .route("/sandbox/{id}/sync", post(sync))
        .route("/sandbox/{id}/wake", post(wake))
        .route("/sandbox/{id}/opencode", any(opencode))
        .route("/sandbox/{id}/opencode/", any(opencode))
        .route("/sandbox/{id}/opencode/{*rest}", any(opencode))
        .fallback(not_found)
}

fn unauthorized(_: AuthFailure) -> CompatError {
    CompatError::new(StatusCode::UNAUTHORIZED, "Unauthorized")
}

/// The worker's own 404: plain text.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "Not Found").into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "timestamp": iso_now()}))
}

/// `{error}` with the core's status, or 404 `Sandbox not found: <id>` for a missing sandbox.
fn core_error(id: &str, e: CoreError) -> CompatError {
    if matches!(e, CoreError::NotFound(_)) {
        CompatError::new(StatusCode::NOT_FOUND, format!("Sandbox not found: {id}"))
    } else {
        CompatError::from(e)
    }
}

fn created_answer(id: &str) -> Json<Value> {
    Json(json!({
        "success": true,
        "sandboxId": id,
        "status": "running",
        "opencodeUrl": format!("/sandbox/{id}/opencode"),
        "serverPort": OPENCODE_PORT,
    }))
}

/// The string field `key`, refused (400) when present but not a string.
fn opt_text(body: &Value, key: &str) -> Result<Option<String>, CompatError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(CompatError::bad_request(format!("{key} must be a string"))),
    }
}

/// `POST /sandbox {id, userId, config, directory?, gitUrl?, gitBranch?}`: creates the
/// sandbox (an existing one is answered as it is), clones `gitUrl` into `directory` (or makes
/// it empty) and starts `opencode serve` on port 4096 when the sandbox has `opencode`.
async fn create(
    State(s): State<AppState>,
    Body(body): Body<Value>,
) -> Result<Json<Value>, CompatError> {
    if !body.is_object() {
        return Err(CompatError::bad_request("body must be a JSON object"));
    }
    let id = opt_text(&body, "id")?.ok_or_else(|| CompatError::bad_request("id is required"))?;
    let user = opt_text(&body, "userId")?;
    let directory = opt_text(&body, "directory")?.unwrap_or_else(|| DEFAULT_DIRECTORY.into());
    if !directory.starts_with('/') || directory.contains('\0') {
        return Err(CompatError::bad_request(format!(
            "directory '{directory}' must be an absolute path"
        )));
    }
    let git_url = opt_text(&body, "gitUrl")?;
    let git_branch = opt_text(&body, "gitBranch")?;
    let config = body.get("config").filter(|c| !c.is_null()).cloned();
    if s.manager.get(&id).is_ok() {
        return Ok(created_answer(&id));
    }
    let mut env =
        std::collections::BTreeMap::from([(DIRECTORY_VAR.to_string(), directory.clone())]);
    if let Some(u) = &user {
        env.insert(USER_VAR.into(), u.clone());
    }
    // A checkout needs the network: egress to the repository's host, and nowhere else.
    let (network, allow) = match git_url.as_deref().and_then(git_host) {
        Some(host) => (Some("egress".to_string()), vec![host]),
        None => (None, Vec::new()),
    };
    let req = CreateSandbox {
        id: Some(id.clone()),
        env,
        network,
        allow,
        ..CreateSandbox::default()
    };
    match s.manager.create(req).await {
        Ok(_) => {}
        Err(CoreError::AlreadyExists(_)) => return Ok(created_answer(&id)),
        Err(e) => return Err(e.into()),
    }
    if let Err(e) = prepare_workspace(&s, &id, &directory, git_url, git_branch, config).await {
        // A sandbox whose checkout failed is not left behind half-made.
        let _ = s.manager.delete(&id).await;
        return Err(e);
    }
    Ok(created_answer(&id))
}

/// The host of a git URL (`scheme://[user@]host[:port]/...`), for the egress allow-list.
fn git_host(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit('@').next()?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// Clones into (or makes) the workspace, then starts OpenCode if the sandbox has it.
pub(crate) async fn prepare_workspace(
    s: &AppState,
    id: &str,
    directory: &str,
    git_url: Option<String>,
    git_branch: Option<String>,
    config: Option<Value>,
) -> Result<(), CompatError> {
    match git_url {
        Some(url) => {
            let req = GitClone {
                url,
                branch: git_branch,
                dir: Some(directory.to_string()),
                ..GitClone::default()
            };
            s.manager
                .git_clone(id, req)
                .await
                .map_err(|e| CompatError::from(e).and(json!({"success": false})))?;
        }
        None => s.manager.mkdir(id, directory, true).await?,
    }
    start_opencode(s, id, directory, config).await
}

/// `opencode serve` on port 4096 in `directory`, with `config` as its inline configuration;
/// a sandbox without `opencode` runs nothing (the user may start their own server).
async fn start_opencode(
    s: &AppState,
    id: &str,
    directory: &str,
    config: Option<Value>,
) -> Result<(), CompatError> {
    let mut env = std::collections::BTreeMap::new();
    if let Some(c) = config {
        env.insert("OPENCODE_CONFIG_CONTENT".to_string(), c.to_string());
    }
    let req = StartProcess {
        id: Some("agentpod-opencode".into()),
        command: Some(format!(
            "command -v opencode >/dev/null 2>&1 && exec opencode serve --port {OPENCODE_PORT} --hostname 127.0.0.1"
        )),
        cwd: Some(directory.to_string()),
        env,
        ..StartProcess::default()
    };
    match s.manager.start_process(id, req).await {
        Ok(_) | Err(CoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `GET /sandbox/:id` → `{sandboxId, status, hasWorkspace, provider}`.
async fn info(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, CompatError> {
    let has_workspace = has_sync(&s, &id);
    let status = match s.manager.get(&id) {
        Ok(sb) => serde_json::to_value(sb.status).unwrap_or(Value::Null),
        Err(CoreError::NotFound(_)) if has_workspace => json!("stopped"),
        Err(e) => return Err(core_error(&id, e)),
    };
    Ok(Json(json!({
        "sandboxId": id,
        "status": status,
        "hasWorkspace": has_workspace,
        "provider": "cloudflare",
    })))
}

/// `DELETE /sandbox/:id`: the sandbox and its synced workspace.
async fn remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, CompatError> {
    let removed_syncs = delete_syncs(&s, &id).await?;
    match s.manager.delete(&id).await {
        Ok(()) => {}
        Err(CoreError::NotFound(_)) if removed_syncs > 0 => {}
        Err(e) => return Err(core_error(&id, e)),
    }
    Ok(Json(json!({"success": true, "sandboxId": id})))
}

/// `ANY /sandbox/:id/opencode/*`: the port proxy to 4096, WebSocket upgrades included.
async fn opencode(
    State(s): State<AppState>,
    Path(params): Path<Vec<(String, String)>>,
    OriginalUri(original): OriginalUri,
    req: Request,
) -> Result<Response, CompatError> {
    let id = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    // The raw path after `/sandbox/<id>/opencode`, still percent-encoded.
    let relative = req.uri().path();
    let rest = relative
        .strip_prefix("/sandbox/")
        .and_then(|r| r.split_once('/'))
        .and_then(|(_, r)| r.strip_prefix("opencode"))
        .unwrap_or("");
    let full = original.path();
    let prefix = full.strip_suffix(rest).unwrap_or(full).to_string();
    let mut path_and_query = if rest.is_empty() {
        "/".to_string()
    } else {
        rest.to_string()
    };
    if let Some(q) = req.uri().query() {
        path_and_query = format!("{path_and_query}?{q}");
    }
    let target = Target {
        id: &id,
        port: OPENCODE_PORT,
        path_and_query,
        prefix,
    };
    proxy(&s.manager, target, req).await.map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            CompatError::new(StatusCode::NOT_FOUND, format!("Sandbox not found: {id}"))
        } else {
            CompatError::new(e.status, e.message)
        }
    })
}

/// `POST /sandbox/:id/message {message, sessionId?, model?}` → `{sessionId, response, parts}`:
/// a session is created (`POST /session`) when none is given, then the message is sent
/// (`POST /session/:sid/message`) to the OpenCode server on port 4096.
async fn message(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(body): Body<Value>,
) -> Result<Json<Value>, CompatError> {
    let Some(message) = text(&body, "message").filter(|m| !m.is_empty()) else {
        return Err(CompatError::bad_request("message is required"));
    };
    let session = opt_text(&body, "sessionId")?;
    s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    let sid = match session {
        Some(sid) => sid,
        None => {
            let made = opencode_call(&s, &id, "/session", json!({"title": "Agent Task"})).await?;
            text(&made, "id").map(str::to_string).ok_or_else(|| {
                CompatError::new(
                    StatusCode::BAD_GATEWAY,
                    "Failed to create session: the OpenCode server answered no session id",
                )
            })?
        }
    };
    let mut prompt = json!({"parts": [{"type": "text", "text": message}]});
    if let Some(model) = body.get("model").filter(|m| !m.is_null()) {
        prompt["model"] = model.clone();
    }
    let path = format!("/session/{}/message", encode_segment(&sid));
    let answer = opencode_call(&s, &id, &path, prompt).await?;
    let parts = answer.get("parts").cloned().unwrap_or_else(|| json!([]));
    let response: Vec<&str> = parts
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter(|p| text(p, "type") == Some("text"))
                .filter_map(|p| text(p, "text"))
                .collect()
        })
        .unwrap_or_default();
    Ok(Json(json!({
        "sessionId": sid,
        "response": response.join("\n"),
        "parts": parts,
    })))
}

/// The snapshots of `id` that are syncs, newest first.
fn syncs(s: &AppState, id: &str) -> Result<Vec<Snapshot>, CompatError> {
    match s.manager.list_snapshots(id) {
        Ok(all) => Ok(all
            .into_iter()
            .filter(|snap| snap.name.as_deref() == Some(SYNC_NAME))
            .collect()),
        Err(CoreError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(core_error(id, e)),
    }
}

/// Whether a synced workspace of `id` exists.
fn has_sync(s: &AppState, id: &str) -> bool {
    syncs(s, id).is_ok_and(|all| !all.is_empty())
}

/// Deletes the synced workspaces of `id`; how many there were.
async fn delete_syncs(s: &AppState, id: &str) -> Result<usize, CompatError> {
    let all = syncs(s, id)?;
    for snap in &all {
        match s.manager.delete_snapshot(&snap.id).await {
            Ok(()) | Err(CoreError::SnapshotNotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(all.len())
}

/// What a workspace holds: its directory, regular files and their bytes (outside
/// `node_modules`), and the files a sync leaves out (inside `node_modules`).
struct Counts {
    directory: String,
    files: u64,
    bytes: u64,
    skipped: u64,
}

/// Counts `directory` (default: the sandbox's workspace) inside the sandbox.
async fn count_workspace(
    s: &AppState,
    id: &str,
    directory: Option<&str>,
) -> Result<Counts, CompatError> {
    const SCRIPT: &str = r#"d="${1:-${AGENTPOD_DIRECTORY:-/home/user/workspace}}"
cd "$d" 2>/dev/null || { echo "workspace $d does not exist" >&2; exit 3; }
printf '%s\n' "$d"
find . -name node_modules -prune -o -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%d %d\n", n, s}'
find . -path '*/node_modules/*' -type f | wc -l"#;
    let req = ExecRequest {
        argv: Some(vec![
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "sh".into(),
            directory.unwrap_or_default().into(),
        ]),
        ..ExecRequest::default()
    };
    let r = s
        .manager
        .exec(id, req)
        .await
        .map_err(|e| core_error(id, e))?;
    if r.exit_code != 0 {
        return Err(CompatError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not read the workspace: {}", r.stderr.trim()),
        ));
    }
    let mut lines = r.stdout.lines();
    let directory = lines.next().unwrap_or(DEFAULT_DIRECTORY).to_string();
    let mut numbers = lines
        .flat_map(str::split_whitespace)
        .map(|n| n.parse::<u64>().unwrap_or(0));
    Ok(Counts {
        directory,
        files: numbers.next().unwrap_or(0),
        bytes: numbers.next().unwrap_or(0),
        skipped: numbers.next().unwrap_or(0),
    })
}

/// `POST /sandbox/:id/sync`: the workspace (without `node_modules`) becomes the snapshot
/// `agentpod-sync`; the earlier sync is removed once the new one is stored, so there is
/// always one complete sync.
async fn sync(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, CompatError> {
    s.manager.get(&id).map_err(|e| core_error(&id, e))?;
    let counts = count_workspace(&s, &id, None).await?;
    let req = CreateSnapshot {
        name: Some(SYNC_NAME.into()),
        path: Some(counts.directory.clone()),
        excludes: SYNC_EXCLUDES.iter().map(|e| e.to_string()).collect(),
    };
    let made = s
        .manager
        .create_snapshot(&id, req)
        .await
        .map_err(|e| core_error(&id, e).and(json!({"success": false})))?;
    for old in syncs(&s, &id)?.into_iter().filter(|o| o.id != made.id) {
        if let Err(e) = s.manager.delete_snapshot(&old.id).await {
            tracing::warn!(sandbox = %id, snapshot = %old.id, error = %e, "earlier sync not removed");
        }
    }
    Ok(Json(json!({
        "success": true,
        "sandboxId": id,
        "syncedFiles": counts.files,
        "skippedFiles": counts.skipped,
        "totalSize": counts.bytes,
        "timestamp": iso_now(),
    })))
}

/// `POST /sandbox/:id/wake`: a sleeping sandbox is woken (its files stayed); a deleted or
/// expired one is created again with the same id and its latest sync restored into its
/// workspace. OpenCode is started again either way when the sandbox has it.
async fn wake(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, CompatError> {
    let restored = match s.manager.get(&id) {
        Ok(_) => {
            s.manager.wake(&id).await.map_err(|e| core_error(&id, e))?;
            // Its files stayed; OpenCode is started again in its workspace, if that is
            // still there (a removed workspace does not stop the wake).
            if let Ok(counts) = count_workspace(&s, &id, None).await {
                start_opencode(&s, &id, &counts.directory, None).await?;
            }
            0
        }
        Err(CoreError::NotFound(_)) => {
            let Some(latest) = syncs(&s, &id)?.into_iter().next() else {
                return Err(core_error(&id, CoreError::NotFound(id.clone())));
            };
            let req = CreateSandbox {
                id: Some(id.clone()),
                env: std::collections::BTreeMap::from([(
                    DIRECTORY_VAR.to_string(),
                    latest.path.clone(),
                )]),
                restore: Some(RestoreSource::Snapshot(latest.id.clone())),
                ..CreateSandbox::default()
            };
            match s.manager.create(req).await {
                // Woken by a concurrent call: its files are the sync's already.
                Ok(_) | Err(CoreError::AlreadyExists(_)) => {}
                Err(e) => return Err(core_error(&id, e)),
            }
            let counts = count_workspace(&s, &id, Some(&latest.path)).await?;
            start_opencode(&s, &id, &latest.path, None).await?;
            counts.files
        }
        Err(e) => return Err(core_error(&id, e)),
    };
    Ok(Json(json!({
        "success": true,
        "status": "running",
        "serverPort": OPENCODE_PORT,
        "restoredFiles": restored,
    })))
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn bad_gateway(id: &str, why: impl std::fmt::Display) -> CompatError {
    CompatError::new(
        StatusCode::BAD_GATEWAY,
        format!("OpenCode server in sandbox '{id}' (port {OPENCODE_PORT}) failed: {why}"),
    )
}

/// POSTs JSON to the OpenCode server inside the sandbox through a port tunnel and reads its
/// JSON answer. Nothing listening on 4096 is a 502 that says so.
async fn opencode_call(
    s: &AppState,
    id: &str,
    path: &str,
    body: Value,
) -> Result<Value, CompatError> {
    let (conn, _busy) = s
        .manager
        .connect_port(id, OPENCODE_PORT)
        .await
        .map_err(|e| {
            if e.code() == "not_running" {
                CompatError::new(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "No OpenCode server is running in sandbox '{id}': nothing listens on port {OPENCODE_PORT}"
                    ),
                )
            } else {
                core_error(id, e)
            }
        })?;
    let call = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
            .await
            .map_err(|e| bad_gateway(id, e))?;
        tokio::spawn(connection);
        let req = hyper::Request::post(path)
            .header(header::HOST, format!("localhost:{OPENCODE_PORT}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| bad_gateway(id, e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| bad_gateway(id, e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_OPENCODE_ANSWER)
            .collect()
            .await
            .map_err(|e| bad_gateway(id, e))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(500).collect();
            return Err(bad_gateway(
                id,
                format!("POST {path} answered {status}: {text}"),
            ));
        }
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| bad_gateway(id, format!("POST {path} answered no JSON: {e}")))
    };
    tokio::time::timeout(OPENCODE_TIMEOUT, call)
        .await
        .map_err(|_| bad_gateway(id, format!("POST {path} did not answer in time")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_hosts() {
        assert_eq!(
            git_host("https://github.com/a/b.git").as_deref(),
            Some("github.com")
        );
        assert_eq!(
            git_host("http://t:x@10.0.0.2:8080/p.git").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(git_host("ssh://git@[::1]:22/p").as_deref(), Some("::1"));
        assert_eq!(git_host("file:///etc").as_deref(), None);
        assert_eq!(git_host("/srv/repo"), None);
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(encode_segment("ses_abc-1.2"), "ses_abc-1.2");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }
}
