//! `send_command` from any replica reaches the daemon's current socket once.

use std::time::Duration;

use fred::prelude::*;
use meshgate::{cluster::routing::send_command, protocol::daemon::DaemonCommand, Error, Pod};
use uuid::Uuid;

use crate::{
    client::{message, Daemon},
    harness::TestEnv,
};

async fn send(pod: &Pod, daemon: Uuid, cmd: &DaemonCommand) -> meshgate::Result<()> {
    send_command(&pod.state().redis, &pod.state().metrics, daemon, cmd).await
}

#[tokio::test]
async fn command_sent_on_pod_b_or_c_reaches_daemon_on_pod_a_once() {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;

    send(&b, d.id(), &message("from b")).await.unwrap();
    send(&c, d.id(), &message("from c")).await.unwrap();
    send(&a, d.id(), &message("from a")).await.unwrap();
    for expected in ["from b", "from c", "from a"] {
        let got = d.recv().await;
        assert_eq!(got["type"], "sendMessage");
        assert_eq!(got["message"], expected);
    }
    assert!(
        d.try_recv(Duration::from_millis(300)).await.is_none(),
        "each command arrives once"
    );
    for pod in [a, b, c] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn reconnecting_daemon_gets_commands_on_its_new_socket_only() {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut old = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let mut new = Daemon::connect(c.addr(), &owner.key, "m1").await;
    assert_eq!(old.id(), new.id());

    // The older socket is closed by its pod, with the "replaced" code.
    assert_eq!(
        old.closed().await,
        Some(meshgate::daemon::socket::CLOSE_REPLACED)
    );

    // Its late cleanup must not have removed the newer registration.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&b, new.id(), &message("after reconnect"))
        .await
        .unwrap();
    assert_eq!(new.recv().await["message"], "after reconnect");
    let listed = meshgate::cluster::registry::get(&b.state().redis, owner.owner_id, new.id())
        .await
        .unwrap()
        .expect("still registered");
    assert_eq!(listed.pod, c.state().pod_id.to_string());
    for pod in [a, b, c] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn same_pod_reconnect_replaces_the_older_socket_too() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let mut old = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let mut new = Daemon::connect(a.addr(), &owner.key, "m1").await;
    assert_eq!(
        old.closed().await,
        Some(meshgate::daemon::socket::CLOSE_REPLACED)
    );
    send(&a, new.id(), &message("x")).await.unwrap();
    assert_eq!(new.recv().await["message"], "x");
    a.shutdown().await;
}

#[tokio::test]
async fn command_to_a_daemon_no_pod_holds_fails_at_once() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;

    let unknown = Uuid::new_v4();
    let started = std::time::Instant::now();
    let err = send(&b, unknown, &message("x")).await.unwrap_err();
    assert!(
        matches!(err, Error::DaemonOffline(id) if id == unknown),
        "{err:?}"
    );
    // A typed error straight from Redis, not a timeout (which would be seconds).
    assert!(started.elapsed() < Duration::from_secs(2));

    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let id = d.id();
    drop(d);
    crate::harness::eventually(
        Duration::from_secs(5),
        "offline after disconnect",
        || async {
            matches!(
                send(&b, id, &message("x")).await,
                Err(Error::DaemonOffline(_))
            )
            .then_some(())
        },
    )
    .await;
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn command_to_a_daemon_whose_pod_died_fails_at_once_even_before_its_lease_lapses() {
    let env = TestEnv::new().await;
    // A long lease: the registry entry outlives the dead pod for a while.
    let a = env
        .pod_with(&["--lease-ttl-ms=60000", "--lease-refresh-ms=20000"])
        .await;
    let b = env
        .pod_with(&["--lease-ttl-ms=60000", "--lease-refresh-ms=20000"])
        .await;
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    a.kill().await;
    let err = send(&b, d.id(), &message("x")).await.unwrap_err();
    assert!(matches!(err, Error::DaemonOffline(_)), "{err:?}");
    b.shutdown().await;
}

/// Commands routed at the same moment share script calls
/// (`cluster::route_batch`): here 4 daemons get 100 commands each from one
/// sender per daemon (each awaited before the next), while 200 commands to
/// a daemon nobody holds, and 50 to a daemon whose registry key Redis
/// refuses to read (wrong type), are fired at once among them. Every
/// command to a connected daemon arrives once and in its sender's order,
/// every offline or refused one fails alone (offline, or a Redis error),
/// and the pod made fewer script calls than commands.
#[tokio::test]
async fn commands_routed_at_once_share_round_trips_and_keep_each_senders_order() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut daemons = Vec::new();
    for i in 0..4 {
        daemons.push(Daemon::connect(a.addr(), &owner.key, &format!("m{i}")).await);
    }
    let before = b.state().redis.route_script_calls();
    let senders = daemons.iter().map(|d| {
        let (b, id) = (&b, d.id());
        async move {
            for n in 0..100 {
                send(b, id, &message(&format!("{id}-{n}"))).await.unwrap();
            }
        }
    });
    let nobody = Uuid::new_v4();
    let offline = (0..200).map(|n| {
        let b = &b;
        async move { send(b, nobody, &message(&format!("offline-{n}"))).await }
    });
    let broken = Uuid::new_v4();
    let redis = &b.state().redis;
    let _: () = redis
        .client
        .set(redis.keys.daemon(broken), "not a hash", None, None, false)
        .await
        .unwrap();
    let refused = (0..50).map(|n| {
        let b = &b;
        async move { send(b, broken, &message(&format!("refused-{n}"))).await }
    });
    let (_, offline, refused) = tokio::join!(
        futures_util::future::join_all(senders),
        futures_util::future::join_all(offline),
        futures_util::future::join_all(refused)
    );
    assert!(
        refused
            .iter()
            .all(|r| matches!(r, Err(Error::Redis(e)) if e.details().contains("refused"))),
        "a command Redis refuses fails alone, as Redis refusing it: {:?}",
        refused.first()
    );
    assert!(
        offline
            .iter()
            .all(|r| matches!(r, Err(Error::DaemonOffline(id)) if *id == nobody)),
        "every command to the absent daemon fails as offline"
    );
    let calls = b.state().redis.route_script_calls() - before;
    assert!(calls < 650, "{calls} script calls for 650 commands");
    let _: i64 = redis.client.del(redis.keys.daemon(broken)).await.unwrap();
    for d in &mut daemons {
        for n in 0..100 {
            let got = d.recv().await;
            assert_eq!(got["message"], format!("{}-{n}", d.id()), "in order, once");
        }
        assert!(d.try_recv(Duration::from_millis(200)).await.is_none());
    }
    for pod in [a, b] {
        pod.shutdown().await;
    }
}
