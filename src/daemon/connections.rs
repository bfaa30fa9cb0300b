//! The daemon sockets this pod holds — the only state a pod owns. Keyed by
//! connection id, so a command fenced with an older connection id never
//! reaches a newer socket of the same daemon (and vice versa).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::outbox;
use crate::cluster::registry::DaemonEntry;

/// One registered socket.
pub struct LocalConn {
    /// What this pod last wrote to the registry, to re-register after Redis
    /// lost it.
    pub entry: DaemonEntry,
    /// Commands (already serialised JSON) waiting to be written.
    pub tx: outbox::Sender,
    /// Cancelled to close the socket (replaced by a newer connection).
    pub close: CancellationToken,
    /// Set before `close` when the socket is closed because its queue was
    /// full (the daemon does not read).
    pub slow: Arc<AtomicBool>,
}

/// Why a command could not be handed to a local socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliverError {
    /// No socket with that connection id here (it closed, or was replaced);
    /// the command is handed back to be sent after its daemon.
    Gone(String),
    /// The socket's queue is full: the daemon is not reading.
    QueueFull,
}

#[derive(Default)]
pub struct Connections {
    inner: Mutex<HashMap<Uuid, LocalConn>>,
}

impl Connections {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, LocalConn>> {
        // A panic while holding this lock leaves a plain map behind, which is
        // still consistent: recover it instead of poisoning every socket.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, conn: Uuid, local: LocalConn) {
        self.lock().insert(conn, local);
    }

    pub fn remove(&self, conn: Uuid) -> Option<LocalConn> {
        self.lock().remove(&conn)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a command for the socket `conn` if it belongs to `daemon_id`.
    pub fn deliver(&self, daemon_id: Uuid, conn: Uuid, json: String) -> Result<(), DeliverError> {
        let map = self.lock();
        let Some(local) = map.get(&conn).filter(|l| l.entry.id == daemon_id) else {
            return Err(DeliverError::Gone(json));
        };
        local.tx.try_send(json).map_err(|(e, json)| match e {
            outbox::PushError::Full => DeliverError::QueueFull,
            outbox::PushError::Closed => DeliverError::Gone(json),
        })
    }

    /// Closes the socket `conn` of `daemon_id` because it does not take its
    /// commands (its queue is full). Returns whether it was open.
    pub fn close_slow(&self, daemon_id: Uuid, conn: Uuid) -> bool {
        let map = self.lock();
        match map.get(&conn).filter(|l| l.entry.id == daemon_id) {
            Some(local) if !local.close.is_cancelled() => {
                local.slow.store(true, Ordering::SeqCst);
                local.close.cancel();
                true
            }
            _ => false,
        }
    }

    /// Closes the socket `conn` of `daemon_id` (a newer one replaced it).
    pub fn close(&self, daemon_id: Uuid, conn: Uuid) -> bool {
        let map = self.lock();
        match map.get(&conn).filter(|l| l.entry.id == daemon_id) {
            Some(local) => {
                local.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Applies `f` to the registry copy of `conn`.
    pub fn update_entry(&self, conn: Uuid, f: impl FnOnce(&mut DaemonEntry)) {
        if let Some(local) = self.lock().get_mut(&conn) {
            f(&mut local.entry);
        }
    }

    /// The registry copies of all sockets, for lease refresh.
    pub fn entries(&self) -> Vec<DaemonEntry> {
        self.lock().values().map(|l| l.entry.clone()).collect()
    }

    /// Closes up to `n` sockets (a drain batch); returns how many.
    pub fn close_some(&self, n: usize) -> usize {
        let map = self.lock();
        let mut closed = 0;
        for local in map.values().filter(|l| !l.close.is_cancelled()).take(n) {
            local.close.cancel();
            closed += 1;
        }
        closed
    }
}
