//! The state every handler shares: cheap handles, built once per pod.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::AuthCache,
    cluster::{
        hub::Hub, liveness::Liveness, pending::Waiters, registry::Lease, task_routes::TaskRoutes,
        Redis,
    },
    config::Config,
    daemon::connections::Connections,
    db::daemons::DaemonRows,
    dispatch::Dispatcher,
    ingest::OutputQueue,
    key_usage::KeyUsage,
    metrics::Metrics,
};

/// Handles of one replica: one `Arc`, so a clone (one per HTTP request and
/// per socket) is one counter increment and a pointer, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What an [`AppState`] holds.
pub struct Shared {
    pub config: Arc<Config>,
    pub pod_id: Arc<str>,
    pub db: PgPool,
    /// Batched writes of daemon rows (registrations, heartbeats, ...).
    pub daemon_rows: Arc<DaemonRows>,
    pub redis: Arc<Redis>,
    pub conns: Arc<Connections>,
    /// HTTP callers on this pod waiting for a daemon's answer.
    pub waiters: Arc<Waiters>,
    /// Event fan-out to this pod's web clients.
    pub hub: Arc<Hub>,
    /// Bounds the lines read for this pod's clients' replays per second.
    pub replay_budget: Arc<crate::clients::ReplayBudget>,
    /// Whether this pod's subscriptions deliver (readiness).
    pub liveness: Arc<Liveness>,
    pub metrics: Arc<Metrics>,
    pub key_usage: KeyUsage,
    /// API key lookups, cached briefly.
    pub auth: Arc<AuthCache>,
    /// Task → (owner, daemon), cached briefly for commands sent to tasks.
    pub task_routes: Arc<TaskRoutes>,
    /// Batched persistence and publication of task output.
    pub outputs: OutputQueue,
    /// Kicks this pod's dispatcher.
    pub dispatcher: Dispatcher,
    pub lifecycle: Lifecycle,
}

impl AppState {
    pub fn lease(&self) -> Lease {
        Lease {
            ttl_ms: self.config.lease_ttl_ms,
            grace_ms: self.config.disconnect_grace_ms,
        }
    }
}

/// How a pod stops. `drain` asks sockets to close cleanly (cleanup runs);
/// `kill` drops them with no cleanup at all, as a crashed process would.
#[derive(Clone, Default)]
pub struct Lifecycle {
    pub drain: CancellationToken,
    pub kill: CancellationToken,
    /// Fired once sockets are drained: the HTTP server stops accepting and
    /// finishes in-flight calls.
    pub stop_server: CancellationToken,
    /// Daemon socket tasks still running (including their cleanup), so a
    /// drain waits for cleanups before closing the pools.
    pub sockets: Arc<std::sync::atomic::AtomicUsize>,
    draining: Arc<AtomicBool>,
}

impl Lifecycle {
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drain.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
