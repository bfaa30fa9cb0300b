//! Pub/sub that works the same on one Redis server and on Redis Cluster.
//!
//! On a cluster, plain `PUBLISH` is copied to every node over the cluster
//! bus, so it does not scale with shards; meshgate then uses sharded pub/sub
//! (`SPUBLISH`/`SSUBSCRIBE`), where a message only travels within the shard
//! owning the channel's slot.
//!
//! Sharded subscriptions have one more way to die: when a slot changes hands
//! (failover, resharding) the server ends them with a `sunsubscribe` that
//! fred logs and drops. Two things bring them back: every cluster topology
//! change fred notices makes the pod subscribe again to everything
//! ([`watch_topology`]), and the self-pings of [`super::liveness`], one per
//! bucket and so spread over every primary, resubscribe a subscription that
//! stopped delivering.

use std::sync::{atomic::Ordering, Arc};

use fred::{
    clients::{Pipeline, SubscriberClient},
    prelude::*,
    types::Value,
};
use tokio::{
    sync::broadcast::error::RecvError,
    task::JoinHandle,
    time::{Duration, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;

use super::{hub::Hub, Redis};
use crate::metrics::Metrics;

impl Redis {
    /// The publish command scripts call (`PUBLISH` or `SPUBLISH`).
    pub fn publish_command(&self) -> &'static str {
        publish_command(self.sharded)
    }

    /// Publishes `message`; returns how many subscribers received it.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<i64, Error> {
        if self.sharded {
            self.client.spublish(channel, message).await
        } else {
            self.client.publish(channel, message).await
        }
    }

    /// Queues a publish on a pipeline.
    pub async fn publish_in(
        &self,
        pipeline: &Pipeline<Client>,
        channel: String,
        message: String,
    ) -> Result<(), Error> {
        if self.sharded {
            pipeline.spublish(channel, message).await
        } else {
            pipeline.publish(channel, message).await
        }
    }

    /// Subscribes `subscriber` to one channel (tracked, so fred resubscribes
    /// it after a reconnect).
    pub async fn subscribe(
        &self,
        subscriber: &SubscriberClient,
        channel: &str,
    ) -> Result<(), Error> {
        if self.sharded {
            subscriber.ssubscribe(channel).await
        } else {
            subscriber.subscribe(channel).await
        }
    }

    /// Unsubscribes `subscriber` from one channel.
    pub async fn unsubscribe(
        &self,
        subscriber: &SubscriberClient,
        channel: &str,
    ) -> Result<(), Error> {
        if self.sharded {
            subscriber.sunsubscribe(channel).await
        } else {
            subscriber.unsubscribe(channel).await
        }
    }

    /// Subscribes `subscriber` again to every channel it tracks. (fred's
    /// own `resubscribe_all` sends an empty `SUBSCRIBE` when only shard
    /// channels are tracked, which Redis refuses, and then stops.)
    /// On a cluster every slot's group is tried even when one fails (its
    /// node may be the one failing over); the first error is returned.
    pub async fn resubscribe(&self, subscriber: &SubscriberClient) -> Result<(), Error> {
        if self.sharded {
            let channels = subscriber.tracked_shard_channels();
            let by_slot = fred::util::group_by_hash_slot(channels.into_iter().map(Key::from))?;
            let mut failed = None;
            for (_, channels) in by_slot {
                if let Err(e) = subscriber.ssubscribe(Vec::from(channels)).await {
                    failed.get_or_insert(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        } else {
            let channels: Vec<_> = subscriber.tracked_channels().into_iter().collect();
            if !channels.is_empty() {
                subscriber.subscribe(channels).await?;
            }
        }
        self.resubscribed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// `PUBLISH`, or `SPUBLISH` when pub/sub is sharded (Redis Cluster).
pub fn publish_command(sharded: bool) -> &'static str {
    if sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// Which subscriber connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The pod's command channels and the task routes channel.
    Commands,
    /// The event hub's channels (web clients, self-pings).
    Events,
}

/// The one owner of resubscription: after a subscriber reconnects
/// ([`Subscriptions::renew_on_reconnect`]), after a cluster topology change
/// ([`watch_topology`]) and when a self-ping stops coming back
/// ([`super::liveness`]), everything goes through here, so each renewal is
/// counted and logged once and bumps [`Redis::resubscribed`] (what was
/// learnt from the channels before may be stale).
pub struct Subscriptions {
    redis: Arc<Redis>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl Subscriptions {
    pub fn new(redis: Arc<Redis>, hub: Arc<Hub>, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            redis,
            hub,
            metrics,
        })
    }

    /// Subscribes one connection again to everything it tracks.
    pub async fn renew(&self, which: Which, why: &str) -> crate::Result<()> {
        self.metrics
            .pubsub_resubscribes
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(subscriber = ?which, reason = why, "subscribing again to every channel");
        let renewed = match which {
            Which::Commands => self
                .redis
                .resubscribe(&self.redis.subscriber)
                .await
                .map_err(crate::Error::from),
            // Serialised with the hub's own (un)subscribes. Events published
            // while the subscription was down are gone from Redis: once it
            // is back, the hub's clients fill the gap from PostgreSQL.
            Which::Events => self
                .hub
                .resubscribe()
                .await
                .inspect(|()| self.hub.interrupted()),
        };
        if let Err(e) = &renewed {
            tracing::warn!(subscriber = ?which, error = %e, "resubscribe failed; will retry");
        }
        renewed
    }

    /// Both connections; whether everything was subscribed.
    pub async fn renew_everything(&self, why: &str) -> bool {
        let commands = self.renew(Which::Commands, why).await;
        let events = self.renew(Which::Events, why).await;
        commands.is_ok() && events.is_ok()
    }

    /// Renews each subscriber after each of its reconnections, until
    /// `stop` (in place of fred's `manage_subscriptions`, see
    /// [`Redis::resubscribe`]).
    pub fn renew_on_reconnect(self: &Arc<Self>, stop: CancellationToken) -> Vec<JoinHandle<()>> {
        [
            (Which::Commands, &self.redis.subscriber),
            (Which::Events, &self.redis.events),
        ]
        .into_iter()
        .map(|(which, subscriber)| {
            let mut reconnects = subscriber.reconnect_rx();
            let this = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        event = reconnects.recv() => event,
                    };
                    match event {
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    }
                    // A failure is retried by the self-ping's repair.
                    let _ = this.renew(which, "the subscriber reconnected").await;
                }
            })
        })
        .collect()
    }
}

