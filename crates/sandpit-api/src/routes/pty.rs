//! `GET /v1/sandboxes/{id}/pty`: an interactive terminal over a WebSocket.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::response::Response;
use sandpit_core::agent::{PtyEvent, PtyInput, PtyOutput};
use serde::Deserialize;

use crate::extract::query_param;
use crate::openapi::{AgentErrors, ErrorBody, PtyQuery, SandboxPath};
use crate::shared::AppState;
use crate::ApiError;

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Control {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

fn size(parts: &axum::http::request::Parts, name: &str, default: u16) -> Result<u16, ApiError> {
    match query_param(parts, name) {
        None => Ok(default),
        Some(v) => {
            v.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request("bad_request", format!("{name} must be 1-65535"))
            })
        }
    }
}

/// Opens an interactive terminal: a GET that upgrades to a WebSocket.
///
/// The terminal runs bash (or `command` run by bash) in `/workspace` with
/// `TERM=xterm-256color`. Client to server: binary messages are keystrokes; text messages are
/// JSON, `{"type": "input", "data": "ls\n"}` or `{"type": "resize", "cols": 120, "rows": 40}`.
/// Server to client: binary messages are terminal output; at the end one text message
/// `{"type": "exit", "exit_code": 0}`, then the socket closes. Closing the socket hangs the
/// terminal up.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/pty", tag = "terminals", operation_id = "open_pty",
    params(SandboxPath, PtyQuery),
    responses((status = 101, description = "Switching Protocols: the connection is now a WebSocket"),
        (status = 400, description = "`bad_request`: `cols` or `rows` out of range, or not a \
            WebSocket upgrade request", body = ErrorBody),
        (status = 404, description = "`not_found`: no such sandbox", body = ErrorBody),
        (status = 405, description = "`method_not_allowed`: a WebSocket upgrade must be a GET", body = ErrorBody),
        (status = 426, description = "`upgrade_required`: the connection cannot be upgraded", body = ErrorBody),
        AgentErrors))]
pub async fn open(
    State(s): State<AppState>,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(upgrade_error)?;
    let (parts, _) = req.into_parts();
    let cols = size(&parts, "cols", 80)?;
    let rows = size(&parts, "rows", 24)?;
    let command = query_param(&parts, "command");
    // The terminal starts before the upgrade, so a bad sandbox id is a plain HTTP error.
    let (input, output, busy) = s.manager.pty(&id, command, cols, rows).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        let _busy = busy;
        bridge(socket, input, output).await;
    }))
}

/// axum's plain-text rejection of a request that is not a WebSocket upgrade, as the API's
/// JSON error with the same status.
pub(crate) fn upgrade_error(rejection: WebSocketUpgradeRejection) -> ApiError {
    let status = rejection.status();
    let code = match status {
        axum::http::StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        axum::http::StatusCode::UPGRADE_REQUIRED => "upgrade_required",
        _ => "bad_request",
    };
    ApiError::new(
        status,
        code,
        format!("not a WebSocket upgrade: {}", rejection.body_text()),
    )
}

async fn bridge(socket: WebSocket, mut input: PtyInput, mut output: PtyOutput) {
    use futures::{SinkExt, StreamExt};
    let (mut tx, mut rx) = socket.split();
    let to_client = async move {
        while let Some(event) = output.next().await {
            match event {
                PtyEvent::Output(data) => {
                    if tx.send(Message::Binary(data)).await.is_err() {
                        return;
                    }
                }
                PtyEvent::Exited(code) => {
                    let msg = serde_json::json!({"type": "exit", "exit_code": code}).to_string();
                    let _ = tx.send(Message::Text(msg.into())).await;
                    let _ = tx.close().await;
                    return;
                }
            }
        }
        let _ = tx.close().await;
    };
    let from_client = async move {
        while let Some(Ok(msg)) = rx.next().await {
            let sent = match msg {
                Message::Binary(data) => input.send(&data).await,
                Message::Text(text) => match serde_json::from_str::<Control>(&text) {
                    Ok(Control::Input { data }) => input.send(data.as_bytes()).await,
                    Ok(Control::Resize { cols, rows }) => input.resize(cols, rows).await,
                    Err(_) => Ok(()),
                },
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if sent.is_err() {
                break;
            }
        }
        // Dropping the input half hangs the terminal up.
    };
    // Whichever side ends first ends the terminal: the client leaving hangs up the program,
    // the program exiting closes the socket.
    tokio::select! {
        _ = to_client => {},
        _ = from_client => {},
    }
}
