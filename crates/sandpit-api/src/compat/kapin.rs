//! The `kapin` dialect: the KAPIN sandbox worker (`/sandboxes/:projectId`), called by a
//! TypeScript web worker with `fetch`. Every answer is `{success, data}` or
//! `{success:false, error}`; CORS headers (wildcard origin) are on every answer and
//! preflight. The worker had no auth; when sandpit has a token it is required, refused with
//! 401 `{success:false, error:"Unauthorized"}`.
//!
//! `POST /sandboxes/:id` gets or creates the sandbox; `DELETE` kills every process in it but
//! keeps its files; exec answers 200 with `success` = (exit code == 0) and streams sandpit's
//! native Server-Sent Events with `stream: true`; clone runs `git clone` (or `git pull` when
//! the directory exists) inside the sandbox; `ls` is `ls -la` text.

use axum::body::Body as HttpBody;
use axum::extract::{Path, State};
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandpit_core::model::{ExecRequest, ExecResult};
use sandpit_core::{CoreError, SandboxManager};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tower_http::cors::{Any, CorsLayer};

use super::{
    ensure_sandbox, is_missing_entry, read_all, text, write_all, AuthFailure, CompatError, Dialect,
    Lenient, Params,
};
use crate::shared::AppState;

pub const DIALECT: Dialect = Dialect {
    name: "kapin",
    router,
    public: &[],
    unauthorized,
};

/// Clones and long commands may take a while.
const EXEC_TIMEOUT_MS: u64 = 300_000;
/// Where `ls` looks and clones go by default.
const WORKSPACE: &str = "/workspace";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/sandboxes/{id}",
            post(get_or_create).delete(cleanup).fallback(not_found),
        )
        .route("/sandboxes/{id}/exec", post(exec).fallback(not_found))
        .route("/sandboxes/{id}/clone", post(clone).fallback(not_found))
        .route("/sandboxes/{id}/ls", get(ls).fallback(not_found))
        .route(
            "/sandboxes/{id}/files/{*path}",
            get(read_file).put(write_file).fallback(not_found),
        )
        .fallback(not_found)
}

/// CORS around the whole dialect (outside its token check), so that refusals, errors and
/// preflights carry the headers too.
pub fn with_cors(router: Router<AppState>) -> Router<AppState> {
    router.layer(
        CorsLayer::new()
            .allow_origin(Any)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(Any),
    )
}

/// `{success:false, error}` with a status.
#[derive(Debug)]
pub struct Fail(StatusCode, String);

impl Fail {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(status, message.into())
    }
}

impl From<CompatError> for Fail {
    fn from(e: CompatError) -> Self {
        Self(e.status, e.message())
    }
}

impl From<CoreError> for Fail {
    fn from(e: CoreError) -> Self {
        CompatError::from(e).into()
    }
}

impl IntoResponse for Fail {
    fn into_response(self) -> Response {
        if self.0.is_server_error() {
            tracing::warn!(status = %self.0, error = %self.1, "kapin request failed");
        }
        (self.0, Json(json!({"success": false, "error": self.1}))).into_response()
    }
}

fn ok(data: Value) -> Json<Value> {
    Json(json!({"success": true, "data": data}))
}

fn unauthorized(_: AuthFailure) -> CompatError {
    CompatError::with(
        StatusCode::UNAUTHORIZED,
        json!({"success": false, "error": "Unauthorized"}),
    )
}

async fn not_found(req: Request<HttpBody>) -> Fail {
    Fail::new(
        StatusCode::NOT_FOUND,
        format!("Not found: {} {}", req.method(), req.uri().path()),
    )
}

/// A command run to its end inside the sandbox.
async fn run(
    manager: &SandboxManager,
    id: &str,
    command: String,
    env: BTreeMap<String, String>,
) -> Result<ExecResult, CoreError> {
    let req = ExecRequest {
        command: Some(command),
        env,
        timeout_ms: Some(EXEC_TIMEOUT_MS.max(manager.config().default_timeout_ms)),
        ..ExecRequest::default()
    };
    manager.exec(id, req).await
}

