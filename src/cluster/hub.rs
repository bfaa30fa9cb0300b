//! Event fan-out to this pod's web clients.
//!
//! A pod subscribes in Redis only to the event channels its own clients
//! need, reference-counted: the first client of a channel subscribes, the
//! last one leaving unsubscribes — so adding replicas does not copy every
//! event onto every pod. Events arrive on a dedicated subscriber connection
//! (commands never queue behind events) and are handed to each client's
//! bounded queue without waiting: a client whose queue is full is cut off
//! (its `overflow` token fires and it is closed with a reason), so a slow
//! client never slows Redis, the daemons or other clients.
//!
//! Nothing here is the last word on what a client saw: each delivery says
//! which of the client's topics it is for and, for a stored output line,
//! its id, so the client's session (`crate::clients`) can skip a copy it
//! already sent and hold live lines back while it replays stored ones. When
//! the hub's own subscription was interrupted (Redis lagged, the subscriber
//! reconnected or was resubscribed), every client is told
//! ([`Hub::interrupted`]) and fills its task topics from PostgreSQL.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use fred::{clients::SubscriberClient, prelude::*};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{
    sync::{broadcast::error::RecvError, mpsc, Notify},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    liveness::{Channel, Liveness},
    Redis,
};
use crate::{metrics::Metrics, Result};

/// One web client's receiving end, as the hub sees it.
#[derive(Clone)]
pub struct ClientSlot {
    pub id: u64,
    pub owner_id: Uuid,
    pub tx: mpsc::Sender<Delivery>,
    /// Fired when the client's queue overflowed.
    pub overflow: CancellationToken,
    /// Raised (and the client woken) when events may have been lost.
    pub gap: Arc<GapSignal>,
}

/// "Events may have been lost since you last looked", for one client.
#[derive(Default)]
pub struct GapSignal {
    raised: AtomicBool,
    wake: Notify,
}

