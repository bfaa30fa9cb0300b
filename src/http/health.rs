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
    match (db, redis) {
        (Ok(_), Ok(_)) => "ready".into_response(),
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
            "meshgate_draining",
            "1 while this pod drains",
            u64::from(state.lifecycle.is_draining()),
        ),
    ];
    state
        .metrics
        .render(&gauges)
        .with_content_type("text/plain; version=0.0.4")
        .into_response()
}
