//! The OpenAPI 3.1 document of the native API, served at `GET /openapi.json`.
//!
//! This module owns the document: its assembly (the list of documented handlers, whose
//! `#[utoipa::path]` sits on each handler), the bearer security scheme and where it applies,
//! the error schema, and documentation-only shapes (path and query parameters the handlers
//! read themselves, answers they build with `json!`). `docs/API.md` stays the reference the
//! document follows. The tests below read the routes from the router's source and fail when
//! it serves a route the document lacks, or the document has an operation no route serves.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::Json;
use sandpit_core::model::{Context, Process, Sandbox, Session};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{IntoParams, IntoResponses, Modify, OpenApi, ToSchema};

use crate::routes::files::EntryView;
use crate::routes::{
    contexts, exec, files, git, ops, ports, processes, pty, sandboxes, sessions, snapshots, tenant,
};

/// Paths anyone may call: outside the bearer-token layer in [`crate::router`].
const PUBLIC_PATHS: &[&str] = &["/health", "/openapi.json", "/docs"];
/// Name of the bearer scheme, as `security(...)` in [`ApiDoc`] spells it too.
const BEARER: &str = "bearer_auth";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sandpit",
        description = "Self-hosted sandbox server: isolated Linux sandboxes over HTTP. \
            Every route but `/health` and `/openapi.json` needs `Authorization: Bearer <token>` \
            when the server has a token. Errors answer `{\"error\": {\"code\", \"message\"}}`."
    ),
    paths(
        sandboxes::create, sandboxes::list, sandboxes::get, sandboxes::update,
        sandboxes::delete, sandboxes::keepalive,
        exec::exec,
        files::read, files::write, files::remove, files::list, files::stat, files::mkdir,
        files::rename,
        sessions::create, sessions::list, sessions::get, sessions::delete,
        processes::start, processes::list, processes::get, processes::remove, processes::logs,
        processes::stdin, processes::signal, processes::wait, processes::wait_port,
        pty::open,
        contexts::create, contexts::list, contexts::get, contexts::delete, contexts::restart,
        contexts::run,
        git::clone,
        ops::health, ops::metrics, serve,
        ports::proxy_path, ports::proxy_index, ports::proxy_root, ports::create_token,
        ports::revoke_token, ports::list_tokens,
        snapshots::create, snapshots::list, snapshots::get, snapshots::delete,
        snapshots::restore, snapshots::sleep, snapshots::wake,
        crate::docs::page,
        tenant::get,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Auth, &Reasons, &PerMethodIds),
    security(("bearer_auth" = [])),
    tags(
        (name = "sandboxes", description = "Create, inspect, keep alive and delete sandboxes"),
        (name = "exec", description = "Run commands, buffered or streamed"),
        (name = "files", description = "Files inside a sandbox"),
        (name = "sessions", description = "Long-lived shells whose state persists"),
        (name = "processes", description = "Background processes with logs, stdin and signals"),
        (name = "terminals", description = "Interactive terminals over a WebSocket"),
        (name = "code", description = "Stateful Python and JavaScript interpreters"),
        (name = "git", description = "Clone and pull repositories inside a sandbox"),
        (name = "ops", description = "Health, metrics and this document"),
        (name = "ports", description = "HTTP and WebSocket to ports inside a sandbox, and public port tokens"),
        (name = "snapshots", description = "Archives of a sandbox's files in object storage, and restoring them"),
        (name = "tenants", description = "The caller's tenant, quotas and usage"),
    )
)]
struct ApiDoc;

/// The whole document.
fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(document);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", operation_id = "openapi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
pub async fn serve() -> Json<&'static utoipa::openapi::OpenApi> {
    Json(&DOCUMENT)
}

/// Every operation of the document, with its path.
fn operations(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&str, &mut Operation)> + '_ {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        .map(move |op| (path.as_str(), op))
    })
}

/// Declares the bearer scheme, exempts the public paths from the document-wide requirement
/// and gives every other operation its 401 answer.
struct Auth;

