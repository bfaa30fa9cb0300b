//! `meshgate bench <scenario>`: load scenarios that match the peer
//! benchmark (`shared/bench/peer-socketio`) so the two can be run side by
//! side on one machine. Each starts what it needs on loopback — pods as
//! child processes of this binary, a fresh database, a random Redis prefix,
//! simulated daemons ([`crate::sim`]) and clients in this process on named
//! runtimes — runs, stops everything it started, and prints one JSON line
//! on stdout (progress on stderr).
//!
//! Scenarios: `route` (commands injected inside pod B's process; with
//! `--overload`, against a private Redis with a low pub/sub buffer limit),
//! `api` (the same through `POST /tasks/{id}/message`), `idle` (memory per
//! idle daemon), `ingest` (task output persisted and streamed to a web
//! client), `register` (connect + authenticate rate), `chaos` (tasks run
//! while pods, Redis, subscribers and daemon sockets fail; then checked
//! for exactly-once from PostgreSQL and the daemons' records).
//! `bench/RESULTS.md` says how each is measured.

mod api;
mod chaos;
mod http_load;
mod idle;
mod ingest;
mod inject;
mod procs;
mod register;
mod resume;
mod route;
pub mod stats;
mod world;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

use self::stats::{now_ns, round, routing_check, summarize, Recorder};
use crate::sim::{Sim, SimConfig};

/// The `api` load generator's HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpClient {
    Lean,
    Reqwest,
}

/// Flags of `meshgate bench`.
#[derive(Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// `route` only: bound pod B by unanswered Redis calls instead of by
    /// delivery, against a private redis-server with a low pub/sub output
    /// buffer limit, and report what pod A does when Redis drops it.
    #[arg(long)]
    pub overload: bool,
    /// Simulated daemons (default: 1000 for route/api, 100 for ingest,
    /// 5000 for register, 200 for chaos).
    #[arg(long)]
    pub daemons: Option<usize>,
    /// Length of each measured phase.
    #[arg(long, default_value_t = 10)]
    pub duration_s: u64,
    /// Warm-up before the measured phases (default: 3 s route, 2 s api/ingest).
    #[arg(long)]
    pub warmup_s: Option<u64>,
    /// `route` (b): commands per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// `route` (a): commands in flight at most.
    #[arg(long, default_value_t = 1_000)]
    pub window: u64,
    /// `api`: keep-alive HTTP connections (one closed-loop worker each).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// `api`: the load generator's HTTP client: `lean` (one buffer written
    /// and one response parsed per request, on one thread, like `wrk`) or
    /// `reqwest` (a general client on two threads, used until the fifth
    /// session).
    #[arg(long, value_enum, default_value_t = HttpClient::Lean)]
    pub http_client: HttpClient,
    /// `ingest` (b): output lines per second of all daemons together.
    #[arg(long, default_value_t = 10_000)]
    pub line_rate: u64,
    /// `resume`: clients that each resume one finished task from its start.
    #[arg(long, default_value_t = 100)]
    pub resumers: usize,
    /// `resume`: stored lines of each resumed task.
    #[arg(long, default_value_t = 10_000)]
    pub resume_lines: u64,
    /// `ingest`: tasks the web client subscribes to.
    #[arg(long, default_value_t = 10)]
    pub subscribed: usize,
    /// `idle`: daemon counts, one run each.
    #[arg(long, default_value = "10000,20000", value_delimiter = ',')]
    pub idle_daemons: Vec<usize>,
    /// Connection attempts in progress at once (default: 100; 400 for idle,
    /// as the peer's 4 × 100; 200 for register).
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Interval between heartbeats of each simulated daemon (default:
    /// 30000; 1000 for chaos, whose repairs rely on them).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Worker threads of the simulated daemons' runtime.
    #[arg(long, default_value_t = 2)]
    pub sim_threads: usize,
    /// An administrative PostgreSQL URL (a database per run is created
    /// beside the one it names, and dropped at the end).
    #[arg(
        long,
        env = "MESHGATE_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Redis (the overload run starts a private one instead).
    #[arg(
        long,
        env = "MESHGATE_BENCH_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// `route --overload`: pod A is stopped (SIGSTOP) this long during (a),
    /// 3 s in, then continued: it falls behind while B keeps publishing.
    /// 0: no stall (B then only outruns A if it is faster on its own).
    #[arg(long, default_value_t = 2_000)]
    pub stall_ms: u64,
    /// `route --overload`: `client-output-buffer-limit` set on the private Redis.
    #[arg(long, default_value = "pubsub 4mb 1mb 5")]
    pub pubsub_limit: String,
    #[command(flatten)]
    pub chaos: chaos::ChaosArgs,
}

