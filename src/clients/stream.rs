//! Puts each of a client's task topics in order, exactly once
//! (PROTOCOL.md §2.1). A task topic is in one of three phases:
//!
//! - **Replaying**: stored lines after the client's position are read from
//!   PostgreSQL a page at a time; the hub does not queue the topic's live
//!   lines meanwhile (they are stored, so a later page has them). The next
//!   page is read only once the previous one is written, so a long replay
//!   is paced by the client's socket and holds one page in memory.
//! - **CatchingUp**: live lines are queued again, but held back until one
//!   more read has returned what was stored while the topic was paused;
//!   then what was held follows, each line whose id the client has already
//!   passed skipped.
//! - **Live**: lines go out as they come, a copy at or below the position
//!   skipped.
//!
//! When the hub says its subscription was interrupted, live task topics go
//! back to Replaying from where the client stands, and the `owner` topic
//! (nothing stored to read it from) gets `resync`. A replay whose read
//! fails is tried again after a pause; nothing is skipped meanwhile.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::time::Instant;
use uuid::Uuid;

use super::{to_json, Client};
use crate::{
    cluster::hub::{Delivery, TopicLink},
    db::{self, outputs::StoredOutput, tasks::TaskRef},
    metrics::Metrics,
    protocol::client::ClientEvent,
};

/// Stored lines read per step.
pub(super) const PAGE: i64 = 256;
/// Reads shorter than this are not counted against the pod's replay rate.
const UNPACED_READ: usize = 32;
/// Live events held back per topic while it catches up; beyond it the
/// topic is read again from PostgreSQL (lines) or told `resync` (others).
const HELD_MAX: usize = 1024;
/// Pause before a failed read is tried again, doubling up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Live,
    Replaying,
    CatchingUp,
}

/// One subscribed topic of a client.
pub(super) struct TopicState {
    /// The Redis channel it is joined to in the hub.
    pub channel: String,
    pub link: Arc<TopicLink>,
    /// The task, for a task topic.
    pub task: Option<Uuid>,
    /// The id of the last output line the client was sent (or chose to
    /// start after).
    pub last_id: i64,
    pub phase: Phase,
    /// Whether the task's current state goes out before the next page.
    pub snapshot_due: bool,
    /// Live events held back while catching up.
    held: VecDeque<Delivery>,
    /// Events were dropped from `held`: lines to read again, others lost.
    held_lost_lines: bool,
    held_lost_events: bool,
}

impl TopicState {
    pub fn new(
        channel: String,
        link: Arc<TopicLink>,
        task: Option<Uuid>,
        start: i64,
        phase: Phase,
    ) -> Self {
        Self {
            channel,
            link,
            task,
            last_id: start,
            phase,
            snapshot_due: false,
            held: VecDeque::new(),
            held_lost_lines: false,
            held_lost_events: false,
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.link
            .paused
            .store(phase == Phase::Replaying, Ordering::SeqCst);
    }
}

/// A frame ready to be written.
pub(super) struct Outgoing {
    pub json: Arc<str>,
    /// The SSE event id: where the client stands once it has this frame.
    pub sse_id: Option<String>,
}

type PageResult = crate::Result<(Option<TaskRef>, Vec<StoredOutput>)>;

/// A replay read under way.
pub(super) struct InFlight {
    topic: String,
    /// The position the page was read after.
    after: i64,
    link: Arc<TopicLink>,
    fut: BoxFuture<'static, PageResult>,
}

enum Woke {
    Gap,
    Step(PageResult),
    Retry,
    Delivery(Delivery),
}

/// Backing off after a failed read.
#[derive(Default)]
pub(super) struct Retry {
    at: Option<Instant>,
    pause: Duration,
}

impl Client {
    /// The next frame to write: what is ready first, then the next replay
    /// page (read only when nothing is waiting to be written), then live
    /// events. Cancel-safe: nothing is lost if the future is dropped.
    pub(super) async fn next(&mut self) -> Outgoing {
        loop {
            if let Some(out) = self.outbox.pop_front() {
                return out;
            }
            self.start_step();
            let gap = self.slot.gap.clone();
            let retry_at = self.retry.at;
            let step = self.step.as_mut().map(|s| &mut s.fut);
            let rx = &mut self.rx;
            let woke = tokio::select! {
                biased;
                () = gap.wait() => Woke::Gap,
                done = async move {
                    match step {
                        Some(fut) => fut.await,
                        None => std::future::pending().await,
                    }
                } => Woke::Step(done),
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => Woke::Retry,
                // `None` cannot happen while the client holds its slot
                // (the sender); the branch is then simply disabled.
                Some(d) = rx.recv() => Woke::Delivery(d),
            };
            match woke {
                Woke::Gap => self.on_gap(),
                Woke::Step(done) => {
                    if let Some(step) = self.step.take() {
                        self.finish_step(step, done);
                    }
                }
                Woke::Retry => self.retry.at = None,
                Woke::Delivery(d) => self.accept(d),
            }
        }
    }

