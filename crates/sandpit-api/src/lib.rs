//! sandpit-api: the HTTP face of the server. Route handlers are thin: parse, call the core,
//! map the result. Cross-cutting concerns (auth, body limits, tracing, metrics of errors)
//! are layers around them, not code repeated in each.
#![forbid(unsafe_code)]

mod auth;
mod compat;
mod docs;
mod error;
mod extract;
mod openapi;
mod routes;
mod shared;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tower_http::trace::TraceLayer;

pub use compat::validate_root_dialect;
pub use error::ApiError;
pub use shared::AppState;

/// Largest JSON body accepted (exec stdin travels in it).
pub const MAX_JSON_BODY: usize = 16 * 1024 * 1024;

/// The e2b dialect alone at `/` (`--e2b-listen`), behind its own auth.
pub fn e2b_router(state: AppState) -> Router {
    compat::e2b_root(&state)
        .layer(axum::middleware::from_fn(hold_output_charges))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let files = Router::new()
        .route(
            "/v1/sandboxes/{id}/files",
            get(routes::files::read)
                .put(routes::files::write)
                .delete(routes::files::remove),
        )
        .layer(DefaultBodyLimit::disable());
    // Authorized inside (the bearer token, or the port's public token): see auth::port_access.
    let ports = Router::new()
        .route(
            "/v1/sandboxes/{id}/ports/{port}",
            get(routes::ports::proxy_root)
                .post(routes::ports::proxy_root)
                .put(routes::ports::proxy_root)
                .delete(routes::ports::proxy_root)
                .patch(routes::ports::proxy_root)
                .options(routes::ports::proxy_root),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/",
            get(routes::ports::proxy_index)
                .post(routes::ports::proxy_index)
                .put(routes::ports::proxy_index)
                .delete(routes::ports::proxy_index)
                .patch(routes::ports::proxy_index)
                .options(routes::ports::proxy_index),
        )
        .route(
            "/v1/sandboxes/{id}/ports/{port}/{*path}",
            get(routes::ports::proxy_path)
                .post(routes::ports::proxy_path)
                .put(routes::ports::proxy_path)
                .delete(routes::ports::proxy_path)
                .patch(routes::ports::proxy_path)
                .options(routes::ports::proxy_path),
        )
        .layer(DefaultBodyLimit::disable());
    let api = Router::new()
        .route(
            "/v1/sandboxes",
            post(routes::sandboxes::create).get(routes::sandboxes::list),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(routes::sandboxes::get)
                .patch(routes::sandboxes::update)
                .delete(routes::sandboxes::delete),
        )
        .route(
            "/v1/sandboxes/{id}/keepalive",
            post(routes::sandboxes::keepalive),
        )
        .route("/v1/sandboxes/{id}/exec", post(routes::exec::exec))
        .route("/v1/sandboxes/{id}/files/list", get(routes::files::list))
        .route("/v1/sandboxes/{id}/files/stat", get(routes::files::stat))
        .route("/v1/sandboxes/{id}/files/mkdir", post(routes::files::mkdir))
        .route("/v1/sandboxes/{id}/files/move", post(routes::files::rename))
        .route(
            "/v1/sandboxes/{id}/sessions",
            post(routes::sessions::create).get(routes::sessions::list),
        )
        .route(
            "/v1/sandboxes/{id}/sessions/{sid}",
            get(routes::sessions::get).delete(routes::sessions::delete),
        )
        .route(
            "/v1/sandboxes/{id}/processes",
            post(routes::processes::start).get(routes::processes::list),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}",
            get(routes::processes::get).delete(routes::processes::remove),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/logs",
            get(routes::processes::logs),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/stdin",
            post(routes::processes::stdin),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/signal",
            post(routes::processes::signal),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/wait",
            post(routes::processes::wait),
        )
        .route(
            "/v1/sandboxes/{id}/processes/{pid}/wait-port",
            post(routes::processes::wait_port),
        )
        .route("/v1/sandboxes/{id}/pty", get(routes::pty::open))
        .route(
            "/v1/sandboxes/{id}/contexts",
            post(routes::contexts::create).get(routes::contexts::list),
        )
        .route(
            "/v1/sandboxes/{id}/contexts/{cid}",
            get(routes::contexts::get).delete(routes::contexts::delete),
        )
        .route(
            "/v1/sandboxes/{id}/contexts/{cid}/restart",
            post(routes::contexts::restart),
        )
        .route("/v1/sandboxes/{id}/code", post(routes::contexts::run))
        .route(
            "/v1/sandboxes/{id}/port-tokens",
            get(routes::ports::list_tokens),
        )
        .route(
            "/v1/sandboxes/{id}/port-tokens/{port}",
            post(routes::ports::create_token).delete(routes::ports::revoke_token),
        )
        .route("/v1/sandboxes/{id}/git/clone", post(routes::git::clone))
        .route(
            "/v1/sandboxes/{id}/snapshots",
            post(routes::snapshots::create).get(routes::snapshots::list),
        )
        .route(
            "/v1/snapshots/{sid}",
            get(routes::snapshots::get).delete(routes::snapshots::delete),
        )
        .route(
            "/v1/sandboxes/{id}/restore",
            post(routes::snapshots::restore),
        )
        .route("/v1/sandboxes/{id}/sleep", post(routes::snapshots::sleep))
        .route("/v1/sandboxes/{id}/wake", post(routes::snapshots::wake))
        .route("/v1/tenant", get(routes::tenant::get))
        .route("/metrics", get(routes::ops::metrics))
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY))
        .merge(files)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/health", get(routes::ops::health))
        .route("/openapi.json", get(openapi::serve))
        .route("/docs", get(docs::page))
        .merge(api)
        .merge(ports)
        .merge(compat::routes(&state))
        .fallback_service(fallback(&state))
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            routes::ports::by_host,
        ))
        .layer(axum::middleware::from_fn(hold_output_charges))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// What answers requests no native route matches: the `--root-dialect` (so a native route
/// always wins over a dialect's), or the native "no such route".
fn fallback(state: &AppState) -> Router {
    let dialect = state.root_dialect.as_deref().and_then(|name| {
        let found = compat::find(name);
        if found.is_none() {
            tracing::warn!(dialect = name, "unknown root dialect; none mounted at /");
        }
        found
    });
    let router = match dialect {
        Some(d) => d.serve(state),
        None => Router::new().fallback(routes::ops::not_found),
    };
    router.with_state(state.clone())
}

/// Keeps what a request charged to the output budget (its buffered command output, see
/// `sandpit_core::budget`) until its answer has been sent.
async fn hold_output_charges(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use futures::StreamExt;
    let slot = sandpit_core::budget::Slot::default();
    let resp = sandpit_core::budget::HELD
        .scope(slot.clone(), next.run(req))
        .await;
    if slot.lock().map_or(true, |held| held.is_empty()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    axum::response::Response::from_parts(parts, axum::body::Body::from_stream(body))
}
