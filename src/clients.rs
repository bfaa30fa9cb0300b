//! Web clients: who may follow which topic, and the client sessions over
//! WebSocket and SSE. Events reach a client through the pod's [`Hub`]
//! (reference-counted Redis subscriptions, bounded per-client queue).
//!
//! [`Hub`]: crate::cluster::hub::Hub

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use poem::web::{
    sse::Event,
    websocket::{CloseCode, Message, WebSocketStream},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::Principal,
    cluster::hub::ClientSlot,
    db,
    protocol::client::{ClientEvent, ClientRequest, Topic},
    state::AppState,
};

/// Close code for a client cut off because it did not keep up.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close reason of [`CLOSE_TOO_SLOW`].
const TOO_SLOW: &str = "too slow: events were dropped; reconnect and re-read";
/// How long the close frame may wait behind a slow client's buffered data.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Events written before one flush.
const WRITE_BATCH: usize = 64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// One web client's subscriptions; leaving the hub on drop.
pub struct Client {
    state: AppState,
    slot: ClientSlot,
    /// topic (canonical) → Redis channel
    topics: HashMap<String, String>,
}

impl Client {
    /// A client of `principal` and the receiving end of its queue.
    pub fn new(state: &AppState, principal: &Principal) -> (Self, mpsc::Receiver<Arc<str>>) {
        let (tx, rx) = mpsc::channel(state.config.client_queue);
        let slot = ClientSlot {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            owner_id: principal.owner_id,
            tx,
            overflow: CancellationToken::new(),
        };
        let client = Self {
            state: state.clone(),
            slot,
            topics: HashMap::new(),
        };
        (client, rx)
    }

    /// Fires when the client fell too far behind.
    pub fn overflow(&self) -> CancellationToken {
        self.slot.overflow.clone()
    }

    /// Subscribes to `topic` if the owner may follow it. Returns the topic
    /// in canonical form.
    pub async fn subscribe(&mut self, topic: &str) -> Result<String, Refusal> {
        let channel_topic = self.resolve(topic).await?;
        let (canonical, channel) = channel_topic;
        if self.topics.contains_key(&canonical) {
            return Ok(canonical);
        }
        self.state
            .hub
            .join(&channel, self.slot.clone())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "subscription failed");
                Refusal {
                    code: "UNAVAILABLE",
                    message: "events are unavailable right now; try again".into(),
                }
            })?;
        self.topics.insert(canonical.clone(), channel);
        Ok(canonical)
    }

    /// Stops following `topic`. Returns the canonical topic.
    pub fn unsubscribe(&mut self, topic: &str) -> Result<String, Refusal> {
        let canonical = topic.parse::<Topic>().map_err(|_| bad_topic())?.to_string();
        if let Some(channel) = self.topics.remove(&canonical) {
            self.state.hub.leave(&channel, self.slot.id);
        }
        Ok(canonical)
    }

    async fn resolve(&self, topic: &str) -> Result<(String, String), Refusal> {
        let parsed: Topic = topic.parse().map_err(|_| bad_topic())?;
        let keys = &self.state.redis.keys;
        let owner = self.slot.owner_id;
        match parsed {
            Topic::Owner => Ok((parsed.to_string(), keys.owner_events(owner))),
            Topic::Task(id) => match db::tasks::of_owner(&self.state.db, owner, id).await {
                Ok(Some(_)) => Ok((parsed.to_string(), keys.task_events(id))),
                Ok(None) => Err(Refusal {
                    code: "FORBIDDEN",
                    message: format!("no task {id} of yours"),
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "topic check failed");
                    Err(Refusal {
                        code: "UNAVAILABLE",
                        message: "the database is unavailable; try again".into(),
                    })
                }
            },
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for channel in self.topics.values() {
            self.state.hub.leave(channel, self.slot.id);
        }
    }
}

fn bad_topic() -> Refusal {
    Refusal {
        code: "BAD_TOPIC",
        message: "topic must be `owner` or `task:<uuid>`".into(),
    }
}

fn to_json(event: &ClientEvent) -> String {
    serde_json::to_string(event).unwrap_or_else(|_| "{}".into())
}

