//! Proof that the pod's Redis subscriptions really deliver. A pod whose
//! subscriber connection silently died (killed, or dropped by Redis for
//! exceeding `client-output-buffer-limit pubsub`) would otherwise stay ready
//! while receiving nothing. Every `ping_interval` the pod publishes a ping
//! on its own command channel and on its event hub's channel; `/readyz` is
//! green only while both came back recently.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::Duration,
};

use fred::prelude::*;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{now_ms, Redis};
use crate::metrics::Metrics;

/// When each subscription last delivered a self-ping (ms since the epoch).
#[derive(Default)]
pub struct Liveness {
    commands: AtomicI64,
    events: AtomicI64,
}

/// Which subscription a ping came back on.
#[derive(Debug, Clone, Copy)]
pub enum Channel {
    Commands,
    Events,
}

impl Liveness {
    pub fn seen(&self, channel: Channel) {
        let slot = match channel {
            Channel::Commands => &self.commands,
            Channel::Events => &self.events,
        };
        slot.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether both subscriptions delivered within `within`; otherwise which
    /// did not.
    pub fn check(&self, within: Duration) -> Result<(), &'static str> {
        let limit = now_ms() - within.as_millis() as i64;
        if self.commands.load(Ordering::Relaxed) < limit {
            return Err("command subscription is not delivering");
        }
        if self.events.load(Ordering::Relaxed) < limit {
            return Err("event subscription is not delivering");
        }
        Ok(())
    }
}

/// Publishes the self-pings until `stop`.
pub async fn ping(
    redis: std::sync::Arc<Redis>,
    metrics: std::sync::Arc<Metrics>,
    pod_id: String,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let command_channel = redis.keys.pod_channel(&pod_id);
    let event_channel = redis.keys.pod_events(&pod_id);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let message = format!("P|{}", now_ms());
        for channel in [&command_channel, &event_channel] {
            if let Err(e) = redis
                .client
                .publish::<i64, _, _>(channel.as_str(), message.as_str())
                .await
            {
                Metrics::inc(&metrics.redis_errors);
                tracing::warn!(error = %e, "self-ping not published");
            }
        }
    }
}
