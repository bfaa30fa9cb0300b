//! `api`: the `route` load through the HTTP API. 1,000 daemons on pod A,
//! one `running` task assigned to each (inserted directly in the
//! database); a closed-loop load generator with 64 keep-alive connections
//! (one worker each, one request at a time) posts
//! `POST /api/v1/mesh/tasks/{id}/message` to pod B round-robin over the
//! tasks for 10 s after a 2 s warm-up. Pod B resolves task → owner →
//! daemon in PostgreSQL and sends `sendMessage` through Redis; the message
//! carries the load generator's stamp, taken just before the request.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::{
    delivery, drain, error, http_load, log, phase_start, pod_counters,
    procs::Tracked,
    redis_json, rss,
    stats::{now_ns, round, stamped_message, summarize},
    world::World,
    BenchArgs, HttpClient, SimHost,
};
use crate::sim::SimConfig;

type Report = Map<String, Value>;

pub async fn run(args: &BenchArgs, rep: &mut Report) -> anyhow::Result<()> {
    let (redis, redis_pid) = redis_json(&args.redis_url, false);
    rep.insert("redis".into(), redis);
    rep.insert(
        "config".into(),
        json!({
            "daemons": args.daemons.unwrap_or(1000), "durationS": args.duration_s,
            "connections": args.connections, "warmupS": args.warmup_s.unwrap_or(2),
            "heartbeatMs": args.heartbeat_ms(), "httpClient": args.http_client,
        }),
    );
    let world = World::new(args, &args.redis_url).await?;
    let outcome = scenario(args, &world, redis_pid, rep).await;
    world.cleanup().await;
    outcome
}

/// What the load generator saw in one run.
#[derive(Default)]
struct Load {
    requests: u64,
    accepted: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    errors: std::collections::BTreeMap<String, u64>,
    latencies_ms: Vec<f64>,
    per_daemon: Vec<u32>,
    seconds: f64,
}

