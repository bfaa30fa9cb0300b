//! Task output ingestion: parsed lines are persisted in batches (one
//! multi-row INSERT) and then published to the task's event channel in one
//! pipelined round trip, by a fixed set of writers per pod (a task's lines
//! always go to the same writer, in arrival order) — so order is kept per
//! task and nothing is spawned per line.
//!
//! The queue is bounded. When it is full, [`OutputQueue::push`] waits, which
//! stops the daemon socket that pushed from reading: backpressure reaches the
//! daemon instead of lines being dropped. While PostgreSQL is down the batch
//! is retried with backoff, the queue fills, and daemons are slowed the same
//! way; nothing is acknowledged or published before it is stored.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use fred::prelude::*;
use sqlx::PgPool;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{events, Redis},
    db::outputs::{self, NewOutput},
    metrics::Metrics,
    protocol::client::ClientEvent,
};

/// Whether a failed insert can never succeed as it is (integrity or data
/// errors), as opposed to PostgreSQL being unreachable.
fn is_permanent(e: &crate::Error) -> bool {
    match e {
        crate::Error::Db(sqlx::Error::Database(db)) => db
            .code()
            .is_some_and(|c| c.starts_with("23") || c.starts_with("22")),
        _ => false,
    }
}

/// Lines per INSERT at most.
const BATCH: usize = 1_000;

/// Handle to the pod's output queue.
#[derive(Clone)]
pub struct OutputQueue {
    /// One queue per writer; a task's lines always go to the same one, so
    /// its order is kept while writers store different tasks in parallel.
    txs: Arc<[mpsc::Sender<NewOutput>]>,
    depth: Arc<AtomicU64>,
}

impl OutputQueue {
    /// Starts `writers` writers sharing `capacity`. On `stop` each stores
    /// what is queued, then exits; the handle ends when all have.
    pub fn start(
        pool: PgPool,
        redis: Arc<Redis>,
        metrics: Arc<Metrics>,
        capacity: usize,
        writers: usize,
        stop: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let writers = writers.max(1);
        let depth = Arc::new(AtomicU64::new(0));
        let mut txs = Vec::with_capacity(writers);
        let mut tasks = Vec::with_capacity(writers);
        for _ in 0..writers {
            let (tx, rx) = mpsc::channel((capacity / writers).max(1));
            let writer = Writer {
                pool: pool.clone(),
                redis: redis.clone(),
                metrics: metrics.clone(),
                depth: depth.clone(),
            };
            txs.push(tx);
            tasks.push(tokio::spawn(writer.run(rx, stop.clone())));
        }
        let all = tokio::spawn(async move {
            for task in tasks {
                let _ = task.await;
            }
        });
        (
            Self {
                txs: txs.into(),
                depth,
            },
            all,
        )
    }

    /// Queues a line; waits while its writer's queue is full (backpressure).
    pub async fn push(&self, line: NewOutput) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        let writer = (line.task_id.as_u128() % self.txs.len() as u128) as usize;
        if self.txs[writer].send(line).await.is_err() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("output queue closed; line not stored");
        }
    }

    /// Lines queued and not yet stored.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }
}

struct Writer {
    pool: PgPool,
    redis: Arc<Redis>,
    metrics: Arc<Metrics>,
    depth: Arc<AtomicU64>,
}

/// The published form: the event plus its owner, like every event.
impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<NewOutput>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let first = tokio::select! {
                biased;
                line = rx.recv() => line,
                _ = stop.cancelled() => None,
            };
            let Some(first) = first else { break };
            batch.push(first);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(line) => batch.push(line),
                    Err(_) => break,
                }
            }
            self.store(&mut batch, &stop).await;
        }
        // Drain: store what is still queued.
        rx.close();
        while let Some(line) = rx.recv().await {
            batch.push(line);
            if batch.len() == BATCH {
                self.store(&mut batch, &stop).await;
            }
        }
        self.store(&mut batch, &stop).await;
    }

    /// Persists, then publishes, then empties `batch`. Persisting is retried
    /// until it works; once stopping, only for a bounded time.
    async fn store(&self, batch: &mut Vec<NewOutput>, stop: &CancellationToken) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(50);
        let mut attempts_after_stop = 0;
        let ids = loop {
            match outputs::insert_batch(&self.pool, batch).await {
                Ok(ids) => break ids,
                Err(e) if is_permanent(&e) => {
                    // Retrying would fail forever and stall every daemon on
                    // this pod: store line by line, dropping (and counting)
                    // only the lines that can never be stored.
                    Metrics::inc(&self.metrics.db_errors);
                    tracing::warn!(lines = batch.len(), error = %e, "output batch refused; storing line by line");
                    break self.store_one_by_one(batch).await;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.db_errors);
                    if stop.is_cancelled() {
                        attempts_after_stop += 1;
                        if attempts_after_stop > 20 {
                            tracing::error!(lines = batch.len(), error = %e, "shutting down with PostgreSQL unavailable: output lines lost");
                            self.metrics
                                .output_lines_lost
                                .fetch_add(batch.len() as u64, Ordering::Relaxed);
                            self.done(batch);
                            return;
                        }
                    }
                    tracing::warn!(lines = batch.len(), error = %e, "output batch not stored; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        };
        self.metrics
            .output_lines_stored
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.publish(batch, &ids).await;
        self.done(batch);
    }

    /// Stores each line alone; lines refused for good (e.g. their task was
    /// deleted meanwhile) are dropped with a log and a count. Returns the
    /// ids of the lines kept in `batch`.
    async fn store_one_by_one(&self, batch: &mut Vec<NewOutput>) -> Vec<i64> {
        let mut kept = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for line in batch.drain(..) {
            loop {
                match outputs::insert_batch(&self.pool, std::slice::from_ref(&line)).await {
                    Ok(id) => {
                        ids.extend(id);
                        kept.push(line);
                    }
                    Err(e) if is_permanent(&e) => {
                        self.metrics
                            .output_lines_lost
                            .fetch_add(1, Ordering::Relaxed);
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        tracing::error!(task_id = %line.task_id, error = %e, "output line cannot be stored; dropped");
                    }
                    Err(e) => {
                        // Unreachable meanwhile: wait for it, as for batches.
                        Metrics::inc(&self.metrics.db_errors);
                        tracing::warn!(error = %e, "output line not stored; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
                break;
            }
        }
        *batch = kept;
        ids
    }

    fn done(&self, batch: &mut Vec<NewOutput>) {
        self.depth.fetch_sub(batch.len() as u64, Ordering::Relaxed);
        batch.clear();
    }

    /// Publishes the batch's events in one pipelined round trip
    /// (best-effort: the lines are stored, clients can re-read them).
    async fn publish(&self, batch: &[NewOutput], ids: &[i64]) {
        let pipeline = self.redis.client.pipeline();
        for (i, line) in batch.iter().enumerate() {
            let event = ClientEvent::TaskOutput {
                task_id: line.task_id,
                id: ids.get(i).copied(),
                event: line.event.clone(),
            };
            let Some(payload) = events::payload(line.owner_id, &event) else {
                continue;
            };
            let channel = self.redis.keys.task_events(line.task_id);
            let _ = self.redis.publish_in(&pipeline, channel, payload).await;
        }
        if let Err(e) = pipeline.all::<Vec<Value>>().await {
            Metrics::inc(&self.metrics.redis_errors);
            tracing::warn!(lines = batch.len(), error = %e, "output events not published");
        }
    }
}
