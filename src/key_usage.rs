//! `last_used_at` of API keys, recorded off the request path: handlers drop
//! key ids into a bounded queue and one task writes them once a second as a
//! single UPDATE. When the queue is full an id is skipped — it is only a
//! "last used" time and the next use records it again.

use std::{collections::HashSet, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db;

#[derive(Clone)]
pub struct KeyUsage {
    tx: mpsc::Sender<Uuid>,
}

impl KeyUsage {
    /// Starts the writer; it flushes what it has when `stop` is cancelled.
    pub fn start(pool: PgPool, stop: CancellationToken) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let handle = tokio::spawn(write_loop(pool, rx, stop));
        (Self { tx }, handle)
    }

    /// Notes that `key_id` was used now. Never waits.
    pub fn record(&self, key_id: Uuid) {
        let _ = self.tx.try_send(key_id);
    }
}

async fn write_loop(pool: PgPool, mut rx: mpsc::Receiver<Uuid>, stop: CancellationToken) {
    let mut pending = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            id = rx.recv() => match id {
                Some(id) => { pending.insert(id); }
                None => break,
            },
            _ = tick.tick() => flush(&pool, &mut pending).await,
        }
    }
    while let Ok(id) = rx.try_recv() {
        pending.insert(id);
    }
    flush(&pool, &mut pending).await;
}

async fn flush(pool: &PgPool, pending: &mut HashSet<Uuid>) {
    if pending.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = pending.drain().collect();
    if let Err(e) = db::accounts::touch_last_used(pool, &ids).await {
        tracing::warn!(error = %e, keys = ids.len(), "last_used_at not recorded");
    }
}
