//! The HTTP API on every replica: dispatch, calls that wait for a daemon,
//! fire-and-forget commands, reauth, auth and validation.

use std::{collections::HashMap, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, Api, TestEnv},
};

fn uuid(v: &Value) -> Uuid {
    v.as_str().expect("uuid string").parse().expect("uuid")
}

#[tokio::test]
async fn task_created_on_pod_a_is_dispatched_once_to_a_daemon_on_pod_b() {
    let env = TestEnv::new().await;
    let (a, b, _c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(b.addr(), &owner.key, "m1").await;
    let api = Api::new(a.addr(), &owner.key);

    let (status, task) = api
        .post(
            "/api/v1/mesh/tasks",
            json!({"name": "t1", "plan": "do it", "baseBranch": "main"}),
        )
        .await;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["status"], "pending");
    assert_eq!(task["maxRetries"], 3);
    let id = uuid(&task["id"]);

    let spawn = d.recv().await;
    assert_eq!(spawn["type"], "spawnTask");
    assert_eq!(spawn["taskId"], json!(id));
    assert_eq!(spawn["name"], "t1");
    assert_eq!(spawn["plan"], "do it");
    assert_eq!(spawn["baseBranch"], "main");
    assert_eq!(spawn["isSupervisor"], false);
    assert!(spawn.get("patchData").is_none());
    // Sweeps on every pod run meanwhile: still only once.
    assert!(
        d.try_recv(Duration::from_millis(1000)).await.is_none(),
        "dispatched twice"
    );
    let (_, task) = api.get(&format!("/api/v1/mesh/tasks/{id}")).await;
    assert_eq!(task["status"], "starting");
    assert_eq!(task["daemonId"], json!(d.id()));
}

#[tokio::test]
async fn a_task_waits_until_a_daemon_connects() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let api = Api::new(a.addr(), &owner.key);
    let (_, task) = api
        .post("/api/v1/mesh/tasks", json!({"name": "t", "plan": "p"}))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "late").await;
    assert_eq!(d.recv().await["taskId"], task["id"]);
}

/// 50 tasks, 5 daemons of capacity 2 on three pods; each daemon finishes its
/// tasks after a moment. No daemon ever holds more than 2, no task is sent
/// twice, all 50 run.
#[tokio::test]
async fn fifty_tasks_over_five_daemons_never_exceed_capacity_or_run_twice() {
    let env = TestEnv::new().await;
    let pods = [env.pod().await, env.pod().await, env.pod().await];
    let owner = env.owner().await;
    let seen: Arc<Mutex<HashMap<Uuid, usize>>> = Arc::default();
    let mut runners = Vec::new();
    for i in 0..5 {
        let d = Daemon::connect(pods[i % 3].addr(), &owner.key, &format!("m{i}")).await;
        let seen = seen.clone();
        runners.push(tokio::spawn(run_daemon(d, seen)));
    }
    let api = Api::new(pods[0].addr(), &owner.key);
    for i in 0..50 {
        let (status, _) = api
            .post(
                "/api/v1/mesh/tasks",
                json!({"name": format!("t{i}"), "plan": "p"}),
            )
            .await;
        assert_eq!(status, 201);
    }
    eventually(Duration::from_secs(60), "50 tasks run", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'done'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        (n == 50).then_some(())
    })
    .await;
    let seen = seen.lock().await;
    assert_eq!(seen.len(), 50, "every task sent");
    assert!(seen.values().all(|n| *n == 1), "a task was sent twice");
    for r in runners {
        let max_held = r.await.unwrap();
        assert!(max_held <= 2, "a daemon held {max_held} tasks at once");
    }
}

/// Plays a daemon: runs each spawned task for a moment, then completes it.
/// Returns the most tasks it held at once (until 1.5 s of silence).
async fn run_daemon(mut d: Daemon, seen: Arc<Mutex<HashMap<Uuid, usize>>>) -> usize {
    let mut held: Vec<(Uuid, tokio::time::Instant)> = Vec::new();
    let mut max_held = 0;
    loop {
        let next_done = held.iter().map(|(_, at)| *at).min();
        let wait = next_done
            .map(|at| at.saturating_duration_since(tokio::time::Instant::now()))
            .unwrap_or(Duration::from_millis(1500));
        match d.try_recv(wait).await {
            Some(cmd) if cmd["type"] == "spawnTask" => {
                let id = uuid(&cmd["taskId"]);
                *seen.lock().await.entry(id).or_default() += 1;
                held.push((id, tokio::time::Instant::now() + Duration::from_millis(30)));
                max_held = max_held.max(held.len());
                d.send(json!({"type": "taskStatusChange", "taskId": id, "oldStatus": "starting", "newStatus": "running"})).await;
            }
            Some(_) => {}
            None if held.is_empty() => return max_held,
            None => {}
        }
        let now = tokio::time::Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = held.into_iter().partition(|(_, at)| *at <= now);
        held = rest;
        for (id, _) in due {
            d.send(json!({"type": "taskComplete", "taskId": id, "success": true}))
                .await;
        }
    }
}

