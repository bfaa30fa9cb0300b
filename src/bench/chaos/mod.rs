//! `chaos`: does every task still run exactly once when everything around
//! it fails? Three pods (`meshgate serve` processes, short leases and grace
//! periods) share a private `redis-server` and a fresh database; a few
//! hundred simulated daemons heartbeat every second and dial the pods in
//! turn (the next one after each lost socket, as behind a load balancer);
//! a few thousand tasks are created evenly over `--create-s` through the
//! pods' API, each printing `--lines` numbered lines
//! ([`crate::sim::output::numbered`]) and completing.
//!
//! Meanwhile, every `--fault-interval-ms`, one fault from a shuffled cycle:
//! a pod SIGKILLed and started again on its port after
//! `--restart-pause-ms`; Redis SIGKILLed and started again, empty; every
//! pub/sub connection dropped (`CLIENT KILL TYPE pubsub`); a tenth of the
//! daemons' sockets dropped without a close frame (they reconnect at
//! once); a twentieth cut off for the grace period plus 2 s while they go
//! on running their tasks (a partition). Faults go on for `--fault-tail-s`
//! after the last task was created; then every pod is brought back and the
//! run settles until no task is pending, starting or running (or
//! `--settle-s` passed).
//!
//! The checks ([`check`]) compare PostgreSQL with the daemons' own records
//! and the JSON line says what they found; `ok` is true only if every task
//! is `done`, none is stuck, the run whose completion the server recorded
//! has all its lines stored once and in order, and no task ran on two
//! daemons at once, or twice to the end, except after its first daemon was
//! unreachable past the grace period (a partition: the server cannot stop
//! a daemon it cannot reach; such overlaps and stale copies are counted,
//! with their length, on their own).

mod check;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use rand::{seq::SliceRandom, Rng};
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use self::check::Ledger;
use super::{
    error, log, redis_json,
    stats::Recorder,
    world::{redis_cli, PodProc, PrivateRedis, World},
    BenchArgs, SimHost,
};
use crate::sim::{connect_url, SimConfig};

type Report = Map<String, Value>;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Fault {
    /// SIGKILL a random pod; start it again on its port after the pause.
    PodKill,
    /// SIGKILL Redis; start it again (empty) on its port after the pause.
    RedisRestart,
    /// `CLIENT KILL TYPE pubsub`: every pod's subscribers are dropped.
    PubsubKill,
    /// Drop `--drop-fraction` of the daemons' sockets; they reconnect.
    DaemonDrop,
    /// Drop half as many daemons' sockets and keep them offline for the
    /// grace period plus 2 s, still running their tasks: their tasks are
    /// handed back and run elsewhere, and the old copies interrupted when
    /// the daemons come back (overlaps by design, counted as such).
    DaemonPartition,
}

/// Flags of `bench chaos`.
#[derive(Clone, Args)]
pub struct ChaosArgs {
    /// `chaos`: pods (`meshgate serve` processes).
    #[arg(long, default_value_t = 3)]
    pub pods: usize,
    /// `chaos`: tasks created.
    #[arg(long, default_value_t = 2_000)]
    pub tasks: usize,
    /// `chaos`: output lines each run of a task prints.
    #[arg(long, default_value_t = 20)]
    pub lines: u32,
    /// `chaos`: pause between two lines of a task.
    #[arg(long, default_value_t = 200)]
    pub line_delay_ms: u64,
    /// `chaos`: the tasks are created evenly over this many seconds.
    #[arg(long, default_value_t = 60)]
    pub create_s: u64,
    /// `chaos`: time between two faults.
    #[arg(long, default_value_t = 3_000)]
    pub fault_interval_ms: u64,
    /// `chaos`: faults go on this long after the last task was created.
    #[arg(long, default_value_t = 15)]
    pub fault_tail_s: u64,
    /// `chaos`: the faults, applied in a cycle shuffled each round.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "pod-kill,redis-restart,pubsub-kill,daemon-drop,daemon-partition"
    )]
    pub faults: Vec<Fault>,
    /// `chaos`: how long a killed pod or Redis stays down.
    #[arg(long, default_value_t = 2_000)]
    pub restart_pause_ms: u64,
    /// `chaos`: share of the daemons whose sockets a daemon-drop drops.
    #[arg(long, default_value_t = 0.1)]
    pub drop_fraction: f64,
    /// `chaos`: `maxRetries` of each task.
    #[arg(long, default_value_t = 10)]
    pub max_retries: i32,
    /// `chaos`: how long the run may take to settle after the faults.
    #[arg(long, default_value_t = 120)]
    pub settle_s: u64,
    /// `chaos`: MESHGATE_DISCONNECT_GRACE_MS of the pods.
    #[arg(long, default_value_t = 5_000)]
    pub grace_ms: u64,
    /// `chaos`: MESHGATE_RECONCILE_AFTER_MS of the pods.
    #[arg(long, default_value_t = 3_000)]
    pub reconcile_after_ms: u64,
    /// `chaos`: MESHGATE_LEASE_TTL_MS of the pods.
    #[arg(long, default_value_t = 3_000)]
    pub lease_ttl_ms: u64,
}

