//! Web clients resume task streams exactly once (PROTOCOL.md §2.1): from a
//! position on any replica over WebSocket (`since`) and SSE
//! (`Last-Event-ID`), through a long replay to a slow reader, and across an
//! interruption of the replica's own Redis subscription.

use std::{sync::atomic::Ordering::Relaxed, time::Duration};

use serde_json::{json, Value};
use tokio::{io::AsyncWriteExt, process::Command};
use uuid::Uuid;

use crate::{
    client::{output, Daemon},
    events::{SseReader, Watcher},
    harness::{eventually, TestEnv},
    outages::PrivateRedis,
};

/// Ids of a task's stored lines, oldest first.
async fn stored_ids(env: &TestEnv, task: Uuid) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM task_outputs WHERE task_id = $1 ORDER BY id")
        .bind(task)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Waits until `n` lines of `task` are stored; returns their ids.
async fn wait_stored(env: &TestEnv, task: Uuid, n: usize) -> Vec<i64> {
    eventually(Duration::from_secs(10), "lines stored", || async {
        let ids = stored_ids(env, task).await;
        (ids.len() >= n).then_some(ids)
    })
    .await
}

/// Sends `line {i}` for `range` from the daemon, pausing `every` between.
async fn stream_lines(d: &mut Daemon, task: Uuid, range: std::ops::Range<usize>, every: Duration) {
    for i in range {
        d.send(output(task, &format!("line {i}"))).await;
        if !every.is_zero() {
            tokio::time::sleep(every).await;
        }
    }
}

/// Reads `n` task output events (other events are returned beside them).
async fn outputs(w: &mut Watcher, n: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut lines, mut others) = (Vec::new(), Vec::new());
    while lines.len() < n {
        let e = w
            .try_next(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "{} of {n} lines, then silence; others: {others:?}",
                    lines.len()
                )
            });
        if e["type"] == "taskOutput" {
            lines.push(e);
        } else {
            others.push(e);
        }
    }
    (lines, others)
}

/// `line {first}`, `line {first+1}`, … each once, in order, with the ids
/// stored for them.
fn assert_lines(lines: &[Value], first: usize, ids: &[i64]) {
    for (k, e) in lines.iter().enumerate() {
        assert_eq!(
            e["content"],
            format!("line {}", first + k),
            "line {k} of {}",
            lines.len()
        );
        assert_eq!(e["id"], json!(ids[first + k]), "id of line {}", first + k);
    }
}

async fn subscribe_since(w: &mut Watcher, task: Uuid, since: i64) -> Value {
    w.send(json!({"type": "subscribe", "topic": format!("task:{task}"), "since": since}))
        .await;
    w.next().await
}

#[tokio::test]
async fn a_client_resumes_on_another_replica_from_since_while_the_daemon_streams() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    stream_lines(&mut d, task, 0..100, Duration::ZERO).await;
    let ids = wait_stored(&env, task, 100).await;

    // Lines keep coming on pod A while the client resumes on pod B after
    // line 39: the replay and the live lines meet without a gap or a copy.
    let streaming = tokio::spawn(async move {
        stream_lines(&mut d, task, 100..400, Duration::from_millis(2)).await;
        d
    });
    let mut w = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    assert_eq!(
        subscribe_since(&mut w, task, ids[39]).await,
        json!({"type": "subscribed", "topic": format!("task:{task}")})
    );
    let state = w.next().await;
    assert_eq!(
        (
            state["type"].as_str(),
            state["status"].as_str(),
            state["taskId"].clone()
        ),
        (Some("taskUpdated"), Some("running"), json!(task)),
        "the task's current state comes first"
    );
    let (lines, others) = outputs(&mut w, 360).await;
    let _d = streaming.await.unwrap();
    let ids = wait_stored(&env, task, 400).await;
    assert_lines(&lines, 40, &ids);
    assert!(others.is_empty(), "{others:?}");
    assert!(
        w.try_next(Duration::from_millis(500)).await.is_none(),
        "nothing after the last line: no copy"
    );

    // `since: 0` replays the whole task; a subscribe without it is live only.
    let mut all = Watcher::open(a.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    subscribe_since(&mut all, task, 0).await;
    assert_eq!(all.next().await["type"], "taskUpdated");
    let (lines, _) = outputs(&mut all, 400).await;
    assert_lines(&lines, 0, &ids);
    let mut live = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    live.subscribe(&format!("task:{task}")).await;
    assert!(
        live.try_next(Duration::from_millis(300)).await.is_none(),
        "no replay without since"
    );
}

