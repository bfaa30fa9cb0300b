//! Web client endpoints: `POST /api/v1/mesh/tickets`, the event WebSocket
//! `GET /api/v1/mesh/events` and `GET /api/v1/mesh/events/sse`
//! (PROTOCOL.md §2). Clients authenticate with `X-Api-Key` or a one-use
//! `?ticket=`.

use chrono::{DateTime, Utc};
use poem::{
    handler,
    http::StatusCode,
    web::{
        sse::SSE,
        websocket::{WebSocket, WebSocketConfig},
        Data, Json as PoemJson,
    },
    IntoResponse, Request, Response,
};
use poem_openapi::{payload::Json, ApiResponse, Object, OpenApi, Tags};
use serde_json::json;

use super::{auth::UserKey, error::ApiError};
use crate::{
    auth::{check_header, Principal},
    clients::{self, Client},
    cluster::tickets,
    protocol::client::Topic,
    state::AppState,
};

#[derive(Tags)]
enum ApiTags {
    /// Live events for web clients.
    Events,
}

/// A one-use ticket for `?ticket=` on the event endpoints.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Ticket {
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
enum TicketResponse {
    /// Valid once, on any replica, until `expiresAt`.
    #[oai(status = 201)]
    Created(Json<Ticket>),
}

pub struct EventsApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::Events")]
impl EventsApi {
    /// Issues a one-use ticket for the event endpoints (browsers cannot set
    /// headers on a WebSocket).
    #[oai(path = "/tickets", method = "post")]
    async fn ticket(
        &self,
        key: UserKey,
        state: poem::web::Data<&AppState>,
    ) -> Result<TicketResponse, ApiError> {
        let ttl = state.config.ticket_ttl_ms;
        let ticket = tickets::issue(&state.redis, &key.0, ttl).await?;
        let expires_at = Utc::now() + chrono::Duration::milliseconds(ttl as i64);
        Ok(TicketResponse::Created(Json(Ticket { ticket, expires_at })))
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        PoemJson(json!({ "code": code, "message": message })),
    )
        .into_response()
}

/// Query parameters in order, percent-decoded (`topic` may repeat).
fn query_params(req: &Request) -> Vec<(String, String)> {
    let Some(query) = req.uri().query() else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `X-Api-Key`, or a ticket (redeemed: one use).
async fn client_principal(
    req: &Request,
    state: &AppState,
    params: &[(String, String)],
) -> Result<Principal, Response> {
    if let Some((_, ticket)) = params.iter().find(|(k, _)| k == "ticket") {
        return match tickets::redeem(&state.redis, ticket).await {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(refuse(
                StatusCode::UNAUTHORIZED,
                "AUTH_FAILED",
                "unknown, used or expired ticket",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "ticket check failed");
                Err(refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "REDIS_UNAVAILABLE",
                    "try again",
                ))
            }
        };
    }
    let key = match check_header(req.headers().get("x-api-key").map(|v| v.as_bytes())) {
        Ok(k) => k,
        Err(crate::auth::HeaderProblem::Missing) => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "MISSING_API_KEY",
                "X-Api-Key header or ?ticket= required",
            ))
        }
        Err(crate::auth::HeaderProblem::Invalid) => {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                "INVALID_API_KEY",
                "invalid X-Api-Key header value",
            ))
        }
    };
    match state.auth.authenticate(&state.db, key).await {
        Ok(Some(p)) => {
            state.key_usage.record(p.key_id);
            Ok(p)
        }
        Ok(None) => Err(refuse(
            StatusCode::UNAUTHORIZED,
            "AUTH_FAILED",
            "unknown or revoked API key",
        )),
        Err(e) => {
            tracing::error!(error = %e, "client key check failed");
            Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "DB_UNAVAILABLE",
                "the database is unavailable",
            ))
        }
    }
}

/// A new client: refused while the pod drains, else its query parameters
/// and who it is.
async fn admit(
    req: &Request,
    state: &AppState,
) -> Result<(Vec<(String, String)>, Principal), Response> {
    if state.lifecycle.is_draining() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "DRAINING",
            "this replica is shutting down; connect again",
        ));
    }
    let params = query_params(req);
    let principal = client_principal(req, state, &params).await?;
    Ok((params, principal))
}

/// The event WebSocket.
#[handler]
pub async fn events_ws(req: &Request, ws: WebSocket, Data(state): Data<&AppState>) -> Response {
    let (_, principal) = match admit(req, state).await {
        Ok(admitted) => admitted,
        Err(resp) => return resp,
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        // Bounded: a client that stops reading blocks the writer, its queue
        // overflows and it is cut off, instead of memory growing.
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(64 * 1024))
        .max_frame_size(Some(64 * 1024));
    let state = state.clone();
    ws.config(config)
        .on_upgrade(move |socket| clients::serve_ws(socket, state, principal))
        .into_response()
}

/// Server-Sent Events: `?topic=` (repeatable) chooses what to follow.
#[handler]
pub async fn events_sse(req: &Request, Data(state): Data<&AppState>) -> Response {
    let (params, principal) = match admit(req, state).await {
        Ok(admitted) => admitted,
        Err(resp) => return resp,
    };
    // Where an earlier stream of this client stopped (an `EventSource`
    // reconnecting sends it on its own): each task topic resumes after it.
    let resume = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(clients::Positions::decode);
    let mut client = Client::new(state, &principal, true);
    let mut confirmed = Vec::new();
    for (_, topic) in params.iter().filter(|(k, _)| k == "topic") {
        let since = match (&resume, topic.parse::<Topic>()) {
            (Some(at), Ok(Topic::Task(task))) => at.get(task).map(|p| p as u64),
            _ => None,
        };
        match client.subscribe(topic, since).await {
            Ok(t) => confirmed.push(t),
            Err(r) => {
                let status = match r.code {
                    "FORBIDDEN" => StatusCode::FORBIDDEN,
                    "BAD_TOPIC" => StatusCode::BAD_REQUEST,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                };
                return refuse(status, r.code, &r.message);
            }
        }
    }
    let keep_alive = clients::keep_alive(state);
    SSE::new(clients::sse_stream(client, confirmed, state.clone()))
        .keep_alive(keep_alive)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn percent_decoding() {
        assert_eq!(decode("task%3Aabc").as_deref(), Some("task:abc"));
        assert_eq!(decode("a+b").as_deref(), Some("a b"));
        assert_eq!(decode("%zz"), None);
        assert_eq!(decode("%4"), None);
        assert_eq!(decode("caf%C3%A9").as_deref(), Some("café"));
    }
}
