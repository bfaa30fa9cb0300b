//! Web clients: who may follow which topic, and the client sessions over
//! WebSocket ([`ws`]) and SSE ([`sse`]). Events reach a client through the
//! pod's [`Hub`] (reference-counted Redis subscriptions, bounded per-client
//! queue); [`stream`] puts each task topic's output in order, exactly once,
//! replaying stored lines from PostgreSQL where the live ones cannot be
//! relied on (PROTOCOL.md §2.1).
//!
//! [`Hub`]: crate::cluster::hub::Hub

mod pace;
mod sse;
mod stream;
mod ws;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::stream::{InFlight, Outgoing, Phase, Retry, TopicState};
pub use self::{
    pace::ReplayBudget,
    sse::{keep_alive, sse_event, sse_stream, Positions},
    ws::serve_ws,
};
use crate::{
    auth::Principal,
    cluster::hub::{ClientSlot, Delivery, GapSignal, TopicLink},
    db::{self, tasks::TaskRef},
    metrics::Metrics,
    protocol::client::{ClientEvent, Topic},
    state::AppState,
};

/// Close code for a client cut off because it did not keep up.
pub const CLOSE_TOO_SLOW: u16 = 4008;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Why a subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

/// One web client: its subscriptions, where it stands in each task topic,
/// and what is waiting to be written to it. Leaves the hub on drop.
pub struct Client {
    state: AppState,
    slot: ClientSlot,
    rx: mpsc::Receiver<Delivery>,
    /// topic (canonical) → its state
    topics: HashMap<String, TopicState>,
    /// Task topics with stored lines to read, oldest request first.
    replays: VecDeque<String>,
    /// The replay step being read from PostgreSQL, if any.
    step: Option<InFlight>,
    /// Set while a failed read waits to be tried again.
    retry: Retry,
    /// Frames ready to be written, in order.
    outbox: VecDeque<Outgoing>,
    /// Whether frames carry an SSE event id (the stream's positions).
    sse_ids: bool,
}

impl Client {
    /// A client of `principal`. SSE clients (`sse_ids`) get an event id
    /// with each frame.
    pub fn new(state: &AppState, principal: &Principal, sse_ids: bool) -> Self {
        let (tx, rx) = mpsc::channel(state.config.client_queue);
        let slot = ClientSlot {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            owner_id: principal.owner_id,
            tx,
            overflow: CancellationToken::new(),
            gap: Arc::new(GapSignal::default()),
        };
        Self {
            state: state.clone(),
            slot,
            rx,
            topics: HashMap::new(),
            replays: VecDeque::new(),
            step: None,
            retry: Retry::default(),
            outbox: VecDeque::new(),
            sse_ids,
        }
    }

    /// Fires when the client fell too far behind.
    pub fn overflow(&self) -> CancellationToken {
        self.slot.overflow.clone()
    }

    /// Subscribes to `topic` if the owner may follow it, and returns the
    /// topic in canonical form. For a task topic, `since` asks for the
    /// task's current state and its stored lines after that output id
    /// before the live ones; without it the topic is live from now on.
    /// Subscribing again to a task topic with `since` replays from there.
    pub async fn subscribe(&mut self, topic: &str, since: Option<u64>) -> Result<String, Refusal> {
        let parsed: Topic = topic.parse().map_err(|_| bad_topic())?;
        let canonical = parsed.to_string();
        let task = match parsed {
            Topic::Owner => None,
            Topic::Task(id) => {
                Some(Self::owned_task(&self.state.db, self.slot.owner_id, id).await?)
            }
        };
        if self.topics.contains_key(&canonical) {
            if let (Some(task), Some(since)) = (&task, since) {
                self.restart_from(&canonical, task, since);
            }
            return Ok(canonical);
        }
        let keys = &self.state.redis.keys;
        let (channel, start, phase) = match (&task, since) {
            (None, _) => (keys.owner_events(self.slot.owner_id), 0, Phase::Live),
            (Some(t), Some(since)) => (keys.task_events(t.id), position(since), Phase::Replaying),
            // Live from the latest stored line: what follows it is read
            // once more after joining, so nothing falls in between.
            (Some(t), None) => {
                let latest = db::outputs::latest_id(&self.state.db, t.id)
                    .await
                    .map_err(|e| unavailable("the database", e))?;
                (keys.task_events(t.id), latest, Phase::CatchingUp)
            }
        };
        // Live first, then what is stored: a line stored meanwhile is in both
        // and its id tells.
        let link = TopicLink::new(&canonical, phase == Phase::Replaying);
        self.state
            .hub
            .join(&channel, self.slot.clone(), link.clone())
            .await
            .map_err(|e| unavailable("events", e))?;
        self.topics.insert(
            canonical.clone(),
            TopicState::new(channel, link, task.as_ref().map(|t| t.id), start, phase),
        );
        if let Some(task) = &task {
            if since.is_some() {
                Metrics::inc(&self.state.metrics.client_replays);
                self.emit(&snapshot(task));
            }
            self.replays.push_back(canonical.clone());
        }
        Ok(canonical)
    }

    /// Stops following `topic`. Returns the canonical topic.
    pub fn unsubscribe(&mut self, topic: &str) -> Result<String, Refusal> {
        let canonical = topic.parse::<Topic>().map_err(|_| bad_topic())?.to_string();
        if let Some(ts) = self.topics.remove(&canonical) {
            self.state.hub.leave(&ts.channel, self.slot.id);
            self.replays.retain(|t| *t != canonical);
        }
        Ok(canonical)
    }

    /// A task of the client's owner (a free function of the pool: the
    /// client itself is not `Sync`, its replay read is not).
    async fn owned_task(db: &sqlx::PgPool, owner: Uuid, id: Uuid) -> Result<TaskRef, Refusal> {
        match db::tasks::of_owner(db, owner, id).await {
            Ok(Some(task)) => Ok(task),
            Ok(None) => Err(Refusal {
                code: "FORBIDDEN",
                message: format!("no task {id} of yours"),
            }),
            Err(e) => Err(unavailable("the database", e)),
        }
    }

    /// Replays an already followed task topic again from `since`.
    fn restart_from(&mut self, topic: &str, task: &TaskRef, since: u64) {
        let Some(ts) = self.topics.get_mut(topic) else {
            return;
        };
        ts.last_id = position(since);
        ts.snapshot_due = false;
        Metrics::inc(&self.state.metrics.client_replays);
        self.emit(&snapshot(task));
        self.begin_replay(topic, None);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        for ts in self.topics.values() {
            self.state.hub.leave(&ts.channel, self.slot.id);
        }
    }
}

/// An output id as a position (ids are `bigserial`: never above `i64::MAX`).
fn position(since: u64) -> i64 {
    i64::try_from(since).unwrap_or(i64::MAX)
}

/// The task's current state, as the first event of a replay.
fn snapshot(task: &TaskRef) -> ClientEvent {
    ClientEvent::TaskUpdated {
        task_id: task.id,
        version: task.version,
        status: task.status.clone(),
        updated_fields: Vec::new(),
        updated_by: "server".into(),
    }
}

fn bad_topic() -> Refusal {
    Refusal {
        code: "BAD_TOPIC",
        message: "topic must be `owner` or `task:<uuid>`".into(),
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Refusal {
    tracing::warn!(error = %e, "subscription failed: {what} is unavailable");
    Refusal {
        code: "UNAVAILABLE",
        message: format!("{what} is unavailable right now; try again"),
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
