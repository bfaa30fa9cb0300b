//! One typed configuration for a replica, read from the environment and
//! flags (12-factor), validated once at start-up.
//!
//! Every setting is an environment variable (names from `API.md`) and a flag.
//! The flag is the short kebab-case name (`--lease-ttl-ms`); the env name in
//! kebab-case (`--meshgate-lease-ttl-ms`) is accepted as an alias.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::Args;

/// A string that never prints: connection URLs carry passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that must not reach logs.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Settings of `meshgate serve` (and the parts `migrate`/`admin` share).
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on.
    #[arg(
        long = "listen",
        alias = "meshgate-listen",
        env = "MESHGATE_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// Connections the kernel holds for the pod before it accepts them
    /// (the listen backlog; Linux caps it at `net.core.somaxconn`). The
    /// usual 128 overflows when a fleet reconnects at once (a pod restart):
    /// each dropped SYN is retried by the daemon's kernel only after 1 s.
    #[arg(
        long = "listen-backlog",
        alias = "meshgate-listen-backlog",
        env = "MESHGATE_LISTEN_BACKLOG",
        default_value_t = 4096
    )]
    pub listen_backlog: u32,

    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/meshgate",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub database_url: Secret,

    /// Redis connection URL (`redis://`, `redis-cluster://`, `redis-sentinel://`).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub redis_url: Secret,

    /// Prefix of every Redis key and channel, so several deployments (or
    /// tests) can share one Redis.
    #[arg(
        long = "redis-prefix",
        alias = "meshgate-redis-prefix",
        env = "MESHGATE_REDIS_PREFIX",
        default_value = "meshgate"
    )]
    pub redis_prefix: String,

    /// How to talk to Redis: `auto` (from the URL scheme: `redis-cluster://`
    /// is a cluster, `redis-sentinel://` Sentinel, else one server),
    /// `standalone`, `sentinel`, or `cluster` (a plain `redis://` URL is then
    /// taken as a seed node). A cluster uses sharded pub/sub.
    #[arg(
        long = "redis-mode",
        alias = "meshgate-redis-mode",
        env = "MESHGATE_REDIS_MODE",
        value_enum,
        default_value_t = RedisMode::Auto
    )]
    pub redis_mode: RedisMode,

    /// PEM file of CA certificates trusted for TLS to Redis (`rediss://…`),
    /// in addition to the system's.
    #[arg(
        long = "redis-tls-ca-file",
        alias = "meshgate-redis-tls-ca-file",
        env = "MESHGATE_REDIS_TLS_CA_FILE"
    )]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,

    /// Registry buckets: a daemon's keys and its command channel share the
    /// hash slot of its bucket. Default 1 on one server, 16 on a cluster
    /// (at least the number of primaries). Every pod must use the same value.
    #[arg(
        long = "redis-buckets",
        alias = "meshgate-redis-buckets",
        env = "MESHGATE_REDIS_BUCKETS"
    )]
    pub redis_buckets: Option<u16>,

    /// This replica's id; default: hostname plus a random suffix.
    #[arg(long = "pod-id", alias = "meshgate-pod-id", env = "MESHGATE_POD_ID")]
    pub pod_id: Option<String>,

    /// How long a registry entry outlives its pod's last refresh.
    #[arg(
        long = "lease-ttl-ms",
        alias = "meshgate-lease-ttl-ms",
        env = "MESHGATE_LEASE_TTL_MS",
        default_value_t = 15_000
    )]
    pub lease_ttl_ms: u64,

    /// How often a pod refreshes the leases of its daemons; default a third
    /// of the lease TTL.
    #[arg(
        long = "lease-refresh-ms",
        alias = "meshgate-lease-refresh-ms",
        env = "MESHGATE_LEASE_REFRESH_MS"
    )]
    pub lease_refresh_ms: Option<u64>,

    /// How long a gone daemon may take to come back before its tasks are
    /// retried.
    #[arg(
        long = "disconnect-grace-ms",
        alias = "meshgate-disconnect-grace-ms",
        env = "MESHGATE_DISCONNECT_GRACE_MS",
        default_value_t = 30_000
    )]
    pub disconnect_grace_ms: u64,

    /// How often each pod looks for daemons whose grace period is over.
    #[arg(
        long = "reaper-interval-ms",
        alias = "meshgate-reaper-interval-ms",
        env = "MESHGATE_REAPER_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub reaper_interval_ms: u64,

    /// How long a waiting route waits for a daemon's answer.
    #[arg(
        long = "request-timeout-ms",
        alias = "meshgate-request-timeout-ms",
        env = "MESHGATE_REQUEST_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub request_timeout_ms: u64,

    /// How long after a `spawnTask` left (or a task was last reported) a
    /// heartbeat without the task counts (PROTOCOL.md §1.4).
    #[arg(
        long = "reconcile-after-ms",
        alias = "meshgate-reconcile-after-ms",
        env = "MESHGATE_RECONCILE_AFTER_MS",
        default_value_t = 15_000
    )]
    pub reconcile_after_ms: u64,

    /// How long a SIGTERM drain may take.
    #[arg(
        long = "drain-ms",
        alias = "meshgate-drain-ms",
        env = "MESHGATE_DRAIN_MS",
        default_value_t = 20_000
    )]
    pub drain_ms: u64,

    /// Tokio worker threads of a replica; 0: one per CPU the process may
    /// use (a cgroup CPU limit counts). With a CPU limit of one, one worker
    /// avoids waking a second thread for work one thread could do.
    #[arg(
        long = "worker-threads",
        alias = "meshgate-worker-threads",
        env = "MESHGATE_WORKER_THREADS",
        default_value_t = 0
    )]
    pub worker_threads: usize,

    /// How long an event ticket stays valid.
    #[arg(
        long = "ticket-ttl-ms",
        alias = "meshgate-ticket-ttl-ms",
        env = "MESHGATE_TICKET_TTL_MS",
        default_value_t = 60_000
    )]
    pub ticket_ttl_ms: u64,

    /// Largest WebSocket message a daemon may send, in bytes (patches travel
    /// inline, so this bounds patch size too).
    #[arg(long = "max-frame-bytes", alias = "meshgate-max-frame-bytes", env = "MESHGATE_MAX_FRAME_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// Commands queued for one daemon socket before further ones are refused.
    #[arg(
        long = "daemon-queue",
        alias = "meshgate-daemon-queue",
        env = "MESHGATE_DAEMON_QUEUE",
        default_value_t = 1024
    )]
    pub daemon_queue: usize,

    /// Output lines queued for storage per pod before daemon sockets are
    /// slowed down (backpressure).
    #[arg(
        long = "output-queue",
        alias = "meshgate-output-queue",
        env = "MESHGATE_OUTPUT_QUEUE",
        default_value_t = 10_000
    )]
    pub output_queue: usize,

    /// How long a pod trusts its cached task → (owner, daemon) when sending
    /// a command to a task; changes are announced to every pod at once, this
    /// bounds an entry whose announcement was lost. 0 turns the cache off.
    #[arg(
        long = "task-route-cache-ms",
        alias = "meshgate-task-route-cache-ms",
        env = "MESHGATE_TASK_ROUTE_CACHE_MS",
        default_value_t = 2_000
    )]
    pub task_route_cache_ms: u64,

    /// Output writers per pod (each stores its share of the tasks' lines
    /// in batches; one PostgreSQL round trip at a time each).
    #[arg(
        long = "output-writers",
        alias = "meshgate-output-writers",
        env = "MESHGATE_OUTPUT_WRITERS",
        default_value_t = 2
    )]
    pub output_writers: usize,

    /// How long a tool key lives unless revoked first.
    #[arg(
        long = "tool-key-ttl-ms",
        alias = "meshgate-tool-key-ttl-ms",
        env = "MESHGATE_TOOL_KEY_TTL_MS",
        default_value_t = 7 * 24 * 3600 * 1000
    )]
    pub tool_key_ttl_ms: u64,

    /// How long a daemon's reauth status stays readable.
    #[arg(
        long = "reauth-ttl-ms",
        alias = "meshgate-reauth-ttl-ms",
        env = "MESHGATE_REAUTH_TTL_MS",
        default_value_t = 15 * 60 * 1000
    )]
    pub reauth_ttl_ms: u64,

    /// Branch name prefix of pull requests meshgate opens by itself.
    #[arg(
        long = "pr-branch-prefix",
        alias = "meshgate-pr-branch-prefix",
        env = "MESHGATE_PR_BRANCH_PREFIX",
        default_value = "meshgate/"
    )]
    pub pr_branch_prefix: String,

    /// How often each pod looks for pending tasks that no kick dispatched.
    #[arg(
        long = "dispatch-sweep-ms",
        alias = "meshgate-dispatch-sweep-ms",
        env = "MESHGATE_DISPATCH_SWEEP_MS",
        default_value_t = 5_000
    )]
    pub dispatch_sweep_ms: u64,

    /// How long a checked API key is trusted before it is looked up again
    /// (a revoked key stops working within this time).
    #[arg(
        long = "auth-cache-ms",
        alias = "meshgate-auth-cache-ms",
        env = "MESHGATE_AUTH_CACHE_MS",
        default_value_t = 5_000
    )]
    pub auth_cache_ms: u64,

    /// Events queued per web client; a client that falls this far behind is
    /// disconnected (close code 4008) instead of slowing anyone else.
    #[arg(
        long = "client-queue",
        alias = "meshgate-client-queue",
        env = "MESHGATE_CLIENT_QUEUE",
        default_value_t = 4096
    )]
    pub client_queue: usize,

    /// Stored output lines a pod reads per second for its web clients'
    /// replays (`since`, `Last-Event-ID`, gap repair), all clients
    /// together, so that replays leave live output its share; 0: no bound.
    #[arg(
        long = "client-replay-rate",
        alias = "meshgate-client-replay-rate",
        env = "MESHGATE_CLIENT_REPLAY_RATE",
        default_value_t = 20_000
    )]
    pub client_replay_rate: u64,

    /// Interval of SSE keep-alive comments (so proxies keep idle streams).
    #[arg(
        long = "sse-keepalive-ms",
        alias = "meshgate-sse-keepalive-ms",
        env = "MESHGATE_SSE_KEEPALIVE_MS",
        default_value_t = 15_000
    )]
    pub sse_keepalive_ms: u64,

    /// How often a pod checks that its own Redis subscriptions deliver
    /// (readiness fails after three missed rounds).
    #[arg(
        long = "self-ping-ms",
        alias = "meshgate-self-ping-ms",
        env = "MESHGATE_SELF_PING_MS",
        default_value_t = 1_000
    )]
    pub self_ping_ms: u64,

    /// How often a daemon socket is pinged; one silent for three intervals
    /// is closed (its machine is gone) so its tasks can be retried.
    #[arg(
        long = "daemon-ping-ms",
        alias = "meshgate-daemon-ping-ms",
        env = "MESHGATE_DAEMON_PING_MS",
        default_value_t = 20_000
    )]
    pub daemon_ping_ms: u64,

    /// Timeout of a single Redis command.
    #[arg(
        long = "redis-timeout-ms",
        alias = "meshgate-redis-timeout-ms",
        env = "MESHGATE_REDIS_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub redis_timeout_ms: u64,

    /// Capacity of the buffer between the Redis subscriber connection and
    /// the pod; messages beyond it are counted as lost.
    #[arg(
        long = "redis-pubsub-buffer",
        alias = "meshgate-redis-pubsub-buffer",
        env = "MESHGATE_REDIS_PUBSUB_BUFFER",
        default_value_t = 65_536
    )]
    pub redis_pubsub_buffer: usize,

    /// Largest PostgreSQL pool per replica.
    #[arg(
        long = "db-max-connections",
        alias = "meshgate-db-max-connections",
        env = "MESHGATE_DB_MAX_CONNECTIONS",
        default_value_t = 16
    )]
    pub db_max_connections: u32,

    /// Apply migrations when `serve` starts.
    #[arg(long = "migrate-on-start", alias = "meshgate-migrate-on-start", env = "MESHGATE_MIGRATE_ON_START", default_value_t = false, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// Log as JSON lines instead of text.
    #[arg(long = "log-json", alias = "meshgate-log-json", env = "MESHGATE_LOG_JSON", default_value_t = false, action = clap::ArgAction::Set)]
    pub log_json: bool,
}

