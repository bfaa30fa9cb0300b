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

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc, Mutex},
};

use fred::{clients::SubscriberClient, prelude::*};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::{
    sync::{broadcast::error::RecvError, mpsc},
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
    pub tx: mpsc::Sender<Arc<str>>,
    /// Fired when the client's queue overflowed.
    pub overflow: CancellationToken,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "ownerId")]
    owner_id: Uuid,
    #[serde(borrow)]
    event: &'a RawValue,
}

pub struct Hub {
    redis: Arc<Redis>,
    subscriber: SubscriberClient,
    clients: Mutex<HashMap<String, Vec<ClientSlot>>>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<ClientSlot>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `slot` to `channel`, subscribing in Redis if it is the first.
    pub async fn join(&self, channel: &str, slot: ClientSlot) -> Result<()> {
        let _serial = self.changes.lock().await;
        let first = !self.lock().contains_key(channel);
        if first {
            self.redis.subscribe(&self.subscriber, channel).await?;
        }
        self.lock()
            .entry(channel.to_owned())
            .or_default()
            .push(slot);
        Ok(())
    }

    /// Removes client `id` from `channel`; the last one out unsubscribes
    /// (asynchronously, so this can run in `Drop`).
    pub fn leave(&self, channel: &str, id: u64) {
        let mut map = self.lock();
        if let Some(slots) = map.get_mut(channel) {
            slots.retain(|s| s.id != id);
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
                        tracing::error!(lost = n, "event hub fell behind Redis; events lost");
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
        for slot in map.get(channel).into_iter().flatten() {
            // Channels are per owner or per owned task; this is a second lock.
            if slot.owner_id != envelope.owner_id {
                continue;
            }
            match slot.tx.try_send(event.clone()) {
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
