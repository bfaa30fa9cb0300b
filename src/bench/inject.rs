//! Pod B of the `route` scenario: a meshgate replica (`meshgate::start`,
//! the same code `meshgate serve` runs) plus an injection loop calling
//! [`routing::send_command`] inside that process, as the peer's node B
//! calls `io.to(id).emit(…)` from a loop inside itself.
//!
//! It runs as a child process (`meshgate bench injector`, a hidden role) so
//! that its CPU time is its own `/proc/PID/stat`, like every other pod. The
//! harness drives it with JSON lines on its stdin and reads one JSON line
//! per answer on its stdout: the same role as the peer's IPC channel.
//!
//! Requests: `ids` (the daemon ids to inject to, round-robin), `max` (as
//! fast as possible while fewer than `window` commands are in flight),
//! `rate` (a fixed rate, open loop), `ack` (the daemons' received total,
//! for the `e2e` window; no answer), `quit`.

use std::{
    io::{BufRead as _, Write as _},
    process::{ChildStdin, ChildStdout},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use futures_util::{stream::FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

use super::stats::{now_ns, round, stamped_message, summarize, Summary};
use crate::{cluster::routing, protocol::daemon::DaemonCommand, state::AppState, Config};

/// One request from the harness.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Ids {
        ids: Vec<Uuid>,
    },
    Ack {
        total: u64,
    },
    #[serde(rename_all = "camelCase")]
    Max {
        start_at_ns: u64,
        duration_ms: u64,
        window: u64,
        flow: Flow,
    },
    #[serde(rename_all = "camelCase")]
    Rate {
        start_at_ns: u64,
        duration_ms: u64,
        rate: u64,
    },
    Quit,
}

/// What bounds the commands in flight in the `max` phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Flow {
    /// Sent and not yet received by a daemon (the harness relays `ack`).
    E2e,
    /// Sent and not yet answered by Redis: pod B may outrun pod A.
    Redis,
}

/// The outcome of one injection phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Injected {
    pub sent: u64,
    /// `send_command` calls that failed (daemon offline, Redis error).
    pub failed: u64,
    pub first_error: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub window_full_stalls: u64,
    pub per_daemon: Vec<u32>,
    /// `rate` only: how late each command left against its schedule.
    pub schedule_lag_ms: Option<Summary>,
}

#[derive(Parser)]
struct EnvConfig {
    #[command(flatten)]
    config: Config,
}

/// The child's side: runs a pod from the environment's settings and serves
/// requests from stdin until `quit` or end of input.
pub async fn child() -> anyhow::Result<()> {
    // stdout is the answer channel: logs go to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let config = EnvConfig::parse_from(["meshgate"]).config;
    let listener = crate::http::acceptor::bind(config.listen, config.listen_backlog)?;
    let pod = crate::start(config, listener).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
    let acked = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    {
        let (acked, progress) = (acked.clone(), progress.clone());
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Ack { total }) => {
                        acked.store(total, Ordering::Relaxed);
                        progress.notify_one();
                    }
                    Ok(req) => {
                        if tx.send(req).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("injector: bad request: {e}"),
                }
            }
        });
    }
    reply(&json!({"ready": true, "pid": std::process::id()}));
    let mut ids: Vec<Uuid> = Vec::new();
    while let Some(req) = rx.recv().await {
        match req {
            Request::Ids { ids: new } => {
                ids = new;
                reply(&json!({"count": ids.len()}));
            }
            Request::Max {
                start_at_ns,
                duration_ms,
                window,
                flow,
            } => {
                acked.store(0, Ordering::Relaxed);
                let r = inject_max(
                    pod.state(),
                    &ids,
                    start_at_ns,
                    duration_ms,
                    window,
                    flow,
                    &acked,
                    &progress,
                )
                .await;
                reply(&serde_json::to_value(r)?);
            }
            Request::Rate {
                start_at_ns,
                duration_ms,
                rate,
            } => {
                let r = inject_rate(pod.state(), &ids, start_at_ns, duration_ms, rate).await;
                reply(&serde_json::to_value(r)?);
            }
            Request::Ack { .. } => {}
            Request::Quit => break,
        }
    }
    pod.shutdown().await;
    Ok(())
}

fn reply(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

async fn wait_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

/// One `sendMessage` to `daemon`, stamped now, through the routing code.
fn send_one(
    state: &AppState,
    daemon: Uuid,
) -> impl std::future::Future<Output = crate::Result<()>> + 'static {
    let redis = state.redis.clone();
    let metrics = state.metrics.clone();
    let command = DaemonCommand::SendMessage {
        task_id: Uuid::new_v4(),
        message: stamped_message(now_ns()),
    };
    async move { routing::send_command(&redis, &metrics, daemon, &command).await }
}

fn note_failure(r: &mut Injected, e: crate::Error) {
    r.failed += 1;
    if r.first_error.is_none() {
        r.first_error = Some(e.to_string());
    }
}

