//! `resume`: web clients resuming long task streams while daemons stream
//! (PROTOCOL.md §2.1). `--resumers` finished tasks (100) of
//! `--resume-lines` stored lines each (10,000) are written to PostgreSQL
//! directly; 100 daemons on pod A stream stamped lines at `--line-rate`
//! (10,000/s in all) to tasks a live web client on pod B follows.
//!
//! - baseline: the live client's latency, `--duration-s` measured;
//! - replay: every resumer opens a WebSocket (half on A, half on B) and
//!   subscribes to its task with `since: 0` at once; measured until the
//!   last has all its lines: replay lines/s, each resumer's time, lines
//!   out of order or missing, resumers cut off, the live client's latency
//!   meanwhile, CPU per 1,000 replayed lines (pods, Redis, PostgreSQL).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};
use uuid::Uuid;

use super::{
    error,
    ingest::{create_tasks, follow, stream_to},
    log, phase_start, pod_counters,
    procs::Tracked,
    redis_json,
    stats::{now_ns, round, summarize},
    world::World,
    BenchArgs,
};

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let (redis, redis_pid) = redis_json(&args.redis_url, false);
    rep.insert("redis".into(), redis);
    rep.insert(
        "config".into(),
        json!({
            "daemons": args.daemons.unwrap_or(100), "subscribed": args.subscribed,
            "durationS": args.duration_s, "warmupS": args.warmup_s.unwrap_or(2),
            "lineRate": args.line_rate, "resumers": args.resumers,
            "resumeLines": args.resume_lines,
            "podSettings": "defaults",
        }),
    );
    let world = World::new(args, &args.redis_url).await?;
    let outcome = scenario(args, &world, redis_pid, rep).await;
    world.cleanup().await;
    outcome
}

/// What one resumer saw.
#[derive(Default)]
struct Resumed {
    lines: u64,
    out_of_order: u64,
    seconds: f64,
    /// The socket ended (or an error came) before every line did.
    cut_off: bool,
}

