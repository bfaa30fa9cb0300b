//! `meshgate sim`: simulated daemons, thousands per process.
//!
//! Each simulated daemon is one tokio task holding one WebSocket to
//! `/api/v1/mesh/daemons/connect`. It authenticates as `<prefix>-<n>`,
//! reports its directories, heartbeats, runs the tasks it is given
//! (`spawnTask` → `taskStatusChange` running, `registerToolKey`, Claude Code
//! stream-json `taskOutput` lines, a `taskProgress`, `taskComplete`), answers
//! every command of PROTOCOL.md §1.2 that expects an answer ([`answers`]),
//! and reconnects with backoff when its socket ends (a draining pod sends
//! `reconnect`, then closes).
//!
//! A daemon costs little: one task, one socket with a 4 KiB read buffer and
//! a write buffer that only grows while a burst is being written, no per
//! daemon channels. The benchmark (`meshgate bench`) runs the same code with
//! an [`Observer`] that records what arrives.

pub mod answers;
mod daemon;
pub mod output;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::{Duration, SystemTime},
};

use clap::Args;
use serde::Serialize;
use tokio::{
    sync::{Notify, Semaphore},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{config::Secret, protocol::daemon::DaemonCommand};
pub use answers::RepoSnapshot;

/// Why [`Observer::disconnected`] is told a socket ended that
/// [`Sim::drop_connection`] dropped.
pub const DROPPED: &str = "dropped by the simulator";

/// Path of the daemon socket, appended to a bare `ws://host:port` URL.
pub const CONNECT_PATH: &str = "/api/v1/mesh/daemons/connect";

/// Flags of `meshgate sim`.
#[derive(Clone, Args)]
pub struct SimArgs {
    /// Server to dial: `ws://HOST:PORT` (the daemon path is added) or the
    /// full connect URL. `http://` is read as `ws://`.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    pub url: String,
    /// API key the daemons authenticate with.
    #[arg(long, env = "MESHGATE_API_KEY", hide_env_values = true)]
    pub key: Secret,
    /// Number of simulated daemons (machine ids `<prefix>-0` …).
    #[arg(long, default_value_t = 10)]
    pub daemons: usize,
    /// `maxConcurrentTasks` each daemon announces.
    #[arg(long, default_value_t = 2)]
    pub max_concurrent_tasks: u32,
    /// Interval between heartbeats of one daemon (the first is spread
    /// randomly over one interval).
    #[arg(long, default_value_t = 30_000)]
    pub heartbeat_ms: u64,
    /// Output lines a task prints (first `system` init, last `result`).
    #[arg(long, default_value_t = 40)]
    pub output_lines: u32,
    /// Pause between two output lines of a task; 0 streams as fast as the
    /// server accepts.
    #[arg(long, default_value_t = 50)]
    pub line_delay_ms: u64,
    /// A git repository whose diff and files the daemons report
    /// (otherwise diffs and files are generated).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Machine id prefix.
    #[arg(long, default_value = "sim")]
    pub machine_prefix: String,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 100)]
    pub connect_concurrency: usize,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration_s: u64,
}

/// What the simulator does; [`SimArgs`] in library form.
#[derive(Clone)]
pub struct SimConfig {
    /// Full `ws://…/api/v1/mesh/daemons/connect` URL.
    pub url: String,
    pub key: Secret,
    pub daemons: usize,
    /// Index of the first daemon (machine id `<prefix>-<first_index>`).
    pub first_index: usize,
    pub machine_prefix: String,
    pub max_concurrent_tasks: u32,
    pub heartbeat: Duration,
    pub output_lines: u32,
    pub line_delay: Duration,
    pub repo: Option<PathBuf>,
    pub connect_concurrency: usize,
    /// Start assistant text and tool results with `[sent <ns>] `.
    pub stamp_output: bool,
    /// Send `daemonDirectories` after authenticating, as real daemons do.
    pub send_directories: bool,
    /// Further servers (full connect URLs): daemon `slot` first dials entry
    /// `slot % n` of `url` and these, and the next one after each ended
    /// session or failed attempt, as a daemon behind a load balancer would.
    pub other_urls: Vec<String>,
    /// Print plain-text lines that name their run and number
    /// ([`output::numbered`]) instead of Claude output, so that what is
    /// stored can be checked line by line (`bench chaos`).
    pub numbered_output: bool,
}

impl SimConfig {
    /// Defaults for `daemons` daemons of `key` dialing `url`.
    pub fn new(url: &str, key: &str, daemons: usize) -> Self {
        Self {
            url: connect_url(url),
            key: Secret::new(key),
            daemons,
            first_index: 0,
            machine_prefix: "sim".into(),
            max_concurrent_tasks: 2,
            heartbeat: Duration::from_secs(30),
            output_lines: 40,
            line_delay: Duration::from_millis(50),
            repo: None,
            connect_concurrency: 100,
            stamp_output: false,
            send_directories: true,
            other_urls: Vec::new(),
            numbered_output: false,
        }
    }
}