fn error_event(code: &str, message: String) -> ClientEvent {
    ClientEvent::Error {
        code: code.to_owned(),
        message,
    }
}

/// Serves a client WebSocket until it closes, falls behind, or the pod
/// drains (close 1012: reconnect through the load balancer).
pub async fn serve_ws(ws: WebSocketStream, state: AppState, principal: Principal) {
    let (mut sink, mut stream) = ws.split();
    let (mut client, mut rx) = Client::new(&state, &principal);
    let overflow = client.overflow();
    let life = state.lifecycle.clone();
    let goodbye = loop {
        tokio::select! {
            biased;
            _ = life.kill.cancelled() => return,
            _ = overflow.cancelled() => break Some((CloseCode::from(CLOSE_TOO_SLOW), TOO_SLOW)),
            _ = life.drain.cancelled() => break Some((CloseCode::Restart, "server draining; reconnect")),
            Some(first) = rx.recv() => {
                // A client that stops reading blocks this write; its queue
                // then overflows, which must still end it.
                tokio::select! {
                    written = write_events(&mut sink, first, &mut rx) => if written.is_err() { break None },
                    _ = overflow.cancelled() => break Some((CloseCode::from(CLOSE_TOO_SLOW), TOO_SLOW)),
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
        Err(_) => {
            return error_event(
                "PARSE_ERROR",
                "expected {\"type\":\"subscribe\"|\"unsubscribe\",\"topic\":…}".into(),
            )
        }
    };
    let outcome = match request {
        ClientRequest::Subscribe { topic } => client
            .subscribe(&topic)
            .await
            .map(|topic| ClientEvent::Subscribed { topic }),
        ClientRequest::Unsubscribe { topic } => client
            .unsubscribe(&topic)
            .map(|topic| ClientEvent::Unsubscribed { topic }),
    };
    outcome.unwrap_or_else(|r| error_event(r.code, r.message))
}

async fn write_events<S>(
    sink: &mut S,
    first: Arc<str>,
    rx: &mut mpsc::Receiver<Arc<str>>,
) -> Result<(), ()>
where
    S: SinkExt<Message> + Unpin,
{
    sink.feed(Message::Text(first.to_string()))
        .await
        .map_err(|_| ())?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(next) => sink
                .feed(Message::Text(next.to_string()))
                .await
                .map_err(|_| ())?,
            Err(_) => break,
        }
    }
    sink.flush().await.map_err(|_| ())
}

/// An SSE event named after the event's `type`.
pub fn sse_event(json: &str) -> Event {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, rename = "type")]
        kind: std::borrow::Cow<'a, str>,
    }
    let kind = serde_json::from_str::<Kind>(json)
        .map(|k| k.kind.into_owned())
        .unwrap_or_else(|_| "message".into());
    Event::message(json).event_type(kind)
}

/// The SSE stream of an already-subscribed client: its confirmations, then
/// events until it falls behind or the pod drains.
pub fn sse_stream(
    client: Client,
    rx: mpsc::Receiver<Arc<str>>,
    confirmations: Vec<String>,
    state: AppState,
) -> impl futures_util::Stream<Item = Event> + Send + 'static {
    let overflow = client.overflow();
    let first = futures_util::stream::iter(
        confirmations
            .into_iter()
            .map(|topic| sse_event(&to_json(&ClientEvent::Subscribed { topic }))),
    );
    let drain = state.lifecycle.drain.clone();
    let events = futures_util::stream::unfold(
        (client, rx, overflow, drain, false),
        |(client, mut rx, overflow, drain, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                _ = overflow.cancelled() => {
                    let e = error_event("TOO_SLOW", "events were dropped; reconnect and re-read".into());
                    Some((sse_event(&to_json(&e)), (client, rx, overflow, drain, true)))
                }
                _ = drain.cancelled() => None,
                next = rx.recv() => next.map(|json| (sse_event(&json), (client, rx, overflow, drain, false))),
            }
        },
    );
    first.chain(events)
}

/// Default SSE keep-alive.
pub fn keep_alive(state: &AppState) -> Duration {
    Duration::from_millis(state.config.sse_keepalive_ms.max(100))
}