impl Modify for Auth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.responses.insert(
            "Unauthorized".into(),
            RefOr::T(
                ResponseBuilder::new()
                    .description("`unauthorized`: missing or wrong bearer token")
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build(),
            ),
        );
        for (path, op) in operations(doc) {
            if PUBLIC_PATHS.contains(&path) {
                // An empty list lifts the document-wide requirement.
                op.security = Some(Vec::new());
            } else {
                let unauthorized = RefOr::Ref(Ref::from_response_name("Unauthorized"));
                op.responses.responses.insert("401".into(), unauthorized);
            }
        }
    }
}

/// One handler documented for several methods (the port proxy) gets one operation id
/// per method: `<id>_<method>`.
struct PerMethodIds;

impl Modify for PerMethodIds {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for item in doc.paths.paths.values_mut() {
            let ops = [
                ("get", &mut item.get),
                ("put", &mut item.put),
                ("post", &mut item.post),
                ("delete", &mut item.delete),
                ("options", &mut item.options),
                ("head", &mut item.head),
                ("patch", &mut item.patch),
                ("trace", &mut item.trace),
            ];
            let mut seen = BTreeMap::<String, usize>::new();
            for (_, op) in &ops {
                if let Some(id) = op.as_ref().and_then(|o| o.operation_id.clone()) {
                    *seen.entry(id).or_default() += 1;
                }
            }
            for (method, op) in ops {
                if let Some(op) = op.as_mut() {
                    if let Some(id) = op.operation_id.as_mut() {
                        if seen.get(id.as_str()).is_some_and(|n| *n > 1) {
                            *id = format!("{id}_{method}");
                        }
                    }
                }
            }
        }
    }
}

/// Answers documented by their body alone get their status's reason phrase as description.
struct Reasons;

impl Modify for Reasons {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (_, op) in operations(doc) {
            for (status, response) in op.responses.responses.iter_mut() {
                let reason = status
                    .parse()
                    .ok()
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .and_then(|s| s.canonical_reason());
                if let (RefOr::T(r), Some(reason)) = (response, reason) {
                    if r.description.is_empty() {
                        r.description = reason.to_string();
                    }
                }
            }
        }
    }
}

pub use shapes::*;

/// Documentation-only types: never built, they describe what handlers read or build by hand.
#[allow(dead_code)]
mod shapes {
    use super::*;

    /// The body of every error answer.
    #[derive(ToSchema)]
    pub struct ErrorBody {
        error: ErrorDetail,
    }

    #[derive(ToSchema)]
    pub struct ErrorDetail {
        /// Stable snake_case code to match on (`not_found`, `invalid_path`, ...).
        code: String,
        /// What went wrong, for people.
        message: String,
    }