/// The pods' settings: short leases, grace and reconciliation, so that
/// repairs happen within the run.
fn settings(c: &ChaosArgs) -> Vec<(String, String)> {
    [
        ("MESHGATE_LEASE_TTL_MS", c.lease_ttl_ms),
        ("MESHGATE_DISCONNECT_GRACE_MS", c.grace_ms),
        ("MESHGATE_RECONCILE_AFTER_MS", c.reconcile_after_ms),
        ("MESHGATE_REAPER_INTERVAL_MS", 500),
        ("MESHGATE_DISPATCH_SWEEP_MS", 1_000),
        ("MESHGATE_DAEMON_PING_MS", 2_000),
        ("MESHGATE_REDIS_TIMEOUT_MS", 2_000),
        ("MESHGATE_REQUEST_TIMEOUT_MS", 5_000),
        ("MESHGATE_SELF_PING_MS", 500),
        ("MESHGATE_TASK_ROUTE_CACHE_MS", 1_000),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_string()))
    .collect()
}

/// What the faults did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct FaultCounts {
    pod_kills: u64,
    pod_restarts: u64,
    pod_restart_failures: u64,
    redis_restarts: u64,
    redis_restart_failures: u64,
    pubsub_kills: u64,
    /// Connections `CLIENT KILL TYPE pubsub` reported closed, in all.
    pubsub_clients_killed: u64,
    daemon_drops: u64,
    daemons_dropped: u64,
    daemon_partitions: u64,
    daemons_partitioned: u64,
}

/// The pods' repair counters, summed over every incarnation (each read
/// just before its SIGKILL, and at the end).
const REPAIR_COUNTERS: [&str; 16] = [
    "daemons_reaped_total",
    "tasks_retried_total",
    "spawn_resent_total",
    "tasks_confirmed_total",
    "tasks_handed_back_total",
    "stale_copies_interrupted_total",
    "spawn_outcome_unknown_total",
    "commands_unconfirmed_total",
    "commands_forwarded_total",
    "commands_offline_total",
    "output_lines_stored_total",
    "output_lines_lost_total",
    "pubsub_reconnects_total",
    "pubsub_resubscribes_total",
    "redis_errors_total",
    "db_errors_total",
];

/// The pods, each on a fixed address across restarts.
struct Pods {
    slots: Vec<PodSlot>,
    counters: BTreeMap<String, f64>,
}

struct PodSlot {
    letter: char,
    addr: SocketAddr,
    incarnation: u32,
    proc: Option<PodProc>,
}

impl Pods {
    async fn start(world: &World, n: usize) -> anyhow::Result<Self> {
        let mut slots = Vec::with_capacity(n);
        for i in 0..n {
            let letter = (b'A' + (i % 26) as u8) as char;
            let pod = world.serve(&letter.to_string()).await?;
            slots.push(PodSlot {
                letter,
                addr: pod.addr,
                incarnation: 1,
                proc: Some(pod),
            });
        }
        Ok(Self {
            slots,
            counters: BTreeMap::new(),
        })
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.slots.iter().map(|s| s.addr).collect()
    }

    /// Adds a pod's repair counters to the totals.
    async fn add_counters(counters: &mut BTreeMap<String, f64>, world: &World, pod: &PodProc) {
        let m = world.metrics(pod).await;
        for k in REPAIR_COUNTERS {
            *counters
                .entry(k.trim_end_matches("_total").to_owned())
                .or_default() += m.get(k).copied().unwrap_or(0.0);
        }
    }

