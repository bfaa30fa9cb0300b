//! The Redis side of meshgate: everything pods share lives here.
//!
//! - [`registry`]: which daemon is connected to which pod, with leases.
//! - [`routing`]: `send_command` from any pod to any daemon over pub/sub.
//! - [`reaper`]: exactly-once cleanup after a daemon is gone for good.
//! - [`events`]: events for web clients, published per owner and per task.
//!
//! Key layout (all under the configured prefix `P`) is documented in
//! `redis/README.md`.

pub mod events;
pub mod hub;
pub mod liveness;
pub mod pending;
pub mod reaper;
pub mod reauth;
pub mod registry;
pub mod routing;
pub mod tickets;
pub mod toolkeys;

use std::time::Duration;

use fred::{
    clients::SubscriberClient,
    prelude::*,
    types::{config::UnresponsiveConfig, scripts::Script},
};

use crate::config::Config;

/// Names of every key and channel, derived from the prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Registry entry of one daemon (hash, leased).
    pub fn daemon(&self, daemon_id: uuid::Uuid) -> String {
        format!("{}{daemon_id}", self.daemon_prefix())
    }

    /// Prefix of [`Keys::daemon`], for scripts that build the key themselves.
    pub fn daemon_prefix(&self) -> String {
        format!("{}:daemon:", self.prefix)
    }

    /// Per-owner index of connected daemons (zset: id → lease deadline).
    pub fn owner_daemons(&self, owner_id: uuid::Uuid) -> String {
        format!("{}:owner:{owner_id}:daemons", self.prefix)
    }

    /// When each gone daemon's tasks are due for cleanup (zset: id → ms).
    pub fn reap(&self) -> String {
        format!("{}:reap", self.prefix)
    }

    /// Prefix of the per-pod command channels.
    pub fn pod_channel_prefix(&self) -> String {
        format!("{}:pod:", self.prefix)
    }

    /// The command channel of one pod.
    pub fn pod_channel(&self, pod_id: &str) -> String {
        format!("{}{pod_id}", self.pod_channel_prefix())
    }

    /// Pods waiting for a daemon's answer of `kind` about a task (set, TTL).
    pub fn pending(&self, kind: &str, task_id: uuid::Uuid) -> String {
        format!("{}:pending:{kind}:{task_id}", self.prefix)
    }

    /// Prefix of tool key entries (followed by the key's SHA-256).
    pub fn tool_key_prefix(&self) -> String {
        format!("{}:toolkey:", self.prefix)
    }

    /// Which key hash a task's tool key has.
    pub fn tool_key_of_task(&self, task_id: uuid::Uuid) -> String {
        format!("{}:toolkey-task:{task_id}", self.prefix)
    }

    /// Last reauth status of a daemon's request.
    pub fn reauth(&self, daemon_id: uuid::Uuid, request_id: uuid::Uuid) -> String {
        format!("{}:reauth:{daemon_id}:{request_id}", self.prefix)
    }

    /// A web client ticket (by hash).
    pub fn ticket(&self, hash: &str) -> String {
        format!("{}:ticket:{hash}", self.prefix)
    }

    /// This pod's own event-hub channel (self-pings only).
    pub fn pod_events(&self, pod_id: &str) -> String {
        format!("{}:podev:{pod_id}", self.prefix)
    }

    /// Events of one owner (task updates, files, daemon presence).
    pub fn owner_events(&self, owner_id: uuid::Uuid) -> String {
        format!("{}:ev:owner:{owner_id}", self.prefix)
    }

    /// Events of one task (output, updates, merge/PR results).
    pub fn task_events(&self, task_id: uuid::Uuid) -> String {
        format!("{}:ev:task:{task_id}", self.prefix)
    }
}

/// The Lua scripts of `redis/`, loaded lazily (EVALSHA, reloaded on NOSCRIPT
/// so a restarted Redis needs nothing from us).
pub struct Scripts {
    pub register: Script,
    pub refresh: Script,
    pub unregister: Script,
    pub touch: Script,
    pub route: Script,
    pub list_owner: Script,
    pub reap_claim: Script,
    pub reap_done: Script,
    pub pending_join: Script,
    pub pending_take: Script,
    pub toolkey_set: Script,
    pub toolkey_revoke: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            register: Script::from_lua(include_str!("../../redis/register.lua")),
            refresh: Script::from_lua(include_str!("../../redis/refresh.lua")),
            unregister: Script::from_lua(include_str!("../../redis/unregister.lua")),
            touch: Script::from_lua(include_str!("../../redis/touch.lua")),
            route: Script::from_lua(include_str!("../../redis/route.lua")),
            list_owner: Script::from_lua(include_str!("../../redis/list_owner.lua")),
            reap_claim: Script::from_lua(include_str!("../../redis/reap_claim.lua")),
            reap_done: Script::from_lua(include_str!("../../redis/reap_done.lua")),
            pending_join: Script::from_lua(include_str!("../../redis/pending_join.lua")),
            pending_take: Script::from_lua(include_str!("../../redis/pending_take.lua")),
            toolkey_set: Script::from_lua(include_str!("../../redis/toolkey_set.lua")),
            toolkey_revoke: Script::from_lua(include_str!("../../redis/toolkey_revoke.lua")),
        }
    }
}

/// The pod's Redis handles: one client for commands and publishing, one
/// subscriber connection for the pod's channels.
pub struct Redis {
    pub client: Client,
    /// The pod's command channel (commands, kicks, answers).
    pub subscriber: SubscriberClient,
    /// Event channels of the pod's web clients (see [`hub`]).
    pub events: SubscriberClient,
    pub keys: Keys,
    pub scripts: Scripts,
}

impl Redis {
    /// Builds both clients with an explicit reconnect policy, command
    /// timeouts and a pub/sub buffer sized by config (fred's defaults buffer
    /// 32 messages and give up reconnecting), and connects them.
    pub async fn connect(config: &Config) -> crate::Result<Self> {
        let redis_config = fred::types::config::Config::from_url(config.redis_url.expose())?;
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
        let client = builder.build()?;
        let subscriber = builder.build_subscriber_client()?;
        let events = builder.build_subscriber_client()?;
        client.init().await?;
        subscriber.init().await?;
        events.init().await?;
        Ok(Self {
            client,
            subscriber,
            events,
            keys: Keys::new(&config.redis_prefix),
            scripts: Scripts::new(),
        })
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

/// Current time in milliseconds since the epoch, as stored in the registry.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