    /// A frame that is ready now, without waiting (to batch writes).
    pub(super) fn try_next(&mut self) -> Option<Outgoing> {
        loop {
            if let Some(out) = self.outbox.pop_front() {
                return Some(out);
            }
            match self.rx.try_recv() {
                Ok(d) => self.accept(d),
                Err(_) => return None,
            }
        }
    }

    /// Queues `event` to be written, with the positions after it.
    pub(super) fn emit(&mut self, event: &ClientEvent) {
        let json: Arc<str> = to_json(event).into();
        self.push_out(json);
    }

    fn push_out(&mut self, json: Arc<str>) {
        let sse_id = self.sse_ids.then(|| self.positions().encode());
        self.outbox.push_back(Outgoing { json, sse_id });
    }

    /// Where the client stands in each task topic.
    pub(super) fn positions(&self) -> super::Positions {
        super::Positions::from_iter(
            self.topics
                .values()
                .filter_map(|ts| ts.task.map(|t| (t, ts.last_id))),
        )
    }

    /// Reads `topic`'s stored lines from the client's position on, then
    /// continues live. `repair`: why (a gap being filled), for the log.
    pub(super) fn begin_replay(&mut self, topic: &str, repair: Option<&'static str>) {
        let Some(ts) = self.topics.get_mut(topic) else {
            return;
        };
        if ts.task.is_none() {
            return;
        }
        if let Some(reason) = repair {
            ts.snapshot_due = true;
            Metrics::inc(&self.state.metrics.client_gaps_filled);
            tracing::warn!(
                client = self.slot.id,
                owner = %self.slot.owner_id,
                task = ?ts.task,
                after = ts.last_id,
                reason,
                "filling a web client's task stream from PostgreSQL"
            );
        }
        ts.set_phase(Phase::Replaying);
        if !self.replays.iter().any(|t| t == topic) {
            self.replays.push_back(topic.to_owned());
        }
    }

    /// The hub's subscription was interrupted: events may be missing.
    fn on_gap(&mut self) {
        let topics: Vec<(String, bool, Phase)> = self
            .topics
            .iter()
            .map(|(t, ts)| (t.clone(), ts.task.is_some(), ts.phase))
            .collect();
        for (topic, is_task, phase) in topics {
            if is_task {
                if let Some(ts) = self.topics.get_mut(&topic) {
                    // Status changes lost with the lines: the current state
                    // goes out before the lines that follow.
                    ts.snapshot_due = true;
                }
                if phase == Phase::Replaying && self.replays.contains(&topic) {
                    continue;
                }
                self.begin_replay(&topic, Some("events subscription interrupted"));
            } else {
                Metrics::inc(&self.state.metrics.client_resyncs);
                tracing::warn!(
                    client = self.slot.id,
                    owner = %self.slot.owner_id,
                    topic,
                    "web client told to resync: events of this topic may be lost"
                );
                self.emit(&ClientEvent::Resync { topic });
            }
        }
    }

    /// One live event from the hub.
    fn accept(&mut self, d: Delivery) {
        let Some(ts) = self.topics.get_mut(&*d.link.topic) else {
            return; // unsubscribed since
        };
        if !Arc::ptr_eq(&ts.link, &d.link) {
            return; // for an earlier subscription to the same topic
        }
        match ts.phase {
            Phase::Live => self.send_live(d),
            // Stored, so a page has it (queued before the topic paused).
            Phase::Replaying if d.output_id.is_some() => {}
            Phase::Replaying | Phase::CatchingUp => {
                if ts.held.len() < HELD_MAX {
                    ts.held.push_back(d);
                } else if d.output_id.is_some() {
                    ts.held_lost_lines = true;
                } else {
                    ts.held_lost_events = true;
                }
            }
        }
    }

    /// Sends a live event of a topic in phase Live.
    fn send_live(&mut self, d: Delivery) {
        let Some(ts) = self.topics.get_mut(&*d.link.topic) else {
            return;
        };
        if let Some(id) = d.output_id {
            if id <= ts.last_id {
                return; // already sent from PostgreSQL
            }
            ts.last_id = id;
        }
        self.push_out(d.json);
    }

