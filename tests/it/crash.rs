//! A daemon gone for good has its tasks retried exactly once, whichever pod
//! notices; one that comes back within the grace period keeps them.

use std::{process::Stdio, time::Duration};

use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, TestEnv},
};

async fn wait_released(env: &TestEnv, task: Uuid) {
    eventually(Duration::from_secs(15), "task released", || async {
        let row = env.task_row(task).await;
        (row.status != "running").then_some(())
    })
    .await;
}

#[tokio::test]
async fn killed_pods_daemon_has_its_tasks_retried_once_after_the_grace_period() {
    let env = TestEnv::new().await;
    let pods = [env.pod().await, env.pod().await, env.pod().await];
    let victim = env.pod().await;
    let owner = env.owner().await;
    let d = Daemon::connect(victim.addr(), &owner.key, "m1").await;
    let daemon = d.id();
    let running = env.task(owner.owner_id, "running", Some(daemon)).await;
    let done = env.task(owner.owner_id, "done", Some(daemon)).await;
    let last_try = env.task(owner.owner_id, "starting", Some(daemon)).await;
    sqlx::query("UPDATE tasks SET retry_count = 3 WHERE id = $1")
        .bind(last_try)
        .execute(&env.pool)
        .await
        .unwrap();

    let killed_at = std::time::Instant::now();
    victim.kill().await;
    drop(d);

    wait_released(&env, running).await;
    // Not before lease (0.9 s) + grace (1.2 s) from the last refresh.
    assert!(
        killed_at.elapsed() >= Duration::from_millis(1500),
        "released too early"
    );
    // Let every pod's reaper run several more rounds: still exactly once.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let row = env.task_row(running).await;
    assert_eq!(row.status, "pending");
    assert_eq!(row.daemon_id, None);
    assert_eq!(row.retry_count, 1);
    assert_eq!(row.failed_daemon_ids, vec![daemon]);
    assert_eq!(row.version, 2, "one update");

    let row = env.task_row(last_try).await;
    assert_eq!(row.status, "failed", "retries used up");
    assert_eq!(row.retry_count, 4);

    let row = env.task_row(done).await;
    assert_eq!(
        (row.status.as_str(), row.retry_count),
        ("done", 0),
        "finished tasks untouched"
    );

    let reaped: u64 = pods
        .iter()
        .map(|p| {
            p.state()
                .metrics
                .daemons_reaped
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(reaped, 1, "one pod cleaned up");
    for pod in pods {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn daemon_back_within_the_grace_period_keeps_its_running_task() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let victim = env.pod().await;
    let owner = env.owner().await;
    let d = Daemon::connect(victim.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    victim.kill().await;
    drop(d);
    // Reconnect through another pod well within lease + grace.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = Daemon::connect(b.addr(), &owner.key, "m1").await;

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let row = env.task_row(task).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.daemon_id, Some(back.id()));
    assert_eq!(row.retry_count, 0);
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn clean_disconnect_retries_after_the_grace_period_unless_the_daemon_returns() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;

    let gone = Daemon::connect(a.addr(), &owner.key, "gone").await;
    let gone_task = env.task(owner.owner_id, "running", Some(gone.id())).await;
    let returning = Daemon::connect(a.addr(), &owner.key, "returning").await;
    let kept_task = env
        .task(owner.owner_id, "initializing", Some(returning.id()))
        .await;

    drop(gone);
    drop(returning);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let back = Daemon::connect(b.addr(), &owner.key, "returning").await;

    wait_released(&env, gone_task).await;
    // Released once, then handed to the daemon still connected (it has a
    // free slot), never back to the one that left.
    let row = env.task_row(gone_task).await;
    assert_eq!(row.retry_count, 1);
    assert_eq!(row.failed_daemon_ids.len(), 1);
    assert!(
        row.status == "pending" || row.daemon_id == Some(back.id()),
        "{row:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let kept = env.task_row(kept_task).await;
    assert_eq!(
        (kept.status.as_str(), kept.retry_count),
        ("initializing", 0)
    );
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

/// The real binary, SIGKILLed: nothing of it cleans up, the other replicas
/// (in this process) retry its daemon's task once.
#[tokio::test]
async fn sigkilled_meshgate_process_has_its_daemons_tasks_retried_by_the_others() {
    let env = TestEnv::new().await;
    let pods = [env.pod().await, env.pod().await];
    let owner = env.owner().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("serve")
        .env("MESHGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", &env.db_url)
        .env("REDIS_URL", &env.redis_url)
        .env("MESHGATE_REDIS_PREFIX", &env.prefix)
        .env("MESHGATE_LEASE_TTL_MS", "900")
        .env("MESHGATE_LEASE_REFRESH_MS", "200")
        .env("MESHGATE_DISCONNECT_GRACE_MS", "1200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start meshgate binary");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    eventually(Duration::from_secs(20), "binary ready", || async {
        let r = reqwest::get(format!("http://{addr}/readyz")).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;

    let d = Daemon::connect(addr, &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    // Listed by the in-process replicas: the registry is shared.
    let seen = meshgate::cluster::registry::get(&pods[0].state().redis, owner.owner_id, d.id())
        .await
        .unwrap();
    assert!(seen.is_some());

    child.start_kill().expect("SIGKILL");
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited");
    drop(d);

    wait_released(&env, task).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let row = env.task_row(task).await;
    assert_eq!((row.status.as_str(), row.retry_count), ("pending", 1));
    for pod in pods {
        pod.shutdown().await;
    }
}

/// A daemon whose machine vanished (socket half-open: it neither sends nor
/// answers pings) is closed after three ping intervals, so its lease ends
/// and its tasks are retried instead of being held forever.
#[tokio::test]
async fn a_silent_daemon_is_closed_and_its_task_released() {
    let env = TestEnv::new().await;
    let a = env.pod_with(&["--daemon-ping-ms=200"]).await;
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    // `d` is never read again: pings go unanswered.
    eventually(
        Duration::from_secs(5),
        "silent daemon unregistered",
        || async {
            let entry = meshgate::cluster::registry::get(&a.state().redis, owner.owner_id, d.id())
                .await
                .unwrap();
            entry.is_none().then_some(())
        },
    )
    .await;
    wait_released(&env, task).await;
    assert_eq!(env.task_row(task).await.retry_count, 1);
    drop(d);
}