impl From<&SimArgs> for SimConfig {
    fn from(a: &SimArgs) -> Self {
        Self {
            max_concurrent_tasks: a.max_concurrent_tasks.max(1),
            heartbeat: Duration::from_millis(a.heartbeat_ms.max(100)),
            output_lines: a.output_lines.max(1),
            line_delay: Duration::from_millis(a.line_delay_ms),
            repo: a.repo.clone(),
            machine_prefix: a.machine_prefix.clone(),
            connect_concurrency: a.connect_concurrency.max(1),
            ..Self::new(&a.url, a.key.expose(), a.daemons)
        }
    }
}

/// `ws://host:port` → the daemon connect URL; a full URL stays as it is.
pub fn connect_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let url = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if url.contains("://") {
        url.to_owned()
    } else {
        format!("ws://{url}")
    };
    if url.ends_with(CONNECT_PATH) {
        url
    } else {
        format!("{url}{CONNECT_PATH}")
    }
}

/// Hooks for whoever runs the simulator (the benchmark records here).
/// Called on the daemon's task: keep them short.
pub trait Observer: Send + Sync + 'static {
    /// Daemon `index` got `authenticated`, `took` after it began to connect.
    fn authenticated(&self, _index: usize, _daemon_id: Uuid, _took: Duration) {}
    /// A command arrived; `at` is taken right after it was decoded.
    fn command(&self, _index: usize, _command: &DaemonCommand, _at: SystemTime) {}
    /// A connection attempt failed or an open socket ended.
    fn disconnected(&self, _index: usize, _why: &str) {}
    /// Daemon `index` began to run `task` (a `spawnTask` it did not have)
    /// and is about to report it running; `run` numbers the runs of the
    /// whole simulator from 1.
    fn task_started(&self, _index: usize, _task: Uuid, _run: u64) {}
    /// Run `run` ended after printing `lines` lines: called right after
    /// its `taskComplete` was written, or its `interruptTask` arrived.
    fn task_ended(&self, _index: usize, _task: Uuid, _run: u64, _end: RunEnd, _lines: u32) {}
}

/// How a daemon's run of a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RunEnd {
    /// It sent `taskComplete`.
    Completed,
    /// The server sent `interruptTask`.
    Interrupted,
}

/// An observer that records nothing.
pub struct NoObserver;

impl Observer for NoObserver {}

/// Counters of the whole simulator.
#[derive(Default)]
pub struct SimStats {
    pub authenticated: AtomicU64,
    pub open: AtomicU64,
    pub connect_failures: AtomicU64,
    pub disconnects: AtomicU64,
    pub reconnect_commands: AtomicU64,
    pub commands: AtomicU64,
    pub answers: AtomicU64,
    pub errors_received: AtomicU64,
    pub tasks_started: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_interrupted: AtomicU64,
    pub output_lines: AtomicU64,
    /// Sockets dropped on purpose ([`Sim::drop_connection`]).
    pub dropped: AtomicU64,
}

/// A copy of [`SimStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimCounts {
    pub authenticated: u64,
    pub open: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub reconnect_commands: u64,
    pub commands: u64,
    pub answers: u64,
    pub errors_received: u64,
    pub tasks_started: u64,
    pub tasks_completed: u64,
    pub tasks_interrupted: u64,
    pub output_lines: u64,
    pub dropped: u64,
}

impl SimStats {
    pub fn snapshot(&self) -> SimCounts {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimCounts {
            authenticated: g(&self.authenticated),
            open: g(&self.open),
            connect_failures: g(&self.connect_failures),
            disconnects: g(&self.disconnects),
            reconnect_commands: g(&self.reconnect_commands),
            commands: g(&self.commands),
            answers: g(&self.answers),
            errors_received: g(&self.errors_received),
            tasks_started: g(&self.tasks_started),
            tasks_completed: g(&self.tasks_completed),
            tasks_interrupted: g(&self.tasks_interrupted),
            output_lines: g(&self.output_lines),
            dropped: g(&self.dropped),
        }
    }
}

/// What every daemon task shares.
struct Shared {
    config: SimConfig,
    repo: Option<RepoSnapshot>,
    observer: Arc<dyn Observer>,
    stats: SimStats,
    /// Daemon ids, set at each daemon's first `authenticated`.
    ids: Vec<OnceLock<Uuid>>,
    stop: CancellationToken,
    /// Running tasks skip to their `result` line.
    finish: AtomicBool,
    /// Pause between two lines of a task (starts as `config.line_delay`).
    line_delay_us: AtomicU64,
    connect_gate: Semaphore,
    /// Runs started so far (numbers them).
    runs: AtomicU64,
    /// Per daemon: drop the socket now ([`Sim::drop_connection`]).
    kicks: Vec<Notify>,
    /// Per daemon: ms after `epoch` before which it does not dial.
    offline_until_ms: Vec<AtomicU64>,
    epoch: std::time::Instant,
}