#[tokio::test]
async fn task_of_a_daemon_gone_past_grace_goes_to_another_daemon_with_its_checkpoint_patch() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut first = Daemon::connect(a.addr(), &owner.key, "first").await;
    let api = Api::new(b.addr(), &owner.key);
    let (_, task) = api
        .post("/api/v1/mesh/tasks", json!({"name": "t", "plan": "p"}))
        .await;
    let id = uuid(&task["id"]);
    assert_eq!(first.recv().await["taskId"], json!(id));
    sqlx::query(
        "INSERT INTO checkpoint_patches (task_id, patch_data, base_sha, files_count, size_bytes, expires_at)
         VALUES ($1, $2, 'abc123', 1, 3, now() + interval '1 day')",
    )
    .bind(id)
    .bind(vec![1u8, 2, 3])
    .execute(&env.pool)
    .await
    .unwrap();

    let first_id = first.id();
    drop(first);
    let mut second = Daemon::connect(b.addr(), &owner.key, "second").await;
    let spawn = second
        .try_recv(Duration::from_secs(10))
        .await
        .expect("re-dispatched after the grace period");
    assert_eq!(spawn["type"], "spawnTask");
    assert_eq!(spawn["taskId"], json!(id));
    assert_eq!(spawn["patchData"], "AQID", "base64 of the stored patch");
    assert_eq!(spawn["patchBaseSha"], "abc123");
    let (_, task) = api.get(&format!("/api/v1/mesh/tasks/{id}")).await;
    assert_eq!(task["retryCount"], 1);
    assert_eq!(task["daemonId"], json!(second.id()));
    assert_ne!(first_id, second.id());
}

