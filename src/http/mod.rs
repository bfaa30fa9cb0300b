//! HTTP: the REST API (poem-openapi, documented at `/api/v1/openapi.json`
//! and `/docs`), the daemon socket, health and metrics.

pub mod auth;
pub mod daemon_socket;
pub mod daemons;
pub mod error;
pub mod health;
pub mod tool;

use poem::{get, middleware::Tracing, EndpointExt, Route};
use poem_openapi::OpenApiService;

use crate::state::AppState;

/// Every route a replica serves.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = OpenApiService::new(
        (daemons::DaemonsApi, tool::ToolApi),
        "meshgate",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Control plane for AI coding worker daemons: any replica serves any call.");
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz))
        .at("/metrics", get(health::metrics))
        .at("/api/v1/mesh/daemons/connect", get(daemon_socket::connect))
        .at("/api/v1/openapi.json", spec)
        .nest("/docs", docs)
        .nest("/", api)
        .data(state)
        .with(Tracing)
}
