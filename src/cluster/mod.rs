//! The Redis side of meshgate: everything pods share lives here.
//!
//! - [`registry`]: which daemon is connected to which pod, with leases.
//! - [`routing`]: `send_command` from any pod to any daemon over pub/sub.
//! - [`reaper`]: exactly-once cleanup after a daemon is gone for good.
//! - [`events`]: events for web clients, published per owner and per task.
//!
//! Key layout (all under the configured prefix `P`) is documented in
//! `redis/README.md`; it is the same on one server and on Redis Cluster,
//! where pub/sub is sharded (see [`pubsub`]).

pub mod events;
pub mod hub;
pub mod keys;
pub mod liveness;
pub mod pending;
pub mod pod_message;
pub mod pubsub;
pub mod reaper;
pub mod reauth;
pub mod receipts;
pub mod registry;
pub mod route_batch;
pub mod routing;
pub mod task_routes;
pub mod tickets;
pub mod tls;
pub mod toolkeys;

use std::time::Duration;

use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{
        config::{ServerConfig, UnresponsiveConfig},
        scripts::Script,
    },
};

pub use keys::Keys;

use crate::config::{Config, RedisMode};

/// The Lua scripts of `redis/`, loaded lazily (EVALSHA, reloaded on NOSCRIPT
/// so a restarted Redis needs nothing from us).
pub struct Scripts {
    pub register: Script,
    pub refresh: Script,
    pub unregister: Script,
    pub touch: Script,
    pub route: Script,
    pub owner_touch: Script,
    pub owner_list: Script,
    pub reap_claim: Script,
    pub reap_done: Script,
    pub pending_join: Script,
    pub pending_take: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            register: Script::from_lua(include_str!("../../redis/register.lua")),
            refresh: Script::from_lua(include_str!("../../redis/refresh.lua")),
            unregister: Script::from_lua(include_str!("../../redis/unregister.lua")),
            touch: Script::from_lua(include_str!("../../redis/touch.lua")),
            route: Script::from_lua(include_str!("../../redis/route.lua")),
            owner_touch: Script::from_lua(include_str!("../../redis/owner_touch.lua")),
            owner_list: Script::from_lua(include_str!("../../redis/owner_list.lua")),
            reap_claim: Script::from_lua(include_str!("../../redis/reap_claim.lua")),
            reap_done: Script::from_lua(include_str!("../../redis/reap_done.lua")),
            pending_join: Script::from_lua(include_str!("../../redis/pending_join.lua")),
            pending_take: Script::from_lua(include_str!("../../redis/pending_take.lua")),
        }
    }
}

