//! Proof that the pod's Redis subscriptions really deliver. A pod whose
//! subscriber connection silently died (killed, dropped by Redis for
//! exceeding `client-output-buffer-limit pubsub`, or — on a cluster — ended
//! by a `sunsubscribe` when a slot changed hands) would otherwise stay ready
//! while receiving nothing. Every `ping_interval` the pod publishes a ping
//! on each of its command channels and event-hub ping channels (one per
//! registry bucket, so on a cluster every primary is covered); `/readyz` is
//! green only while all came back recently, and a channel silent for three
//! intervals is subscribed again (through [`Subscriptions`]).

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::future::join_all;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{
    now_ms,
    pod_message::PodMessage,
    pubsub::{Subscriptions, Which},
    Redis,
};
use crate::metrics::Metrics;

/// When each bucket's subscriptions last delivered a self-ping (ms since
/// the epoch; 0 until the first one).
pub struct Liveness {
    commands: Vec<AtomicI64>,
    events: Vec<AtomicI64>,
}

/// Which subscription a ping came back on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Commands,
    Events,
}

impl Liveness {
    /// Counted as never seen: readiness waits for the first pings.
    pub fn new(buckets: usize) -> Self {
        let never = || (0..buckets).map(|_| AtomicI64::new(0)).collect();
        Self {
            commands: never(),
            events: never(),
        }
    }

    fn slots(&self, channel: Channel) -> &[AtomicI64] {
        match channel {
            Channel::Commands => &self.commands,
            Channel::Events => &self.events,
        }
    }

    pub fn seen(&self, channel: Channel, bucket: usize) {
        if let Some(slot) = self.slots(channel).get(bucket) {
            slot.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// Buckets of `channel` whose ping did not come back within `within`.
    pub fn silent(&self, channel: Channel, within: Duration) -> Vec<usize> {
        let limit = now_ms() - within.as_millis() as i64;
        self.slots(channel)
            .iter()
            .enumerate()
            .filter(|(_, t)| t.load(Ordering::Relaxed) < limit)
            .map(|(b, _)| b)
            .collect()
    }

    /// Whether every subscription delivered within `within`; otherwise
    /// which did not.
    pub fn check(&self, within: Duration) -> Result<(), &'static str> {
        if !self.silent(Channel::Commands, within).is_empty() {
            return Err("command subscription is not delivering");
        }
        if !self.silent(Channel::Events, within).is_empty() {
            return Err("event subscription is not delivering");
        }
        Ok(())
    }
}

/// Publishes the self-pings until `stop`, and has a subscription whose
/// pings stopped coming back renewed.
pub async fn ping(
    redis: Arc<Redis>,
    subscriptions: Arc<Subscriptions>,
    liveness: Arc<Liveness>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let command_channels = redis.keys.pod_channels(&redis.pod_id);
    let event_channels = redis.keys.pod_event_channels(&redis.pod_id);
    let started = now_ms();
    let mut last_repair = started;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let message = PodMessage::Ping(now_ms()).encode();
        let sent = join_all(
            command_channels
                .iter()
                .chain(&event_channels)
                .map(|channel| redis.publish(channel, &message)),
        )
        .await;
        if let Some(Err(e)) = sent.into_iter().find(Result::is_err) {
            Metrics::inc(&metrics.redis_errors);
            tracing::warn!(error = %e, "self-ping not published");
            continue;
        }
        // Repair at most once per three rounds, and not before the first
        // pings had a chance to come back.
        let patience = every * 3;
        if now_ms() - last_repair < patience.as_millis() as i64 {
            continue;
        }
        let silent_commands = liveness.silent(Channel::Commands, patience);
        let silent_events = liveness.silent(Channel::Events, patience);
        if silent_commands.is_empty() && silent_events.is_empty() {
            continue;
        }
        last_repair = now_ms();
        tracing::warn!(
            command_buckets = ?silent_commands,
            event_buckets = ?silent_events,
            "self-pings are not coming back"
        );
        // Every channel of the connection: the task route announcements
        // travel on the command subscriber and are not self-pinged, and
        // client event channels share the event pings' slots.
        if !silent_commands.is_empty() {
            let _ = subscriptions
                .renew(Which::Commands, "command self-pings are not coming back")
                .await;
        }
        if !silent_events.is_empty() {
            let _ = subscriptions
                .renew(Which::Events, "event self-pings are not coming back")
                .await;
        }
    }
}
