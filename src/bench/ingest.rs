//! `ingest`: task output. 100 tasks are created through pod B's API; a web
//! client on pod B (`/api/v1/mesh/events`, `X-Api-Key`) subscribes to 10 of
//! them; 100 daemons (one task each) connect to pod A, get their tasks and
//! stream stamped `taskOutput` lines.
//!
//! - (b) `rate` first: 10,000 lines/s in all (100 per daemon), below what
//!   pod A can store, so the client latency is the path's, not a queue's;
//! - (a) `max`: every daemon writes as fast as its socket takes lines.
//!
//! Each after a 2 s warm-up, 10 s measured: lines written by the daemons,
//! rows persisted (`task_outputs`), lines delivered to the client and their
//! latency from the daemon's stamp, and the backlog between daemons and
//! storage (written − `meshgate_output_lines_stored_total` of A). Then the
//! tasks are finished and every line written is checked to be stored.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};
use uuid::Uuid;

use super::{
    error, log, phase_start, pod_counters,
    procs::Tracked,
    redis_json, rss,
    stats::{now_ns, round, summarize, Recorder},
    world::{PodProc, World},
    BenchArgs, SimHost,
};
use crate::sim::{output::parse_stamp, SimConfig};

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let (redis, redis_pid) = redis_json(&args.redis_url, false);
    rep.insert("redis".into(), redis);
    rep.insert(
        "config".into(),
        json!({
            "daemons": args.daemons.unwrap_or(100), "subscribed": args.subscribed,
            "durationS": args.duration_s, "warmupS": args.warmup_s.unwrap_or(2),
            "lineRate": args.line_rate,
        }),
    );
    let world = World::new(args, &args.redis_url).await?;
    let outcome = scenario(args, &world, redis_pid, rep).await;
    world.cleanup().await;
    outcome
}

async fn rows(world: &World) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM task_outputs")
        .fetch_one(&world.pool)
        .await
        .unwrap_or(-1)
}

async fn scenario(
    args: &BenchArgs,
    world: &World,
    redis_pid: Option<u32>,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let n = args.daemons.unwrap_or(100);
    log("starting pods A and B (meshgate serve)");
    let a = world.serve("A").await?;
    let b = world.serve("B").await?;
    let tasks = create_tasks(world, &b, n, "ingest").await?;
    let watched: Vec<Uuid> = tasks.iter().take(args.subscribed).copied().collect();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mg-load")
        .enable_all()
        .build()?;
    let (client, client_rec) = follow(&client_rt, world, &b, &watched).await?;
    let host = stream_to(args, world, &a, n, rep).await?;
    let stats = || host.sim().stats().snapshot();
    let mut tracked = Tracked {
        pids: vec![("A".into(), a.pid), ("B".into(), b.pid)],
        postgres: true,
    };
    if let Some(pid) = redis_pid {
        tracked.pids.push(("redis".into(), pid));
    }
    let warmup = args.warmup_s.unwrap_or(2);
    let per_daemon = Duration::from_secs_f64(n as f64 / args.line_rate.max(1) as f64);
    log(format!(
        "(b) fixed rate: {} lines/s in all ({per_daemon:?} between lines of a task), warm-up {warmup} s, {} s measured",
        args.line_rate, args.duration_s
    ));
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let rate = measure(args, world, &a, &host, &client_rec, &tracked).await?;
    rep.insert("rate".into(), Value::Object(rate));
    log(format!(
        "(a) as fast as accepted: warm-up {warmup} s, {} s measured",
        args.duration_s
    ));
    host.sim().set_line_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    let max = measure(args, world, &a, &host, &client_rec, &tracked).await?;
    rep.insert("max".into(), Value::Object(max));

    log("finishing the tasks");
    host.sim().finish_streams();
    let t = Instant::now();
    while stats().tasks_completed < n as u64 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_total = stats().output_lines;
    let t = Instant::now();
    let mut rows_total = rows(world).await;
    while (rows_total as u64) < sent_total && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows_total = rows(world).await;
    }
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
            .fetch_all(&world.pool)
            .await?;
    let lost = sent_total as i64 - rows_total;
    if lost != 0 {
        error(rep, format!("{lost} output lines sent but not stored"));
    }
    rep.insert(
        "end".into(),
        json!({
            "linesSent": sent_total, "rowsStored": rows_total, "linesNotStored": lost,
            "tasksCompleted": stats().tasks_completed,
            "taskStatuses": statuses.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "clientEventsTotal": client_rec.count(),
            "clientEnded": client.is_finished(),
        }),
    );
    rep.insert("rssKiBAtEnd".into(), rss(&[("A", a.pid), ("B", b.pid)]));
    rep.insert(
        "podCounters".into(),
        json!({"A": pod_counters(&world.metrics(&a).await), "B": pod_counters(&world.metrics(&b).await)}),
    );
    rep.insert("simCounters".into(), serde_json::to_value(stats())?);
    log("stopping");
    host.stop().await;
    client.abort();
    client_rt.shutdown_background();
    b.stop(Duration::from_secs(10)).await;
    a.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Creates `n` tasks named `<name> <i>` through `pod`'s API.
