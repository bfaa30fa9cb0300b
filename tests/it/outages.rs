//! Outages and shutdowns: a drained replica (the real binary, SIGTERM),
//! a deaf Redis subscriber, a Redis restart and a PostgreSQL outage. Redis
//! outages use a private `redis-server` on its own port, so the shared one
//! (and every other test) is left alone.

use std::{
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};

use crate::{
    client::{command_arrives, message, Daemon},
    harness::{eventually, free_port, TestEnv},
};

/// A private redis-server for one test.
pub(crate) struct PrivateRedis {
    port: u16,
    child: Child,
}

impl PrivateRedis {
    pub(crate) async fn start() -> Self {
        Self::start_on(free_port()).await
    }

    async fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian package redis-server) must be installed");
        let me = Self { port, child };
        eventually(Duration::from_secs(10), "private redis up", || async {
            me.cli(&["PING"]).await.filter(|o| o.contains("PONG"))
        })
        .await;
        me
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub(crate) async fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn stop(mut self) -> u16 {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        self.port
    }
}

async fn ready(addr: std::net::SocketAddr) -> bool {
    match reqwest::get(format!("http://{addr}/readyz")).await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn sigterm_drains_the_binary_in_batches_and_its_daemons_keep_their_tasks_elsewhere() {
    let env = TestEnv::new().await;
    let other = env.pod().await;
    let owner = env.owner().await;
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("serve")
        .env("MESHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", &env.redis_url)
        .env("MESHGATE_REDIS_PREFIX", &env.prefix)
        .env("MESHGATE_DRAIN_MS", "2000")
        .env("MESHGATE_DISCONNECT_GRACE_MS", "5000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(20), "binary ready", || async {
        ready(addr).await.then_some(())
    })
    .await;

    let mut daemons = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let d = Daemon::connect(addr, &owner.key, &format!("m{i}")).await;
        tasks.push(env.task(owner.owner_id, "running", Some(d.id())).await);
        daemons.push(d);
    }
    let started = tokio::time::Instant::now();
    nix_kill(&child, "TERM");

    // Readiness turns 503 and new daemons are refused while it drains.
    let refused = eventually(Duration::from_secs(2), "refusing during drain", || async {
        let r = crate::client::open(addr, Some(&owner.key)).await.err()?;
        Some(r)
    })
    .await;
    assert_eq!(
        (refused.status, refused.body["code"].as_str()),
        (503, Some("DRAINING"))
    );

    // Each daemon is told to reconnect, then closed with 1012.
    let watchers: Vec<_> = daemons
        .into_iter()
        .map(|mut d| {
            tokio::spawn(async move {
                let cmd = d.recv().await;
                assert_eq!(cmd["type"], "reconnect", "{cmd}");
                assert_eq!(d.closed().await, Some(1012));
                started.elapsed()
            })
        })
        .collect();
    let mut closed_at = Vec::new();
    for w in watchers {
        closed_at.push(w.await.unwrap());
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit 0 after the drain, got {status:?}");
    let spread = *closed_at.iter().max().unwrap() - *closed_at.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(300),
        "closed in batches, not at once: spread {spread:?}"
    );

    // They reconnect elsewhere within the grace period and keep their tasks.
    let mut back = Vec::new();
    for i in 0..20 {
        back.push(Daemon::connect(other.addr(), &owner.key, &format!("m{i}")).await);
    }
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    for (task, d) in tasks.iter().zip(&back) {
        let row = env.task_row(*task).await;
        assert_eq!(
            (row.status.as_str(), row.daemon_id, row.retry_count),
            ("running", Some(d.id()), 0)
        );
    }
}