    /// SIGKILL of pod `i` (its counters read first).
    async fn kill(&mut self, world: &World, i: usize) -> bool {
        let Some(mut pod) = self.slots[i].proc.take() else {
            return false;
        };
        Self::add_counters(&mut self.counters, world, &pod).await;
        let _ = pod.child.kill();
        let _ = pod.child.wait();
        true
    }

    /// Starts pod `i` again on its address, as a new pod id.
    async fn restart(&mut self, world: &World, i: usize) -> anyhow::Result<()> {
        let s = &mut self.slots[i];
        s.incarnation += 1;
        let name = format!("{}{}", s.letter, s.incarnation);
        s.proc = Some(world.serve_at(&name, s.addr).await?);
        Ok(())
    }

    /// Restarts every pod that is down; how many could not be.
    async fn all_up(&mut self, world: &World, faults: &mut FaultCounts) -> u64 {
        let mut failed = 0;
        for i in 0..self.slots.len() {
            let down = match self.slots[i].proc.as_mut() {
                Some(p) => !p.alive(),
                None => true,
            };
            if down {
                match self.restart(world, i).await {
                    Ok(()) => faults.pod_restarts += 1,
                    Err(e) => {
                        let letter = self.slots[i].letter;
                        log(format!("pod {letter} did not come back: {e:#}"));
                        faults.pod_restart_failures += 1;
                        failed += 1;
                    }
                }
            }
        }
        failed
    }

    /// Reads the counters of the running pods and SIGTERMs them.
    async fn stop(mut self, world: &World) -> BTreeMap<String, f64> {
        for s in &mut self.slots {
            if let Some(pod) = s.proc.take() {
                Self::add_counters(&mut self.counters, world, &pod).await;
                pod.stop(Duration::from_secs(10)).await;
            }
        }
        self.counters
    }
}

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let c = &args.chaos;
    anyhow::ensure!(
        c.pods >= 1 && !c.faults.is_empty(),
        "chaos needs a pod and a fault"
    );
    let mut redis = PrivateRedis::start().await?;
    rep.insert("redis".into(), redis_json(&redis.url, true).0);
    rep.insert(
        "config".into(),
        json!({
            "pods": c.pods, "daemons": args.daemons.unwrap_or(200),
            "maxConcurrentTasks": 2, "heartbeatMs": args.heartbeat_ms(),
            "tasks": c.tasks, "linesPerTask": c.lines, "lineDelayMs": c.line_delay_ms,
            "createS": c.create_s, "faultIntervalMs": c.fault_interval_ms,
            "faultTailS": c.fault_tail_s, "faults": c.faults,
            "restartPauseMs": c.restart_pause_ms, "dropFraction": c.drop_fraction,
            "maxRetries": c.max_retries, "settleS": c.settle_s,
        }),
    );
    let mut world = World::new(args, &redis.url).await?;
    world.pod_settings = settings(c);
    rep.insert(
        "settings".into(),
        Value::Object(
            world
                .pod_settings
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect(),
        ),
    );
    let outcome = scenario(args, &world, &mut redis, rep).await;
    world.cleanup().await;
    redis.stop().await;
    outcome
}