    /// Failures of any route that reaches into a sandbox.
    #[derive(IntoResponses)]
    pub enum AgentErrors {
        /// `internal`: an unexpected failure
        #[response(status = 500)]
        Internal(ErrorBody),
        /// `sandbox_unavailable`: the sandbox could not be started or reached
        #[response(status = 503)]
        Unavailable(ErrorBody),
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct SandboxPath {
        /// Sandbox id.
        id: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct PortPath {
        /// Sandbox id.
        id: String,
        /// TCP port inside the sandbox, 1-65535.
        port: u16,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct ProxyPath {
        /// Sandbox id.
        id: String,
        /// TCP port inside the sandbox, 1-65535.
        port: u16,
        /// The rest of the path, as the sandbox's server sees it (after a `/`).
        path: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct SessionPath {
        /// Sandbox id.
        id: String,
        /// Session id.
        sid: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct ProcessPath {
        /// Sandbox id.
        id: String,
        /// Process id (the API's id, not the operating system's pid).
        pid: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    pub struct ContextPath {
        /// Sandbox id.
        id: String,
        /// Context id.
        cid: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct FileQuery {
        /// Absolute path inside the sandbox, percent-encoded.
        path: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct RemoveQuery {
        /// Absolute path inside the sandbox, percent-encoded.
        path: String,
        /// Remove a directory with its contents (`true` or `1`).
        #[param(default = false)]
        recursive: Option<bool>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct LogsQuery {
        /// Byte offset in stdout to read from.
        #[param(default = 0)]
        stdout_offset: Option<u64>,
        /// Byte offset in stderr to read from.
        #[param(default = 0)]
        stderr_offset: Option<u64>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    pub struct PtyQuery {
        /// Terminal width.
        #[param(default = 80, minimum = 1)]
        cols: Option<u16>,
        /// Terminal height.
        #[param(default = 24, minimum = 1)]
        rows: Option<u16>,
        /// A command run by bash instead of an interactive bash.
        command: Option<String>,
    }

    #[derive(ToSchema)]
    pub struct SandboxList {
        sandboxes: Vec<Sandbox>,
    }

    #[derive(ToSchema)]
    pub struct SessionList {
        sessions: Vec<Session>,
    }

    #[derive(ToSchema)]
    pub struct ProcessList {
        processes: Vec<Process>,
    }

    #[derive(ToSchema)]
    pub struct ContextList {
        contexts: Vec<Context>,
    }

    /// The outcome of a code run.
    #[derive(ToSchema)]
    pub struct RunResult {
        stdout: String,
        stderr: String,
        /// `null` when the interpreter died before counting the run.
        execution_count: Option<i64>,
        timed_out: bool,
        /// Output past the server's cap was dropped.
        truncated: bool,
        /// Representations by MIME type (`text/plain`, `text/html`, `image/png` as base64,
        /// ...), with `is_main_result` true for the value of the last expression; open
        /// matplotlib figures follow as `image/png`.
        results: Vec<BTreeMap<String, serde_json::Value>>,
        error: Option<RunError>,
        /// With `locals: true`: user-defined names and the `repr` of their values.
        locals: Option<BTreeMap<String, String>>,
    }

    /// An exception the code raised; the context stays usable.
    #[derive(ToSchema)]
    pub struct RunError {
        name: String,
        value: String,
        traceback: String,
    }

    #[derive(ToSchema)]
    pub struct DirListing {
        path: String,
        /// Sorted by name.
        entries: Vec<EntryView>,
    }

    /// What kind of file an entry is (symlinks are not followed).
    #[derive(ToSchema)]
    #[serde(rename_all = "snake_case")]
    pub enum EntryKind {
        File,
        Dir,
        Symlink,
        Other,
    }

    /// A page of a process's output; the offsets are where to resume.
    #[derive(ToSchema)]
    pub struct ProcessLogs {
        stdout: String,
        stderr: String,
        stdout_offset: u64,
        stderr_offset: u64,
        /// `running` or `exited`.
        status: String,
        exit_code: Option<i32>,
    }

    /// A signal by name (`SIGTERM`, `TERM`) or number (`15`, `"15"`).
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub enum Signal {
        Name(String),
        Number(i32),
    }

    #[derive(ToSchema)]
    pub struct PortReady {
        port: u16,
        ready: bool,
    }

    #[derive(ToSchema)]
    pub struct Health {
        /// Always `ok`.
        status: String,
        /// The server's version.
        version: String,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::{document, PUBLIC_PATHS};

    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Every `(method, path)` of the native API, read from the `.route(...)` calls in the
    /// source of `crate::router`: the one list of routes, so a route added there without
    /// documentation fails below. (Routers mounted from other modules, such as the compat
    /// dialects that speak other products' APIs, are not part of this document.)
    fn routed() -> BTreeSet<(String, String)> {
        let src = include_str!("lib.rs");
        let mut routes = BTreeSet::new();
        for (at, _) in src.match_indices(".route(") {
            let args = &src[at + ".route(".len()..];
            let path = args
                .trim_start()
                .strip_prefix('"')
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("a route path that is not a literal: {:.80}", args));
            // The method router, `get(handler).post(handler)`, up to the `)` closing `.route(`:
            // each name called at the top level is a method.
            let (mut depth, mut name) = (0, String::new());
            for c in args.chars() {
                match c {
                    '(' => {
                        if depth == 0 {
                            assert!(
                                METHODS.contains(&name.as_str()),
                                "method router `{name}` on {path}"
                            );
                            // A catch-all `{*rest}` is the parameter `{rest}` in OpenAPI.
                            routes.insert((name.clone(), path.replace("{*", "{")));
                        }
                        depth += 1;
                    }
                    ')' if depth == 0 => break,
                    ')' => depth -= 1,
                    c if c.is_alphanumeric() || c == '_' => name.push(c),
                    _ => name.clear(),
                }
            }
        }
        routes
    }

    fn doc() -> Value {
        serde_json::to_value(document()).unwrap()
    }

    /// `(method, path, operation)` of every documented operation.
    fn documented(doc: &Value) -> Vec<(String, String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if METHODS.contains(&method.as_str()) {
                    ops.push((method.clone(), path.clone(), op.clone()));
                }
            }
        }
        ops
    }

    #[test]
    fn routes_and_documented_operations_are_the_same() {
        let routes = routed();
        assert!(
            routes.len() >= 31,
            "the route reader lost routes: {routes:?}"
        );
        assert!(routes.contains(&("get".into(), "/openapi.json".into())));
        let doc = doc();
        let documented: BTreeSet<_> = documented(&doc)
            .into_iter()
            .map(|(m, p, _)| (m, p))
            .collect();
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes without documentation: {missing:?}"
        );
        let stale: Vec<_> = documented.difference(&routes).collect();
        assert!(
            stale.is_empty(),
            "documented operations no route serves: {stale:?}"
        );
    }

    #[test]
    fn document_is_openapi_3_1_with_unique_operation_ids() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let mut ids = BTreeSet::new();
        for (method, path, op) in documented(&doc) {
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            // Every `{name}` of the path is a documented path parameter, and nothing else is.
            let mut declared: Vec<&str> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .filter_map(|p| p["name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let mut named: Vec<&str> = path
                .split('{')
                .skip(1)
                .filter_map(|s| s.split('}').next())
                .collect();
            declared.sort_unstable();
            named.sort_unstable();
            assert_eq!(declared, named, "{method} {path}: path parameters");
        }
    }

    #[test]
    fn bearer_auth_applies_to_all_but_the_public_routes() {
        let doc = doc();
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer_auth"]["scheme"],
            "bearer"
        );
        assert_eq!(doc["security"], serde_json::json!([{"bearer_auth": []}]));
        for (method, path, op) in documented(&doc) {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
                assert!(op["responses"]["401"].is_null(), "{method} {path}");
            } else {
                assert!(
                    op["security"].is_null(),
                    "{method} {path} overrides security"
                );
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path}: no 401"
                );
            }
        }
    }

    #[test]
    fn errors_use_the_error_schema_and_every_ref_resolves() {
        let doc = doc();
        let error = serde_json::json!({"$ref": "#/components/schemas/ErrorBody"});
        for (method, path, op) in documented(&doc) {
            for (status, response) in op["responses"].as_object().unwrap() {
                let json = &response["content"]["application/json"];
                if status.starts_with('4') || status.starts_with('5') {
                    assert!(
                        json.is_null() || json["schema"] == error,
                        "{method} {path} {status}"
                    );
                }
                assert!(
                    response["$ref"].is_string()
                        || response["description"]
                            .as_str()
                            .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status}: no description"
                );
            }
        }
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(refs.len() > 50);
        for r in refs {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "$ref {r} does not resolve");
        }
    }

    fn collect_refs(v: &Value, refs: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    refs.push(r.clone());
                }
                map.values().for_each(|v| collect_refs(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }
}