async fn scenario(
    args: &BenchArgs,
    world: &World,
    redis_pid: Option<u32>,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let n = args.daemons.unwrap_or(100);
    let (resumers, lines_each) = (args.resumers, args.resume_lines);
    log("starting pods A and B (meshgate serve)");
    let a = world.serve("A").await?;
    let b = world.serve("B").await?;
    let streaming = create_tasks(world, &b, n, "stream").await?;

    log(format!(
        "storing {resumers} finished tasks of {lines_each} lines"
    ));
    let t = Instant::now();
    let replayed: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO tasks (owner_id, name, plan, status, max_retries)
         SELECT $1, 'replayed ' || g, 'long run', 'done', 3 FROM generate_series(1, $2) g
         RETURNING id",
    )
    .bind(world.key.owner_id)
    .bind(resumers as i64)
    .fetch_all(&world.pool)
    .await?;
    sqlx::query(
        "INSERT INTO task_outputs (task_id, owner_id, message_type, content)
         SELECT t.id, $1, 'raw', 'replayed line ' || g
         FROM unnest($2::uuid[]) AS t(id), generate_series(1, $3) g ORDER BY t.id, g",
    )
    .bind(world.key.owner_id)
    .bind(&replayed)
    .bind(lines_each as i64)
    .execute(&world.pool)
    .await?;
    sqlx::query("ANALYZE task_outputs")
        .execute(&world.pool)
        .await?;
    rep.insert("seedS".into(), json!(round(t.elapsed().as_secs_f64(), 1)));

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mg-load")
        .enable_all()
        .build()?;
    let watched: Vec<Uuid> = streaming.iter().take(args.subscribed).copied().collect();
    let (live, live_rec) = follow(&load_rt, world, &b, &watched).await?;
    let host = stream_to(args, world, &a, n, rep).await?;
    let mut tracked = Tracked {
        pids: vec![("A".into(), a.pid), ("B".into(), b.pid)],
        postgres: true,
    };
    if let Some(pid) = redis_pid {
        tracked.pids.push(("redis".into(), pid));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup_s.unwrap_or(2))).await;

    log(format!("baseline: live latency, {} s", args.duration_s));
    let t0 = phase_start();
    tokio::time::sleep(Duration::from_nanos(t0.saturating_sub(now_ns()))).await;
    live_rec.reset(t0);
    tokio::time::sleep(Duration::from_secs(args.duration_s)).await;
    let baseline = summarize(live_rec.latencies());

    log(format!(
        "replay: {resumers} clients resume {lines_each} lines each at once"
    ));
    live_rec.reset(now_ns());
    let cpu0 = tracked.snapshot();
    let started = Instant::now();
    let clients: Vec<_> = replayed
        .iter()
        .enumerate()
        .map(|(i, task)| {
            let addr = if i % 2 == 0 { a.addr } else { b.addr };
            load_rt.spawn(resume(
                format!("ws://{addr}/api/v1/mesh/events"),
                world.key.key.clone(),
                *task,
                lines_each,
            ))
        })
        .collect();
    let mut results = Vec::with_capacity(clients.len());
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(300), c).await {
            Ok(Ok(r)) => results.push(r),
            _ => results.push(Resumed {
                cut_off: true,
                ..Resumed::default()
            }),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let during = summarize(live_rec.latencies());
    let replayed_lines: u64 = results.iter().map(|r| r.lines).sum();
    let cpu = tracked.report(&cpu0, replayed_lines.max(1));
    let out_of_order: u64 = results.iter().map(|r| r.out_of_order).sum();
    let missing = (resumers as u64 * lines_each).saturating_sub(replayed_lines);
    let cut_off = results.iter().filter(|r| r.cut_off).count();
    if missing > 0 || out_of_order > 0 || cut_off > 0 {
        error(
            rep,
            format!("replay: {missing} lines missing, {out_of_order} out of order, {cut_off} clients cut off"),
        );
    }
    let p99 = |s: &super::stats::Summary| s.p99;
    rep.insert(
        "replay".into(),
        json!({
            "clients": resumers, "linesEach": lines_each, "linesReceived": replayed_lines,
            "seconds": round(seconds, 2),
            "linesPerS": round(replayed_lines as f64 / seconds.max(1e-9), 0),
            "clientSeconds": summarize(results.iter().map(|r| r.seconds).collect()),
            "missing": missing, "outOfOrder": out_of_order, "cutOff": cut_off,
            "cpu": serde_json::to_value(&cpu)?,
            "cpuWhat": "CPU seconds per process over the replay window; cpuSecondsPer100k: per 100,000 lines replayed",
        }),
    );
    rep.insert(
        "liveLatencyMs".into(),
        json!({
            "baseline": baseline, "duringReplay": during,
            "p99Ratio": match (p99(&baseline), p99(&during)) {
                (Some(b), Some(d)) if b > 0.0 => json!(round(d / b, 2)),
                _ => Value::Null,
            },
        }),
    );
    rep.insert(
        "podCounters".into(),
        json!({"A": pod_counters(&world.metrics(&a).await), "B": pod_counters(&world.metrics(&b).await)}),
    );

    log("stopping");
    host.sim().finish_streams();
    host.stop().await;
    live.abort();
    load_rt.shutdown_background();
    b.stop(Duration::from_secs(10)).await;
    a.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// One resuming client: `since: 0` on `task`, read until `expect` lines.
async fn resume(url: String, key: String, task: Uuid, expect: u64) -> Resumed {
    #[derive(serde::Deserialize)]
    struct Frame<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
        id: Option<i64>,
    }
    let mut seen = Resumed {
        cut_off: true,
        ..Resumed::default()
    };
    let started = Instant::now();
    let Ok(mut req) = url.as_str().into_client_request() else {
        return seen;
    };
    let Ok(value) = HeaderValue::from_str(&key) else {
        return seen;
    };
    req.headers_mut().insert("x-api-key", value);
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async_with_config(req, None, true).await
    else {
        return seen;
    };
    let sub = json!({"type": "subscribe", "topic": format!("task:{task}"), "since": 0});
    if ws.send(Message::text(sub.to_string())).await.is_err() {
        return seen;
    }
    let mut last = 0;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(f) = serde_json::from_str::<Frame>(&text) else {
            continue;
        };
        match (f.kind, f.id) {
            ("taskOutput", Some(id)) => {
                if id <= last {
                    seen.out_of_order += 1;
                }
                last = id;
                seen.lines += 1;
                if seen.lines == expect {
                    seen.cut_off = false;
                    break;
                }
            }
            ("error", _) => break,
            _ => {}
        }
    }
    seen.seconds = started.elapsed().as_secs_f64();
    let _ = ws.close(None).await;
    seen
}
