//! `GET /api/v1/mesh/daemons/connect`: the daemon WebSocket upgrade. The key
//! is checked before the upgrade (PROTOCOL.md §1 lists the refusals).

use poem::{
    handler,
    http::StatusCode,
    web::{
        websocket::{WebSocket, WebSocketConfig},
        Data, Json,
    },
    IntoResponse, Request, Response,
};
use serde_json::json;

use crate::{
    auth::{check_header, HeaderProblem},
    daemon,
    state::AppState,
};

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

/// Upgrades an authenticated daemon to a WebSocket.
#[handler]
pub async fn connect(req: &Request, ws: WebSocket, Data(state): Data<&AppState>) -> Response {
    if state.lifecycle.is_draining() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "DRAINING",
            "this replica is shutting down; connect again",
        );
    }
    if state.redis.ensure_connected().is_err() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "REDIS_UNAVAILABLE",
            "shared state is unavailable; connect again later",
        );
    }
    let key = match check_header(req.headers().get("x-api-key").map(|v| v.as_bytes())) {
        Ok(key) => key,
        Err(HeaderProblem::Missing) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "MISSING_API_KEY",
                "X-Api-Key header required",
            )
        }
        Err(HeaderProblem::Invalid) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "INVALID_API_KEY",
                "invalid X-Api-Key header value",
            )
        }
    };
    let principal = match state.auth.authenticate(&state.db, key).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "AUTH_FAILED",
                "unknown or revoked API key",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "daemon key check failed");
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "DB_UNAVAILABLE",
                "the database is unavailable",
            );
        }
    };
    state.key_usage.record(principal.key_id);
    let max = state.config.max_frame_bytes;
    // Small buffers: most daemons are idle most of the time.
    let config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(0)
        // Bounded: a daemon that stops reading fills its command queue
        // instead of this buffer growing without limit.
        .max_write_buffer_size(2 * max + 1024 * 1024)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let state = state.clone();
    ws.config(config)
        // A task of its own: poem's upgrade task would otherwise hold our
        // loop inside its own (larger) state for the socket's whole life.
        .on_upgrade(move |socket| {
            tokio::spawn(daemon::socket::serve(socket, state, principal));
            std::future::ready(())
        })
        .into_response()
}
