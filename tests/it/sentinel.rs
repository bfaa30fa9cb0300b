//! Redis Sentinel: high availability without sharding. A private primary,
//! replica and sentinel on loopback; pods given a `redis-sentinel://` URL
//! follow a failover to the promoted replica by themselves.

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{
    client::{command_arrives, Daemon},
    harness::{eventually, free_port, TestEnv},
};

struct Sentinel {
    primary: u16,
    replica: u16,
    sentinel: u16,
    dir: PathBuf,
    _children: Vec<Child>,
}

fn redis_server(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server (Debian package redis-server) must be installed")
}

async fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .await
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sentinel {
    async fn start() -> Self {
        let (primary, replica, sentinel) = (free_port(), free_port(), free_port());
        let dir = std::env::temp_dir().join(format!("meshgate-sentinel-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let common = |port: u16| {
            vec![
                "--bind".to_owned(),
                "127.0.0.1".into(),
                "--port".into(),
                port.to_string(),
                "--save".into(),
                String::new(),
                "--appendonly".into(),
                "no".into(),
            ]
        };
        let mut children = vec![redis_server(&common(primary))];
        let mut replica_args = common(replica);
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        children.push(redis_server(&replica_args));
        eventually(Duration::from_secs(10), "replica in sync", || async {
            cli(replica, &["info", "replication"])
                .await
                .contains("master_link_status:up")
                .then_some(())
        })
        .await;
        // Sentinel rewrites its configuration file, so it gets its own.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "bind 127.0.0.1\nport {sentinel}\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n",
                dir.display()
            ),
        )
        .unwrap();
        children.push(redis_server(&[
            conf.display().to_string(),
            "--sentinel".into(),
        ]));
        eventually(
            Duration::from_secs(10),
            "sentinel knows the replica",
            || async {
                cli(sentinel, &["sentinel", "replicas", "mymaster"])
                    .await
                    .contains(&replica.to_string())
                    .then_some(())
            },
        )
        .await;
        Self {
            primary,
            replica,
            sentinel,
            dir,
            _children: children,
        }
    }

    fn url(&self) -> String {
        format!(
            "--redis-url=redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=mymaster",
            self.sentinel
        )
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn pods_behind_sentinel_follow_a_failover_to_the_promoted_replica() {
    let env = TestEnv::new().await;
    let redis = Sentinel::start().await;
    let (a, b) = (
        env.pod_with(&[&redis.url()]).await,
        env.pod_with(&[&redis.url()]).await,
    );
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    assert!(command_arrives(&b, &mut d, "before").await);

    let reply = cli(redis.sentinel, &["sentinel", "failover", "mymaster"]).await;
    assert!(reply.contains("OK"), "SENTINEL FAILOVER: {reply}");
    // Done when the replica is primary and the old primary its replica
    // (Sentinel then disconnects the old primary's clients).
    eventually(Duration::from_secs(30), "roles swapped", || async {
        let new = cli(redis.replica, &["info", "replication"]).await;
        let old = cli(redis.primary, &["info", "replication"]).await;
        (new.contains("role:master") && old.contains("role:slave")).then_some(())
    })
    .await;
    let started = std::time::Instant::now();
    let mut delivered = false;
    for i in 0..60 {
        if command_arrives(&b, &mut d, &format!("after {i}")).await {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "commands flow again after the failover");
    eprintln!(
        "sentinel failover :{} → :{}: commands again after {:?}",
        redis.primary,
        redis.replica,
        started.elapsed()
    );
    // Both pods' three connections each (commands, command and event
    // subscribers) are now on the promoted replica: Sentinel disconnected
    // the clients of the demoted primary, fred asked it for the new one.
    eventually(
        Duration::from_secs(10),
        "pods connected to the new primary",
        || async {
            let clients = cli(redis.replica, &["client", "list"]).await;
            let pods = clients
                .lines()
                .filter(|l| !l.contains("cmd=client|list"))
                .count();
            (pods >= 6).then_some(())
        },
    )
    .await;
    // The registry now lives on the new primary.
    let entry = meshgate::cluster::registry::get(&b.state().redis, owner.owner_id, d.id())
        .await
        .unwrap();
    assert!(entry.is_some(), "registry entry on the promoted primary");
    for pod in [&a, &b] {
        eventually(Duration::from_secs(10), "pod ready again", || async {
            pod.state().liveness.check(Duration::from_secs(2)).ok()
        })
        .await;
    }
}
