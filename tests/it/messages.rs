//! Output, tool keys, logins and answers, each with the daemon on one pod
//! and the observer on another; plus garbage that must not hurt a pod.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use meshgate::{
    cluster::pending::{self, Kind},
    protocol::daemon::DaemonCommand,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, TestEnv},
    tap::Tap,
};

async fn outputs(env: &TestEnv, task: Uuid) -> Vec<(String, String)> {
    sqlx::query_as("SELECT message_type, content FROM task_outputs WHERE task_id = $1 ORDER BY id")
        .bind(task)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

fn line(task: Uuid, output: &str) -> Value {
    json!({"type": "taskOutput", "taskId": task, "output": output, "isPartial": false})
}

#[tokio::test]
async fn output_lines_are_parsed_stored_in_order_and_published_to_other_replicas() {
    let env = TestEnv::new().await;
    let (a, _b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut tap = Tap::task(&env, task).await;

    let long = "é😀".repeat(1000);
    let lines = [
        json!({"type": "system", "subtype": "init"}).to_string(),
        json!({"type": "assistant", "message": {"content": [{"type": "text", "text": "hello"}]}})
            .to_string(),
        json!({"type": "tool_use", "tool_name": "Bash", "tool_input": {"cmd": "ls"}}).to_string(),
        json!({"type": "tool_result", "tool_result": {"content": long, "is_error": false}})
            .to_string(),
        "   ".to_owned(),
        json!({"type": "unknown_kind"}).to_string(),
        "plain text line".to_owned(),
        json!({"type": "result", "result": "all done", "cost_usd": 0.25, "duration_ms": 1200})
            .to_string(),
    ];
    for l in &lines {
        d.send(line(task, l)).await;
    }

    let rows = eventually(Duration::from_secs(5), "6 rows", || async {
        let rows = outputs(&env, task).await;
        (rows.len() == 6).then_some(rows)
    })
    .await;
    let kinds: Vec<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "system",
            "assistant",
            "tool_use",
            "tool_result",
            "raw",
            "result"
        ]
    );
    assert_eq!(rows[0].1, "Session started");
    assert_eq!(rows[3].1.chars().count(), 503, "500 characters and ...");
    assert!(rows[3].1.ends_with("..."));
    assert_eq!(rows[4].1, "plain text line");

    for expected in kinds {
        let e = tap.next(owner.owner_id).await;
        assert_eq!(e["type"], "taskOutput");
        assert_eq!(e["taskId"], json!(task));
        assert_eq!(e["messageType"], expected);
    }
    let result: Value = sqlx::query_scalar::<_, f64>(
        "SELECT cost_usd FROM task_outputs WHERE task_id = $1 AND message_type = 'result'",
    )
    .bind(task)
    .fetch_one(&env.pool)
    .await
    .map(Value::from)
    .unwrap();
    assert_eq!(result, json!(0.25));
    tap.close().await;
}

#[tokio::test]
async fn ten_thousand_lines_in_a_burst_are_all_stored_and_published_in_order() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut tap = Tap::task(&env, task).await;
    const N: usize = 10_000;

    let (mut sink, _stream) = d.ws.split();
    for i in 0..N {
        let frame = Message::Text(line(task, &format!("line {i}")).to_string().into());
        sink.feed(frame).await.unwrap();
    }
    sink.flush().await.unwrap();

    let rows = eventually(Duration::from_secs(60), "all lines stored", || async {
        let rows = outputs(&env, task).await;
        (rows.len() >= N).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), N, "nothing stored twice");
    for (i, (_, content)) in rows.iter().enumerate() {
        assert_eq!(content, &format!("line {i}"), "order kept");
    }
    for i in 0..N {
        let e = tap.next(owner.owner_id).await;
        assert_eq!(
            e["content"],
            format!("line {i}"),
            "events in order, none lost"
        );
    }
    tap.close().await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_write_output_or_keys_for_a_task() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let (alice, mallory) = (env.owner().await, env.owner().await);
    let alices = Daemon::connect(a.addr(), &alice.key, "m1").await;
    let task = env.task(alice.owner_id, "running", Some(alices.id())).await;
    let mut m = Daemon::connect(b.addr(), &mallory.key, "m1").await;
    let mut tap = Tap::task(&env, task).await;

    let frames = [
        line(task, "injected"),
        json!({"type": "registerToolKey", "taskId": task, "key": "mallory-key"}),
        json!({"type": "revokeToolKey", "taskId": task}),
        json!({"type": "taskDiff", "taskId": task, "success": true, "diff": "x"}),
        json!({"type": "authenticationRequired", "taskId": task, "loginUrl": "https://evil.invalid"}),
    ];
    for f in frames {
        m.send(f.clone()).await;
        let reply = m.recv().await;
        assert_eq!(reply["code"], "TASK_NOT_FOUND", "for {f}");
    }
    // Same owner, but a daemon the task is not assigned to: refused too.
    let mut other = Daemon::connect(b.addr(), &alice.key, "m2").await;
    other.send(line(task, "not mine")).await;
    assert_eq!(other.recv().await["code"], "TASK_NOT_FOUND");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(outputs(&env, task).await.is_empty());
    let key = meshgate::cluster::toolkeys::lookup(&a.state().redis, "mallory-key")
        .await
        .unwrap();
    assert!(key.is_none());
    assert!(
        tap.try_next(alice.owner_id, Duration::from_millis(300))
            .await
            .is_none(),
        "no event"
    );
    tap.close().await;
}