#[allow(clippy::too_many_arguments)]
async fn inject_max(
    state: &AppState,
    ids: &[Uuid],
    start_at_ns: u64,
    duration_ms: u64,
    window: u64,
    flow: Flow,
    acked: &AtomicU64,
    progress: &Notify,
) -> Injected {
    let mut r = Injected {
        per_daemon: vec![0; ids.len()],
        ..Default::default()
    };
    if ids.is_empty() {
        return r;
    }
    wait_until_ns(start_at_ns).await;
    r.start_ns = now_ns();
    let end = Instant::now() + Duration::from_millis(duration_ms);
    let mut inflight = FuturesUnordered::new();
    let mut rr = 0;
    let in_flight = |sent: u64, redis: usize| match flow {
        Flow::E2e => sent.saturating_sub(acked.load(Ordering::Relaxed)),
        Flow::Redis => redis as u64,
    };
    while Instant::now() < end {
        // A bounded burst, then back to the runtime so replies and acks flow.
        let mut budget = 256;
        while budget > 0 && in_flight(r.sent, inflight.len()) < window {
            inflight.push(send_one(state, ids[rr]));
            r.per_daemon[rr] += 1;
            rr = (rr + 1) % ids.len();
            r.sent += 1;
            budget -= 1;
        }
        if in_flight(r.sent, inflight.len()) >= window {
            r.window_full_stalls += 1;
        }
        tokio::select! {
            Some(res) = inflight.next(), if !inflight.is_empty() => {
                if let Err(e) = res { note_failure(&mut r, e) }
            }
            _ = progress.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(1)) => {}
        }
    }
    r.end_ns = now_ns();
    while let Some(res) = inflight.next().await {
        if let Err(e) = res {
            note_failure(&mut r, e);
        }
    }
    r
}

async fn inject_rate(
    state: &AppState,
    ids: &[Uuid],
    start_at_ns: u64,
    duration_ms: u64,
    rate: u64,
) -> Injected {
    let mut r = Injected {
        per_daemon: vec![0; ids.len()],
        ..Default::default()
    };
    if ids.is_empty() || rate == 0 {
        return r;
    }
    wait_until_ns(start_at_ns).await;
    let total = rate * duration_ms / 1_000;
    let interval_ns = 1e9 / rate as f64;
    let start = now_ns();
    r.start_ns = start;
    let mut lag = Vec::with_capacity(total as usize);
    let mut inflight = FuturesUnordered::new();
    let mut rr = 0;
    while r.sent < total {
        let elapsed = now_ns().saturating_sub(start) as f64;
        let due = ((elapsed / interval_ns).floor() as u64 + 1).min(total);
        while r.sent < due {
            let scheduled = start as f64 + r.sent as f64 * interval_ns;
            lag.push((now_ns() as f64 - scheduled) / 1e6);
            inflight.push(send_one(state, ids[rr]));
            r.per_daemon[rr] += 1;
            rr = (rr + 1) % ids.len();
            r.sent += 1;
        }
        // A 1 ms timer, as the peer's: commands leave in bursts of rate/1000.
        let tick = tokio::time::sleep(Duration::from_millis(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                Some(res) = inflight.next(), if !inflight.is_empty() => {
                    if let Err(e) = res { note_failure(&mut r, e) }
                }
                _ = &mut tick => break,
            }
        }
    }
    r.end_ns = now_ns();
    while let Some(res) = inflight.next().await {
        if let Err(e) = res {
            note_failure(&mut r, e);
        }
    }
    let mut s = summarize(lag);
    s.mean = s.mean.map(|m| round(m, 3));
    r.schedule_lag_ms = Some(s);
    r
}

/// The harness's side: a running injector child.
pub struct Injector {
    pub pod: super::world::PodProc,
    to_child: std::sync::mpsc::Sender<String>,
    from_child: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Injector {
    /// Starts `meshgate bench injector` with the pod settings of `world`.
    pub async fn start(world: &super::world::World) -> anyhow::Result<Self> {
        let mut pod = world
            .spawn_pod("B", &["bench", "injector"], std::process::Stdio::piped())
            .await?;
        let stdin: ChildStdin = pod.child.stdin.take().context("injector stdin")?;
        let stdout: ChildStdout = pod.child.stdout.take().context("injector stdout")?;
        let (to_child, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            for line in rx {
                if writeln!(stdin, "{line}")
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    break;
                }
            }
        });
        let (tx, from_child) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("[injector] {line}"),
                }
            }
        });
        let mut me = Self {
            pod,
            to_child,
            from_child,
        };
        let ready = me.answer(Duration::from_secs(30)).await?;
        anyhow::ensure!(ready["ready"] == true, "injector did not start: {ready}");
        Ok(me)
    }

    /// A handle for sending request lines from another task.
    pub fn sender(&self) -> std::sync::mpsc::Sender<String> {
        self.to_child.clone()
    }

    /// Sends a request without waiting (used for `ack`).
    pub fn tell(&self, req: &Request) {
        if let Ok(line) = serde_json::to_string(req) {
            let _ = self.to_child.send(line);
        }
    }

    async fn answer(&mut self, limit: Duration) -> anyhow::Result<Value> {
        tokio::time::timeout(limit, self.from_child.recv())
            .await
            .context("injector did not answer in time")?
            .context("injector exited")
    }

    /// Sends a request and waits for its answer.
    pub async fn ask(&mut self, req: &Request, limit: Duration) -> anyhow::Result<Value> {
        self.tell(req);
        self.answer(limit).await
    }

    /// Asks the pod to drain and exit; SIGTERM (then SIGKILL) if it does not.
    pub async fn stop(mut self) {
        self.tell(&Request::Quit);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.pod.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(self.to_child);
        self.pod.stop(Duration::from_secs(5)).await;
    }
}