/// A running simulator.
pub struct Sim {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sim {
    /// Starts every daemon on the current tokio runtime.
    pub fn start(config: SimConfig, observer: Arc<dyn Observer>) -> anyhow::Result<Self> {
        let repo = config.repo.as_deref().map(RepoSnapshot::read).transpose()?;
        let shared = Arc::new(Shared {
            repo,
            observer,
            stats: SimStats::default(),
            ids: (0..config.daemons).map(|_| OnceLock::new()).collect(),
            stop: CancellationToken::new(),
            finish: AtomicBool::new(false),
            line_delay_us: AtomicU64::new(config.line_delay.as_micros() as u64),
            connect_gate: Semaphore::new(config.connect_concurrency.max(1)),
            runs: AtomicU64::new(0),
            kicks: (0..config.daemons).map(|_| Notify::new()).collect(),
            offline_until_ms: (0..config.daemons).map(|_| AtomicU64::new(0)).collect(),
            epoch: std::time::Instant::now(),
            config,
        });
        let tasks = (0..shared.config.daemons)
            .map(|slot| tokio::spawn(daemon::run(slot, shared.clone())))
            .collect();
        Ok(Self { shared, tasks })
    }

    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }

    /// Daemon ids by slot (`None` until that daemon first authenticated).
    pub fn daemon_ids(&self) -> Vec<Option<Uuid>> {
        self.shared.ids.iter().map(|c| c.get().copied()).collect()
    }

    /// Waits until `n` daemons are connected and authenticated; false on timeout.
    pub async fn wait_open(&self, n: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.shared.stats.open.load(Ordering::Relaxed) < n {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Changes the pause between output lines of every task from now on.
    pub fn set_line_delay(&self, delay: Duration) {
        self.shared
            .line_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// Drops daemon `slot`'s socket without a close frame, as a network
    /// cut would; it dials again no sooner than `offline` from now (then
    /// with backoff) and keeps its tasks meanwhile, as a daemon on the far
    /// side of a partition would. A daemon that is offline right now drops
    /// its next socket at once.
    pub fn drop_connection(&self, slot: usize, offline: Duration) {
        let (Some(kick), Some(until)) = (
            self.shared.kicks.get(slot),
            self.shared.offline_until_ms.get(slot),
        ) else {
            return;
        };
        let at = self.shared.epoch.elapsed() + offline;
        until.store(at.as_millis() as u64, Ordering::Relaxed);
        kick.notify_one();
    }

    /// Makes running tasks print their `result` line and complete now.
    pub fn finish_streams(&self) {
        self.shared.finish.store(true, Ordering::Relaxed);
    }

    /// Closes every socket (with a close frame) and waits for the daemons.
    pub async fn stop(self) {
        self.shared.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Raises the soft open-file limit to the hard one (one socket per daemon).
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// `meshgate sim`: runs until Ctrl-C (or `--duration-s`), printing a status
/// line to stderr every 5 s.
pub async fn cli(args: SimArgs) -> anyhow::Result<()> {
    let limit = raise_nofile_limit();
    if (limit as usize) < args.daemons + 64 {
        eprintln!(
            "warning: open-file limit {limit} is low for {} daemons; raise `ulimit -n`",
            args.daemons
        );
    }
    let config = SimConfig::from(&args);
    eprintln!(
        "sim: {} daemons dialing {} (machine ids {}-0…)",
        config.daemons, config.url, config.machine_prefix
    );
    let sim = Sim::start(config, Arc::new(LogObserver::default()))?;
    let until = async {
        if args.duration_s > 0 {
            tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    tokio::pin!(until);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut until => break,
            _ = tick.tick() => {
                let s = sim.stats().snapshot();
                eprintln!(
                    "sim: {}/{} open, {} authentications, {} connect failures, tasks {} started {} completed, {} output lines, {} commands, {} answers",
                    s.open, args.daemons, s.authenticated, s.connect_failures, s.tasks_started,
                    s.tasks_completed, s.output_lines, s.commands, s.answers
                );
            }
        }
    }
    eprintln!("sim: stopping");
    let stats = sim.stats().snapshot();
    sim.stop().await;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}

/// Prints the first few connection problems, then only counts them.
#[derive(Default)]
struct LogObserver {
    printed: AtomicU64,
}

impl Observer for LogObserver {
    fn disconnected(&self, index: usize, why: &str) {
        if self.printed.fetch_add(1, Ordering::Relaxed) < 20 {
            eprintln!("sim: daemon {index}: {why}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::connect_url;

    #[test]
    fn the_daemon_path_is_added_to_a_bare_server_url() {
        let full = "ws://127.0.0.1:8080/api/v1/mesh/daemons/connect";
        assert_eq!(connect_url("ws://127.0.0.1:8080"), full);
        assert_eq!(connect_url("http://127.0.0.1:8080/"), full);
        assert_eq!(connect_url("127.0.0.1:8080"), full);
        assert_eq!(connect_url(full), full);
    }
}
