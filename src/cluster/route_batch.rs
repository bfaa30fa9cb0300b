//! Commands routed at the same moment share one round trip.
//!
//! Each registry bucket has a queue. The first command into an idle queue
//! starts a flusher task, which sends everything queued by then in one
//! `EVALSHA` of `redis/route.lua` (at most [`MAX_BATCH`] at a time) and
//! hands every caller its own receiver count; commands that arrive while a
//! batch is in flight wait for the next one. A lone command therefore goes
//! out at once, as before; under load one round trip — and one script call
//! in Redis — carries many (a command arriving during a call waits for it:
//! up to two round trips instead of one). Commands of one bucket leave in
//! the order they were queued, so one caller's commands to a daemon stay in
//! order.
//!
//! A caller waits at most the Redis command timeout. A command still queued
//! when its caller gave up (timed out, or went away) is not sent, so a hung
//! Redis fails the queue in one timeout, not one per batch. A command that
//! Redis refused fails alone; a batch that failed as a whole (connection
//! lost, timeout) fails every caller in it, although Redis may have run it:
//! as with any timed-out write, "failed" may mean "delivered".

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::{
    error::{Error, ErrorKind},
    prelude::*,
    types::scripts::Script,
};
use tokio::{sync::oneshot, time::Instant};
use uuid::Uuid;

use crate::batch_queue::{BatchQueue, Turn};

/// Commands per script call at most (bounds how long one call holds Redis).
pub const MAX_BATCH: usize = 128;

/// One bucket's queue and what its flusher needs.
pub struct Bucket {
    client: Client,
    script: Script,
    /// Pod channel prefix of the bucket.
    prefix: String,
    publish: &'static str,
    /// How long a caller waits at most (the Redis command timeout).
    timeout: Duration,
    queue: Arc<BatchQueue<Waiting>>,
    /// Script calls made (shared by a pod's buckets).
    calls: Arc<AtomicU64>,
}

struct Waiting {
    key: String,
    daemon_id: Uuid,
    /// A connection known to be gone: the command goes only to a newer one.
    gone: Option<Uuid>,
    payload: String,
    /// When its caller stops waiting.
    deadline: Instant,
    done: oneshot::Sender<Result<i64, Error>>,
}

impl Bucket {
    pub fn new(
        client: Client,
        script: Script,
        prefix: String,
        publish: &'static str,
        timeout: Duration,
        calls: Arc<AtomicU64>,
    ) -> Self {
        Self {
            client,
            script,
            prefix,
            publish,
            timeout,
            queue: Arc::default(),
            calls,
        }
    }
}

/// Routes one command (`key` is the daemon's registry hash in `bucket`,
/// `payload` the `D` message's part after daemon and connection):
/// [`NO_ENTRY`] when the daemon has no registry entry, [`STILL_GONE`] when
/// the entry names `gone`, else how many pods received it (0: the pod
/// holding it is gone).
pub async fn route(
    bucket: &Arc<Bucket>,
    key: String,
    daemon_id: Uuid,
    gone: Option<Uuid>,
    payload: String,
) -> Result<i64, Error> {
    let (done, answer) = oneshot::channel();
    let deadline = Instant::now() + bucket.timeout;
    let waiting = Waiting {
        key,
        daemon_id,
        gone,
        payload,
        deadline,
        done,
    };
    if let Some(turn) = bucket.queue.push(waiting) {
        tokio::spawn(flush(bucket.clone(), turn));
    }
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(Error::new(
            ErrorKind::Canceled,
            "the routing batch was abandoned",
        )),
        Err(_) => Err(timed_out()),
    }
}

fn timed_out() -> Error {
    Error::new(ErrorKind::Timeout, "command routing timed out")
}

/// Sends what is queued, batch after batch, until the queue is empty.
async fn flush(bucket: Arc<Bucket>, mut turn: Turn<Waiting>) {
    while let Some(taken) = turn.next(MAX_BATCH) {
        // Callers that gave up are answered (nobody listens) and skipped.
        let now = Instant::now();
        let (batch, late): (Vec<_>, Vec<_>) = taken
            .into_iter()
            .partition(|w| w.deadline > now && !w.done.is_closed());
        for w in late {
            let _ = w.done.send(Err(timed_out()));
        }
        if batch.is_empty() {
            continue;
        }
        let mut keys = Vec::with_capacity(batch.len());
        let mut args = Vec::with_capacity(2 + 3 * batch.len());
        args.push(bucket.prefix.clone());
        args.push(bucket.publish.to_owned());
        let mut dones = Vec::with_capacity(batch.len());
        for w in batch {
            keys.push(w.key);
            args.push(w.daemon_id.to_string());
            args.push(w.gone.map(|c| c.to_string()).unwrap_or_default());
            args.push(w.payload);
            dones.push(w.done);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        let sent: Result<Vec<i64>, Error> = bucket
            .script
            .evalsha_with_reload(&bucket.client, keys, args)
            .await;
        match sent {
            Ok(counts) if counts.len() == dones.len() => {
                for (done, count) in dones.into_iter().zip(counts) {
                    let answer = if count == REFUSED {
                        Err(Error::new(
                            ErrorKind::Unknown,
                            "Redis refused this command in route.lua",
                        ))
                    } else {
                        Ok(count)
                    };
                    let _ = done.send(answer);
                }
            }
            Ok(counts) => {
                let e = Error::new(
                    ErrorKind::Protocol,
                    format!(
                        "route.lua answered {} of {} commands",
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

/// `route.lua`'s answer for a command Redis refused.
const REFUSED: i64 = -2;
/// `route.lua`'s answer when the daemon has no registry entry.
pub const NO_ENTRY: i64 = -1;
/// `route.lua`'s answer when the entry still names the connection that is
/// known to be gone.
pub const STILL_GONE: i64 = -3;