/// The pod's Redis handles: one client for commands and publishing, one
/// subscriber connection for the pod's channels.
pub struct Redis {
    /// This replica's id (its channels, and where receipts come back to).
    pub pod_id: std::sync::Arc<str>,
    pub client: Client,
    /// The pod's command channel (commands, kicks, answers).
    pub subscriber: SubscriberClient,
    /// Event channels of the pod's web clients (see [`hub`]).
    pub events: SubscriberClient,
    pub keys: Keys,
    pub scripts: Scripts,
    /// Sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`): on Redis Cluster.
    pub sharded: bool,
    /// Counts subscriptions renewed (after a reconnect, a topology change or
    /// a silent channel): messages published before may have been missed,
    /// so what was learnt from them is stale (see [`task_routes`]).
    pub resubscribed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Per registry bucket: commands being routed together.
    pub route_batches: Vec<std::sync::Arc<route_batch::Bucket>>,
    /// Delivery receipts of commands sent and received (see [`receipts`]).
    pub receipts: std::sync::Arc<receipts::Receipts>,
    /// The Redis command timeout; also how long a sender waits for a
    /// receipt.
    pub timeout: Duration,
    route_script_calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Redis {
    /// Builds both clients with an explicit reconnect policy, command
    /// timeouts and a pub/sub buffer sized by config (fred's defaults buffer
    /// 32 messages and give up reconnecting), and connects them.
    pub async fn connect(config: &Config, pod_id: std::sync::Arc<str>) -> crate::Result<Self> {
        let mode = config.resolved_redis_mode();
        let (url, tls) = tls::split_url(config.redis_url.expose());
        let mut redis_config = fred::types::config::Config::from_url(&url)?;
        if tls {
            redis_config.tls = Some(tls::connector(config.redis_tls_ca_file.as_deref())?.into());
        }
        if mode == RedisMode::Cluster {
            // `MESHGATE_REDIS_MODE=cluster` with a plain URL: a seed node.
            if let ServerConfig::Centralized { server } = &redis_config.server {
                redis_config.server = ServerConfig::Clustered {
                    hosts: vec![server.clone()],
                    policy: Default::default(),
                };
            }
        }
        let mut builder = Builder::from_config(redis_config);
        builder
            .with_config(|c| {
                // Fail at start-up if Redis is not there at all; after that,
                // the reconnect policy takes over.
                c.fail_fast = true;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.redis_timeout();
                p.broadcast_channel_capacity = config.redis_pubsub_buffer;
            })
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(5);
                c.internal_command_timeout = Duration::from_secs(5);
                c.max_command_attempts = 2;
                c.tcp = fred::types::config::TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(10)),
                    interval: Duration::from_secs(2),
                };
            })
            // Retry forever, 50 ms doubling up to 2 s.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        let subscriber = builder.build_subscriber_client()?;
        let events = builder.build_subscriber_client()?;
        // fred gives every client eight broadcast channels of this capacity,
        // allocated up front (~50 MB at 65,536). Only the subscribers need
        // room for bursts of messages; the command client's channels carry
        // a few connection events.
        builder
            .with_performance_config(|p| p.broadcast_channel_capacity = COMMAND_CLIENT_BROADCAST);
        let client = builder.build()?;
        client.init().await?;
        subscriber.init().await?;
        events.init().await?;
        let keys = Keys::new(
            &config.redis_prefix,
            config.resolved_redis_buckets(),
            mode.sharded(),
        );
        let scripts = Scripts::new();
        let publish = pubsub::publish_command(mode.sharded());
        let route_script_calls = std::sync::Arc::<std::sync::atomic::AtomicU64>::default();
        let route_batches = (0..keys.buckets())
            .map(|b| {
                std::sync::Arc::new(route_batch::Bucket::new(
                    client.clone(),
                    scripts.route.clone(),
                    keys.pod_channel_prefix(b),
                    publish,
                    config.redis_timeout(),
                    route_script_calls.clone(),
                ))
            })
            .collect();
        let receipts = std::sync::Arc::new(receipts::Receipts::new(client.clone(), publish));
        Ok(Self {
            pod_id,
            receipts,
            timeout: config.redis_timeout(),
            client,
            subscriber,
            events,
            keys,
            scripts,
            sharded: mode.sharded(),
            resubscribed: Default::default(),
            route_batches,
            route_script_calls,
        })
    }

    /// Script calls that routed commands from this pod so far.
    pub fn route_script_calls(&self) -> u64 {
        self.route_script_calls
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Fails at once while the command connection is down, so callers get
    /// a clear 503/`error` instead of waiting out the command timeout.
    pub fn ensure_connected(&self) -> crate::Result<()> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(
                fred::error::Error::new(fred::error::ErrorKind::IO, "redis is not connected")
                    .into(),
            )
        }
    }

    /// Closes both connections (used on shutdown and to simulate a crash).
    pub async fn quit(&self) {
        let _ = self.events.quit().await;
        let _ = self.subscriber.quit().await;
        let _ = self.client.quit().await;
    }
}

/// Broadcast capacity of the command client (see `Redis::connect`).
const COMMAND_CLIENT_BROADCAST: usize = 256;

/// Current time in milliseconds since the epoch, as stored in the registry.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
