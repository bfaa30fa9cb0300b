//! `route`: 1,000 daemons on pod A; pod B injects `sendMessage` commands
//! with `send_command` from inside its own process ([`super::inject`]),
//! round-robin over the daemons.
//!
//! - warm-up: (a) for 3 s, checked only for loss;
//! - (a) `max`: 10 s as fast as possible with at most 1,000 commands in
//!   flight end to end (the harness relays the daemons' received count to B
//!   every 5 ms);
//! - (b) `rate`: a fixed 5,000 commands/s for 10 s, open loop.
//!
//! `--overload`: against a private redis-server with a low
//! `client-output-buffer-limit pubsub`, phase (a) is bounded only by Redis
//! answers (B may outrun A), and 3 s into it pod A is stopped with SIGSTOP
//! for `--stall-ms` (a stall: A falls behind while B keeps publishing, so
//! Redis's buffer for A's subscriber fills up); then (b) shows whether A
//! delivers again.

use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::{
    delivery, drain, error,
    inject::{Flow, Injected, Injector, Request},
    log, phase_start, pod_counters,
    procs::Tracked,
    redis_json, rss,
    stats::{now_ns, round, stamped_message},
    world::{self, PrivateRedis, World},
    BenchArgs, SimHost,
};
use crate::{protocol::daemon::DaemonCommand, sim::SimConfig};

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let private = if args.overload {
        let r = PrivateRedis::start().await?;
        let limit: Vec<&str> = args.pubsub_limit.split_whitespace().collect();
        let class = limit.first().copied().unwrap_or("pubsub");
        let value = limit.get(1..).unwrap_or_default().join(" ");
        let set = world::redis_cli(
            &r.url,
            &[
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                &format!("{class} {value}"),
            ],
        );
        log(format!(
            "private redis on {} ({}): client-output-buffer-limit {}: {:?}",
            r.url,
            r.pid(),
            args.pubsub_limit,
            set.map(|s| s.trim().to_owned())
        ));
        Some(r)
    } else {
        None
    };
    let redis_url = private
        .as_ref()
        .map_or(args.redis_url.clone(), |r| r.url.clone());
    let (redis, redis_pid) = redis_json(&redis_url, private.is_some());
    rep.insert("redis".into(), redis);
    let config = json!({
        "daemons": args.daemons.unwrap_or(1000), "durationS": args.duration_s,
        "rate": args.rate, "window": args.window,
        "flow": if args.overload { "redis" } else { "e2e" },
        "warmupS": args.warmup_s.unwrap_or(3), "heartbeatMs": args.heartbeat_ms(),
        "pubsubLimit": args.overload.then_some(&args.pubsub_limit),
        "stallMs": args.overload.then_some(args.stall_ms),
    });
    rep.insert("config".into(), config);
    let world = World::new(args, &redis_url).await?;
    let outcome = scenario(args, &world, private.as_ref(), redis_pid, rep).await;
    world.cleanup().await;
    if let Some(r) = private {
        r.stop().await;
    }
    outcome
}