impl BenchArgs {
    /// `--heartbeat-ms` or the scenario's default.
    pub fn heartbeat_ms(&self) -> u64 {
        let default = if self.scenario == Scenario::Chaos {
            1_000
        } else {
            30_000
        };
        self.heartbeat_ms.unwrap_or(default)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Route,
    Api,
    Idle,
    Ingest,
    Register,
    /// Web clients resuming long task streams while daemons stream.
    Resume,
    /// Tasks under pod kills, Redis restarts and dropped sockets, checked for exactly-once.
    Chaos,
    /// Internal: pod B of `route` (a pod plus the injection loop).
    #[value(hide = true)]
    Injector,
}

/// `meshgate bench`: runs one scenario and prints its JSON line.
pub async fn cli(args: BenchArgs) -> anyhow::Result<()> {
    if args.scenario == Scenario::Injector {
        return inject::child().await;
    }
    raise_nofile();
    let mut rep = Map::new();
    rep.insert("scenario".into(), json!(name(&args)));
    rep.insert("machine".into(), machine());
    rep.insert("errors".into(), json!([]));
    let started = Instant::now();
    let outcome = match args.scenario {
        Scenario::Route => route::run(&args, &mut rep).await,
        Scenario::Api => api::run(&args, &mut rep).await,
        Scenario::Idle => idle::run(&args, &mut rep).await,
        Scenario::Ingest => ingest::run(&args, &mut rep).await,
        Scenario::Register => register::run(&args, &mut rep).await,
        Scenario::Resume => resume::run(&args, &mut rep).await,
        Scenario::Chaos => chaos::run(&args, &mut rep).await,
        Scenario::Injector => Ok(()),
    };
    rep.insert("loadAvgAtEnd".into(), json!(procs::loadavg()));
    rep.insert(
        "wallSeconds".into(),
        json!(round(started.elapsed().as_secs_f64(), 1)),
    );
    if let Err(e) = &outcome {
        eprintln!("bench: scenario failed: {e:#}");
        rep.insert("failed".into(), json!(format!("{e:#}")));
    }
    println!("{}", Value::Object(rep));
    outcome
}

fn name(args: &BenchArgs) -> String {
    let base = format!("{:?}", args.scenario).to_lowercase();
    if args.overload {
        format!("{base}-overload")
    } else {
        base
    }
}

/// Progress on stderr, with a timestamp.
pub(crate) fn log(msg: impl AsRef<str>) {
    eprintln!(
        "[{}] {}",
        chrono::Utc::now().format("%H:%M:%S%.3f"),
        msg.as_ref()
    );
}

/// One socket per daemon, in this process and in the pod holding them:
/// raise the open-file limit (children inherit it). As root the hard limit
/// is raised too; otherwise the soft limit goes up to the hard one.
fn raise_nofile() {
    const WANT: u64 = 65_536;
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0));
    if rlimit::setrlimit(rlimit::Resource::NOFILE, WANT, WANT.max(hard)).is_err() {
        let _ = rlimit::increase_nofile_limit(WANT);
    }
}

fn first_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(cmd).args(args).output().ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let mem_kib: f64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let dir = env!("CARGO_MANIFEST_DIR");
    let commit = first_line("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = first_line("git", &["-C", dir, "status", "--porcelain"]).is_some();
    json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpuModel": cpu_model,
        "memTotalGiB": round(mem_kib / 1024.0 / 1024.0, 1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "rustc": first_line("rustc", &["--version"]),
        "meshgate": format!("{} {}{}", env!("CARGO_PKG_VERSION"), commit.unwrap_or_default(),
            if dirty { " (uncommitted changes)" } else { "" }),
        "release": !cfg!(debug_assertions),
        "nofile": rlimit::getrlimit(rlimit::Resource::NOFILE).map(|l| l.0).unwrap_or(0),
        "loadAvgAtStart": procs::loadavg(),
        "podWorkerThreads": world::pod_worker_threads(),
    })
}

/// Appends to the report's `errors`.
fn error(rep: &mut Map<String, Value>, msg: impl Into<String>) {
    let msg = msg.into();
    log(format!("error: {msg}"));
    if let Some(Value::Array(errors)) = rep.get_mut("errors") {
        errors.push(json!(msg));
    }
}

/// Redis version and pid, and whether the scenario started it.
fn redis_json(url: &str, started: bool) -> (Value, Option<u32>) {
    let info = world::redis_info(url, "server");
    let pid = info.get("process_id").and_then(|p| p.parse().ok());
    (
        json!({"version": info.get("redis_version"), "pid": pid, "startedByScenario": started}),
        pid,
    )
}

/// Simulated daemons on a runtime of their own, with threads named
/// `mg-sim` so that their CPU time can be told apart ([`procs::own_threads`]).
pub(crate) struct SimHost {
    rt: Option<tokio::runtime::Runtime>,
    sim: Option<Sim>,
    pub rec: Arc<Recorder>,
}