pub(super) async fn create_tasks(
    world: &World,
    pod: &PodProc,
    n: usize,
    name: &str,
) -> anyhow::Result<Vec<Uuid>> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let resp = world
            .http
            .post(format!("http://{}/api/v1/mesh/tasks", pod.addr))
            .header("x-api-key", &world.key.key)
            .json(&json!({"name": format!("{name} {i}"), "plan": "print a lot of output"}))
            .send()
            .await?;
        anyhow::ensure!(
            resp.status().as_u16() == 201,
            "task create: {}",
            resp.status()
        );
        let v: Value = resp.json().await?;
        tasks.push(v["id"].as_str().unwrap_or_default().parse::<Uuid>()?);
    }
    Ok(tasks)
}

/// A web client on `pod` (on `rt`) following `tasks`, once it is subscribed
/// to all of them: its task and what it records.
pub(super) async fn follow(
    rt: &tokio::runtime::Runtime,
    world: &World,
    pod: &PodProc,
    tasks: &[Uuid],
) -> anyhow::Result<(tokio::task::JoinHandle<()>, std::sync::Arc<Recorder>)> {
    let rec = std::sync::Arc::new(Recorder::new(tasks.len()));
    let client = rt.spawn(web_client(
        format!("ws://{}/api/v1/mesh/events", pod.addr),
        world.key.key.clone(),
        tasks.to_vec(),
        rec.clone(),
    ));
    // Subscribed before any line flows.
    let t = Instant::now();
    while rec.marks() < tasks.len() as u64 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::ensure!(
        rec.marks() >= tasks.len() as u64,
        "web client not subscribed"
    );
    Ok((client, rec))
}

/// `n` daemons on pod `a`, one task each, streaming stamped lines at
/// `--line-rate` in all once they have their tasks (`connect` and
/// `tasksStarted` go in the report).
pub(super) async fn stream_to(
    args: &BenchArgs,
    world: &World,
    a: &PodProc,
    n: usize,
    rep: &mut Report,
) -> anyhow::Result<SimHost> {
    log(format!("connecting {n} streaming daemons to A"));
    let mut cfg = SimConfig::new(&format!("ws://{}", a.addr), &world.key.key, n);
    cfg.max_concurrent_tasks = 1;
    cfg.output_lines = u32::MAX;
    cfg.line_delay = Duration::from_secs_f64(n as f64 / args.line_rate.max(1) as f64);
    cfg.stamp_output = true;
    let host = SimHost::start(cfg, args)?;
    rep.insert(
        "connect".into(),
        host.connect_report(n, Duration::from_secs(60)).await,
    );
    let stats = || host.sim().stats().snapshot();
    let t = Instant::now();
    while stats().tasks_started < n as u64 && t.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rep.insert("tasksStarted".into(), json!(stats().tasks_started));
    Ok(host)
}