async fn scenario(
    args: &BenchArgs,
    world: &World,
    private: Option<&PrivateRedis>,
    redis_pid: Option<u32>,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let n = args.daemons.unwrap_or(1000);
    log("starting pod A (meshgate serve) and pod B (injector)");
    let a = world.serve("A").await?;
    let mut b = Injector::start(world).await?;
    log(format!("connecting {n} daemons to A"));
    let mut cfg = SimConfig::new(&format!("ws://{}", a.addr), &world.key.key, n);
    cfg.connect_concurrency = args.connect_concurrency.unwrap_or(100);
    let host = SimHost::start(cfg, args)?;
    let connect = host.connect_report(n, Duration::from_secs(120)).await;
    rep.insert("connect".into(), connect);
    let ids: Vec<uuid::Uuid> = host.sim().daemon_ids().into_iter().flatten().collect();
    anyhow::ensure!(
        ids.len() == n,
        "only {} of {n} daemons connected",
        ids.len()
    );
    b.ask(&Request::Ids { ids }, Duration::from_secs(10))
        .await?;

    let mut tracked = Tracked {
        pids: vec![("A".into(), a.pid), ("B".into(), b.pod.pid)],
        postgres: true,
    };
    if let Some(pid) = redis_pid.or(private.map(|r| r.pid())) {
        tracked.pids.push(("redis".into(), pid));
    }
    let warmup_s = args.warmup_s.unwrap_or(3);
    if warmup_s > 0 {
        log(format!("warm-up: max throughput for {warmup_s} s"));
        let w = max_phase(args, &mut b, &host, &tracked, warmup_s, Flow::E2e).await?;
        let lost = w.get("lost").cloned().unwrap_or_default();
        rep.insert(
            "warmup".into(),
            json!({"sent": w["sent"], "delivered": w["delivered"]}),
        );
        if lost != json!(0) {
            error(rep, format!("warm-up: {lost} commands not delivered"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let flow = if args.overload {
        Flow::Redis
    } else {
        Flow::E2e
    };
    let before = world.metrics(&a).await;
    log(format!(
        "(a) max throughput for {} s, window {}, flow {flow:?}",
        args.duration_s, args.window
    ));
    let stall = (args.overload && args.stall_ms > 0).then(|| stall(a.pid, args.stall_ms));
    let calls_before = command_calls(&world.redis_url);
    let max = max_phase(args, &mut b, &host, &tracked, args.duration_s, flow).await?;
    let calls_after = command_calls(&world.redis_url);
    rep.insert(
        "redisCalls".into(),
        calls_per_command(&calls_before, &calls_after, &max),
    );
    if let Some(stall) = stall {
        rep.insert("stall".into(), stall.await.unwrap_or_default());
    }
    if max["lost"] != json!(0) {
        error(rep, format!("max: {} commands lost", max["lost"]));
    }
    let after_max = world.metrics(&a).await;
    rep.insert("max".into(), Value::Object(max));
    tokio::time::sleep(Duration::from_secs(1)).await;

    log(format!(
        "(b) fixed rate {}/s for {} s",
        args.rate, args.duration_s
    ));
    let rate = rate_phase(args, &mut b, &host, &tracked).await?;
    if rate["lost"] != json!(0) {
        error(rep, format!("rate: {} commands lost", rate["lost"]));
    }
    rep.insert("rate".into(), Value::Object(rate));

    let mut pids = vec![("A", a.pid), ("B", b.pod.pid)];
    if let Some(r) = private {
        pids.push(("redis", r.pid()));
    }
    rep.insert("rssKiBAtEnd".into(), rss(&pids));
    let end_a = world.metrics(&a).await;
    rep.insert(
        "podCounters".into(),
        json!({"A": pod_counters(&end_a), "B": pod_counters(&world.metrics(&b.pod).await)}),
    );
    rep.insert(
        "simCounters".into(),
        serde_json::to_value(host.sim().stats().snapshot())?,
    );
    let sample = DaemonCommand::SendMessage {
        task_id: uuid::Uuid::new_v4(),
        message: stamped_message(now_ns()),
    };
    rep.insert(
        "payloadJsonBytes".into(),
        json!(serde_json::to_string(&sample)?.len()),
    );
    if let Some(r) = private {
        let ready = world
            .http
            .get(format!("http://{}/readyz", a.addr))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .ok();
        let stats = world::redis_info(&r.url, "stats");
        let delta = |m: &std::collections::BTreeMap<String, f64>, k: &str| {
            m.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0)
        };
        rep.insert(
            "overload".into(),
            json!({
                "redisLogOutputBufferLines": r.buffer_limit_log(),
                "redisClientOutputBufferLimitDisconnections": stats.get("client_output_buffer_limit_disconnections"),
                "duringMax": {
                    "pubsubMessagesLost": delta(&after_max, "pubsub_messages_lost_total"),
                    "commandsQueueFull": delta(&after_max, "commands_queue_full_total"),
                    "commandsDelivered": delta(&after_max, "commands_delivered_total"),
                    "redisErrors": delta(&after_max, "redis_errors_total"),
                },
                "wholeRun": {
                    "pubsubMessagesLost": delta(&end_a, "pubsub_messages_lost_total"),
                    "commandsQueueFull": delta(&end_a, "commands_queue_full_total"),
                    "commandsDelivered": delta(&end_a, "commands_delivered_total"),
                    "redisErrors": delta(&end_a, "redis_errors_total"),
                },
                "podAReadyzAtEnd": ready,
            }),
        );
    }
    log("stopping");
    host.stop().await;
    b.stop().await;
    a.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Commands `send_command` reported as sent (Redis had a receiver) that no
/// daemon got: lost without the sender knowing. (`lost` also counts the
/// sends that failed at once, which the sender did learn about.)
fn unnoticed(r: &Injected, delivered: u64) -> i64 {
    r.sent as i64 - r.failed as i64 - delivered as i64
}

/// Stops pod A (SIGSTOP) 3 s after the next phase starts, for `ms`, then
/// continues it (SIGCONT); answers when and for how long.
fn stall(pid: u32, ms: u64) -> tokio::task::JoinHandle<Value> {
    let at = phase_start() + 3_000_000_000;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_nanos(at.saturating_sub(now_ns()))).await;
        let signal = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        };
        let stopped_at = chrono::Utc::now();
        let stopped = signal("-STOP");
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let continued = signal("-CONT");
        log(format!(
            "pod A stalled for {ms} ms (stopped: {stopped}, continued: {continued})"
        ));
        json!({"podA": "SIGSTOP then SIGCONT", "stoppedAt": stopped_at.to_rfc3339(), "ms": ms,
               "stopped": stopped, "continued": continued})
    })
}

