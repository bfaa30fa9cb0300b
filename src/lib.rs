//! meshgate: the control plane that AI coding worker daemons dial into,
//! built as stateless replicas. Live shared state is in Redis ([`cluster`]),
//! durable rows in PostgreSQL ([`db`]); a replica owns nothing but its open
//! sockets.
//!
//! [`start`] brings up one replica on a listener the caller bound (tests bind
//! port 0 and start several in one process); [`run`] is what `meshgate serve`
//! does: start, wait for SIGTERM/SIGINT, drain.

#![forbid(unsafe_code)]

pub mod auth;
pub mod batch_queue;
pub mod bench;
pub mod clients;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod db;
pub mod dispatch;
pub mod error;
pub mod http;
pub mod ingest;
pub mod key_usage;
pub mod metrics;
pub mod protocol;
pub mod sim;
pub mod state;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use poem::Server;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{reaper, routing, task_routes::TaskRoutes, Redis},
    daemon::{connections::Connections, leases},
    dispatch::Dispatcher,
    ingest::OutputQueue,
    key_usage::KeyUsage,
    metrics::Metrics,
    state::{AppState, Lifecycle},
};
pub use crate::{
    config::Config,
    error::{Error, Result},
};

/// Daemon sockets are closed in this many batches when a pod drains.
const DRAIN_BATCHES: usize = 10;

/// A running replica.
pub struct Pod {
    addr: SocketAddr,
    state: AppState,
    server: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    stop_background: CancellationToken,
}

/// Starts a replica serving on `listener`.
pub async fn start(config: Config, listener: tokio::net::TcpListener) -> Result<Pod> {
    config.validate()?;
    let pod_id: Arc<str> = config.resolved_pod_id().into();
    let db = db::connect(&config)?;
    if config.migrate_on_start {
        db::migrate(&db).await?;
    }
    let redis = Arc::new(Redis::connect(&config, pod_id.clone()).await?);
    let stop_background = CancellationToken::new();
    let (key_usage, key_usage_task) = KeyUsage::start(db.clone(), stop_background.clone());
    let metrics = Arc::new(Metrics::default());
    let (outputs, output_task) = OutputQueue::start(
        db.clone(),
        redis.clone(),
        metrics.clone(),
        config.output_queue,
        config.output_writers,
        stop_background.clone(),
    );
    let (dispatcher, dispatch_rx) = Dispatcher::new();
    let liveness = Arc::new(cluster::liveness::Liveness::new(redis.keys.buckets()));
    let (hub, hub_task) = cluster::hub::Hub::start(
        redis.clone(),
        metrics.clone(),
        &pod_id,
        liveness.clone(),
        stop_background.clone(),
    );
    let auth_cache = auth::AuthCache::new(Duration::from_millis(config.auth_cache_ms));
    let task_routes = Arc::new(TaskRoutes::new(
        config.task_route_cache(),
        redis.resubscribed.clone(),
    ));
    let replay_budget = Arc::new(clients::ReplayBudget::new(config.client_replay_rate));
    let state = AppState::new(state::Shared {
        config: Arc::new(config),
        pod_id: pod_id.clone(),
        daemon_rows: db::daemons::DaemonRows::new(db.clone()),
        db,
        redis: redis.clone(),
        conns: Arc::new(Connections::default()),
        waiters: Arc::default(),
        hub,
        replay_budget,
        liveness: liveness.clone(),
        metrics,
        key_usage,
        auth: Arc::new(auth_cache),
        task_routes,
        outputs,
        dispatcher,
        lifecycle: Lifecycle::default(),
    });
    let subscriptions = cluster::pubsub::Subscriptions::new(
        redis.clone(),
        state.hub.clone(),
        state.metrics.clone(),
    );
    let local = routing::Local {
        redis: redis.clone(),
        conns: state.conns.clone(),
        waiters: state.waiters.clone(),
        liveness: state.liveness.clone(),
        metrics: state.metrics.clone(),
        routes: state.task_routes.clone(),
    };
    let listen_task = routing::listen(local, stop_background.clone()).await?;
    let mut background = subscriptions.renew_on_reconnect(stop_background.clone());
    background.extend([
        key_usage_task,
        output_task,
        hub_task,
        listen_task,
        tokio::spawn(leases::keep(state.clone(), stop_background.clone())),
        tokio::spawn(reaper::run(state.clone(), stop_background.clone())),
        tokio::spawn(dispatch::run(
            state.clone(),
            dispatch_rx,
            stop_background.clone(),
        )),
        cluster::pubsub::watch_topology(
            redis.clone(),
            subscriptions.clone(),
            state.config.self_ping() * 5,
            stop_background.clone(),
        ),
        tokio::spawn(cluster::liveness::ping(
            redis.clone(),
            subscriptions,
            liveness,
            state.metrics.clone(),
            state.config.self_ping(),
            stop_background.clone(),
        )),
    ]);

    let addr = listener.local_addr()?;
    let acceptor = http::acceptor::NoDelayAcceptor::new(listener)?;
    let app = http::routes(state.clone());
    let stop_server = state.lifecycle.stop_server.clone();
    let timeout = state.config.drain();
    let server = tokio::spawn(
        Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            async move { stop_server.cancelled().await },
            Some(timeout),
        ),
    );
    tracing::info!(pod_id = %pod_id, %addr, "meshgate replica started");
    Ok(Pod {
        addr,
        state,
        server,
        background,
        stop_background,
    })
}

impl Pod {
    /// The address the replica listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The replica's shared handles (tests use them to call the library).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops cleanly: readiness turns 503 and new sockets are refused at
    /// once; daemons are told to reconnect elsewhere and closed in batches
    /// over half the drain time (so they do not all land on the other pods
    /// in the same instant); web clients are told to reconnect; in-flight
    /// HTTP calls finish; the output queue is flushed; then it returns.
    pub async fn shutdown(self) {
        let life = &self.state.lifecycle;
        life.start_drain();
        let drain = self.state.config.drain();
        let deadline = tokio::time::Instant::now() + drain;
        let batches = DRAIN_BATCHES;
        let pause = drain / 2 / batches as u32;
        let per_batch = self.state.conns.len().div_ceil(batches).max(1);
        tracing::info!(
            daemons = self.state.conns.len(),
            per_batch,
            ?pause,
            "draining daemon sockets"
        );
        while !self.state.conns.is_empty() && tokio::time::Instant::now() < deadline {
            self.state.conns.close_some(per_batch);
            tokio::time::sleep(pause.max(Duration::from_millis(10))).await;
        }
        // Their cleanups (unregister, disconnect time) need Redis and the
        // database: wait for them before anything is closed.
        let sockets = &self.state.lifecycle.sockets;
        while sockets.load(std::sync::atomic::Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        life.stop_server.cancel();
        let _ = self.server.await;
        self.stop_background.cancel();
        for task in self.background {
            let _ = task.await;
        }
        self.state.redis.quit().await;
        self.state.db.close().await;
        tracing::info!(pod_id = %self.state.pod_id, "meshgate replica stopped");
    }

    /// Stops as a crash would: sockets dropped, nothing cleaned up in Redis.
    pub async fn kill(self) {
        self.state.lifecycle.kill.cancel();
        self.server.abort();
        self.stop_background.cancel();
        for task in &self.background {
            task.abort();
        }
        self.state.redis.quit().await;
    }
}

/// Runs a replica until SIGTERM or Ctrl-C, then drains it.
pub async fn run(config: Config, listener: tokio::net::TcpListener) -> Result<()> {
    let pod = start(config, listener).await?;
    shutdown_signal().await;
    tracing::info!("shutdown signal received; draining");
    pod.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
