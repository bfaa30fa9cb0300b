//! Nothing is lost silently (ARCHITECTURE.md, PROTOCOL.md §1.4): accepted
//! commands reach their daemon, tasks converge to what daemons report, and
//! answers match their questions.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use fred::prelude::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    client::{message, Daemon},
    harness::{eventually, Api, TestEnv},
};

/// A short reconcile window, so these tests run in seconds.
const WINDOW: &str = "--reconcile-after-ms=400";

fn uuid(v: &Value) -> Uuid {
    v.as_str().expect("uuid string").parse().expect("uuid")
}

async fn create_task(api: &Api, name: &str) -> Uuid {
    let (status, task) = api
        .post(
            "/api/v1/mesh/tasks",
            json!({"name": name, "plan": "do it", "maxRetries": 2}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    uuid(&task["id"])
}

async fn heartbeat(d: &mut Daemon, tasks: &[Uuid]) {
    d.send(json!({"type": "heartbeat", "activeTasks": tasks}))
        .await;
}

/// Heartbeats `tasks` every 100 ms until a command of `kind` arrives.
async fn heartbeat_until(d: &mut Daemon, tasks: &[Uuid], kind: &str, limit: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        heartbeat(d, tasks).await;
        if let Some(cmd) = d.try_recv(Duration::from_millis(100)).await {
            if cmd["type"] == kind {
                return cmd;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} within {limit:?}"
        );
    }
}

fn counter(pods: &[&meshgate::Pod], f: impl Fn(&meshgate::metrics::Metrics) -> u64) -> u64 {
    pods.iter().map(|p| f(&p.state().metrics)).sum()
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_spawn_lost_in_a_daemon_restart_is_sent_again_to_its_new_connection() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod_with(&[WINDOW]).await, env.pod_with(&[WINDOW]).await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let id = create_task(&Api::new(b.addr(), &owner.key), "t").await;
    let spawn = d.recv().await;
    assert_eq!(
        (spawn["type"].as_str(), uuid(&spawn["taskId"])),
        (Some("spawnTask"), id)
    );

    // The daemon's process dies before it starts the task, and is back
    // (on the other pod) well within the grace period, without the task.
    drop(d);
    let mut d = Daemon::connect(b.addr(), &owner.key, "m1").await;
    let again = heartbeat_until(&mut d, &[], "spawnTask", Duration::from_secs(5)).await;
    assert_eq!(uuid(&again["taskId"]), id);
    assert_eq!(again["plan"], "do it");
    let row = env.task_row(id).await;
    assert_eq!(
        (row.status.as_str(), row.daemon_id),
        ("starting", Some(d.id()))
    );
    assert_eq!(counter(&[&a, &b], |m| load(&m.spawn_resent)), 1);

    // Once it lists the task, it is not sent again.
    for _ in 0..8 {
        heartbeat(&mut d, &[id]).await;
        if let Some(cmd) = d.try_recv(Duration::from_millis(100)).await {
            panic!("unexpected command after the task was listed: {cmd}");
        }
    }
    assert_eq!(counter(&[&a, &b], |m| load(&m.tasks_confirmed)), 1);
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn a_task_its_connected_daemon_lost_is_handed_back_and_runs_elsewhere() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod_with(&[WINDOW]).await, env.pod_with(&[WINDOW]).await);
    let owner = env.owner().await;
    let mut d1 = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let id = create_task(&Api::new(b.addr(), &owner.key), "t").await;
    assert_eq!(d1.recv().await["type"], "spawnTask");
    d1.send(json!({"type": "taskStatusChange", "taskId": id, "oldStatus": "starting", "newStatus": "running"}))
        .await;
    heartbeat(&mut d1, &[id]).await;
    let mut d2 = Daemon::connect(b.addr(), &owner.key, "m2").await;

    // The agent process crashed; the daemon stays connected and its
    // heartbeats no longer list the task.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let row = loop {
        heartbeat(&mut d1, &[]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let row = env.task_row(id).await;
        if row.retry_count == 1 {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not handed back: {row:?}"
        );
    };
    assert!(row.failed_daemon_ids.contains(&d1.id()), "{row:?}");
    let spawn = d2.recv().await;
    assert_eq!(
        (spawn["type"].as_str(), uuid(&spawn["taskId"])),
        (Some("spawnTask"), id)
    );
    assert_eq!(env.task_row(id).await.daemon_id, Some(d2.id()));
    assert_eq!(counter(&[&a, &b], |m| load(&m.tasks_handed_back)), 1);
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn a_stale_copy_on_a_daemon_back_after_the_grace_period_is_interrupted() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod_with(&[WINDOW]).await, env.pod_with(&[WINDOW]).await);
    let owner = env.owner().await;
    let mut d1 = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let id = create_task(&Api::new(a.addr(), &owner.key), "t").await;
    assert_eq!(d1.recv().await["type"], "spawnTask");
    d1.send(json!({"type": "taskStatusChange", "taskId": id, "oldStatus": "starting", "newStatus": "running"}))
        .await;
    let d1_id = d1.id();
    drop(d1);
    // Away past the grace period: the task is retried on another daemon.
    let mut d2 = Daemon::connect(b.addr(), &owner.key, "m2").await;
    let spawn = d2
        .try_recv(Duration::from_secs(10))
        .await
        .expect("retried on the other daemon");
    assert_eq!(uuid(&spawn["taskId"]), id);

    // m1 comes back, still running its old copy.
    let mut d1 = Daemon::connect(b.addr(), &owner.key, "m1").await;
    assert_eq!(d1.id(), d1_id);
    let stop = heartbeat_until(&mut d1, &[id], "interruptTask", Duration::from_secs(5)).await;
    assert_eq!(uuid(&stop["taskId"]), id);
    assert_eq!(stop["graceful"], false);
    // Its reports for the task keep being refused.
    d1.send(crate::client::output(id, "stale line")).await;
    let refusal = d1.recv().await;
    assert_eq!(refusal["code"], "TASK_NOT_FOUND", "{refusal}");
    // The task stays with its new daemon.
    assert_eq!(env.task_row(id).await.daemon_id, Some(d2.id()));
    assert_eq!(counter(&[&a, &b], |m| load(&m.stale_copies_interrupted)), 1);
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn tasks_a_daemon_lists_that_are_unknown_or_another_owners_are_interrupted() {
    let env = TestEnv::new().await;
    let a = env.pod_with(&[WINDOW]).await;
    let (owner, stranger) = (env.owner().await, env.owner().await);
    let theirs = env.task(stranger.owner_id, "running", None).await;
    let unknown = Uuid::new_v4();
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let mut interrupted = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while interrupted.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{interrupted:?}");
        heartbeat(&mut d, &[theirs, unknown]).await;
        while let Some(cmd) = d.try_recv(Duration::from_millis(100)).await {
            assert_eq!(cmd["type"], "interruptTask", "{cmd}");
            assert!(
                interrupted.insert(uuid(&cmd["taskId"])),
                "interrupted twice in one window: {cmd}"
            );
        }
    }
    assert_eq!(interrupted, HashSet::from([theirs, unknown]));
    // The stranger's task is not touched.
    assert_eq!(env.task_row(theirs).await.status, "running");
    a.shutdown().await;
}

