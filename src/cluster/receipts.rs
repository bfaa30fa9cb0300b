//! Delivery receipts: how a sender learns that its command was queued on the
//! socket of the daemon's current connection, on whichever pod holds it.
//!
//! Sending side: [`Receipts::expect`] numbers a command and registers a
//! waiter before the command is routed; the number travels in the command's
//! envelope ([`super::pod_message::Envelope`]). Holding side: once the
//! command was handed to the socket (or could not be), [`Receipts::reply`]
//! queues `(number, outcome)` for the sender's channel. Receipts for one
//! pod that arrive while a publish to it is in flight go out together in
//! the next one (one `A|…` message), so under load a receipt costs a share
//! of a publish, not a round trip of its own; a lone receipt goes at once.
//!
//! A receipt lost on the way (the sender's subscriber reconnecting, Redis
//! failing) leaves the sender waiting until its timeout: it then says the
//! outcome is unknown, never that the command was delivered.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use fred::prelude::*;
use tokio::sync::oneshot;

use super::pod_message::{Outcome, PodMessage};
use crate::batch_queue::{BatchQueue, Turn};

/// Receipts per `A|` message at most.
const MAX_BATCH: usize = 512;
/// Destination channels remembered; past it the table starts over (pods
/// come and go; a queue in use lives on in its flusher).
const MAX_CHANNELS: usize = 4096;

type Queue = BatchQueue<(u64, Outcome)>;

pub struct Receipts {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Outcome>>>,
    outgoing: Mutex<HashMap<String, Arc<Queue>>>,
    client: Client,
    publish: &'static str,
    /// Receipts that could not be published (their senders time out).
    pub lost: AtomicU64,
}

/// A registered waiter; dropping it forgets the number.
pub struct Expected<'a> {
    receipts: &'a Receipts,
    pub seq: u64,
    rx: oneshot::Receiver<Outcome>,
}

impl Expected<'_> {
    /// The outcome, or `None` when no receipt came within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<Outcome> {
        tokio::time::timeout(timeout, &mut self.rx)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Expected<'_> {
    fn drop(&mut self) {
        self.receipts.lock_waiting().remove(&self.seq);
    }
}

impl Receipts {
    pub fn new(client: Client, publish: &'static str) -> Self {
        Self {
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
            outgoing: Mutex::default(),
            client,
            publish,
            lost: AtomicU64::new(0),
        }
    }

    fn lock_waiting(&self) -> MutexGuard<'_, HashMap<u64, oneshot::Sender<Outcome>>> {
        // A panic while holding the lock leaves a plain map behind.
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers a command about to be sent and starts waiting for its receipt.
    pub fn expect(&self) -> Expected<'_> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(seq, tx);
        Expected {
            receipts: self,
            seq,
            rx,
        }
    }

    /// Receipts that arrived for this pod's commands.
    pub fn received(&self, list: Vec<(u64, Outcome)>) {
        let mut waiting = self.lock_waiting();
        for (seq, outcome) in list {
            match waiting.remove(&seq) {
                Some(tx) => {
                    let _ = tx.send(outcome);
                }
                None => {
                    tracing::debug!(
                        seq,
                        ?outcome,
                        "receipt for a command nobody waits for (any more)"
                    )
                }
            }
        }
    }

    /// Senders waiting for a receipt on this pod.
    pub fn waiting(&self) -> usize {
        self.lock_waiting().len()
    }

    /// Queues a receipt for `channel` (the sender's pod channel).
    pub fn reply(self: &Arc<Self>, channel: &str, seq: u64, outcome: Outcome) {
        if seq == 0 {
            return;
        }
        let queue = {
            let mut map = self.outgoing.lock().unwrap_or_else(|e| e.into_inner());
            if !map.contains_key(channel) && map.len() >= MAX_CHANNELS {
                map.clear();
            }
            map.entry(channel.to_owned()).or_default().clone()
        };
        if let Some(turn) = queue.push((seq, outcome)) {
            tokio::spawn(flush(self.clone(), channel.to_owned(), turn));
        }
    }
}

/// Publishes what is queued for one channel, batch after batch.
async fn flush(receipts: Arc<Receipts>, channel: String, mut turn: Turn<(u64, Outcome)>) {
    while let Some(batch) = turn.next(MAX_BATCH) {
        let n = batch.len() as u64;
        let message = PodMessage::Receipts(batch).encode();
        let sent: Result<i64, Error> = if receipts.publish == "SPUBLISH" {
            receipts.client.spublish(&channel, message).await
        } else {
            receipts.client.publish(&channel, message).await
        };
        match sent {
            Ok(0) => {
                // The sender is gone (or its subscriber is reconnecting).
                receipts.lost.fetch_add(n, Ordering::Relaxed);
                tracing::debug!(%channel, receipts = n, "receipts reached no pod");
            }
            Ok(_) => {}
            Err(e) => {
                receipts.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(%channel, receipts = n, error = %e, "receipts not published; their senders will report an unknown outcome");
            }
        }
    }
}
