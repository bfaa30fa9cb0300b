//! Health, readiness and metrics.

use fred::prelude::*;
use poem::{handler, http::StatusCode, web::Data, IntoResponse, Response};

use crate::state::AppState;

/// 200 while the process runs.
#[handler]
pub fn healthz() -> &'static str {
    "ok"
}

/// 200 when Redis and PostgreSQL answer and the pod is not draining.
#[handler]
pub async fn readyz(Data(state): Data<&AppState>) -> Response {
    if state.lifecycle.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let db = sqlx::query("SELECT 1").execute(&state.db);
    let redis = state.redis.client.ping::<String>(None);
    let (db, redis) = tokio::join!(db, redis);
    let deaf = state
        .liveness
        .check(state.config.self_ping() * 3 + std::time::Duration::from_millis(500));
    match (db, redis) {
        (Ok(_), Ok(_)) => match deaf {
            Ok(()) => "ready".into_response(),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        },
        (db, redis) => {
            let why = format!(
                "postgres: {}, redis: {}",
                if db.is_ok() { "ok" } else { "unavailable" },
                if redis.is_ok() { "ok" } else { "unavailable" }
            );
            (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
        }
    }
}

/// Prometheus text format.
#[handler]
pub fn metrics(Data(state): Data<&AppState>) -> Response {
    let gauges = [
        (
            "meshgate_daemons_connected",
            "Daemon sockets registered on this pod",
            state.conns.len() as u64,
        ),
        (
            "meshgate_web_client_subscriptions",
            "Web client subscriptions on this pod (a client counts once per topic)",
            state.hub.slots() as u64,
        ),
        (
            "meshgate_event_channels",
            "Redis event channels this pod subscribes to for its clients",
            state.hub.channels() as u64,
        ),
        (
            "meshgate_pending_requests",
            "HTTP calls on this pod waiting for a daemon",
            state.waiters.len() as u64,
        ),
        (
            "meshgate_output_queue_depth",
            "Output lines queued for storage on this pod",
            state.outputs.depth(),
        ),
        (
            "meshgate_draining",
            "1 while this pod drains",
            u64::from(state.lifecycle.is_draining()),
        ),
    ];
    state
        .metrics
        .render(
            &[(
                "meshgate_route_script_calls_total",
                "route.lua calls made to route commands from this pod (commands routed at once share one)",
                state.redis.route_script_calls(),
            )],
            &gauges,
        )
        .with_content_type("text/plain; version=0.0.4")
        .into_response()
}