/// Relays the daemons' received count to pod B every 5 ms (e2e window).
fn relay_acks(b: &Injector, host: &SimHost) -> CancellationToken {
    let stop = CancellationToken::new();
    let (tx, rec, done) = (b.sender(), host.rec.clone(), stop.clone());
    tokio::spawn(async move {
        let mut last = u64::MAX;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = done.cancelled() => break,
                _ = tick.tick() => {
                    let total = rec.count();
                    if total != last {
                        last = total;
                        let line = serde_json::to_string(&Request::Ack { total }).unwrap_or_default();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        }
    });
    stop
}

async fn max_phase(
    args: &BenchArgs,
    b: &mut Injector,
    host: &SimHost,
    tracked: &Tracked,
    seconds: u64,
    flow: Flow,
) -> anyhow::Result<Map<String, Value>> {
    let t0 = phase_start();
    host.rec.reset(t0);
    let relay = relay_acks(b, host);
    let cpu0 = tracked.snapshot();
    let req = Request::Max {
        start_at_ns: t0,
        duration_ms: seconds * 1_000,
        window: args.window,
        flow,
    };
    let answer = b.ask(&req, Duration::from_secs(seconds + 120)).await;
    relay.cancel();
    let r: Injected = serde_json::from_value(answer?)?;
    let drain_ms = drain(&host.rec, r.sent).await;
    let cpu = tracked.report(&cpu0, host.rec.count());
    let secs = (r.end_ns - r.start_ns) as f64 / 1e9;
    let mut m = Map::new();
    m.insert("window".into(), json!(args.window));
    m.insert("flow".into(), json!(flow));
    m.insert("injectSeconds".into(), json!(round(secs, 3)));
    m.insert("sentPerS".into(), json!(round(r.sent as f64 / secs, 1)));
    m.insert("windowFullStalls".into(), json!(r.window_full_stalls));
    m.insert("sendFailed".into(), json!(r.failed));
    m.insert("firstSendError".into(), json!(r.first_error));
    m.insert("drainMs".into(), json!(drain_ms));
    m.extend(delivery(&host.rec, r.sent, &r.per_daemon, seconds));
    m.insert(
        "lostUnnoticed".into(),
        json!(unnoticed(&r, host.rec.count())),
    );
    m.insert(
        "clientsOpen".into(),
        json!(host.sim().stats().snapshot().open),
    );
    if let Value::Object(c) = serde_json::to_value(cpu)? {
        m.extend(c);
    }
    Ok(m)
}

async fn rate_phase(
    args: &BenchArgs,
    b: &mut Injector,
    host: &SimHost,
    tracked: &Tracked,
) -> anyhow::Result<Map<String, Value>> {
    let t0 = phase_start();
    host.rec.reset(t0);
    let cpu0 = tracked.snapshot();
    let req = Request::Rate {
        start_at_ns: t0,
        duration_ms: args.duration_s * 1_000,
        rate: args.rate,
    };
    let r: Injected = serde_json::from_value(
        b.ask(&req, Duration::from_secs(args.duration_s + 120))
            .await?,
    )?;
    let drain_ms = drain(&host.rec, r.sent).await;
    let cpu = tracked.report(&cpu0, host.rec.count());
    let secs = (r.end_ns - r.start_ns) as f64 / 1e9;
    let mut m = Map::new();
    m.insert("targetPerS".into(), json!(args.rate));
    m.insert("injectSeconds".into(), json!(round(secs, 3)));
    m.insert("sentPerS".into(), json!(round(r.sent as f64 / secs, 1)));
    m.insert("scheduleLagMs".into(), json!(r.schedule_lag_ms));
    m.insert("sendFailed".into(), json!(r.failed));
    m.insert("firstSendError".into(), json!(r.first_error));
    m.insert("drainMs".into(), json!(drain_ms));
    m.extend(delivery(&host.rec, r.sent, &r.per_daemon, args.duration_s));
    m.insert(
        "lostUnnoticed".into(),
        json!(unnoticed(&r, host.rec.count())),
    );
    m.insert(
        "clientsOpen".into(),
        json!(host.sim().stats().snapshot().open),
    );
    if let Value::Object(c) = serde_json::to_value(cpu)? {
        m.extend(c);
    }
    Ok(m)
}

/// `INFO commandstats`: calls per command (`evalsha`, `publish`, …).
fn command_calls(url: &str) -> std::collections::BTreeMap<String, u64> {
    world::redis_info(url, "commandstats")
        .into_iter()
        .filter_map(|(k, v)| {
            let cmd = k.strip_prefix("cmdstat_")?;
            let calls = v.split(',').next()?.strip_prefix("calls=")?.parse().ok()?;
            Some((cmd.to_owned(), calls))
        })
        .collect()
}

/// Redis commands executed during phase (a), per command B sent: the proof
/// that routing costs at most one round trip (one `EVALSHA` of `route.lua`)
/// per command — far fewer at full load, where commands routed at the same
/// moment share a call (`cluster::route_batch`). Everything else the pods do
/// meanwhile (self-pings, lease refreshes, the reaper) is counted too.
fn calls_per_command(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    max: &Map<String, Value>,
) -> Value {
    let delta: std::collections::BTreeMap<&String, u64> = after
        .iter()
        .map(|(k, v)| (k, v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = delta.values().sum();
    let evalsha = delta
        .iter()
        .find(|(k, _)| k.as_str() == "evalsha")
        .map_or(0, |(_, v)| *v);
    let sent = max.get("sent").and_then(Value::as_u64).unwrap_or(0).max(1) as f64;
    let per = |n: u64| (n as f64 / sent * 1000.0).round() / 1000.0;
    json!({
        "during": "phase (a)",
        "calls": delta,
        "total": total,
        // Round trips: each EVALSHA runs route.lua for one or more commands;
        // Redis counts their HMGETs and PUBLISHes as calls too, without any
        // network between them.
        "evalshaPerSentCommand": per(evalsha),
    })
}
