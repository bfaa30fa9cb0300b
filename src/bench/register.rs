//! `register`: daemons connecting and authenticating as fast as pod A lets
//! them. 5,000 daemons, 200 connection attempts at a time; each
//! registration's time runs from the start of its TCP connect to the
//! `authenticated` frame. Each daemon also sends `daemonDirectories` right
//! after, as real daemons do. The peer has no equivalent: its nearest figure
//! is the connect time of its `idle` scenario (no key, no database).

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{
    log, pod_counters,
    procs::Tracked,
    redis_json, rss,
    stats::{round, summarize},
    world::World,
    BenchArgs, SimHost,
};
use crate::sim::SimConfig;

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let (redis, redis_pid) = redis_json(&args.redis_url, false);
    rep.insert("redis".into(), redis);
    let n = args.daemons.unwrap_or(5_000);
    let concurrency = args.connect_concurrency.unwrap_or(200);
    rep.insert(
        "config".into(),
        json!({"daemons": n, "connectConcurrency": concurrency}),
    );
    let world = World::new(args, &args.redis_url).await?;
    let outcome = async {
        let a = world.serve("A").await?;
        let mut tracked = Tracked {
            pids: vec![("A".into(), a.pid)],
            postgres: true,
        };
        if let Some(pid) = redis_pid {
            tracked.pids.push(("redis".into(), pid));
        }
        log(format!("registering {n} daemons, {concurrency} at a time"));
        let mut cfg = SimConfig::new(&format!("ws://{}", a.addr), &world.key.key, n);
        cfg.connect_concurrency = concurrency;
        let cpu0 = tracked.snapshot();
        let t = Instant::now();
        let host = SimHost::start(cfg, args)?;
        let complete = host
            .sim()
            .wait_open(n as u64, Duration::from_secs(300))
            .await;
        let secs = t.elapsed().as_secs_f64();
        let s = host.sim().stats().snapshot();
        let cpu = tracked.report(&cpu0, s.authenticated);
        let mut m = Map::new();
        m.insert("registered".into(), json!(s.open));
        m.insert("complete".into(), json!(complete));
        m.insert("failedAttempts".into(), json!(s.connect_failures));
        m.insert("seconds".into(), json!(round(secs, 3)));
        m.insert(
            "registrationsPerS".into(),
            json!(round(s.open as f64 / secs, 1)),
        );
        m.insert(
            "latencyMs".into(),
            json!(summarize(host.rec.registrations())),
        );
        if let Value::Object(c) = serde_json::to_value(cpu)? {
            m.extend(c);
        }
        rep.insert("run".into(), Value::Object(m));
        rep.insert("rssKiBAtEnd".into(), rss(&[("A", a.pid)]));
        rep.insert(
            "podCounters".into(),
            json!({"A": pod_counters(&world.metrics(&a).await)}),
        );
        log("stopping");
        host.stop().await;
        a.stop(Duration::from_secs(15)).await;
        anyhow::Ok(())
    }
    .await;
    world.cleanup().await;
    outcome
}
