//! Commands routed at the same moment share one round trip.
//!
//! Each registry bucket has a queue. The first command into an idle queue
//! starts a flusher task, which sends everything queued by then in one
//! `EVALSHA` of `redis/route_many.lua` (at most [`MAX_BATCH`] at a time) and
//! hands every caller its own receiver count; commands that arrive while a
//! batch is in flight wait for the next one. A lone command therefore goes
//! out at once, as before; under load one round trip — and one script call
//! in Redis — carries many. Commands of one bucket leave in the order they
//! were queued, so one caller's commands to a daemon stay in order.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use fred::{
    error::{Error, ErrorKind},
    prelude::*,
    types::scripts::Script,
};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Commands per script call at most (bounds how long one call holds Redis).
pub const MAX_BATCH: usize = 128;

/// One bucket's queue and what its flusher needs.
pub struct Bucket {
    client: Client,
    script: Script,
    /// Pod channel prefix of the bucket.
    prefix: String,
    publish: &'static str,
    queue: Mutex<Queue>,
    /// Script calls made (shared by a pod's buckets).
    round_trips: Arc<AtomicU64>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A flusher task is running for this bucket.
    flushing: bool,
}

struct Waiting {
    key: String,
    daemon_id: Uuid,
    payload: String,
    done: oneshot::Sender<Result<i64, Error>>,
}

impl Bucket {
    pub fn new(
        client: Client,
        script: Script,
        prefix: String,
        publish: &'static str,
        round_trips: Arc<AtomicU64>,
    ) -> Self {
        Self {
            client,
            script,
            prefix,
            publish,
            queue: Mutex::default(),
            round_trips,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Routes one command (`key` is the daemon's registry hash in `bucket`):
/// -1 when the daemon has no registry entry, else how many pods received it
/// (0: the pod holding it is gone).
pub async fn route(
    bucket: &Arc<Bucket>,
    key: String,
    daemon_id: Uuid,
    payload: String,
) -> Result<i64, Error> {
    let (done, answer) = oneshot::channel();
    let start = {
        let mut queue = bucket.lock();
        queue.waiting.push(Waiting {
            key,
            daemon_id,
            payload,
            done,
        });
        !std::mem::replace(&mut queue.flushing, true)
    };
    if start {
        tokio::spawn(flush(bucket.clone()));
    }
    answer.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::Canceled,
            "the routing batch was abandoned",
        ))
    })
}

/// Sends what is queued, batch after batch, until the queue is empty.
async fn flush(bucket: Arc<Bucket>) {
    let _reset = ResetOnPanic(bucket.clone());
    loop {
        let batch: Vec<Waiting> = {
            let mut queue = bucket.lock();
            if queue.waiting.is_empty() {
                queue.flushing = false;
                return;
            }
            let n = queue.waiting.len().min(MAX_BATCH);
            queue.waiting.drain(..n).collect()
        };
        let mut keys = Vec::with_capacity(batch.len());
        let mut args = Vec::with_capacity(2 + 2 * batch.len());
        args.push(bucket.prefix.clone());
        args.push(bucket.publish.to_owned());
        let mut dones = Vec::with_capacity(batch.len());
        for w in batch {
            keys.push(w.key);
            args.push(w.daemon_id.to_string());
            args.push(w.payload);
            dones.push(w.done);
        }
        bucket.round_trips.fetch_add(1, Ordering::Relaxed);
        let sent: Result<Vec<i64>, Error> = bucket
            .script
            .evalsha_with_reload(&bucket.client, keys, args)
            .await;
        match sent {
            Ok(counts) if counts.len() == dones.len() => {
                for (done, count) in dones.into_iter().zip(counts) {
                    let _ = done.send(Ok(count));
                }
            }
            Ok(counts) => {
                let e = Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "route_many.lua answered {} of {} commands",
                        counts.len(),
                        dones.len()
                    ),
                );
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for done in dones {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Should a flusher panic, its bucket must not stay "flushing" forever:
/// the queue is emptied (its callers get an error) and the next command
/// starts a new flusher.
struct ResetOnPanic(Arc<Bucket>);

impl Drop for ResetOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.lock();
            queue.flushing = false;
            queue.waiting.clear();
        }
    }
}
