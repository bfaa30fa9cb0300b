//! HTTP: the REST API (poem-openapi, documented at `/api/v1/openapi.json`
//! and `/docs`), the daemon socket, health and metrics.

pub mod acceptor;
pub mod auth;
pub mod daemon_socket;
pub mod daemons;
pub mod error;
pub mod events;
pub mod health;
pub mod page;
pub mod resources;
pub mod task_calls;
pub mod tasks;
pub mod tool;

use poem::{
    error::{MethodNotAllowedError, NotFoundError},
    get,
    http::StatusCode,
    middleware::Tracing,
    web::Json,
    EndpointExt, IntoResponse, Response, Route,
};
use poem_openapi::{
    error::{
        AuthorizationError, ContentTypeError, ParseMultipartError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    },
    OpenApiService,
};
use serde_json::json;

use crate::state::AppState;

/// Every route a replica serves.
pub fn routes(state: AppState) -> impl poem::Endpoint {
    let api = OpenApiService::new(
        (
            daemons::DaemonsApi,
            events::EventsApi,
            tasks::TasksApi,
            resources::ResourcesApi,
            task_calls::TaskCallsApi,
            tool::ToolApi,
        ),
        "meshgate",
        env!("CARGO_PKG_VERSION"),
    )
    .description("Control plane for AI coding worker daemons: any replica serves any call.");
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .at("/", get(page::index))
        .at("/healthz", get(health::healthz))
        .at("/readyz", get(health::readyz))
        .at("/metrics", get(health::metrics))
        .at("/api/v1/mesh/daemons/connect", get(daemon_socket::connect))
        .at("/api/v1/mesh/events", get(events::events_ws))
        .at("/api/v1/mesh/events/sse", get(events::events_sse))
        .at("/api/v1/openapi.json", spec)
        .nest("/docs", docs)
        .nest_no_strip("/api/v1/mesh", api)
        .catch_all_error(json_errors)
        .data(state)
        // poem's request log (an `info` span and event per request) builds
        // its span even when `info` is filtered out; left off then.
        .with_if(
            tracing::enabled!(target: "poem::middleware::tracing_mw", tracing::Level::INFO),
            Tracing,
        )
}

/// Errors raised before a handler runs (a body that does not parse, a
/// missing key header, an unknown route) get the same `{code, message}`
/// shape as the handlers' own errors.
async fn json_errors(err: poem::Error) -> Response {
    let code = if err.is::<ParseRequestPayloadError>()
        || err.is::<ParseParamError>()
        || err.is::<ParsePathError>()
        || err.is::<ParseMultipartError>()
    {
        "BAD_REQUEST"
    } else if err.is::<ContentTypeError>() {
        "UNSUPPORTED_MEDIA_TYPE"
    } else if err.is::<AuthorizationError>() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"code": "MISSING_API_KEY", "message": "the X-Api-Key header (X-Tool-Key on tool routes) is required"})),
        )
            .into_response();
    } else if err.is::<NotFoundError>() {
        "NOT_FOUND"
    } else if err.is::<MethodNotAllowedError>() {
        "METHOD_NOT_ALLOWED"
    } else {
        return err.into_response();
    };
    let status = err.status();
    (
        status,
        Json(json!({"code": code, "message": err.to_string()})),
    )
        .into_response()
}