/// On a cluster, whenever the slot map changes, brings both subscriber
/// clients up to date and subscribes again to everything, until `stop`.
/// A change is noticed two ways: the command client hits a `MOVED` (after a
/// failover or resharding; the self-pings touch every bucket each round, so
/// this is quick), or the slot map polled every `poll` differs from the last
/// one (a slot that moved holding only some event channel this pod listens
/// to, and that this pod never publishes to, would otherwise go unnoticed).
///
/// The subscribers would not notice on their own: after a failover the
/// demoted primary keeps serving their subscriptions as a replica (so
/// messages still arrive, but `SPUBLISH` on the new primary counts no
/// receivers and a routed command would look undeliverable), and after a
/// slot moves away they are dropped with a `sunsubscribe` fred ignores.
pub fn watch_topology(
    redis: Arc<Redis>,
    subscriptions: Arc<Subscriptions>,
    poll: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if !redis.sharded {
            return;
        }
        let mut changes = redis.client.cluster_change_rx();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_map: Option<Value> = None;
        let mut retry = false;
        loop {
            let why = tokio::select! {
                _ = stop.cancelled() => return,
                r = changes.recv() => match r {
                    Err(RecvError::Closed) => return,
                    _ => "a command was redirected (MOVED)",
                },
                _ = tick.tick() => {
                    let Ok(map) = redis.client.cluster_slots::<Value>().await else {
                        continue;
                    };
                    let known = last_map.replace(map.clone());
                    if retry {
                        "retrying a resubscribe that failed"
                    } else if known.is_none() || known == Some(map) {
                        continue;
                    } else {
                        "the slot map changed"
                    }
                }
            };
            // One failover makes many commands bounce: handle them once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while changes.try_recv().is_ok() {}
            for (name, subscriber) in [("commands", &redis.subscriber), ("events", &redis.events)] {
                // Drops connections to demoted nodes (their subscriptions
                // with them) and connects to the new primaries.
                if let Err(e) = subscriber.sync_cluster().await {
                    tracing::warn!(subscriber = name, error = %e, "cluster sync failed");
                }
            }
            retry = !subscriptions.renew_everything(why).await;
        }
    })
}