async fn whoami(addr: std::net::SocketAddr, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/api/v1/mesh/tool/whoami"))
        .header("x-tool-key", key)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn tool_key_registered_on_one_replica_works_on_another_until_revoked() {
    let env = TestEnv::new().await;
    let (a, c) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;

    assert_eq!(whoami(c.addr(), "tool-secret-1").await.0, 401);
    d.send(json!({"type": "registerToolKey", "taskId": task, "key": "tool-secret-1"}))
        .await;
    let (status, body) = eventually(Duration::from_secs(5), "key live", || async {
        let r = whoami(c.addr(), "tool-secret-1").await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"taskId": task, "ownerId": owner.owner_id}));
    // Stored hashed only.
    let keys = crate::harness::redis_keys(
        &a.state().redis.client,
        &format!("{}:toolkey:*", env.prefix),
    )
    .await;
    assert_eq!(keys.len(), 1, "one entry: {keys:?}");
    assert!(
        !keys[0].contains("tool-secret-1"),
        "stored hashed: {keys:?}"
    );

    d.send(json!({"type": "revokeToolKey", "taskId": task}))
        .await;
    eventually(Duration::from_secs(5), "key revoked", || async {
        (whoami(c.addr(), "tool-secret-1").await.0 == 401).then_some(())
    })
    .await;
    let (_, body) = whoami(c.addr(), "tool-secret-1").await;
    assert_eq!(body["code"], "AUTH_FAILED");
}

#[tokio::test]
async fn authentication_required_reaches_task_followers_with_the_login_link() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut tap = Tap::task(&env, task).await;
    d.send(json!({"type": "authenticationRequired", "taskId": task, "loginUrl": "https://login.invalid/x", "hostname": "box"}))
        .await;
    let e = tap.next(owner.owner_id).await;
    assert_eq!(e["type"], "taskOutput");
    assert_eq!(e["messageType"], "auth_required");
    assert_eq!(e["isError"], true);
    assert_eq!(e["toolInput"]["loginUrl"], "https://login.invalid/x");
    assert_eq!(e["toolInput"]["hostname"], "box");
    assert_eq!(e["toolInput"]["taskId"], json!(task));
    tap.close().await;
}

