//! The event WebSocket: reads subscribe/unsubscribe requests and writes
//! the client's frames in batches. A client that stops reading blocks the
//! writer; its live queue then overflows and it is closed with
//! [`CLOSE_TOO_SLOW`](super::CLOSE_TOO_SLOW). A replay never overflows it:
//! its pages are read only as fast as they are written.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use poem::web::websocket::{CloseCode, Message, WebSocketStream};

use super::{error_event, to_json, Client, Outgoing, CLOSE_TOO_SLOW};
use crate::{
    auth::Principal,
    protocol::client::{ClientEvent, ClientRequest},
    state::AppState,
};

/// Close reason of [`CLOSE_TOO_SLOW`].
const TOO_SLOW: &str = "too slow: events were dropped; reconnect and re-read";
/// How long the close frame may wait behind a slow client's buffered data.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Frames written before one flush.
const WRITE_BATCH: usize = 64;

/// Serves a client WebSocket until it closes, falls behind, or the pod
/// drains (close 1012: reconnect through the load balancer).
pub async fn serve_ws(ws: WebSocketStream, state: AppState, principal: Principal) {
    let (mut sink, mut stream) = ws.split();
    let mut client = Client::new(&state, &principal, false);
    let overflow = client.overflow();
    let life = state.lifecycle.clone();
    let too_slow = || Some((CloseCode::from(CLOSE_TOO_SLOW), TOO_SLOW));
    let goodbye = loop {
        tokio::select! {
            biased;
            _ = life.kill.cancelled() => return,
            _ = overflow.cancelled() => break too_slow(),
            _ = life.drain.cancelled() => break Some((CloseCode::Restart, "server draining; reconnect")),
            first = client.next() => {
                // A client that stops reading blocks this write; its queue
                // then overflows, which must still end it.
                tokio::select! {
                    written = write_frames(&mut sink, first, &mut client) => if written.is_err() { break None },
                    _ = overflow.cancelled() => break too_slow(),
                }
            }
            frame = stream.next() => {
                let reply = match frame {
                    Some(Ok(Message::Text(text))) => handle_request(&mut client, &text).await,
                    Some(Ok(Message::Binary(_))) => error_event("PARSE_ERROR", "frames must be JSON text".into()),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => continue,
                };
                if sink.send(Message::Text(to_json(&reply))).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = goodbye {
        // Behind whatever is still buffered for a slow client; bounded so a
        // client that never reads again cannot hold the socket open.
        let close = sink.send(Message::Close(Some((code, reason.into()))));
        let _ = tokio::time::timeout(CLOSE_WAIT, close).await;
    }
}

async fn handle_request(client: &mut Client, text: &str) -> ClientEvent {
    let request: ClientRequest = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(_) => return error_event(
            "PARSE_ERROR",
            "expected {\"type\":\"subscribe\"|\"unsubscribe\",\"topic\":…,\"since\"?:<outputId>}"
                .into(),
        ),
    };
    let outcome = match request {
        ClientRequest::Subscribe { topic, since } => client
            .subscribe(&topic, since)
            .await
            .map(|topic| ClientEvent::Subscribed { topic }),
        ClientRequest::Unsubscribe { topic } => client
            .unsubscribe(&topic)
            .map(|topic| ClientEvent::Unsubscribed { topic }),
    };
    outcome.unwrap_or_else(|r| error_event(r.code, r.message))
}

/// Writes `first` and what else is ready (up to a batch), then flushes.
async fn write_frames<S>(sink: &mut S, first: Outgoing, client: &mut Client) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    sink.feed(Message::Text(first.json.to_string()))
        .await
        .map_err(|_| ())?;
    for _ in 1..WRITE_BATCH {
        let Some(next) = client.try_next() else { break };
        sink.feed(Message::Text(next.json.to_string()))
            .await
            .map_err(|_| ())?;
    }
    sink.flush().await.map_err(|_| ())
}