/// A task `running` on a daemon connected to `pod`, with the daemon.
async fn running_task(env: &TestEnv, pod: &meshgate::Pod, key: &str) -> (Daemon, Uuid) {
    let mut d = Daemon::connect(pod.addr(), key, "m1").await;
    let id = create_task(&Api::new(pod.addr(), key), "t").await;
    assert_eq!(d.recv().await["type"], "spawnTask");
    d.send(json!({"type": "taskStatusChange", "taskId": id, "oldStatus": "starting", "newStatus": "running"}))
        .await;
    eventually(Duration::from_secs(5), "task running", || async {
        (env.task_row(id).await.status == "running").then_some(())
    })
    .await;
    (d, id)
}

#[tokio::test]
async fn concurrent_commits_with_different_messages_each_get_their_own_commit() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let (mut d, id) = running_task(&env, &a, &owner.key).await;
    let path = format!("/api/v1/mesh/tasks/{id}/worktree/commit");
    let calls: Vec<_> = [("A", &a), ("B", &b)]
        .into_iter()
        .map(|(text, pod)| {
            let api = Api::new(pod.addr(), &owner.key);
            let path = path.clone();
            tokio::spawn(async move { api.post(&path, json!({"message": text})).await })
        })
        .collect();
    // The daemon is asked twice, one question at a time, and answers each
    // with a commit of its own.
    let mut asked = Vec::new();
    for _ in 0..2 {
        let cmd = d.recv().await;
        assert_eq!(cmd["type"], "commitWorktree", "{cmd}");
        let text = cmd["message"].as_str().unwrap().to_owned();
        // Both calls are in flight before the first answer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.send(
            json!({"type": "worktreeCommitResult", "taskId": id, "success": true,
                      "commitSha": format!("sha-{text}")}),
        )
        .await;
        asked.push(text);
    }
    asked.sort();
    assert_eq!(asked, ["A", "B"]);
    for (call, text) in calls.into_iter().zip(["A", "B"]) {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["commitSha"], format!("sha-{text}"));
    }
    assert!(d.try_recv(Duration::from_millis(300)).await.is_none());
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