async fn get_or_create(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, Fail> {
    ensure_sandbox(&s.manager, &id).await?;
    Ok(ok(json!({
        "projectId": id,
        "status": "ready",
        "message": "Sandbox ready",
    })))
}

/// Kills every process in the sandbox (the agent, PID 1, stays) and forgets its background
/// processes; files stay. A sandbox that does not exist has nothing running: it is not
/// created just to be cleaned.
async fn cleanup(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, Fail> {
    match s.manager.get(&id) {
        Err(CoreError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
        Ok(_) => {
            for p in s.manager.list_processes(&id).await? {
                if let Err(e) = s.manager.remove_process(&id, &p.id).await {
                    tracing::debug!(sandbox = %id, process = %p.id, error = %e, "remove failed");
                }
            }
            run(
                &s.manager,
                &id,
                "kill -9 -1 2>/dev/null; true".to_string(),
                BTreeMap::new(),
            )
            .await?;
        }
    }
    Ok(ok(json!({
        "projectId": id,
        "status": "cleaned",
        "message": "All processes terminated",
    })))
}

async fn exec(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Result<Response, Fail> {
    let Some(command) = text(&body, "command").filter(|c| !c.trim().is_empty()) else {
        return Err(Fail::new(StatusCode::BAD_REQUEST, "command is required"));
    };
    ensure_sandbox(&s.manager, &id).await?;
    let req = ExecRequest {
        command: Some(command.to_string()),
        timeout_ms: Some(EXEC_TIMEOUT_MS.max(s.manager.config().default_timeout_ms)),
        ..ExecRequest::default()
    };
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        let rx = s.manager.exec_stream(&id, req).await?;
        return Ok(crate::shared::sse::event_stream(rx));
    }
    let r = s.manager.exec(&id, req).await?;
    Ok(Json(json!({
        "success": r.exit_code == 0,
        "data": {"stdout": r.stdout, "stderr": r.stderr, "exitCode": r.exit_code},
    }))
    .into_response())
}

/// The repository's name: the last component of its URL without `.git`.
fn repo_name(url: &str) -> &str {
    let last = url
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or_default();
    let name = last.strip_suffix(".git").unwrap_or(last);
    if name.is_empty() {
        "repo"
    } else {
        name
    }
}

/// Text with the token taken out.
fn redact(text: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => text.replace(t, "***"),
        None => text.to_string(),
    }
}

async fn clone(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Lenient(body): Lenient,
) -> Result<Json<Value>, Fail> {
    let Some(repo_url) = text(&body, "repoUrl").filter(|u| !u.trim().is_empty()) else {
        return Err(Fail::new(StatusCode::BAD_REQUEST, "repoUrl is required"));
    };
    let token = text(&body, "githubToken").filter(|t| !t.is_empty());
    let directory = match text(&body, "directory").filter(|d| !d.is_empty()) {
        Some(d) if d.starts_with('/') => d.to_string(),
        Some(d) => format!("{WORKSPACE}/{d}"),
        None => format!("{WORKSPACE}/{}", repo_name(repo_url)),
    };
    ensure_sandbox(&s.manager, &id).await?;
    let exists = match s.manager.stat(&id, &directory).await {
        Ok(_) => true,
        Err(e) if is_missing_entry(&e) => false,
        Err(e) => return Err(e.into()),
    };
    // The token reaches git through a credential helper in its environment, never in the URL
    // (which would put it in git's argv and in `.git/config`). Local repositories stay
    // allowed here, as in the original worker.
    let mut env = sandpit_core::credential_env(token, "x-access-token");
    env.remove("GIT_ALLOW_PROTOCOL");
    env.insert("KAPIN_DIR".to_string(), directory.clone());
    let (action, command) = if exists {
        ("pull", r#"git -C "$KAPIN_DIR" pull"#)
    } else {
        env.insert("KAPIN_REPO_URL".to_string(), repo_url.to_string());
        ("clone", r#"git clone -- "$KAPIN_REPO_URL" "$KAPIN_DIR""#)
    };
    let r = run(&s.manager, &id, command.to_string(), env).await?;
    if r.exit_code != 0 {
        let detail = if r.stderr.trim().is_empty() {
            r.stdout.trim()
        } else {
            r.stderr.trim()
        };
        return Err(Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "git {action} failed (exit code {}): {}",
                r.exit_code,
                redact(detail, token)
            ),
        ));
    }
    let message = if exists {
        "Repository updated successfully"
    } else {
        "Repository cloned successfully"
    };
    Ok(ok(json!({
        "repoUrl": redact(repo_url, token),
        "directory": directory,
        "action": action,
        "message": message,
    })))
}

async fn ls(
    State(s): State<AppState>,
    Path(id): Path<String>,
    params: Params,
) -> Result<Json<Value>, Fail> {
    let path = params
        .non_empty("path")
        .unwrap_or_else(|| WORKSPACE.to_string());
    ensure_sandbox(&s.manager, &id).await?;
    let env = BTreeMap::from([("KAPIN_PATH".to_string(), path.clone())]);
    let r = run(
        &s.manager,
        &id,
        r#"ls -la -- "$KAPIN_PATH""#.to_string(),
        env,
    )
    .await?;
    if r.exit_code != 0 {
        let status = if r.stderr.contains("No such file") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_REQUEST
        };
        return Err(Fail::new(status, r.stderr.trim()));
    }
    Ok(ok(json!({"path": path, "listing": r.stdout})))
}

/// `<path>` of `/files/<path>`, absolute.
fn file_path(rest: &str) -> String {
    format!("/{}", rest.trim_start_matches('/'))
}

async fn read_file(
    State(s): State<AppState>,
    Path((id, rest)): Path<(String, String)>,
) -> Result<Json<Value>, Fail> {
    let path = file_path(&rest);
    ensure_sandbox(&s.manager, &id).await?;
    let data = read_all(&s.manager, &id, &path).await.map_err(|e| {
        if is_missing_entry(&e) {
            Fail::new(StatusCode::NOT_FOUND, format!("File not found: {path}"))
        } else {
            e.into()
        }
    })?;
    Ok(ok(
        json!({"path": path, "content": String::from_utf8_lossy(&data)}),
    ))
}

async fn write_file(
    State(s): State<AppState>,
    Path((id, rest)): Path<(String, String)>,
    Lenient(body): Lenient,
) -> Result<Json<Value>, Fail> {
    let path = file_path(&rest);
    let Some(content) = text(&body, "content") else {
        return Err(Fail::new(StatusCode::BAD_REQUEST, "content is required"));
    };
    ensure_sandbox(&s.manager, &id).await?;
    write_all(&s.manager, &id, &path, content.as_bytes().to_vec()).await?;
    Ok(ok(
        json!({"path": path, "message": "File written successfully"}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        assert_eq!(repo_name("https://github.com/user/repo.git"), "repo");
        assert_eq!(repo_name("https://github.com/user/repo"), "repo");
        assert_eq!(repo_name("https://github.com/user/repo/"), "repo");
        assert_eq!(repo_name("git@github.com:repo.git"), "repo");
        assert_eq!(repo_name("file:///srv/repo"), "repo");
        assert_eq!(repo_name("/srv/other.git"), "other");
        assert_eq!(repo_name(""), "repo");
    }

    #[test]
    fn the_token_travels_in_the_environment_only() {
        let env = sandpit_core::credential_env(Some("T0KEN"), "x-access-token");
        assert_eq!(env.get("GIT_CONFIG_COUNT").map(String::as_str), Some("2"));
        let holders: Vec<&String> = env
            .iter()
            .filter(|(_, v)| v.contains("T0KEN"))
            .map(|(k, _)| k)
            .collect();
        assert_eq!(holders, ["SANDPIT_GIT_TOKEN"]);
        let without = sandpit_core::credential_env(None, "x-access-token");
        assert_eq!(
            without.get("GIT_CONFIG_COUNT").map(String::as_str),
            Some("1")
        );
        assert!(!without.contains_key("SANDPIT_GIT_TOKEN"));
        assert_eq!(redact("fatal: T@host", Some("T")), "fatal: ***@host");
    }
}