impl GapSignal {
    fn raise(&self) {
        self.raised.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Waits until the signal is raised, and lowers it.
    pub async fn wait(&self) {
        loop {
            if self.raised.swap(false, Ordering::SeqCst) {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// One topic of one client, shared between the client and the hub.
pub struct TopicLink {
    /// The topic in canonical form.
    pub topic: Box<str>,
    /// While set, the hub does not queue the topic's stored output lines:
    /// the client is reading them from PostgreSQL instead.
    pub paused: AtomicBool,
}

impl TopicLink {
    pub fn new(topic: &str, paused: bool) -> Arc<Self> {
        Arc::new(Self {
            topic: topic.into(),
            paused: AtomicBool::new(paused),
        })
    }
}

/// One event for one client.
pub struct Delivery {
    pub link: Arc<TopicLink>,
    /// The id of a stored output line (its position in the task's stream).
    pub output_id: Option<i64>,
    pub json: Arc<str>,
}

struct Member {
    slot: ClientSlot,
    link: Arc<TopicLink>,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "ownerId")]
    owner_id: Uuid,
    #[serde(rename = "outputId", default)]
    output_id: Option<i64>,
    #[serde(borrow)]
    event: &'a RawValue,
}

pub struct Hub {
    redis: Arc<Redis>,
    subscriber: SubscriberClient,
    clients: Mutex<HashMap<String, Vec<Member>>>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE so a channel's Redis subscription
    /// always matches whether it has clients.
    changes: tokio::sync::Mutex<()>,
    janitor: mpsc::UnboundedSender<String>,
    metrics: Arc<Metrics>,
    /// This pod's self-ping channels on the hub connection, by bucket.
    ping_channels: HashMap<String, usize>,
    liveness: Arc<Liveness>,
}

impl Hub {
    /// Starts the hub on its own subscriber connection.
    pub fn start(
        redis: Arc<Redis>,
        metrics: Arc<Metrics>,
        pod_id: &str,
        liveness: Arc<Liveness>,
        stop: CancellationToken,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let (janitor, janitor_rx) = mpsc::unbounded_channel();
        let ping_channels = redis
            .keys
            .pod_event_channels(pod_id)
            .into_iter()
            .enumerate()
            .map(|(b, c)| (c, b))
            .collect();
        let hub = Arc::new(Self {
            subscriber: redis.events.clone(),
            redis,
            clients: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            janitor,
            metrics,
            ping_channels,
            liveness,
        });
        let task = tokio::spawn(hub.clone().run(janitor_rx, stop));
        (hub, task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Member>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `slot` to `channel` for its topic `link`, subscribing in Redis
    /// if it is the first.
    pub async fn join(&self, channel: &str, slot: ClientSlot, link: Arc<TopicLink>) -> Result<()> {
        let _serial = self.changes.lock().await;
        let first = !self.lock().contains_key(channel);
        if first {
            self.redis.subscribe(&self.subscriber, channel).await?;
        }
        self.lock()
            .entry(channel.to_owned())
            .or_default()
            .push(Member { slot, link });
        Ok(())
    }

    /// Removes client `id` from `channel`; the last one out unsubscribes
    /// (asynchronously, so this can run in `Drop`).
    pub fn leave(&self, channel: &str, id: u64) {
        let mut map = self.lock();
        if let Some(slots) = map.get_mut(channel) {
            slots.retain(|m| m.slot.id != id);
            if slots.is_empty() {
                map.remove(channel);
                let _ = self.janitor.send(channel.to_owned());
            }
        }
    }

    /// Channels this pod is subscribed to for clients.
    pub fn channels(&self) -> usize {
        self.lock().len()
    }

    /// Connected client slots (a client counts once per channel).
    pub fn slots(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    async fn run(
        self: Arc<Self>,
        mut janitor: mpsc::UnboundedReceiver<String>,
        stop: CancellationToken,
    ) {
        // After a reconnect `pubsub::Subscriptions` subscribes it again,
        // through `resubscribe` (serialised with the janitor).
        let mut rx = self.subscriber.message_rx();
        for channel in self.ping_channels.keys() {
            if let Err(e) = self.redis.subscribe(&self.subscriber, channel).await {
                // Readiness stays red until the self-ping resubscribes it.
                tracing::error!(error = %e, "event hub could not subscribe its ping channel");
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some(channel) = janitor.recv() => self.unsubscribe_if_unused(&channel).await,
                msg = rx.recv() => match msg {
                    Ok(msg) => match self.ping_channels.get(&*msg.channel) {
                        Some(&bucket) => self.liveness.seen(Channel::Events, bucket),
                        None => self.deliver(&msg.channel, &msg.value),
                    },
                    Err(RecvError::Lagged(n)) => {
                        self.metrics.pubsub_messages_lost.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(lost = n, "event hub fell behind Redis; its clients catch up from PostgreSQL");
                        self.interrupted();
                    }
                    Err(RecvError::Closed) => break,
                },
            }
        }
    }

    /// Subscribes the hub's connection again to every channel it tracks,
    /// serialised with the janitor so a channel whose last client just left
    /// is not subscribed again with nobody to receive it.
    pub async fn resubscribe(&self) -> Result<()> {
        let _serial = self.changes.lock().await;
        Ok(self.redis.resubscribe(&self.subscriber).await?)
    }

    /// Tells every client that events may have been lost (the hub lagged,
    /// or its subscriptions were renewed after an interruption): each
    /// fills its task topics from PostgreSQL and is sent `resync` for the
    /// rest. Call it once the subscriptions are back, so that what the
    /// clients read next is followed by live events without a hole.
    pub fn interrupted(&self) {
        let map = self.lock();
        let mut told = HashSet::new();
        for member in map.values().flatten() {
            if told.insert(member.slot.id) {
                member.slot.gap.raise();
            }
        }
    }

    async fn unsubscribe_if_unused(&self, channel: &str) {
        let _serial = self.changes.lock().await;
        if self.lock().contains_key(channel) {
            return;
        }
        if let Err(e) = self.redis.unsubscribe(&self.subscriber, channel).await {
            tracing::warn!(%channel, error = %e, "unsubscribe failed");
        }
    }

    /// Hands one event to every local client of `channel`.
    fn deliver(&self, channel: &str, value: &fred::types::Value) {
        let Some(text) = value.as_str() else { return };
        let Ok(envelope) = serde_json::from_str::<Envelope>(&text) else {
            tracing::warn!(%channel, "malformed event");
            return;
        };
        let event: Arc<str> = envelope.event.get().into();
        let map = self.lock();
        for Member { slot, link } in map.get(channel).into_iter().flatten() {
            // Channels are per owner or per owned task; this is a second lock.
            if slot.owner_id != envelope.owner_id {
                continue;
            }
            if envelope.output_id.is_some() && link.paused.load(Ordering::SeqCst) {
                // Read from PostgreSQL by the replay under way.
                continue;
            }
            let delivery = Delivery {
                link: link.clone(),
                output_id: envelope.output_id,
                json: event.clone(),
            };
            match slot.tx.try_send(delivery) {
                Ok(()) => Metrics::inc(&self.metrics.events_delivered),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !slot.overflow.is_cancelled() {
                        Metrics::inc(&self.metrics.clients_dropped_slow);
                        slot.overflow.cancel();
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}