#[tokio::test]
async fn reauth_status_is_readable_from_any_replica_for_its_owner_only() {
    let env = TestEnv::new().await;
    let (a, c) = (env.pod().await, env.pod().await);
    let (owner, other) = (env.owner().await, env.owner().await);
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let request = Uuid::new_v4();
    d.send(json!({"type": "reauthStatus", "requestId": request, "status": "url_ready", "loginUrl": "https://l.invalid"}))
        .await;
    let redis = &c.state().redis;
    let record = eventually(Duration::from_secs(5), "status stored", || async {
        meshgate::cluster::reauth::load(redis, owner.owner_id, d.id(), request)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(record.status.as_str(), "url_ready");
    assert_eq!(record.login_url.as_deref(), Some("https://l.invalid"));
    assert!(!record.token_saved);
    let hidden = meshgate::cluster::reauth::load(redis, other.owner_id, d.id(), request)
        .await
        .unwrap();
    assert!(hidden.is_none());
}

#[tokio::test]
async fn answers_resolve_callers_waiting_on_another_replica_and_only_the_owners_daemon_can_answer()
{
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let (owner, mallory) = (env.owner().await, env.owner().await);
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let mut m = Daemon::connect(a.addr(), &mallory.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;

    let s = b.state();
    let waiting = {
        let s = s.clone();
        let daemon = d.id();
        tokio::spawn(async move {
            let req = pending::Request {
                redis: &s.redis,
                metrics: &s.metrics,
                waiters: &s.waiters,
                timeout: Duration::from_secs(5),
            };
            pending::request(
                req,
                Kind::TaskDiff,
                task,
                daemon,
                &DaemonCommand::GetTaskDiff { task_id: task },
            )
            .await
        })
    };
    let cmd = d.recv().await;
    assert_eq!(cmd["type"], "getTaskDiff");
    assert_eq!(cmd["taskId"], json!(task));

    // Another owner's answer is refused and resolves nothing.
    m.send(json!({"type": "taskDiff", "taskId": task, "success": true, "diff": "forged"}))
        .await;
    assert_eq!(m.recv().await["code"], "TASK_NOT_FOUND");

    d.send(json!({"type": "taskDiff", "taskId": task, "success": true, "diff": "+real"}))
        .await;
    let answer = waiting.await.unwrap().expect("answered");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["diff"], "+real");
}

/// Valid frames, truncated and mutated at random, plus binary noise: every
/// one is answered or ignored, the socket stays usable, the pod keeps serving.
#[tokio::test]
async fn random_and_truncated_frames_never_break_the_pod() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let samples = [
        line(task, "x").to_string(),
        json!({"type": "heartbeat", "activeTasks": [task]}).to_string(),
        json!({"type": "checkpointCreated", "taskId": task, "success": true, "message": "m", "patchData": "H4sI"}).to_string(),
        json!({"type": "worktreeInfoResult", "taskId": task, "success": true, "exists": true, "filesChanged": 1, "insertions": 2, "deletions": 3}).to_string(),
        json!({"type": "supervisorHeartbeat", "taskId": task, "contractId": task, "state": "idle", "phase": "p", "progress": 200, "pendingTaskIds": [], "timestamp": "2026-01-01T00:00:00Z"}).to_string(),
        json!({"type": "reauthStatus", "requestId": task, "status": "pending"}).to_string(),
    ];
    let mut rng = StdRng::seed_from_u64(7);
    let (mut sink, mut stream) = d.ws.split();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Some(Ok(_)) = stream.next().await {
            n += 1;
        }
        n
    });
    for _ in 0..2_000 {
        let sample = samples[rng.gen_range(0..samples.len())].as_bytes().to_vec();
        let mut bytes = sample[..rng.gen_range(0..=sample.len())].to_vec();
        for _ in 0..rng.gen_range(0..4) {
            if !bytes.is_empty() {
                let i = rng.gen_range(0..bytes.len());
                bytes[i] = rng.gen();
            }
        }
        let frame = match String::from_utf8(bytes) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        };
        sink.send(frame).await.expect("socket still open");
    }
    // The same socket still does real work.
    sink.send(Message::Text(
        line(task, "after the noise").to_string().into(),
    ))
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "line after noise stored",
        || async {
            outputs(&env, task)
                .await
                .iter()
                .any(|(_, c)| c == "after the noise")
                .then_some(())
        },
    )
    .await;
    // And the pod serves new daemons.
    let _fresh = Daemon::connect(a.addr(), &owner.key, "m2").await;
    drop(sink);
    reader.abort();
}

/// A line that can never be stored (its task is gone, or it names another
/// owner than its task's: the database's foreign key refuses both) must not
/// stall the queue: the rest of its batch is stored and the loss is counted.
#[tokio::test]
async fn an_output_line_for_a_deleted_task_is_dropped_without_stalling_the_queue() {
    use meshgate::{
        db::outputs::NewOutput,
        protocol::claude::{MessageType, OutputEvent},
    };
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let task = env.task(owner.owner_id, "running", None).await;
    let queue = &a.state().outputs;
    let line = |task_id, text: &str| NewOutput {
        task_id,
        owner_id: owner.owner_id,
        event: OutputEvent::new(MessageType::Raw, text, false),
    };
    queue.push(line(task, "before")).await;
    queue.push(line(Uuid::new_v4(), "orphan")).await;
    let stranger = env.owner().await;
    queue
        .push(NewOutput {
            owner_id: stranger.owner_id,
            ..line(task, "another owner's")
        })
        .await;
    queue.push(line(task, "after")).await;
    let rows = eventually(Duration::from_secs(10), "valid lines stored", || async {
        let rows = outputs(&env, task).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(rows[0].1, "before");
    assert_eq!(rows[1].1, "after");
    // The orphan may be on the other output writer (lines are spread by
    // task): its loss is counted once that writer got to it.
    let lost = eventually(
        Duration::from_secs(10),
        "both refused lines counted",
        || async {
            let lost = a
                .state()
                .metrics
                .output_lines_lost
                .load(std::sync::atomic::Ordering::Relaxed);
            (lost > 1 && queue.depth() == 0).then_some(lost)
        },
    )
    .await;
    assert_eq!(lost, 2);
    assert_eq!(outputs(&env, task).await.len(), 2, "nothing else stored");
}