#[tokio::test]
async fn a_diff_whose_command_got_no_answer_is_asked_again_by_the_next_call() {
    let env = TestEnv::new().await;
    let timeout = ["--request-timeout-ms=600"];
    let (a, b) = (env.pod_with(&timeout).await, env.pod_with(&timeout).await);
    let owner = env.owner().await;
    let (mut d, id) = running_task(&env, &a, &owner.key).await;
    let api = Api::new(b.addr(), &owner.key);
    let path = format!("/api/v1/mesh/tasks/{id}/diff");

    // The daemon lost the first getTaskDiff; a UI polls meanwhile.
    let first = tokio::spawn({
        let api = Api::new(b.addr(), &owner.key);
        let path = path.clone();
        async move { api.get(&path).await }
    });
    assert_eq!(d.recv().await["type"], "getTaskDiff");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = api.get(&path).await; // joined the first, then timed out with it
    assert_eq!(status, 504);
    assert_eq!(first.await.unwrap().0, 504);

    // The next poll asks the daemon again, and gets the answer.
    let next = tokio::spawn({
        let path = path.clone();
        async move { api.get(&path).await }
    });
    let cmd = d.recv().await;
    assert_eq!(cmd["type"], "getTaskDiff", "{cmd}");
    d.send(json!({"type": "taskDiff", "taskId": id, "success": true, "diff": "+x"}))
        .await;
    let (status, body) = next.await.unwrap();
    assert_eq!((status, body["diff"].as_str()), (200, Some("+x")), "{body}");
    for pod in [a, b] {
        pod.shutdown().await;
    }
}

/// Reads a daemon socket until the server closes it, keeping the
/// `sendMessage` texts.
fn collect(mut d: Daemon, got: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(10), d.ws.next()).await
        {
            let text = match frame {
                Ok(Message::Text(text)) => text,
                Ok(_) => continue,
                Err(_) => return,
            };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "sendMessage" {
                got.lock()
                    .unwrap()
                    .push(v["message"].as_str().unwrap().to_owned());
            }
        }
    })
}

#[tokio::test]
async fn every_accepted_command_arrives_while_its_daemon_keeps_reconnecting_between_pods() {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let got = Arc::new(Mutex::new(Vec::new()));
    let first = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let daemon_id = first.id();
    let mut readers = vec![collect(first, got.clone())];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The daemon reconnects every ~50 ms, alternating pods; each older
    // socket is read until the server closes it as replaced.
    let flapping = tokio::spawn({
        let (key, stop, got) = (owner.key.clone(), stop.clone(), got.clone());
        let addrs = [b.addr(), a.addr()];
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let d = Daemon::connect(addrs[n % 2], &key, "m1").await;
                readers.push(collect(d, got.clone()));
                n += 1;
            }
            (n, readers)
        }
    });
    let s = c.state();
    let mut accepted = HashSet::new();
    let mut refused = 0;
    for i in 0..300 {
        let text = format!("m{i}");
        match meshgate::cluster::routing::send_command(
            &s.redis,
            &s.metrics,
            daemon_id,
            &message(&text),
        )
        .await
        {
            Ok(()) => {
                accepted.insert(text);
            }
            Err(meshgate::Error::DaemonOffline(_) | meshgate::Error::DeliveryUnknown(_)) => {
                refused += 1
            }
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reconnects, readers) = flapping.await.unwrap();
    assert!(reconnects >= 5, "only {reconnects} reconnects");
    // Close the last socket by replacing it once more, then read out.
    let last = Daemon::connect(c.addr(), &owner.key, "m1").await;
    let mut readers = readers;
    readers.push(collect(last, got.clone()));
    eventually(
        Duration::from_secs(10),
        "every accepted command arrived",
        || async {
            let received: HashSet<String> = got.lock().unwrap().iter().cloned().collect();
            accepted.is_subset(&received).then_some(())
        },
    )
    .await;
    let received = got.lock().unwrap().clone();
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "a command arrived twice");
    assert!(
        accepted.len() >= 150,
        "only {} of 300 accepted ({refused} refused)",
        accepted.len()
    );
    let forwarded = counter(&[&a, &b, &c], |m| load(&m.commands_forwarded));
    eprintln!(
        "accepted {} refused {refused} forwarded {forwarded} reconnects {reconnects}",
        accepted.len()
    );
    for r in readers {
        r.abort();
    }
    for pod in [a, b, c] {
        pod.shutdown().await;
    }
}