/// A setting that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {reason}")]
pub struct ConfigError {
    name: &'static str,
    reason: String,
}

impl Config {
    /// Checks what clap cannot: ranges and relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |name, reason: &str| {
            Err(ConfigError {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.lease_ttl_ms < 100 {
            return bad("MESHGATE_LEASE_TTL_MS", "must be at least 100");
        }
        if self.lease_refresh() >= self.lease_ttl() {
            return bad(
                "MESHGATE_LEASE_REFRESH_MS",
                "must be shorter than the lease TTL",
            );
        }
        if self.lease_refresh_ms == Some(0) || self.reaper_interval_ms == 0 {
            return bad(
                "MESHGATE_LEASE_REFRESH_MS/REAPER_INTERVAL_MS",
                "must be above 0",
            );
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.contains(char::is_whitespace)
            || self.redis_prefix.contains(['{', '}'])
        {
            return bad(
                "MESHGATE_REDIS_PREFIX",
                "must be non-empty without spaces or braces (braces are hash tags)",
            );
        }
        if let Some(id) = self.pod_id.as_deref().filter(|id| !id.is_empty()) {
            if !crate::cluster::pod_message::valid_pod_id(id) {
                return bad(
                    "MESHGATE_POD_ID",
                    "must be at most 200 visible ASCII characters without '|', ':' or ','",
                );
            }
        }
        if self.reconcile_after_ms < 10 {
            return bad("MESHGATE_RECONCILE_AFTER_MS", "must be at least 10");
        }
        if self.redis_buckets == Some(0) || self.redis_buckets > Some(1024) {
            return bad("MESHGATE_REDIS_BUCKETS", "must be between 1 and 1024");
        }
        if self.max_frame_bytes < 1024 {
            return bad("MESHGATE_MAX_FRAME_BYTES", "must be at least 1024");
        }
        if self.daemon_queue == 0 || self.redis_pubsub_buffer == 0 || self.output_queue == 0 {
            return bad(
                "MESHGATE_DAEMON_QUEUE/REDIS_PUBSUB_BUFFER",
                "must be above 0",
            );
        }
        if self.db_max_connections == 0 {
            return bad("MESHGATE_DB_MAX_CONNECTIONS", "must be above 0");
        }
        if !self.database_url.expose().starts_with("postgres") {
            return bad("DATABASE_URL", "must be a postgres:// or postgresql:// URL");
        }
        if !self.redis_url.expose().starts_with("redis") {
            return bad("REDIS_URL", "must be a redis URL");
        }
        let (mode, url_mode) = (self.resolved_redis_mode(), self.redis_url_mode());
        // A plain URL may name a cluster's seed node; nothing else may differ.
        if mode != url_mode && !(mode == RedisMode::Cluster && url_mode == RedisMode::Standalone) {
            return bad(
                "MESHGATE_REDIS_MODE",
                "does not match the REDIS_URL scheme (redis-cluster:// or redis-sentinel://)",
            );
        }
        Ok(())
    }

    /// The pod id in use: the configured one or hostname plus a suffix.
    pub fn resolved_pod_id(&self) -> String {
        match &self.pod_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_owned())
                    .unwrap_or_else(|_| "meshgate".to_owned());
                let suffix: u32 = rand::random();
                // Only the characters pod messages can carry.
                let host: String = host
                    .chars()
                    .map(|c| match c {
                        '|' | ':' | ',' => '-',
                        c if c.is_ascii_graphic() => c,
                        _ => '-',
                    })
                    .take(180)
                    .collect();
                format!("{host}-{suffix:08x}")
            }
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn lease_refresh(&self) -> Duration {
        Duration::from_millis(self.lease_refresh_ms.unwrap_or(self.lease_ttl_ms / 3))
    }

    pub fn disconnect_grace(&self) -> Duration {
        Duration::from_millis(self.disconnect_grace_ms)
    }

    pub fn reaper_interval(&self) -> Duration {
        Duration::from_millis(self.reaper_interval_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn reconcile_after(&self) -> Duration {
        Duration::from_millis(self.reconcile_after_ms)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }

    pub fn dispatch_sweep(&self) -> Duration {
        Duration::from_millis(self.dispatch_sweep_ms.max(1))
    }

    pub fn task_route_cache(&self) -> Duration {
        Duration::from_millis(self.task_route_cache_ms)
    }

    pub fn daemon_ping(&self) -> Duration {
        Duration::from_millis(self.daemon_ping_ms.max(10))
    }

    pub fn self_ping(&self) -> Duration {
        Duration::from_millis(self.self_ping_ms.max(10))
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }

    /// The Redis deployment in use, with `auto` resolved from the URL.
    pub fn resolved_redis_mode(&self) -> RedisMode {
        match self.redis_mode {
            RedisMode::Auto => self.redis_url_mode(),
            mode => mode,
        }
    }

    /// The deployment the URL scheme names.
    fn redis_url_mode(&self) -> RedisMode {
        let scheme = self.redis_url.expose().split("://").next().unwrap_or("");
        if scheme.ends_with("-cluster") {
            RedisMode::Cluster
        } else if scheme.ends_with("-sentinel") {
            RedisMode::Sentinel
        } else {
            RedisMode::Standalone
        }
    }

    /// Registry buckets in use (see `redis_buckets`).
    pub fn resolved_redis_buckets(&self) -> usize {
        match (self.redis_buckets, self.resolved_redis_mode()) {
            (Some(n), _) => usize::from(n),
            (None, RedisMode::Cluster) => 16,
            (None, _) => 1,
        }
    }
}

/// Which kind of Redis deployment meshgate talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisMode {
    Auto,
    Standalone,
    Sentinel,
    Cluster,
}

impl RedisMode {
    /// Whether pub/sub is sharded (`SPUBLISH`/`SSUBSCRIBE`).
    pub fn sharded(self) -> bool {
        self == RedisMode::Cluster
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn secrets_do_not_print() {
        let cli = Cli::parse_from(["t", "--database-url", "postgres://u:hunter2@h/db"]);
        assert!(!format!("{:?}", cli.config).contains("hunter2"));
    }

    #[test]
    fn env_name_in_kebab_case_is_accepted_as_a_flag() {
        let cli = Cli::parse_from(["t", "--meshgate-lease-ttl-ms", "900"]);
        assert_eq!(cli.config.lease_ttl_ms, 900);
        assert_eq!(cli.config.lease_refresh(), Duration::from_millis(300));
    }

    #[test]
    fn refresh_not_shorter_than_lease_is_refused() {
        let cli = Cli::parse_from(["t", "--lease-ttl-ms", "1000", "--lease-refresh-ms", "1000"]);
        let err = cli.config.validate().unwrap_err().to_string();
        assert!(err.contains("MESHGATE_LEASE_REFRESH_MS"), "{err}");
    }

    fn parse(args: &[&str]) -> Config {
        Cli::parse_from(std::iter::once("t").chain(args.iter().copied())).config
    }

    #[test]
    fn the_url_scheme_selects_the_redis_mode_and_buckets() {
        let one = parse(&["--redis-url", "redis://h:6379"]);
        assert_eq!(one.resolved_redis_mode(), RedisMode::Standalone);
        assert_eq!(one.resolved_redis_buckets(), 1);
        let cluster = parse(&["--redis-url", "redis-cluster://h:7000?node=h:7001"]);
        assert_eq!(cluster.resolved_redis_mode(), RedisMode::Cluster);
        assert!(cluster.resolved_redis_mode().sharded());
        assert_eq!(cluster.resolved_redis_buckets(), 16);
        let sentinel = parse(&[
            "--redis-url",
            "redis-sentinel://h:26379/0?sentinelServiceName=m",
        ]);
        assert_eq!(sentinel.resolved_redis_mode(), RedisMode::Sentinel);
        assert!(!sentinel.resolved_redis_mode().sharded());
        // A plain URL is a seed node when the mode says cluster.
        let seed = parse(&["--redis-url", "redis://h:7000", "--redis-mode", "cluster"]);
        assert_eq!(seed.resolved_redis_mode(), RedisMode::Cluster);
        seed.validate().unwrap();
        let buckets = parse(&[
            "--redis-url",
            "redis-cluster://h:7000",
            "--redis-buckets",
            "64",
        ]);
        assert_eq!(buckets.resolved_redis_buckets(), 64);
    }

    #[test]
    fn contradicting_redis_settings_are_refused() {
        for args in [
            &[
                "--redis-url",
                "redis-cluster://h:7000",
                "--redis-mode",
                "standalone",
            ][..],
            &["--redis-url", "redis://h:6379", "--redis-mode", "sentinel"],
            &["--redis-url", "redis://h:6379", "--redis-buckets", "0"],
            &["--redis-prefix", "a{b}"],
        ] {
            let err = parse(args).validate().unwrap_err().to_string();
            assert!(err.contains("MESHGATE_REDIS"), "{args:?}: {err}");
        }
    }
}