async fn scenario(
    args: &BenchArgs,
    world: &World,
    redis: &mut PrivateRedis,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let c = &args.chaos;
    let n = args.daemons.unwrap_or(200);
    log(format!("starting {} pods (meshgate serve)", c.pods));
    let mut pods = Pods::start(world, c.pods).await?;
    let urls: Vec<String> = pods
        .addrs()
        .iter()
        .map(|a| connect_url(&format!("ws://{a}")))
        .collect();
    log(format!("connecting {n} daemons to the pods in turn"));
    let mut cfg = SimConfig::new(&urls[0], &world.key.key, n);
    cfg.other_urls = urls[1..].to_vec();
    cfg.output_lines = c.lines.max(1);
    cfg.line_delay = Duration::from_millis(c.line_delay_ms);
    cfg.numbered_output = true;
    cfg.connect_concurrency = args.connect_concurrency.unwrap_or(100);
    let ledger = Arc::new(Ledger::default());
    let host = SimHost::start_observed(cfg, args, Arc::new(Recorder::new(0)), ledger.clone())?;
    rep.insert(
        "connect".into(),
        host.connect_report(n, Duration::from_secs(60)).await,
    );

    log(format!(
        "creating {} tasks over {} s; a fault every {} ms",
        c.tasks, c.create_s, c.fault_interval_ms
    ));
    let creator = tokio::spawn(create_tasks(
        world.http.clone(),
        pods.addrs(),
        world.key.key.clone(),
        c.tasks,
        Duration::from_secs(c.create_s),
        c.max_retries,
    ));
    let mut faults = FaultCounts::default();
    let started = Instant::now();
    let mut created_at: Option<Instant> = None;
    let mut cycle: Vec<Fault> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(c.fault_interval_ms)).await;
        if creator.is_finished() {
            let at = *created_at.get_or_insert_with(Instant::now);
            if at.elapsed() >= Duration::from_secs(c.fault_tail_s) {
                break;
            }
        }
        if cycle.is_empty() {
            cycle = c.faults.clone();
            cycle.shuffle(&mut rand::thread_rng());
        }
        let fault = cycle.pop().unwrap_or(Fault::PubsubKill);
        inject(fault, args, world, redis, &mut pods, &host, &mut faults).await;
        progress(world, &ledger, started).await;
    }
    let create = creator.await?;
    rep.insert("create".into(), serde_json::to_value(&create)?);
    let fault_s = started.elapsed().as_secs_f64();
    log("faults stopped; every pod up again, settling");
    pods.all_up(world, &mut faults).await;
    rep.insert("faults".into(), serde_json::to_value(&faults)?);
    rep.insert("faultPhaseS".into(), json!(super::stats::round(fault_s, 1)));
    let settle = settle(args, world, &ledger).await;
    rep.insert("settle".into(), settle.clone());

    log("checking");
    let daemon_ids = host.sim().daemon_ids();
    let checks = checks(args, world, &ledger, &create, &daemon_ids).await?;
    let ok = checks.get("ok").and_then(Value::as_bool).unwrap_or(false)
        && settle["settled"].as_bool().unwrap_or(false)
        && create.created == c.tasks;
    rep.extend(checks);
    rep.insert("ok".into(), json!(ok));
    rep.insert(
        "simCounters".into(),
        serde_json::to_value(host.sim().stats().snapshot())?,
    );
    log("stopping");
    host.stop().await;
    let counters = pods.stop(world).await;
    rep.insert("podRepairCounters".into(), json!(counters));
    if !ok {
        error(rep, "chaos: a check failed (see the counts)");
    }
    Ok(())
}

/// One fault.
async fn inject(
    fault: Fault,
    args: &BenchArgs,
    world: &World,
    redis: &mut PrivateRedis,
    pods: &mut Pods,
    host: &SimHost,
    faults: &mut FaultCounts,
) {
    let c = &args.chaos;
    let pause = Duration::from_millis(c.restart_pause_ms);
    match fault {
        Fault::PodKill => {
            let i = rand::thread_rng().gen_range(0..pods.slots.len());
            log(format!("fault: SIGKILL pod {}", pods.slots[i].letter));
            if pods.kill(world, i).await {
                faults.pod_kills += 1;
            }
            tokio::time::sleep(pause).await;
            pods.all_up(world, faults).await;
        }
        Fault::RedisRestart => {
            log("fault: SIGKILL redis-server, then start it again");
            match redis.restart(pause).await {
                Ok(()) => faults.redis_restarts += 1,
                Err(e) => {
                    log(format!("redis did not come back: {e:#}"));
                    faults.redis_restart_failures += 1;
                }
            }
        }
        Fault::PubsubKill => {
            let killed = redis_cli(&redis.url, &["CLIENT", "KILL", "TYPE", "pubsub"]);
            let killed: u64 = killed.and_then(|k| k.trim().parse().ok()).unwrap_or(0);
            log(format!("fault: CLIENT KILL TYPE pubsub ({killed} closed)"));
            faults.pubsub_kills += 1;
            faults.pubsub_clients_killed += killed;
        }
        Fault::DaemonDrop | Fault::DaemonPartition => {
            let partition = fault == Fault::DaemonPartition;
            let n = args.daemons.unwrap_or(200);
            let share = if partition { 0.5 } else { 1.0 } * c.drop_fraction;
            let k = ((n as f64 * share).ceil() as usize).clamp(1, n);
            let offline = if partition {
                Duration::from_millis(c.grace_ms + 2_000)
            } else {
                Duration::ZERO
            };
            let mut slots: Vec<usize> = (0..n).collect();
            slots.shuffle(&mut rand::thread_rng());
            for s in &slots[..k] {
                host.sim().drop_connection(*s, offline);
            }
            if partition {
                log(format!("fault: {k} daemons cut off for {offline:?}"));
                faults.daemon_partitions += 1;
                faults.daemons_partitioned += k as u64;
            } else {
                log(format!("fault: {k} daemon sockets dropped"));
                faults.daemon_drops += 1;
                faults.daemons_dropped += k as u64;
            }
        }
    }
}