/// A pod channel that receives commands and never confirms one: what a
/// holding pod that died, or a receipt lost on the way, looks like to the
/// sender.
async fn black_hole(
    env: &TestEnv,
    pod: &meshgate::Pod,
    daemon: Uuid,
) -> fred::clients::SubscriberClient {
    let s = pod.state();
    let bucket = s.redis.keys.bucket_of(daemon);
    let channel = s.redis.keys.pod_channel(bucket, "black-hole");
    let config = fred::types::config::Config::from_url(&env.redis_url).unwrap();
    let sub = fred::clients::SubscriberClient::new(config, None, None, None);
    sub.init().await.unwrap();
    if crate::harness::sharded() {
        sub.ssubscribe(channel).await.unwrap();
    } else {
        sub.subscribe(channel).await.unwrap();
    }
    sub
}

#[tokio::test]
async fn a_spawn_whose_delivery_is_unknown_stays_assigned_and_reaches_the_daemon_once() {
    let env = TestEnv::new().await;
    let flags = [
        WINDOW,
        "--redis-timeout-ms=500",
        // The fake registration below is refreshed by nobody.
        "--lease-ttl-ms=60000",
        "--lease-refresh-ms=1000",
    ];
    let a = env.pod_with(&flags).await;
    let owner = env.owner().await;
    // The daemon's registration names a pod that takes the command and
    // never answers.
    let s = a.state();
    let daemon_id = s
        .daemon_rows
        .register(meshgate::db::daemons::Registration {
            owner_id: owner.owner_id,
            machine_id: "m1".into(),
            hostname: "host-m1".into(),
            max_concurrent_tasks: 2,
        })
        .await
        .unwrap();
    let hole = black_hole(&env, &a, daemon_id).await;
    let mut swallowed = hole.message_rx();
    let entry = meshgate::cluster::registry::DaemonEntry {
        id: daemon_id,
        owner_id: owner.owner_id,
        pod: "black-hole".into(),
        conn: Uuid::new_v4(),
        hostname: "host-m1".into(),
        machine_id: "m1".into(),
        max_concurrent_tasks: 2,
        connected_at: chrono::Utc::now(),
        last_heartbeat_at: None,
        active_task_ids: vec![],
        working_directory: None,
        home_directory: None,
        worktrees_directory: None,
    };
    meshgate::cluster::registry::register(&s.redis, &entry, s.lease())
        .await
        .unwrap();
    let id = create_task(&Api::new(a.addr(), &owner.key), "t").await;
    let first = tokio::time::timeout(Duration::from_secs(5), swallowed.recv())
        .await
        .expect("spawnTask routed")
        .unwrap();
    assert!(first.value.as_str().unwrap().contains("spawnTask"));
    eventually(Duration::from_secs(5), "outcome unknown", || async {
        (load(&s.metrics.spawn_outcome_unknown) == 1).then_some(())
    })
    .await;
    // Not put back to pending (it may be running on the daemon already).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = env.task_row(id).await;
    assert_eq!(
        (row.status.as_str(), row.daemon_id),
        ("starting", Some(daemon_id))
    );

    // The daemon really connects; its heartbeats do not list the task, so
    // it gets spawnTask, once.
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    assert_eq!(d.id(), daemon_id);
    let spawn = heartbeat_until(&mut d, &[], "spawnTask", Duration::from_secs(5)).await;
    assert_eq!(uuid(&spawn["taskId"]), id);
    d.send(json!({"type": "taskStatusChange", "taskId": id, "oldStatus": "starting", "newStatus": "running"}))
        .await;
    for _ in 0..6 {
        heartbeat(&mut d, &[id]).await;
        assert!(d.try_recv(Duration::from_millis(100)).await.is_none());
    }
    let row = env.task_row(id).await;
    assert_eq!((row.status.as_str(), row.retry_count), ("running", 0));
    let _ = hole.quit().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_command_for_a_daemon_that_does_not_read_is_refused_and_the_socket_closed() {
    let env = TestEnv::new().await;
    let flags = ["--daemon-queue=2", "--daemon-ping-ms=400"];
    let (a, b) = (env.pod_with(&flags).await, env.pod_with(&flags).await);
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let s = b.state();
    // Large commands fill the socket's buffers, then its queue.
    let big = "x".repeat(512 * 1024);
    let mut outcome = Ok(());
    for _ in 0..200 {
        outcome =
            meshgate::cluster::routing::send_command(&s.redis, &s.metrics, d.id(), &message(&big))
                .await;
        if outcome.is_err() {
            break;
        }
    }
    assert!(
        matches!(outcome, Err(meshgate::Error::DaemonOffline(_))),
        "{outcome:?}"
    );
    assert!(load(&a.state().metrics.commands_queue_full) >= 1);
    eventually(Duration::from_secs(5), "slow socket closed", || async {
        a.state().conns.is_empty().then_some(())
    })
    .await;
    drop(d);
    for pod in [a, b] {
        pod.shutdown().await;
    }
}