/// One measured window: lines sent, stored and delivered to the client,
/// client latency, backlog, CPU per 100k lines stored.
async fn measure(
    args: &BenchArgs,
    world: &World,
    a: &PodProc,
    host: &SimHost,
    client_rec: &Recorder,
    tracked: &Tracked,
) -> anyhow::Result<Map<String, Value>> {
    let stats = || host.sim().stats().snapshot();
    let t0 = phase_start();
    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    client_rec.reset(t0);
    let cpu0 = tracked.snapshot();
    let (sent0, stored0, rows0) = (
        stats().output_lines,
        stored(world, a).await,
        rows(world).await,
    );
    let end = Instant::now() + Duration::from_secs(args.duration_s);
    let mut backlog = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        backlog.push(stats().output_lines as f64 - stored(world, a).await);
    }
    let (sent1, stored1, rows1) = (
        stats().output_lines,
        stored(world, a).await,
        rows(world).await,
    );
    let persisted = (rows1 - rows0).max(0) as u64;
    let cpu = tracked.report(&cpu0, persisted);
    let secs = args.duration_s as f64;
    let (each, in_window) = client_rec.per_second(args.duration_s);
    let mut m = Map::new();
    m.insert(
        "linesSentPerS".into(),
        json!(round((sent1 - sent0) as f64 / secs, 1)),
    );
    m.insert(
        "linesPersistedPerS".into(),
        json!(round(persisted as f64 / secs, 1)),
    );
    m.insert(
        "linesStoredPerSByMetric".into(),
        json!(round((stored1 - stored0) / secs, 1)),
    );
    m.insert(
        "clientLinesPerS".into(),
        json!(round(in_window as f64 / secs, 1)),
    );
    m.insert("clientLinesEachSecond".into(), json!(each));
    m.insert(
        "clientLatencyMs".into(),
        json!(summarize(client_rec.latencies())),
    );
    m.insert(
        "backlogLines".into(),
        json!({
            "what": "lines written by the daemons and not yet stored by pod A (socket buffers + output queue), sampled every 250 ms",
            "max": backlog.iter().copied().fold(0.0, f64::max),
            "mean": round(backlog.iter().sum::<f64>() / backlog.len().max(1) as f64, 1),
            "atEnd": backlog.last(),
        }),
    );
    if let Value::Object(c) = serde_json::to_value(cpu)? {
        m.extend(c);
    }
    Ok(m)
}

async fn stored(world: &World, a: &PodProc) -> f64 {
    world
        .metrics(a)
        .await
        .get("output_lines_stored_total")
        .copied()
        .unwrap_or(0.0)
}

/// The web client: subscribes to `tasks` and records every `taskOutput`
/// (slot = the task's place in `tasks`, latency from the line's stamp).
/// `subscribed` confirmations are counted as the recorder's marks.
pub(super) async fn web_client(
    url: String,
    key: String,
    tasks: Vec<Uuid>,
    rec: std::sync::Arc<Recorder>,
) {
    let Ok(mut req) = url.as_str().into_client_request() else {
        return;
    };
    let Ok(value) = HeaderValue::from_str(&key) else {
        return;
    };
    req.headers_mut().insert("x-api-key", value);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async_with_config(req, None, true).await
    else {
        eprintln!("bench: web client could not connect");
        return;
    };
    for t in &tasks {
        let sub = json!({"type": "subscribe", "topic": format!("task:{t}")});
        if ws.send(Message::text(sub.to_string())).await.is_err() {
            return;
        }
    }
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let at = now_ns();
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("subscribed") => rec.mark(),
            Some("taskOutput") => {
                let slot = v["taskId"]
                    .as_str()
                    .and_then(|t| t.parse::<Uuid>().ok())
                    .and_then(|t| tasks.iter().position(|x| *x == t))
                    .unwrap_or(0);
                match v["content"].as_str().and_then(parse_stamp) {
                    Some(stamp) => rec.arrived(slot, stamp, at),
                    None => rec.count_only(slot, at),
                }
            }
            Some("error") => eprintln!("bench: web client got {text}"),
            _ => {}
        }
    }
    eprintln!("bench: web client socket ended");
}