/// Tasks by status.
async fn statuses(world: &World) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM tasks GROUP BY status")
        .fetch_all(&world.pool)
        .await
        .map(|v| v.into_iter().collect())
        .unwrap_or_default()
}

async fn progress(world: &World, ledger: &Ledger, started: Instant) {
    log(format!(
        "{:.0} s: tasks {:?}, {} runs unfinished",
        started.elapsed().as_secs_f64(),
        statuses(world).await,
        ledger.unfinished()
    ));
}

/// Waits until no task is pending, starting or running, then for the
/// daemons' stale copies to be interrupted and the output writers to
/// finish (the row count stops moving).
async fn settle(args: &BenchArgs, world: &World, ledger: &Ledger) -> Value {
    let c = &args.chaos;
    let t = Instant::now();
    let limit = Duration::from_secs(c.settle_s);
    let active = || async move {
        statuses(world)
            .await
            .iter()
            .filter(|(s, _)| !matches!(s.as_str(), "done" | "failed"))
            .map(|(_, n)| *n)
            .sum::<i64>()
    };
    let mut last_log = Instant::now();
    let mut left = active().await;
    while left > 0 && t.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = active().await;
        if last_log.elapsed() > Duration::from_secs(5) {
            progress(world, ledger, t).await;
            last_log = Instant::now();
        }
    }
    let tasks_ms = t.elapsed().as_millis() as u64;
    // A stale copy is interrupted at its daemon's first heartbeat after
    // MESHGATE_RECONCILE_AFTER_MS.
    let copies = Duration::from_millis(3 * c.reconcile_after_ms + 2 * args.heartbeat_ms());
    let t2 = Instant::now();
    while ledger.unfinished() > 0 && t2.elapsed() < copies {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = || async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM task_outputs")
            .fetch_one(&world.pool)
            .await
            .unwrap_or(-1)
    };
    let mut before = rows().await;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rows().await;
        if now == before {
            break;
        }
        before = now;
    }
    json!({
        "settled": left == 0, "activeTasksLeft": left, "tasksMs": tasks_ms,
        "runsUnfinished": ledger.unfinished(),
        "ms": t.elapsed().as_millis() as u64,
    })
}

/// What creating the tasks took.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    requested: usize,
    /// Answered 201.
    created: usize,
    attempts: u64,
    failed_attempts: u64,
    /// Tasks given up on after every attempt failed.
    given_up: usize,
    #[serde(skip)]
    ids: Vec<Uuid>,
}