async fn scenario(
    args: &BenchArgs,
    world: &World,
    redis_pid: Option<u32>,
    rep: &mut Report,
) -> anyhow::Result<()> {
    let n = args.daemons.unwrap_or(1000);
    log("starting pods A and B (meshgate serve)");
    let a = world.serve("A").await?;
    let b = world.serve("B").await?;
    log(format!("connecting {n} daemons to A"));
    let mut cfg = SimConfig::new(&format!("ws://{}", a.addr), &world.key.key, n);
    cfg.connect_concurrency = args.connect_concurrency.unwrap_or(100);
    let host = SimHost::start(cfg, args)?;
    rep.insert(
        "connect".into(),
        host.connect_report(n, Duration::from_secs(120)).await,
    );
    let ids: Vec<Uuid> = host.sim().daemon_ids().into_iter().flatten().collect();
    anyhow::ensure!(
        ids.len() == n,
        "only {} of {n} daemons connected",
        ids.len()
    );
    // One running task per daemon, in daemon order (task i is daemon i's).
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "INSERT INTO tasks (owner_id, name, plan, status, daemon_id, max_retries, started_at)
         SELECT $1, 'bench task', 'receive messages', 'running', d, 3, now()
         FROM unnest($2::uuid[]) AS d RETURNING daemon_id, id",
    )
    .bind(world.key.owner_id)
    .bind(&ids)
    .fetch_all(&world.pool)
    .await?;
    let by_daemon: std::collections::HashMap<Uuid, Uuid> = rows.into_iter().collect();
    let tasks: Vec<Uuid> = ids
        .iter()
        .filter_map(|d| by_daemon.get(d).copied())
        .collect();
    anyhow::ensure!(tasks.len() == n, "tasks not created");
    let tasks = Arc::new(tasks);

    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(match args.http_client {
            HttpClient::Lean => 1,
            HttpClient::Reqwest => 2,
        })
        .thread_name("mg-load")
        .enable_all()
        .build()?;
    let target = Target {
        addr: b.addr,
        key: world.key.key.clone(),
        client: args.http_client,
    };
    let mut tracked = Tracked {
        pids: vec![("A".into(), a.pid), ("B".into(), b.pid)],
        postgres: true,
    };
    if let Some(pid) = redis_pid {
        tracked.pids.push(("redis".into(), pid));
    }
    let outcome = async {
        let warmup_s = args.warmup_s.unwrap_or(2);
        if warmup_s > 0 {
            log(format!("warm-up: {warmup_s} s"));
            host.rec.reset(phase_start());
            let w = load(&load_rt, &target, &tasks, args.connections, warmup_s).await;
            drain(&host.rec, w.accepted).await;
            rep.insert("warmup".into(), json!({"accepted": w.accepted, "delivered": host.rec.count()}));
            if host.rec.count() != w.accepted {
                error(rep, format!("warm-up: {} of {} not delivered", w.accepted - host.rec.count().min(w.accepted), w.accepted));
            }
        }
        log(format!("run: {} s, {} connections", args.duration_s, args.connections));
        let t0 = phase_start();
        host.rec.reset(t0);
        let cpu0 = tracked.snapshot();
        let sleep_ns = t0.saturating_sub(now_ns());
        tokio::time::sleep(Duration::from_nanos(sleep_ns)).await;
        let connections_seen = Arc::new(Mutex::new(0usize));
        let probe = {
            let seen = connections_seen.clone();
            let port = b.addr.port();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = established_on(port);
            })
        };
        let r = load(&load_rt, &target, &tasks, args.connections, args.duration_s).await;
        let _ = probe.await;
        let drain_ms = drain(&host.rec, r.accepted).await;
        let cpu = tracked.report(&cpu0, host.rec.count());
        let mut m = Map::new();
        m.insert("seconds".into(), json!(round(r.seconds, 3)));
        m.insert("requests".into(), json!(r.requests));
        m.insert("accepted202".into(), json!(r.accepted));
        m.insert("status".into(), json!(r.statuses));
        m.insert("requestErrors".into(), json!(r.errors));
        m.insert("requestsPerS".into(), json!(round(r.accepted as f64 / r.seconds, 1)));
        m.insert("httpLatencyMs".into(), json!(summarize(r.latencies_ms)));
        m.insert("httpConnectionsOnB".into(), json!(*connections_seen.lock().unwrap_or_else(|e| e.into_inner())));
        m.insert("drainMs".into(), json!(drain_ms));
        m.extend(delivery(&host.rec, r.accepted, &r.per_daemon, args.duration_s));
        m.insert("clientsOpen".into(), json!(host.sim().stats().snapshot().open));
        if let Value::Object(c) = serde_json::to_value(cpu)? {
            m.extend(c);
        }
        if m["lost"] != json!(0) {
            error(rep, format!("run: {} messages lost", m["lost"]));
        }
        if r.accepted != r.requests {
            error(rep, format!("run: {} of {} requests not answered 202", r.requests - r.accepted, r.requests));
        }
        rep.insert("run".into(), Value::Object(m));
        rep.insert("rssKiBAtEnd".into(), rss(&[("A", a.pid), ("B", b.pid)]));
        rep.insert(
            "podCounters".into(),
            json!({"A": pod_counters(&world.metrics(&a).await), "B": pod_counters(&world.metrics(&b).await)}),
        );
        anyhow::Ok(())
    }
    .await;
    log("stopping");
    host.stop().await;
    load_rt.shutdown_background();
    b.stop(Duration::from_secs(10)).await;
    a.stop(Duration::from_secs(10)).await;
    outcome
}

/// Established TCP connections whose local port is `port` (server side).
fn established_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1).is_some_and(|a| a.ends_with(&format!(":{port}"))) && f.get(3) == Some(&"01")
        })
        .count()
}