/// Pods cache which daemon a task is on for commands sent to it; here the
/// cache would trust an entry for ten minutes, so only the announcement of
/// the change (`cluster::task_routes`) can make both other pods send the
/// next message to the task's new daemon at once, instead of answering 409
/// for the old daemon that is gone.
#[tokio::test]
async fn commands_follow_a_task_to_its_new_daemon_on_every_pod_at_once() {
    let env = TestEnv::new().await;
    let long_cache = ["--task-route-cache-ms=600000"];
    let a = env.pod_with(&long_cache).await;
    let b = env.pod_with(&long_cache).await;
    let c = env.pod_with(&long_cache).await;
    let owner = env.owner().await;
    let mut first = Daemon::connect(a.addr(), &owner.key, "first").await;
    let (via_b, via_c) = (
        Api::new(b.addr(), &owner.key),
        Api::new(c.addr(), &owner.key),
    );
    let (_, task) = via_b
        .post("/api/v1/mesh/tasks", json!({"name": "t", "plan": "p"}))
        .await;
    let id = uuid(&task["id"]);
    assert_eq!(first.recv().await["type"], "spawnTask");
    let message = format!("/api/v1/mesh/tasks/{id}/message");
    for (api, text) in [(&via_b, "b1"), (&via_c, "c1"), (&via_b, "b2")] {
        assert_eq!(api.post(&message, json!({"message": text})).await.0, 202);
        assert_eq!(first.recv().await["message"], text);
    }
    // Another owner's key never gets the cached route.
    let stranger = env.owner().await;
    let (status, body) = Api::new(b.addr(), &stranger.key)
        .post(&message, json!({"message": "x"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );

    drop(first);
    let mut second = Daemon::connect(c.addr(), &owner.key, "second").await;
    let spawn = second
        .try_recv(Duration::from_secs(10))
        .await
        .expect("re-dispatched after the grace period");
    assert_eq!(spawn["taskId"], json!(id));
    for (api, text) in [(&via_b, "b3"), (&via_c, "c3")] {
        let (status, body) = api.post(&message, json!({"message": text})).await;
        assert_eq!(status, 202, "{text}: {body}");
        let got = second.try_recv(Duration::from_secs(5)).await.expect(text);
        assert_eq!(
            (got["type"].as_str(), got["message"].as_str()),
            (Some("sendMessage"), Some(text))
        );
    }
}

/// Answers every waiting command the way a daemon would.
async fn answer_calls(mut d: Daemon, fail: bool) {
    while let Some(cmd) = d.try_recv(Duration::from_secs(10)).await {
        let task = cmd["taskId"].clone();
        let reply = match cmd["type"].as_str().unwrap_or("") {
            "getTaskDiff" if fail => {
                json!({"type": "taskDiff", "taskId": task, "success": false, "error": "no worktree"})
            }
            "getTaskDiff" => {
                json!({"type": "taskDiff", "taskId": task, "success": true, "diff": "+task diff"})
            }
            "getWorktreeInfo" => {
                json!({"type": "worktreeInfoResult", "taskId": task, "success": true, "worktreePath": "/w/t", "exists": true, "filesChanged": 2, "insertions": 5, "deletions": 1, "files": ["a.rs", "b.rs"], "branch": "b", "headSha": "h"})
            }
            "getWorktreeDiff" => {
                json!({"type": "worktreeDiffResult", "taskId": task, "success": true, "diff": "+wt diff"})
            }
            "commitWorktree" => {
                json!({"type": "worktreeCommitResult", "taskId": task, "success": true, "commitSha": format!("sha-{}", cmd["message"].as_str().unwrap_or(""))})
            }
            "mergeTaskToTarget" => {
                json!({"type": "mergeToTargetResult", "taskId": task, "success": false, "message": "conflicts", "conflicts": ["a.rs"]})
            }
            "createPR" => {
                json!({"type": "prCreated", "taskId": task, "success": true, "message": "opened", "prUrl": "https://example.invalid/pr/7", "prNumber": 7})
            }
            _ => continue,
        };
        d.send(reply).await;
    }
}

#[tokio::test]
async fn each_waiting_route_answers_through_another_replica_than_the_daemons() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    tokio::spawn(answer_calls(d, false));
    let api = Api::new(b.addr(), &owner.key);
    let base = format!("/api/v1/mesh/tasks/{task}");

    assert_eq!(
        api.get(&format!("{base}/diff")).await,
        (200, json!({"diff": "+task diff"}))
    );
    assert_eq!(
        api.get(&format!("{base}/worktree/diff")).await,
        (200, json!({"diff": "+wt diff"}))
    );
    let (status, info) = api.get(&format!("{base}/worktree")).await;
    assert_eq!(status, 200);
    assert_eq!(info["filesChanged"], 2);
    assert_eq!(info["files"], json!(["a.rs", "b.rs"]));
    assert_eq!(info["headSha"], "h");
    let commit = api
        .post(
            &format!("{base}/worktree/commit"),
            json!({"message": "wip"}),
        )
        .await;
    assert_eq!(commit, (200, json!({"commitSha": "sha-wip"})));
    let (status, merge) = api
        .post(&format!("{base}/merge"), json!({"squash": true}))
        .await;
    assert_eq!(status, 200, "conflicts are a 200");
    assert_eq!(merge["success"], false);
    assert_eq!(merge["conflicts"], json!(["a.rs"]));
    let pr = api
        .post(
            &format!("{base}/pr"),
            json!({"title": "T", "baseBranch": "main", "branch": "b"}),
        )
        .await;
    assert_eq!(pr.0, 200);
    assert_eq!(pr.1["prNumber"], 7);
}

#[tokio::test]
async fn waiting_routes_answer_409_offline_504_timeout_and_502_daemon_error() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let api = Api::new(b.addr(), &owner.key);

    // No daemon at all (a finished task, so the dispatcher leaves it alone).
    let unassigned = env.task(owner.owner_id, "done", None).await;
    let (status, body) = api
        .get(&format!("/api/v1/mesh/tasks/{unassigned}/diff"))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DAEMON_OFFLINE"))
    );

    // A daemon that never answers: 504 after the (2 s test) timeout.
    let mut silent = Daemon::connect(a.addr(), &owner.key, "silent").await;
    let task = env.task(owner.owner_id, "running", Some(silent.id())).await;
    let (status, body) = api.get(&format!("/api/v1/mesh/tasks/{task}/diff")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (504, Some("DAEMON_TIMEOUT"))
    );
    assert_eq!(silent.recv().await["type"], "getTaskDiff");

    // A daemon that answers success: false.
    let failing = Daemon::connect(a.addr(), &owner.key, "failing").await;
    let task = env
        .task(owner.owner_id, "running", Some(failing.id()))
        .await;
    tokio::spawn(answer_calls(failing, true));
    let (status, body) = api.get(&format!("/api/v1/mesh/tasks/{task}/diff")).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("DAEMON_ERROR")));
    assert_eq!(body["message"], "no worktree");

    // The daemon disconnected: 409 at once.
    drop(silent);
    let silent_id: Uuid = sqlx::query_scalar("SELECT id FROM daemons WHERE machine_id = 'silent'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let gone = env.task(owner.owner_id, "running", Some(silent_id)).await;
    let (status, body) = eventually(Duration::from_secs(5), "offline", || async {
        let r = api
            .get(&format!("/api/v1/mesh/tasks/{gone}/worktree"))
            .await;
        (r.0 == 409).then_some(r)
    })
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DAEMON_OFFLINE"))
    );
}