impl SimHost {
    pub fn start(config: SimConfig, args: &BenchArgs) -> anyhow::Result<Self> {
        let rec = Arc::new(Recorder::new(config.daemons));
        Self::start_observed(config, args, rec.clone(), rec)
    }

    /// As [`SimHost::start`], with `observer` getting the daemons' hooks
    /// (`rec` is then only what [`SimHost::rec`] hands out).
    pub fn start_observed(
        config: SimConfig,
        args: &BenchArgs,
        rec: Arc<Recorder>,
        observer: Arc<dyn crate::sim::Observer>,
    ) -> anyhow::Result<Self> {
        let threads = args.sim_threads;
        let config = SimConfig {
            heartbeat: Duration::from_millis(args.heartbeat_ms().max(100)),
            ..config
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("mg-sim")
            .enable_all()
            .build()?;
        let sim = {
            let _in_rt = rt.enter();
            Sim::start(config, observer)?
        };
        Ok(Self {
            rt: Some(rt),
            sim: Some(sim),
            rec,
        })
    }

    pub fn sim(&self) -> &Sim {
        // Present until `stop` consumes the host.
        self.sim.as_ref().expect("simulator running")
    }

    /// Waits until `n` daemons are open; reports the connect phase.
    pub async fn connect_report(&self, n: usize, limit: Duration) -> Value {
        let t = Instant::now();
        let ok = self.sim().wait_open(n as u64, limit).await;
        let s = self.sim().stats().snapshot();
        json!({
            "requested": n, "connected": s.open, "failedAttempts": s.connect_failures,
            "ms": t.elapsed().as_millis() as u64, "complete": ok,
        })
    }

    pub async fn stop(mut self) {
        if let Some(sim) = self.sim.take() {
            sim.stop().await;
        }
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        // Dropping a runtime inside another one would panic; this does not wait.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Waits until `expected` arrived or nothing new came for 3 s; drain ms.
async fn drain(rec: &Recorder, expected: u64) -> u64 {
    let t = Instant::now();
    let mut last = rec.count();
    let mut changed = Instant::now();
    while rec.count() < expected && t.elapsed() < Duration::from_secs(60) {
        let now = rec.count();
        if now != last {
            last = now;
            changed = Instant::now();
        } else if changed.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed().as_millis() as u64
}

/// The delivery fields of a phase (the peer's `deliverySummary`).
fn delivery(
    rec: &Recorder,
    sent: u64,
    sent_per_daemon: &[u32],
    seconds: u64,
) -> Map<String, Value> {
    let delivered = rec.count();
    let (each, in_window) = rec.per_second(seconds);
    let v = json!({
        "sent": sent,
        "delivered": delivered,
        "lost": sent as i64 - delivered as i64,
        "deliveredInWindow": in_window,
        "deliveredAfterWindow": delivered.saturating_sub(in_window),
        "deliveredPerS": round(in_window as f64 / seconds.max(1) as f64, 1),
        "deliveredEachSecond": each,
        "routing": routing_check(sent_per_daemon, &rec.per_daemon()),
        "badPayloads": rec.bad(),
        "latencyMs": summarize(rec.latencies()),
        "slowest": {"ms": round(rec.worst().0, 3), "atS": round(rec.worst().1, 3), "daemonSlot": rec.worst().2},
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// RSS of the named pids and of this process, in KiB.
fn rss(pids: &[(&str, u32)]) -> Value {
    let mut m = Map::new();
    for (name, pid) in pids {
        m.insert((*name).to_owned(), json!(procs::rss_kib(*pid)));
    }
    m.insert("harness".into(), json!(procs::rss_kib(std::process::id())));
    Value::Object(m)
}

/// Start of a phase: a little ahead, so every process sees it coming.
fn phase_start() -> u64 {
    now_ns() + 100_000_000
}

/// The counters of a pod's `/metrics` that tell what happened to commands.
fn pod_counters(m: &std::collections::BTreeMap<String, f64>) -> Value {
    let keys = [
        "commands_sent_total",
        "commands_offline_total",
        "commands_delivered_total",
        "commands_undeliverable_total",
        "commands_queue_full_total",
        "pubsub_messages_lost_total",
        "redis_errors_total",
        "db_errors_total",
        "daemon_frames_total",
        "output_lines_stored_total",
        "events_delivered_total",
        "clients_dropped_slow_total",
        "daemons_connected",
    ];
    let mut out = Map::new();
    for k in keys {
        if let Some(v) = m.get(k) {
            out.insert(k.trim_end_matches("_total").to_owned(), json!(v));
        }
    }
    Value::Object(out)
}