/// Creates `n` tasks evenly over `over`, each through the pods in turn
/// (the next one after a failure), 16 requests at most in flight.
async fn create_tasks(
    http: reqwest::Client,
    addrs: Vec<SocketAddr>,
    key: String,
    n: usize,
    over: Duration,
    max_retries: i32,
) -> Created {
    let gate = Arc::new(tokio::sync::Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    let t0 = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(t0 + over.mul_f64(i as f64 / n.max(1) as f64)).await;
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (http, addrs, key) = (http.clone(), addrs.clone(), key.clone());
        set.spawn(async move {
            let _permit = permit;
            let body = json!({"name": format!("chaos {i}"), "plan": "print numbered lines", "maxRetries": max_retries});
            let mut attempts = 0u64;
            while attempts < 100 {
                let addr = addrs[(i + attempts as usize) % addrs.len()];
                attempts += 1;
                let resp = http
                    .post(format!("http://{addr}/api/v1/mesh/tasks"))
                    .header("x-api-key", &key)
                    .timeout(Duration::from_secs(5))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(r) = resp {
                    if r.status().as_u16() == 201 {
                        let id = r.json::<Value>().await.ok().and_then(|v| {
                            v["id"].as_str().and_then(|s| s.parse::<Uuid>().ok())
                        });
                        return (id, attempts);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (None, attempts)
        });
    }
    let mut out = Created {
        requested: n,
        ..Default::default()
    };
    while let Some(r) = set.join_next().await {
        let (id, attempts) = r.unwrap_or((None, 0));
        out.attempts += attempts;
        match id {
            Some(id) => {
                out.created += 1;
                out.failed_attempts += attempts - 1;
                out.ids.push(id);
            }
            None => {
                out.failed_attempts += attempts;
                out.given_up += 1;
            }
        }
    }
    out
}

/// The checks, from PostgreSQL and the daemons' records; `ok` among them.
async fn checks(
    args: &BenchArgs,
    world: &World,
    ledger: &Ledger,
    create: &Created,
    daemon_ids: &[Option<Uuid>],
) -> anyhow::Result<Report> {
    let c = &args.chaos;
    let tasks: Vec<(Uuid, String, i32, Option<Uuid>)> =
        sqlx::query_as("SELECT id, status, retry_count, daemon_id FROM tasks")
            .fetch_all(&world.pool)
            .await?;
    let rows: Vec<(Uuid, i64, String)> =
        sqlx::query_as("SELECT task_id, id, content FROM task_outputs ORDER BY task_id, id")
            .fetch_all(&world.pool)
            .await?;
    let (runs, gaps) = ledger.snapshot();
    let ids: Vec<Uuid> = tasks.iter().map(|t| t.0).collect();
    let done: Vec<Uuid> = tasks
        .iter()
        .filter(|t| t.1 == "done")
        .map(|t| t.0)
        .collect();
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &tasks {
        *by_status.entry(t.1.as_str()).or_default() += 1;
    }
    let failed = by_status.get("failed").copied().unwrap_or(0);
    let stuck = tasks.len() - done.len() - failed;
    let acked: std::collections::HashSet<Uuid> = create.ids.iter().copied().collect();
    let unacknowledged = ids.iter().filter(|t| !acked.contains(t)).count();
    // The run the server recorded: the last completed one on the daemon
    // PostgreSQL has for the done task.
    let slot_of: HashMap<Uuid, usize> = daemon_ids
        .iter()
        .enumerate()
        .filter_map(|(slot, id)| id.map(|id| (id, slot)))
        .collect();
    let daemon_of: HashMap<Uuid, Option<usize>> = tasks
        .iter()
        .filter(|t| t.1 == "done")
        .map(|t| (t.0, t.3.and_then(|d| slot_of.get(&d).copied())))
        .collect();
    let mut accepted: HashMap<Uuid, u64> = HashMap::new();
    for (n, r) in &runs {
        let completed = matches!(r.end, Some((_, crate::sim::RunEnd::Completed)));
        if completed && daemon_of.get(&r.task) == Some(&Some(r.slot)) {
            accepted.insert(r.task, *n);
        }
    }
    let done_unaccepted = done.iter().filter(|t| !accepted.contains_key(t)).count();
    let counts = check::run_counts(&runs, &ids);
    let grace = Duration::from_millis(c.grace_ms);
    let overlaps = check::overlaps(&runs, &gaps, grace, Instant::now());
    let twice = check::completed_twice(&runs, &gaps, &accepted, &overlaps.runs);
    let delay = Duration::from_millis(c.line_delay_ms);
    let output = check::output_check(&rows, &runs, &gaps, &done, &accepted, c.lines, delay);
    let retried = tasks.iter().filter(|t| t.2 > 0).count();
    let max_retry = tasks.iter().map(|t| t.2).max().unwrap_or(0);
    let ok = stuck == 0
        && failed == 0
        && twice.completion_lost_with_socket + twice.unexplained == 0
        && done_unaccepted == 0
        && overlaps.unexplained == 0
        && output.duplicates == 0
        && output.out_of_order == 0
        && output.not_printed == 0
        && output.unparsed == 0
        && output.missing_in_accepted_runs == 0
        && output.done_tasks_without_whole_output == 0;
    let mut m = Report::new();
    m.insert(
        "tasks".into(),
        json!({
            "inDb": tasks.len(), "byStatus": by_status, "stuck": stuck, "failed": failed,
            "createdWithoutAnswer": unacknowledged,
            "ranToCompletionTwice": twice,
            "doneWithoutTheRecordedRunInTheDaemonsRecords": done_unaccepted,
            "retried": retried, "maxRetryCount": max_retry,
        }),
    );
    m.insert("runs".into(), serde_json::to_value(counts)?);
    m.insert("overlaps".into(), serde_json::to_value(overlaps)?);
    m.insert("output".into(), serde_json::to_value(output)?);
    m.insert("ok".into(), json!(ok));
    Ok(m)
}
