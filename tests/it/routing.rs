//! `send_command` from any replica reaches the daemon's current socket once.

use std::time::Duration;

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