    /// Starts reading the next page if nothing is waiting to be written,
    /// no read is under way and none is backing off.
    fn start_step(&mut self) {
        if self.step.is_some() || self.retry.at.is_some() || !self.outbox.is_empty() {
            return;
        }
        while let Some(topic) = self.replays.front().cloned() {
            let Some(ts) = self.topics.get(&topic) else {
                self.replays.pop_front();
                continue;
            };
            let (Some(task), after) = (ts.task, ts.last_id) else {
                self.replays.pop_front();
                continue;
            };
            let db = self.state.db.clone();
            let budget = self.state.replay_budget.clone();
            let owner = self.slot.owner_id;
            let snapshot = ts.snapshot_due;
            let fut = Box::pin(async move {
                let current = if snapshot {
                    db::tasks::of_owner(&db, owner, task).await?
                } else {
                    None
                };
                let rows = db::outputs::page(&db, task, after, PAGE).await?;
                // Paced by what was read, so that the short read that ends a
                // catch-up (a subscribe without `since`, the last page) does
                // not queue behind other clients' long replays.
                if rows.len() >= UNPACED_READ {
                    budget.take(rows.len() as u64).await;
                }
                Ok((current, rows))
            });
            self.step = Some(InFlight {
                topic,
                after,
                link: ts.link.clone(),
                fut,
            });
            return;
        }
    }

    fn finish_step(&mut self, step: InFlight, done: PageResult) {
        let InFlight {
            topic, after, link, ..
        } = step;
        let Some(ts) = self.topics.get(&topic) else {
            self.replays.retain(|t| *t != topic);
            return;
        };
        if !Arc::ptr_eq(&ts.link, &link) || ts.last_id != after {
            // Subscribed again, or asked to start elsewhere, meanwhile: the
            // page is for a position the client no longer stands at.
            return;
        }
        let (current, rows) = match done {
            Ok(page) => {
                self.retry = Retry::default();
                page
            }
            Err(e) => {
                let pause = if self.retry.pause.is_zero() {
                    RETRY_FIRST
                } else {
                    (self.retry.pause * 2).min(RETRY_MAX)
                };
                Metrics::inc(&self.state.metrics.db_errors);
                tracing::warn!(
                    client = self.slot.id,
                    topic,
                    error = %e,
                    retry_in_ms = pause.as_millis() as u64,
                    "replay read failed; trying again"
                );
                self.retry = Retry {
                    at: Some(Instant::now() + pause),
                    pause,
                };
                return;
            }
        };
        if let Some(task) = &current {
            if let Some(ts) = self.topics.get_mut(&topic) {
                ts.snapshot_due = false;
            }
            self.emit(&super::snapshot(task));
        }
        let full = rows.len() as i64 == PAGE;
        Metrics::add(&self.state.metrics.client_replay_lines, rows.len() as u64);
        for row in rows {
            let Some(ts) = self.topics.get_mut(&topic) else {
                return;
            };
            if row.id <= ts.last_id {
                continue;
            }
            ts.last_id = row.id;
            let event = ClientEvent::TaskOutput {
                task_id: ts.task.expect("task topic"),
                id: Some(row.id),
                event: row.event,
            };
            self.emit(&event);
        }
        let Some(ts) = self.topics.get_mut(&topic) else {
            return;
        };
        if full {
            // More to read: after this page is written (and after the other
            // topics' turns).
            self.replays.retain(|t| *t != topic);
            self.replays.push_back(topic);
            return;
        }
        match ts.phase {
            Phase::Replaying => {
                // Live lines are queued again from here on; one more read
                // returns those dropped while paused.
                ts.set_phase(Phase::CatchingUp);
            }
            Phase::CatchingUp if ts.held_lost_lines => {
                ts.held_lost_lines = false;
            }
            Phase::CatchingUp | Phase::Live => {
                ts.set_phase(Phase::Live);
                self.replays.retain(|t| *t != topic);
                self.release_held(&topic);
            }
        }
    }

    /// A topic caught up: what was held back goes out, copies skipped.
    fn release_held(&mut self, topic: &str) {
        let Some(ts) = self.topics.get_mut(topic) else {
            return;
        };
        let held = std::mem::take(&mut ts.held);
        let lost_events = std::mem::take(&mut ts.held_lost_events);
        for d in held {
            self.send_live(d);
        }
        if lost_events {
            Metrics::inc(&self.state.metrics.client_resyncs);
            tracing::warn!(
                client = self.slot.id,
                topic,
                "web client told to resync: too many events arrived while its replay ran"
            );
            self.emit(&ClientEvent::Resync {
                topic: topic.to_owned(),
            });
        }
    }
}