#[tokio::test]
async fn sse_resumes_after_last_event_id_on_another_replica() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let sse = |addr: std::net::SocketAddr, last: Option<String>| {
        let mut req = reqwest::Client::new()
            .get(format!(
                "http://{addr}/api/v1/mesh/events/sse?topic=task%3A{task}"
            ))
            .header("x-api-key", &owner.key);
        if let Some(id) = last {
            req = req.header("last-event-id", id);
        }
        req.send()
    };

    let mut first = SseReader::new(sse(b.addr(), None).await.unwrap());
    first.read_until(1).await;
    stream_lines(&mut d, task, 0..20, Duration::ZERO).await;
    first.read_until(21).await;
    assert!(
        first.ids.iter().all(Option::is_some),
        "every event has an id: {:?}",
        first.ids
    );
    // The browser stops after line 9 and reconnects through pod A.
    let last = first.ids[10].clone();
    drop(first);
    stream_lines(&mut d, task, 20..30, Duration::ZERO).await;
    let ids = wait_stored(&env, task, 30).await;

    let resp = sse(a.addr(), last).await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut again = SseReader::new(resp);
    again.read_until(2).await;
    assert_eq!(again.events[0].0, "subscribed");
    assert_eq!(again.events[1].0, "taskUpdated");
    again.read_until(22).await;
    let lines: Vec<Value> = again.events[2..].iter().map(|(_, v)| v.clone()).collect();
    assert_lines(&lines, 10, &ids);
    stream_lines(&mut d, task, 30..35, Duration::ZERO).await;
    again.read_until(27).await;
    let ids = wait_stored(&env, task, 35).await;
    let lines: Vec<Value> = again.events[2..].iter().map(|(_, v)| v.clone()).collect();
    assert_lines(&lines, 10, &ids);
    assert!(again.ids.iter().all(Option::is_some));

    // An id that is not ours (foreign, damaged) starts live, as without one.
    let mut fresh = SseReader::new(sse(b.addr(), Some("42".into())).await.unwrap());
    fresh.read_until(1).await;
    stream_lines(&mut d, task, 35..36, Duration::ZERO).await;
    fresh.read_until(2).await;
    assert_eq!(fresh.events[1].1["content"], "line 35");
}

#[tokio::test]
async fn another_owners_task_or_a_bad_position_is_refused() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let (owner, stranger) = (env.owner().await, env.owner().await);
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;

    let mut s = Watcher::open(a.addr(), Some(&stranger.key), None)
        .await
        .unwrap();
    let refused = subscribe_since(&mut s, task, 0).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("FORBIDDEN"))
    );
    let unknown = subscribe_since(&mut s, Uuid::new_v4(), 0).await;
    assert_eq!(unknown["code"], "FORBIDDEN");
    let negative = subscribe_since(&mut s, task, -1).await;
    assert_eq!(negative["code"], "PARSE_ERROR");
    assert!(
        s.try_next(Duration::from_millis(300)).await.is_none(),
        "nothing of the task leaks"
    );

    // SSE: a stolen Last-Event-ID naming the task does not open it either.
    let id = format!("m1;{}:0", task.simple());
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{}/api/v1/mesh/events/sse?topic=task%3A{task}",
            a.addr()
        ))
        .header("x-api-key", &stranger.key)
        .header("last-event-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
}

#[tokio::test]
async fn a_5000_line_replay_to_a_slow_reader_is_paced_not_cut_off() {
    let env = TestEnv::new().await;
    // A queue of 16 events: anything not paced by the socket overflows it.
    let a = env.pod_with(&["--client-queue=16"]).await;
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    sqlx::query(
        "INSERT INTO task_outputs (task_id, owner_id, message_type, content)
         SELECT $1, $2, 'raw', 'line ' || (g - 1) FROM generate_series(1, 5000) g ORDER BY g",
    )
    .bind(task)
    .bind(owner.owner_id)
    .execute(&env.pool)
    .await
    .unwrap();
    let ids = stored_ids(&env, task).await;

    let mut w = Watcher::open(a.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    subscribe_since(&mut w, task, 0).await;
    // The reader stalls long enough for every socket buffer to fill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.next().await["type"], "taskUpdated");
    let (lines, others) = outputs(&mut w, 5000).await;
    assert_lines(&lines, 0, &ids);
    assert!(others.is_empty(), "{others:?}");
    let m = &a.state().metrics;
    assert_eq!(m.client_replay_lines.load(Relaxed), 5000);
    assert_eq!(m.clients_dropped_slow.load(Relaxed), 0);
}

#[tokio::test]
async fn lines_lost_while_the_replicas_subscription_was_down_are_filled_from_postgres() {
    let env = TestEnv::new().await;
    let redis = PrivateRedis::start().await;
    let url = format!("--redis-url={}", redis.url());
    let (a, b) = (env.pod_with(&[&url]).await, env.pod_with(&[&url]).await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut w = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    w.subscribe(&format!("task:{task}")).await;
    let mut o = Watcher::open(b.addr(), Some(&owner.key), None)
        .await
        .unwrap();
    o.subscribe("owner").await;

    let streaming = tokio::spawn(async move {
        stream_lines(&mut d, task, 0..300, Duration::from_millis(5)).await;
        d
    });
    // Redis drops every pub/sub connection twice while lines flow (as at
    // its client-output-buffer-limit): pod B misses what was published
    // while it resubscribed.
    let url = redis.url();
    let port = url.rsplit(':').next().unwrap();
    let mut cli = Command::new("redis-cli")
        .args(["-p", port])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = cli.stdin.take().unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        stdin.write_all(b"CLIENT KILL TYPE pubsub\n").await.unwrap();
        stdin.flush().await.unwrap();
    }
    let (lines, others) = outputs(&mut w, 300).await;
    let _d = streaming.await.unwrap();
    let ids = wait_stored(&env, task, 300).await;
    assert_lines(&lines, 0, &ids);
    assert!(
        others.iter().all(|e| e["type"] == "taskUpdated"),
        "{others:?}"
    );
    assert!(
        w.try_next(Duration::from_millis(500)).await.is_none(),
        "no copy after the last line"
    );

    // The owner topic has nothing stored to fill it from: it is told.
    let told = o.next().await;
    assert_eq!(told, json!({"type": "resync", "topic": "owner"}));
    let m = &b.state().metrics;
    assert!(
        m.client_gaps_filled.load(Relaxed) > 0,
        "gaps filled are counted"
    );
    assert!(m.client_resyncs.load(Relaxed) > 0, "resyncs are counted");
    drop(stdin);
}