#[tokio::test]
async fn twenty_concurrent_diff_calls_are_all_answered_by_one_command() {
    let env = TestEnv::new().await;
    let pods = [env.pod().await, env.pod().await, env.pod().await];
    let owner = env.owner().await;
    let mut d = Daemon::connect(pods[0].addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let mut calls = Vec::new();
    for i in 0..20 {
        let api = Api::new(pods[i % 3].addr(), &owner.key);
        calls.push(tokio::spawn(async move {
            api.get(&format!("/api/v1/mesh/tasks/{task}/diff")).await
        }));
    }
    let cmd = d.recv().await;
    assert_eq!(cmd["type"], "getTaskDiff");
    // Let every call join before answering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.send(json!({"type": "taskDiff", "taskId": task, "success": true, "diff": "+shared"}))
        .await;
    for call in calls {
        assert_eq!(call.await.unwrap(), (200, json!({"diff": "+shared"})));
    }
    assert!(
        d.try_recv(Duration::from_millis(300)).await.is_none(),
        "one command for all 20 calls"
    );
    let left: i64 = fred::interfaces::ClientLike::custom(
        &pods[0].state().redis.client,
        fred::types::CustomCommand::new_static("EXISTS", None, false),
        vec![format!("{}:pending:taskDiff:{task}", env.prefix)],
    )
    .await
    .unwrap();
    assert_eq!(left, 0, "no pending entry left behind");
}

#[tokio::test]
async fn fire_and_forget_commands_reach_the_daemon_or_answer_409() {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    let api = Api::new(b.addr(), &owner.key);
    let base = format!("/api/v1/mesh/tasks/{task}");

    assert_eq!(
        api.post(&format!("{base}/interrupt"), json!({})).await.0,
        202
    );
    assert_eq!(
        d.recv().await,
        json!({"type": "interruptTask", "taskId": task, "graceful": true})
    );
    assert_eq!(
        api.post(&format!("{base}/message"), json!({"message": "hi"}))
            .await
            .0,
        202
    );
    assert_eq!(
        d.recv().await,
        json!({"type": "sendMessage", "taskId": task, "message": "hi"})
    );
    assert_eq!(
        api.post(&format!("{base}/checkpoint"), json!({"message": "cp"}))
            .await
            .0,
        202
    );
    assert_eq!(
        d.recv().await,
        json!({"type": "createCheckpoint", "taskId": task, "message": "cp"})
    );

    drop(d);
    let (status, body) = eventually(Duration::from_secs(5), "409 once gone", || async {
        let r = api
            .post(&format!("{base}/message"), json!({"message": "hi"}))
            .await;
        (r.0 == 409).then_some(r)
    })
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DAEMON_OFFLINE"))
    );
}

