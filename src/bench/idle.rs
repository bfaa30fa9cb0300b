//! `idle`: memory per idle daemon connection. For each count (10,000 then
//! 20,000): a fresh pod A alone; its RSS (`VmRSS`) 2 s after it is ready;
//! that many daemons connect and authenticate, 400 at a time (the peer: 4
//! processes × 100); 5 s later its RSS again. `rssPerConnectionKiB =
//! (after − before) / connected`. The simulated daemons live in this
//! process, so its own RSS growth per daemon is reported too (the cost of a
//! simulated daemon, against the peer's ~48 KiB per client connection).

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{log, pod_counters, procs, redis_json, stats::round, world::World, BenchArgs, SimHost};
use crate::sim::SimConfig;

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let (redis, _) = redis_json(&args.redis_url, false);
    rep.insert("redis".into(), redis);
    let concurrency = args.connect_concurrency.unwrap_or(400);
    rep.insert(
        "config".into(),
        json!({"daemons": args.idle_daemons, "connectConcurrency": concurrency, "settleS": 5, "heartbeatMs": args.heartbeat_ms()}),
    );
    let world = World::new(args, &args.redis_url).await?;
    let mut runs = Vec::new();
    let mut outcome = Ok(());
    for &n in &args.idle_daemons {
        match one(args, &world, n, concurrency).await {
            Ok(r) => runs.push(r),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    rep.insert("runs".into(), Value::Array(runs));
    world.cleanup().await;
    outcome
}

async fn one(
    args: &BenchArgs,
    world: &World,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Value> {
    log(format!("idle: starting pod A for {n} daemons"));
    let a = world.serve("A").await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let me = std::process::id();
    let (a_before, me_before) = (procs::rss_kib(a.pid), procs::rss_kib(me));
    let mut cfg = SimConfig::new(&format!("ws://{}", a.addr), &world.key.key, n);
    cfg.connect_concurrency = concurrency;
    let host = SimHost::start(cfg, args)?;
    let connect = host.connect_report(n, Duration::from_secs(300)).await;
    log(format!("idle: {connect}; settling 5 s"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a_after, me_after) = (procs::rss_kib(a.pid), procs::rss_kib(me));
    let open = host.sim().stats().snapshot().open;
    let counters = pod_counters(&world.metrics(&a).await);
    let per = |b: Option<u64>, a: Option<u64>| {
        b.zip(a)
            .filter(|_| open > 0)
            .map(|(b, a)| round((a as f64 - b as f64) / open as f64, 2))
    };
    let run = json!({
        "daemons": n,
        "connect": connect,
        "podA": {
            "rssKiBBefore": a_before, "rssKiBAfter": a_after,
            "rssPerConnectionKiB": per(a_before, a_after),
            "daemonsConnected": counters.get("daemons_connected"),
        },
        "simulatedDaemons": {
            "harnessRssKiBBefore": me_before, "harnessRssKiBAfter": me_after,
            "rssPerDaemonKiB": per(me_before, me_after),
        },
        "simCounters": host.sim().stats().snapshot(),
    });
    log("idle: stopping");
    host.stop().await;
    a.stop(Duration::from_secs(15)).await;
    Ok(run)
}
