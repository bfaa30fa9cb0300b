//! Redis Cluster: each test starts its own three-primary cluster with one
//! replica per primary (`scripts/redis-cluster.sh`, loopback ports), so a
//! failover here disturbs no other test. Shows that keys and channels are
//! spread over all primaries, that no command crosses slots, and that a
//! primary failed over in the middle of a run costs a short pause and
//! nothing persisted.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::{message, output, Daemon},
    harness::{eventually, TestEnv},
};

/// One cluster node as `CLUSTER NODES` reports it.
#[derive(Debug, Clone)]
struct Node {
    id: String,
    port: u16,
    primary: bool,
    /// For a replica: its primary's id.
    replica_of: Option<String>,
    slots: Vec<(u16, u16)>,
}

impl Node {
    fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    }
}

struct PrivateCluster {
    dir: PathBuf,
    base: u16,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/redis-cluster.sh")
}

/// A base port whose six node ports and six bus ports (+10000) are free,
/// all below the ephemeral range (32768+), so no outgoing socket of another
/// test takes one between this check and the nodes binding.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 21_000 + (rand::random::<u16>() % 170) * 10;
        let free = (0..6).all(|i| {
            [base + i, base + i + 10_000]
                .iter()
                .all(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        if free {
            return base;
        }
    }
    panic!("no free port range for a private cluster");
}

impl PrivateCluster {
    fn start() -> Self {
        let base = free_base();
        let dir = std::env::temp_dir().join(format!("meshgate-cluster-{base}-{}", Uuid::new_v4()));
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(base.to_string())
            .output()
            .expect("run scripts/redis-cluster.sh");
        assert!(
            out.status.success(),
            "cluster start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir, base, url }
    }

    fn flag(&self) -> String {
        format!("--redis-url={}", self.url)
    }

    /// Two pods of `env` on this cluster.
    async fn two_pods(&self, env: &TestEnv) -> (meshgate::Pod, meshgate::Pod) {
        let flag = self.flag();
        (env.pod_with(&[&flag]).await, env.pod_with(&[&flag]).await)
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn nodes(&self) -> Vec<Node> {
        self.cli(self.base, &["cluster", "nodes"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split(['@', ':']).nth(1)?.parse().ok()?;
                let primary = f.get(2)?.contains("master");
                let slots = f[8..]
                    .iter()
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|a| (a, a)),
                    })
                    .collect();
                Some(Node {
                    id: f[0].to_owned(),
                    port,
                    primary,
                    replica_of: (f[3] != "-").then(|| f[3].to_owned()),
                    slots,
                })
            })
            .collect()
    }

    fn primaries(&self) -> Vec<Node> {
        self.nodes().into_iter().filter(|n| n.primary).collect()
    }

    /// `INFO errorstats` of a node as `error kind → count`.
    fn errors(&self, port: u16) -> HashMap<String, u64> {
        self.cli(port, &["info", "errorstats"])
            .lines()
            .filter_map(|l| {
                let (kind, rest) = l.trim().strip_prefix("errorstat_")?.split_once(':')?;
                Some((kind.to_owned(), rest.strip_prefix("count=")?.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A web client on the event WebSocket, collecting what arrives.
struct Watcher {
    ws: crate::client::Ws,
}

impl Watcher {
    async fn open(addr: std::net::SocketAddr, key: &str, topics: &[String]) -> Self {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
        let mut req = format!("ws://{addr}/api/v1/mesh/events")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(key).unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("event socket");
        for topic in topics {
            let frame = json!({"type": "subscribe", "topic": topic}).to_string();
            ws.send(tokio_tungstenite::tungstenite::Message::Text(frame.into()))
                .await
                .unwrap();
        }
        let mut me = Self { ws };
        let mut subscribed = 0;
        while subscribed < topics.len() {
            let v = me.next(Duration::from_secs(5)).await.expect("subscribed");
            assert_eq!(v["type"], "subscribed", "{v}");
            subscribed += 1;
        }
        me
    }

    async fn next(&mut self, wait: Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(&t).ok(),
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                _ => return None,
            }
        }
    }

    /// Output texts received within `wait` (stops at the first quiet gap).
    async fn outputs(&mut self, wait: Duration) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(v) = self.next(wait).await {
            if v["type"] == "taskOutput" {
                out.push(v["content"].as_str().unwrap_or_default().to_owned());
            }
        }
        out
    }
}

/// Messages (`sendMessage` texts) a daemon received within `wait`.
async fn received(d: &mut Daemon, wait: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(v) = d.try_recv(wait).await {
        if let Some(m) = v["message"].as_str() {
            got.push(m.to_owned());
        }
    }
    got
}

#[tokio::test]
async fn keys_and_channels_spread_over_all_three_primaries_and_no_command_crosses_slots() {
    let env = TestEnv::new().await;
    let cluster = PrivateCluster::start();
    let (a, b) = cluster.two_pods(&env).await;
    let owner = env.owner().await;
    let mut daemons = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let d = Daemon::connect(a.addr(), &owner.key, &format!("m{i}")).await;
        tasks.push(env.task(owner.owner_id, "running", Some(d.id())).await);
        daemons.push(d);
    }
    let topics: Vec<String> = tasks.iter().map(|t| format!("task:{t}")).collect();
    let mut w = Watcher::open(b.addr(), &owner.key, &topics).await;

    // Every daemon gets a command sent from the other pod, and every task's
    // output reaches the client on the other pod.
    let s = b.state();
    for (i, d) in daemons.iter_mut().enumerate() {
        meshgate::cluster::routing::send_command(
            &s.redis,
            &s.metrics,
            d.id(),
            &message(&format!("hi {i}")),
        )
        .await
        .expect("routed");
        assert_eq!(
            received(d, Duration::from_millis(300)).await,
            vec![format!("hi {i}")]
        );
        d.send(output(tasks[i], &format!("line {i}"))).await;
    }
    let mut lines = w.outputs(Duration::from_secs(2)).await;
    lines.sort();
    let mut want: Vec<String> = (0..24).map(|i| format!("line {i}")).collect();
    want.sort();
    assert_eq!(lines, want);

    // Keys and channels are on every primary.
    let keys = &a.state().redis.keys;
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3);
    for p in &primaries {
        let dbsize: u64 = cluster.cli(p.port, &["dbsize"]).trim().parse().unwrap();
        let channels = cluster.cli(
            p.port,
            &["pubsub", "shardchannels", &format!("{}:*", env.prefix)],
        );
        let channels = channels.lines().count();
        let daemons_here = daemons
            .iter()
            .filter(|d| p.owns(meshgate::cluster::keys::slot(&keys.daemon(d.id()))))
            .count();
        let buckets_here = (0..keys.buckets())
            .filter(|&k| p.owns(meshgate::cluster::keys::slot(&keys.reap(k))))
            .count();
        eprintln!(
            "primary :{} slots {:?}: {dbsize} keys, {channels} shard channels, {buckets_here} of {} buckets, {daemons_here} of 24 daemons",
            p.port,
            p.slots,
            keys.buckets()
        );
        assert!(dbsize > 0, "primary :{} holds keys", p.port);
        assert!(channels > 0, "primary :{} carries channels", p.port);
        assert!(buckets_here >= 5, "buckets spread evenly");
    }
    // No node refused anything: a command or script with keys of several
    // slots fails with CROSSSLOT (or ERR for a key a script builds), a
    // command sent to the wrong node with MOVED. Only NOSCRIPT is expected
    // (the first EVALSHA of each script, which then loads it).
    for n in cluster.nodes() {
        let errors = cluster.errors(n.port);
        let failing: Vec<String> = cluster
            .cli(n.port, &["info", "commandstats"])
            .lines()
            .filter(|l| l.contains("failed_calls=") && !l.contains("failed_calls=0"))
            .map(str::to_owned)
            .collect();
        eprintln!("node :{} errorstats {errors:?} {failing:?}", n.port);
        assert!(
            errors.keys().all(|kind| kind == "NOSCRIPT"),
            "node :{}: {errors:?} {failing:?}",
            n.port
        );
    }
}

#[tokio::test]
async fn a_primary_failed_over_mid_run_pauses_commands_and_events_briefly_and_loses_no_stored_output(
) {
    let env = TestEnv::new().await;
    let cluster = PrivateCluster::start();
    let (a, b) = cluster.two_pods(&env).await;
    let owner = env.owner().await;
    let keys = a.state().redis.keys.clone();
    let slot = meshgate::cluster::keys::slot;

    // The victim: the primary holding the first task's event channel; make
    // sure some daemon's registry bucket (and so its command channel) is on
    // it too, and some is elsewhere.
    let mut daemons = Vec::new();
    let mut tasks = Vec::new();
    let victim = loop {
        let i = daemons.len();
        let d = Daemon::connect(a.addr(), &owner.key, &format!("m{i}")).await;
        tasks.push(env.task(owner.owner_id, "running", Some(d.id())).await);
        daemons.push(d);
        let primaries = cluster.primaries();
        let victim = primaries
            .iter()
            .find(|p| p.owns(slot(&keys.task_events(tasks[0]))))
            .unwrap()
            .clone();
        let on_victim = daemons
            .iter()
            .filter(|d| victim.owns(slot(&keys.daemon(d.id()))))
            .count();
        if daemons.len() >= 4 && on_victim > 0 && on_victim < daemons.len() {
            break victim;
        }
        assert!(daemons.len() < 40, "no daemon landed on the victim");
    };
    let topics: Vec<String> = tasks.iter().map(|t| format!("task:{t}")).collect();
    let mut w = Watcher::open(b.addr(), &owner.key, &topics).await;
    let replica = cluster
        .nodes()
        .into_iter()
        .find(|n| n.replica_of.as_deref() == Some(victim.id.as_str()))
        .expect("the victim has a replica");

    // Rounds: every daemon streams a line, pod B sends every daemon a
    // command. The failover happens at round 5.
    let s = b.state();
    let mut sent_lines = 0;
    let mut failed_over_at = None;
    let mut healthy_since = None;
    for round in 0..60 {
        if round == 5 {
            let reply = cluster.cli(replica.port, &["cluster", "failover"]);
            assert!(reply.contains("OK"), "CLUSTER FAILOVER: {reply}");
            eventually(Duration::from_secs(15), "replica promoted", || async {
                cluster
                    .primaries()
                    .iter()
                    .any(|p| p.port == replica.port && !p.slots.is_empty())
                    .then_some(())
            })
            .await;
            failed_over_at = Some(std::time::Instant::now());
        }
        for (d, task) in daemons.iter_mut().zip(&tasks) {
            d.send(output(*task, &format!("r{round}"))).await;
            sent_lines += 1;
        }
        let mut all_commands = true;
        for (i, d) in daemons.iter_mut().enumerate() {
            let text = format!("r{round} d{i}");
            let routed = meshgate::cluster::routing::send_command(
                &s.redis,
                &s.metrics,
                d.id(),
                &message(&text),
            )
            .await;
            let got = received(d, Duration::from_millis(200)).await;
            all_commands &= routed.is_ok() && got.contains(&text);
        }
        let lines = w.outputs(Duration::from_millis(300)).await;
        let all_events = tasks.len() <= lines.iter().filter(|l| **l == format!("r{round}")).count();
        if failed_over_at.is_some() {
            if all_commands && all_events {
                let since = *healthy_since.get_or_insert((round, std::time::Instant::now()));
                // Healthy for five rounds in a row after the failover: done.
                if round - since.0 >= 5 {
                    break;
                }
            } else {
                healthy_since = None;
            }
        } else {
            assert!(
                all_commands && all_events,
                "round {round} before the failover"
            );
        }
    }
    let (_, healthy) = healthy_since.expect("commands and events flow again after the failover");
    let pause = healthy - failed_over_at.unwrap();
    eprintln!(
        "failover of :{} → :{}: healthy again after {pause:?}; resubscribes {}",
        victim.port,
        replica.port,
        a.state()
            .metrics
            .pubsub_resubscribes
            .load(std::sync::atomic::Ordering::Relaxed)
            + b.state()
                .metrics
                .pubsub_resubscribes
                .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(pause < Duration::from_secs(15), "short pause: {pause:?}");

    // Every line any daemon sent is stored, in order per task.
    let stored = eventually(Duration::from_secs(10), "every line stored", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM task_outputs WHERE task_id = ANY($1)")
                .bind(&tasks)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        (n == sent_lines).then_some(n)
    })
    .await;
    assert_eq!(stored, sent_lines);
    let order: Vec<String> =
        sqlx::query_scalar("SELECT content FROM task_outputs WHERE task_id = $1 ORDER BY id")
            .bind(tasks[0])
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let want: Vec<String> = (0..order.len()).map(|r| format!("r{r}")).collect();
    assert_eq!(order, want, "one task's lines in order");
    // The pods are ready again (every self-ping channel delivers).
    for pod in [&a, &b] {
        eventually(Duration::from_secs(10), "pod ready", || async {
            pod.state().liveness.check(Duration::from_secs(2)).ok()
        })
        .await;
    }
}

#[tokio::test]
async fn slots_moved_to_another_primary_end_shard_subscriptions_and_the_pods_subscribe_again() {
    let env = TestEnv::new().await;
    let cluster = PrivateCluster::start();
    let (a, b) = cluster.two_pods(&env).await;
    let owner = env.owner().await;
    let keys = a.state().redis.keys.clone();
    let slot = meshgate::cluster::keys::slot;
    // `--cluster reshard` moves the lowest slots of the source: 0..1100,
    // where bucket 0 (its daemons' entries and every pod's command channel
    // of the bucket) lives.
    const MOVED: u16 = 1100;
    let primaries = cluster.primaries();
    let source = primaries.iter().find(|p| p.owns(0)).unwrap().clone();
    let target = primaries.iter().find(|p| !p.owns(0)).unwrap().clone();

    // A daemon in bucket 0, and a task whose event channel moves too.
    let mut others = Vec::new();
    let mut d = loop {
        let d = Daemon::connect(a.addr(), &owner.key, &format!("m{}", others.len())).await;
        if slot(&keys.daemon(d.id())) < MOVED {
            break d;
        }
        others.push(d);
        assert!(others.len() < 200, "no daemon in bucket 0");
    };
    let mut task = env.task(owner.owner_id, "running", Some(d.id())).await;
    for _ in 0..500 {
        if slot(&keys.task_events(task)) < MOVED {
            break;
        }
        task = env.task(owner.owner_id, "running", Some(d.id())).await;
    }
    assert!(
        slot(&keys.task_events(task)) < MOVED,
        "no task channel in the moved slots"
    );
    let mut w = Watcher::open(b.addr(), &owner.key, &[format!("task:{task}")]).await;

    let s = b.state();
    meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message("before"))
        .await
        .unwrap();
    assert_eq!(
        received(&mut d, Duration::from_millis(500)).await,
        vec!["before".to_owned()]
    );
    d.send(output(task, "before")).await;
    assert_eq!(w.outputs(Duration::from_millis(500)).await, vec!["before"]);

    let out = tokio::process::Command::new("redis-cli")
        .arg("--cluster")
        .arg("reshard")
        .arg(format!("127.0.0.1:{}", source.port))
        .args(["--cluster-from", &source.id, "--cluster-to", &target.id])
        .args(["--cluster-slots", &MOVED.to_string(), "--cluster-yes"])
        .output()
        .await
        .expect("redis-cli --cluster reshard");
    assert!(
        out.status.success(),
        "reshard: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let moved_at = std::time::Instant::now();
    assert!(
        cluster
            .primaries()
            .iter()
            .any(|p| p.port == target.port && p.owns(0)),
        "slot 0 moved"
    );

    // Commands and events come back by themselves.
    let mut flowing = false;
    for round in 0..60 {
        let text = format!("after {round}");
        let routed =
            meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message(&text))
                .await;
        let got = received(&mut d, Duration::from_millis(200)).await;
        d.send(output(task, &text)).await;
        let lines = w.outputs(Duration::from_millis(300)).await;
        if routed.is_ok() && got.contains(&text) && lines.contains(&text) {
            flowing = true;
            break;
        }
    }
    assert!(
        flowing,
        "commands and events flow again after the slots moved"
    );
    let resubscribes: u64 = [&a, &b]
        .iter()
        .map(|p| {
            p.state()
                .metrics
                .pubsub_resubscribes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    eprintln!(
        "slots 0..{MOVED} :{} → :{}: flowing again after {:?}, {resubscribes} resubscribes",
        source.port,
        target.port,
        moved_at.elapsed()
    );
    assert!(resubscribes >= 1, "the dropped subscriptions were noticed");
    // The moved registry entry is still there (migrated with its slot).
    let entry = meshgate::cluster::registry::get(&s.redis, owner.owner_id, d.id())
        .await
        .unwrap();
    assert!(entry.is_some(), "registry entry moved with its slot");
}