fn nix_kill(child: &Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_pod_whose_subscriptions_are_killed_and_cannot_come_back_is_unready_until_they_do() {
    let env = TestEnv::new().await;
    let redis = PrivateRedis::start().await;
    let url = format!("--redis-url={}", redis.url());
    let a = env.pod_with(&[&url]).await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    eventually(Duration::from_secs(5), "ready", || async {
        ready(a.addr()).await.then_some(())
    })
    .await;

    // Kill the pub/sub connections and keep them from coming back (no room
    // for new clients), while the command connection stays up: the pod is
    // deaf, but a plain PING would still say Redis is fine.
    // One redis-cli session holds its connection across the outage, so it
    // can open the door again when no new connection is allowed.
    let mut cli = Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    // The pod's command client and this session are all that may stay.
    stdin
        .write_all(b"CONFIG SET maxclients 2\nCLIENT KILL TYPE pubsub\n")
        .await
        .unwrap();
    stdin.flush().await.unwrap();
    eventually(Duration::from_secs(5), "unready while deaf", || async {
        (!ready(a.addr()).await).then_some(())
    })
    .await;
    // And it stays unready as long as it is deaf.
    for _ in 0..10 {
        assert!(!ready(a.addr()).await, "ready again while still deaf");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stdin
        .write_all(b"CONFIG SET maxclients 10000\n")
        .await
        .unwrap();
    drop(stdin);
    cli.wait().await.unwrap();

    // Back by itself: ready again and delivering.
    eventually(Duration::from_secs(10), "ready again", || async {
        ready(a.addr()).await.then_some(())
    })
    .await;
    let mut ok = false;
    for i in 0..40 {
        if command_arrives(&a, &mut d, &format!("after storm {i}")).await {
            ok = true;
            break;
        }
    }
    assert!(ok, "commands flow again without a restart");
    let reconnects = a.state().metrics.pubsub_reconnects.load(Ordering::Relaxed);
    assert!(reconnects >= 1, "the lost subscription is counted");
    a.shutdown().await;
    redis.stop().await;
}

#[tokio::test]
async fn commands_and_events_work_again_after_redis_restarts_without_restarting_pods() {
    let env = TestEnv::new().await;
    let redis = PrivateRedis::start().await;
    let url = format!("--redis-url={}", redis.url());
    let (a, b) = (env.pod_with(&[&url]).await, env.pod_with(&[&url]).await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    assert!(command_arrives(&b, &mut d, "before").await);

    // Redis goes away and comes back empty (no persistence).
    let port = redis.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // While it is down, a command fails at once with a clear error, and the
    // daemon's socket stays open.
    let s = b.state();
    let err =
        meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message("x")).await;
    assert!(matches!(err, Err(meshgate::Error::Redis(_))), "{err:?}");
    let _redis = PrivateRedis::start_on(port).await;

    // Leases are re-established and subscriptions restored by themselves.
    let mut delivered = false;
    for i in 0..40 {
        if command_arrives(&b, &mut d, &format!("after {i}")).await {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "commands flow again after the restart");
    let listed = meshgate::cluster::registry::get(&b.state().redis, owner.owner_id, d.id())
        .await
        .unwrap();
    assert!(listed.is_some(), "registry entry written again");

    // Events too: a tap subscribed now sees the daemon's output.
    let mut w = crate::tap::Tap::task(
        &TestEnv {
            redis_url: format!("redis://127.0.0.1:{port}"),
            ..clone_env(&env)
        },
        task,
    )
    .await;
    let mut got = false;
    for i in 0..20 {
        d.send(json!({"type": "taskOutput", "taskId": task, "output": format!("line {i}"), "isPartial": false})).await;
        if w.try_next(owner.owner_id, Duration::from_millis(500))
            .await
            .is_some()
        {
            got = true;
            break;
        }
    }
    assert!(got, "events flow again");
    w.close().await;
}

fn clone_env(env: &TestEnv) -> TestEnv {
    TestEnv {
        db_url: env.db_url.clone(),
        pool: env.pool.clone(),
        prefix: env.prefix.clone(),
        redis_url: env.redis_url.clone(),
    }
}

/// A TCP forwarder to PostgreSQL that can be cut: existing connections are
/// dropped and new ones refused until it is restored.
struct CuttableProxy {
    port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl CuttableProxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let target = target.to_owned();
        let (up2, gen2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    let _ = inbound.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let (up3, gen3) = (up2.clone(), gen2.clone());
                tokio::spawn(async move {
                    let born = gen3.load(Ordering::SeqCst);
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while up3.load(Ordering::SeqCst) && gen3.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, _ = cut => {} }
                });
            }
        });
        Self {
            port,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn while_postgres_is_down_output_waits_and_nothing_is_lost_or_acknowledged() {
    let env = TestEnv::new().await;
    let proxy = CuttableProxy::start("127.0.0.1:5432").await;
    let db_name = env.db_url.rsplit('/').next().unwrap().to_owned();
    let via_proxy = format!(
        "--database-url=postgres://postgres@127.0.0.1:{}/{db_name}",
        proxy.port
    );
    let a = env.pod_with(&[&via_proxy]).await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut tap = crate::tap::Tap::task(&env, task).await;
    d.send(json!({"type": "taskOutput", "taskId": task, "output": "line 0", "isPartial": false}))
        .await;
    tap.next(owner.owner_id).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A message that must be stored is refused with a clear error...
    d.send(json!({"type": "taskProgress", "taskId": task, "summary": "half way"}))
        .await;
    let reply = d.recv().await;
    assert_eq!(reply["code"], "DB_UNAVAILABLE", "{reply}");
    // ...while output lines already checked wait in the queue: neither
    // stored nor published (nothing is acknowledged before it is stored).
    for i in 1..=50 {
        d.send(json!({"type": "taskOutput", "taskId": task, "output": format!("line {i}"), "isPartial": false})).await;
    }
    assert!(
        tap.try_next(owner.owner_id, Duration::from_millis(800))
            .await
            .is_none(),
        "published before stored"
    );
    assert!(a.state().outputs.depth() > 0, "lines wait in the queue");

    proxy.restore();
    let rows: Vec<String> = eventually(
        Duration::from_secs(20),
        "stored after the outage",
        || async {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT content FROM task_outputs WHERE task_id = $1 ORDER BY id",
            )
            .bind(task)
            .fetch_all(&env.pool)
            .await
            .unwrap();
            (rows.len() == 51).then_some(rows)
        },
    )
    .await;
    for (i, content) in rows.iter().enumerate() {
        assert_eq!(content, &format!("line {i}"), "in order, none lost");
    }
    for i in 1..=50 {
        let e = tap.next(owner.owner_id).await;
        assert_eq!(e["content"], format!("line {i}"));
    }
    tap.close().await;
}