#[tokio::test]
async fn reauth_round_trip_across_three_replicas() {
    let env = TestEnv::new().await;
    let (a, b, c) = (env.pod().await, env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let mut d = Daemon::connect(a.addr(), &owner.key, "m1").await;
    let daemon = d.id();

    let (status, started) = Api::new(b.addr(), &owner.key)
        .post(&format!("/api/v1/mesh/daemons/{daemon}/reauth"), json!({}))
        .await;
    assert_eq!(status, 202);
    let request = uuid(&started["requestId"]);
    assert_eq!(
        d.recv().await,
        json!({"type": "triggerReauth", "requestId": request})
    );
    d.send(json!({"type": "reauthStatus", "requestId": request, "status": "url_ready", "loginUrl": "https://login.invalid"})).await;

    let status_path = format!("/api/v1/mesh/daemons/{daemon}/reauth/{request}");
    let api_c = Api::new(c.addr(), &owner.key);
    let body = eventually(Duration::from_secs(5), "url_ready visible on c", || async {
        let (s, b) = api_c.get(&status_path).await;
        (s == 200 && b["status"] == "url_ready").then_some(b)
    })
    .await;
    assert_eq!(body["loginUrl"], "https://login.invalid");
    assert_eq!(body["tokenSaved"], false);

    let (status, _) = api_c
        .post(&format!("{status_path}/code"), json!({"code": "123456"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        d.recv().await,
        json!({"type": "submitAuthCode", "requestId": request, "code": "123456"})
    );
    d.send(json!({"type": "reauthStatus", "requestId": request, "status": "completed", "tokenSaved": true})).await;
    let body = eventually(Duration::from_secs(5), "completed visible on b", || async {
        let (s, b) = Api::new(b.addr(), &owner.key).get(&status_path).await;
        (s == 200 && b["status"] == "completed").then_some(b)
    })
    .await;
    assert_eq!(body["tokenSaved"], true);

    let unknown = format!("/api/v1/mesh/daemons/{daemon}/reauth/{}", Uuid::new_v4());
    assert_eq!(api_c.get(&unknown).await.0, 404);
    let stranger = env.owner().await;
    let api_s = Api::new(c.addr(), &stranger.key);
    assert_eq!(
        api_s.get(&status_path).await.0,
        404,
        "another owner's request"
    );
    let (status, body) = api_s
        .post(&format!("/api/v1/mesh/daemons/{daemon}/reauth"), json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("DAEMON_OFFLINE")),
        "another owner's daemon"
    );
}

#[tokio::test]
async fn another_owners_ids_answer_404_and_bad_input_gets_code_and_message() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let (alice, bob) = (env.owner().await, env.owner().await);
    let task = env.task(alice.owner_id, "pending", None).await;
    let bobs = Api::new(a.addr(), &bob.key);
    for path in [
        format!("/api/v1/mesh/tasks/{task}"),
        format!("/api/v1/mesh/tasks/{task}/outputs"),
        format!("/api/v1/mesh/tasks/{task}/diff"),
    ] {
        let (status, body) = bobs.get(&path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{path}"
        );
    }
    let (status, _) = bobs
        .post(
            &format!("/api/v1/mesh/tasks/{task}/message"),
            json!({"message": "x"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body) = bobs
        .post(
            "/api/v1/mesh/tasks",
            json!({"name": "t", "plan": "p", "contractId": Uuid::new_v4()}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "unknown contract"
    );

    let alices = Api::new(a.addr(), &alice.key);
    for (body, why) in [
        (json!({"name": "", "plan": "p"}), "empty name"),
        (json!({"plan": "p"}), "missing name"),
        (
            json!({"name": "t", "plan": "p", "maxRetries": -1}),
            "negative retries",
        ),
        (
            json!({"name": "t", "plan": "p", "contractId": "not-a-uuid"}),
            "bad uuid",
        ),
        (json!("just a string"), "not an object"),
    ] {
        let (status, resp) = alices.post("/api/v1/mesh/tasks", body).await;
        assert_eq!(status, 400, "{why}: {resp}");
        assert_eq!(resp["code"], "BAD_REQUEST", "{why}");
        assert!(resp["message"].is_string(), "{why}");
    }
    let (status, resp) = alices.get("/api/v1/mesh/tasks/not-a-uuid").await;
    assert_eq!((status, resp["code"].as_str()), (400, Some("BAD_REQUEST")));
    let (status, resp) = alices
        .get(&format!("/api/v1/mesh/tasks/{task}/outputs?limit=0"))
        .await;
    assert_eq!((status, resp["code"].as_str()), (400, Some("BAD_REQUEST")));

    let anonymous = reqwest::get(format!("http://{}/api/v1/mesh/tasks/{task}", a.addr()))
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "MISSING_API_KEY");
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_the_auth_cache_lifetime() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let owner = env.owner().await;
    let api = Api::new(a.addr(), &owner.key);
    assert_eq!(api.get("/api/v1/mesh/daemons").await.0, 200);
    meshgate::db::accounts::revoke_key(&env.pool, owner.key_id)
        .await
        .unwrap();
    // The test pods cache keys for 300 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, body) = api.get("/api/v1/mesh/daemons").await;
    assert_eq!((status, body["code"].as_str()), (401, Some("AUTH_FAILED")));
}

#[tokio::test]
async fn the_server_publishes_its_openapi_document_and_docs() {
    let env = TestEnv::new().await;
    let a = env.pod().await;
    let spec: Value = reqwest::get(format!("http://{}/api/v1/openapi.json", a.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = spec["paths"].as_object().expect("paths");
    for p in [
        "/api/v1/mesh/tasks",
        "/api/v1/mesh/tasks/{id}/diff",
        "/api/v1/mesh/tasks/{id}/pr",
        "/api/v1/mesh/daemons/{id}/reauth/{request_id}",
        "/api/v1/mesh/tool/whoami",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    let docs = reqwest::get(format!("http://{}/docs", a.addr()))
        .await
        .unwrap();
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