impl Load {
    /// Counts one request to task `i` sent at `t`: its status, or its
    /// error (after which the worker pauses 10 ms).
    async fn record(&mut self, i: usize, t: Instant, answer: Result<u16, String>) {
        self.requests += 1;
        match answer {
            Ok(status) => {
                self.latencies_ms.push(t.elapsed().as_secs_f64() * 1e3);
                *self.statuses.entry(status).or_default() += 1;
                if status == 202 {
                    self.accepted += 1;
                    self.per_daemon[i] += 1;
                }
            }
            Err(e) => {
                *self.errors.entry(e).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Where the load generator posts, and with which client.
#[derive(Clone)]
struct Target {
    addr: std::net::SocketAddr,
    key: String,
    client: HttpClient,
}

/// `workers` closed-loop workers, each on its own keep-alive connection,
/// posting for `seconds` on the `mg-load` runtime.
async fn load(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    tasks: &Arc<Vec<Uuid>>,
    workers: usize,
    seconds: u64,
) -> Load {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (target, tasks, next) = (target.clone(), tasks.clone(), next.clone());
            rt.spawn(async move {
                match target.client {
                    HttpClient::Lean => lean_worker(&target, &tasks, &next, end).await,
                    HttpClient::Reqwest => reqwest_worker(&target, &tasks, &next, end).await,
                }
            })
        })
        .collect();
    let mut total = Load {
        per_daemon: vec![0; tasks.len()],
        ..Default::default()
    };
    for h in handles {
        let Ok(w) = h.await else { continue };
        total.requests += w.requests;
        total.accepted += w.accepted;
        for (k, v) in w.statuses {
            *total.statuses.entry(k).or_default() += v;
        }
        for (k, v) in w.errors {
            *total.errors.entry(k).or_default() += v;
        }
        total.latencies_ms.extend(w.latencies_ms);
        for (t, c) in total.per_daemon.iter_mut().zip(&w.per_daemon) {
            *t += c;
        }
    }
    total.seconds = start.elapsed().as_secs_f64();
    total
}

/// One closed-loop worker on a [`http_load::Conn`] (connected again after
/// an error).
async fn lean_worker(target: &Target, tasks: &[Uuid], next: &AtomicUsize, end: Instant) -> Load {
    let mut l = Load {
        per_daemon: vec![0; tasks.len()],
        ..Default::default()
    };
    let headers = [("x-api-key", target.key.as_str())];
    let mut conn = None;
    while Instant::now() < end {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match http_load::Conn::connect(target.addr).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    *l.errors.entry(format!("connect: {e}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let i = next.fetch_add(1, Ordering::Relaxed) % tasks.len();
        let t = Instant::now();
        let body = json!({"message": stamped_message(now_ns())}).to_string();
        let path = format!("/api/v1/mesh/tasks/{}/message", tasks[i]);
        let answer = c.post_json(&path, &headers, body.as_bytes()).await;
        if answer.is_err() {
            conn = None;
        }
        l.record(i, t, answer.map_err(|e| e.to_string())).await;
    }
    l
}

/// One closed-loop worker on its own reqwest client.
async fn reqwest_worker(target: &Target, tasks: &[Uuid], next: &AtomicUsize, end: Instant) -> Load {
    let mut l = Load {
        per_daemon: vec![0; tasks.len()],
        ..Default::default()
    };
    let base = format!("http://{}", target.addr);
    let key = target.key.as_str();
    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            l.errors.insert(e.to_string(), 1);
            return l;
        }
    };
    while Instant::now() < end {
        let i = next.fetch_add(1, Ordering::Relaxed) % tasks.len();
        let t = Instant::now();
        let body = json!({"message": stamped_message(now_ns())});
        let sent = client
            .post(format!("{base}/api/v1/mesh/tasks/{}/message", tasks[i]))
            .header("x-api-key", key)
            .json(&body)
            .send()
            .await;
        let answer = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                Ok(status)
            }
            Err(e) => Err(e.to_string()),
        };
        l.record(i, t, answer).await;
    }
    l
}
