//! Results of git operations (completion actions, clones, branches,
//! checkpoints, export patches, merges, PRs, patches for a supervisor), each
//! with the daemon on one pod and the observer (a Redis tap, a waiting
//! caller or the supervisor's daemon) on another; and for every message that
//! names a task, a daemon of another owner that must change nothing.

use std::time::Duration;

use base64::{engine::general_purpose::STANDARD, Engine};
use meshgate::{
    cluster::pending::{self, Kind},
    daemon::git::MAX_PATCH_BYTES,
    db::{
        accounts::NewKey,
        checkpoints::{self, NewCheckpoint},
    },
    protocol::daemon::DaemonCommand,
    Pod,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, TestEnv},
    tap::Tap,
};

const QUIET: Duration = Duration::from_millis(300);

/// A daemon on pod A with a running task; pod B for whoever watches.
struct World {
    env: TestEnv,
    _a: Pod,
    b: Pod,
    owner: NewKey,
    d: Daemon,
    task: Uuid,
}

async fn world() -> World {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let owner = env.owner().await;
    let d = Daemon::connect(a.addr(), &owner.key, "worker").await;
    let task = env.task(owner.owner_id, "running", Some(d.id())).await;
    World {
        env,
        _a: a,
        b,
        owner,
        d,
        task,
    }
}

/// Returns once the pod has handled everything `d` sent before (frames of a
/// socket are handled in order; this one is answered with `PARSE_ERROR`).
pub async fn handled(d: &mut Daemon) {
    d.send(json!({"type": "noSuchMessage"})).await;
    let reply = d.recv().await;
    assert_eq!(
        reply["code"], "PARSE_ERROR",
        "no other reply came first: {reply}"
    );
}

/// The next `taskOutput` event: (messageType, content, isError).
async fn next_line(tap: &mut Tap, owner: Uuid) -> Value {
    tap.next_of(owner, "taskOutput").await
}

async fn outputs(env: &TestEnv, task: Uuid) -> Vec<(String, String)> {
    sqlx::query_as("SELECT message_type, content FROM task_outputs WHERE task_id = $1 ORDER BY id")
        .bind(task)
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

async fn pr_url(env: &TestEnv, task: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT pr_url FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct CheckpointRow {
    id: Uuid,
    checkpoint_number: i32,
    commit_sha: Option<String>,
    branch_name: Option<String>,
    message: String,
    files_changed: Option<Value>,
    lines_added: Option<i32>,
    lines_removed: Option<i32>,
}

async fn checkpoint_rows(env: &TestEnv, task: Uuid) -> Vec<CheckpointRow> {
    sqlx::query_as(
        "SELECT id, checkpoint_number, commit_sha, branch_name, message, files_changed,
                lines_added, lines_removed
         FROM task_checkpoints WHERE task_id = $1 ORDER BY checkpoint_number",
    )
    .bind(task)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[derive(Debug, sqlx::FromRow)]
struct PatchRow {
    checkpoint_id: Option<Uuid>,
    patch_data: Vec<u8>,
    base_sha: Option<String>,
    files_count: Option<i32>,
    size_bytes: i32,
    days_left: f64,
}

async fn patch_rows(env: &TestEnv, task: Uuid) -> Vec<PatchRow> {
    sqlx::query_as(
        "SELECT checkpoint_id, patch_data, base_sha, files_count, size_bytes,
                extract(epoch FROM expires_at - now())::float8 / 86400 AS days_left
         FROM checkpoint_patches WHERE task_id = $1 ORDER BY created_at",
    )
    .bind(task)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

async fn contract(env: &TestEnv, owner: Uuid, contract_type: &str, phase: &str) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO contracts (owner_id, name, contract_type, phase) VALUES ($1, 'c', $2, $3)
         RETURNING id",
    )
    .bind(owner)
    .bind(contract_type)
    .bind(phase)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Puts the task in the contract, as its supervisor or as a worker.
async fn join_contract(env: &TestEnv, task: Uuid, contract: Uuid, supervisor: bool) {
    sqlx::query("UPDATE tasks SET contract_id = $2, is_supervisor = $3 WHERE id = $1")
        .bind(task)
        .bind(contract)
        .bind(supervisor)
        .execute(&env.pool)
        .await
        .unwrap();
}

/// A daemon row of `owner` that never connected.
async fn offline_daemon(env: &TestEnv, owner: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO daemons (owner_id, machine_id, hostname, max_concurrent_tasks)
         VALUES ($1, 'gone', 'gone', 1) RETURNING id",
    )
    .bind(owner)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A supervisor task on its own daemon on pod B, and the world's task as a
/// worker in the same contract.
async fn with_supervisor(w: &World, contract_type: &str, phase: &str) -> (Daemon, Uuid) {
    let s = Daemon::connect(w.b.addr(), &w.owner.key, "supervisor").await;
    let c = contract(&w.env, w.owner.owner_id, contract_type, phase).await;
    let supervisor = w.env.task(w.owner.owner_id, "running", Some(s.id())).await;
    join_contract(&w.env, supervisor, c, true).await;
    join_contract(&w.env, w.task, c, false).await;
    (s, supervisor)
}

/// Starts a caller on pod B waiting for the daemon's answer of `kind`.
fn wait_on(
    pod: &Pod,
    kind: Kind,
    task: Uuid,
    daemon: Uuid,
    command: DaemonCommand,
) -> tokio::task::JoinHandle<Option<Value>> {
    let s = pod.state().clone();
    tokio::spawn(async move {
        let req = pending::Request {
            redis: &s.redis,
            metrics: &s.metrics,
            waiters: &s.waiters,
            timeout: Duration::from_secs(5),
        };
        let answer = pending::request(req, kind, task, daemon, &command)
            .await
            .ok()?;
        serde_json::from_str(&answer).ok()
    })
}

#[tokio::test]
async fn completion_action_result_stores_the_pr_url_and_shows_the_outcome() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap_task = Tap::task(&w.env, w.task).await;
    let mut tap_owner = Tap::owner(&w.env, owner).await;

    let url = "https://github.com/o/r/pull/5";
    w.d.send(
        json!({"type": "completionActionResult", "taskId": w.task, "success": true,
               "message": "PR opened", "prUrl": url}),
    )
    .await;
    let updated = tap_owner.next_of(owner, "taskUpdated").await;
    assert_eq!(updated["taskId"], json!(w.task));
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["status"], "running");
    assert_eq!(updated["updatedFields"], json!(["pr_url"]));
    assert_eq!(updated["updatedBy"], "daemon");
    let line = next_line(&mut tap_task, owner).await;
    assert_eq!(line["messageType"], "system");
    assert_eq!(line["content"], "✓ Completion action succeeded: PR opened");
    assert_eq!(line["isError"], false);
    assert_eq!(pr_url(&w.env, w.task).await.as_deref(), Some(url));

    w.d.send(
        json!({"type": "completionActionResult", "taskId": w.task, "success": false,
               "message": "no remote"}),
    )
    .await;
    let line = next_line(&mut tap_task, owner).await;
    assert_eq!(line["content"], "✗ Completion action failed: no remote");
    assert_eq!(line["isError"], true);
    assert_eq!(w.env.task_row(w.task).await.version, 2, "no URL, no change");
    assert_eq!(pr_url(&w.env, w.task).await.as_deref(), Some(url));
    let stored = eventually(Duration::from_secs(5), "two lines stored", || async {
        let rows = outputs(&w.env, w.task).await;
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(stored[1].1, "✗ Completion action failed: no remote");
}

#[tokio::test]
async fn clone_and_target_check_results_become_output_lines_on_other_replicas() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;

    let t = w.task;
    for frame in [
        json!({"type": "cloneWorktreeResult", "taskId": t, "success": true,
               "message": "cloned to /tmp/ü", "targetDir": "/tmp/ü"}),
        json!({"type": "cloneWorktreeResult", "taskId": t, "success": false,
               "message": "disk full"}),
        json!({"type": "checkTargetExistsResult", "taskId": t, "exists": true,
               "targetDir": "/srv/a"}),
        json!({"type": "checkTargetExistsResult", "taskId": t, "exists": false,
               "targetDir": "/srv/b"}),
    ] {
        w.d.send(frame).await;
    }
    let expected = [
        ("✓ Clone succeeded: cloned to /tmp/ü", json!(false)),
        ("✗ Clone failed: disk full", json!(true)),
        ("Target directory exists: /srv/a", Value::Null),
        ("Target directory does not exist: /srv/b", Value::Null),
    ];
    for (content, is_error) in expected {
        let line = next_line(&mut tap, owner).await;
        assert_eq!(line["messageType"], "system");
        assert_eq!(line["content"], content);
        assert_eq!(line["isError"], is_error, "{content}");
    }
    handled(&mut w.d).await;
}

#[tokio::test]
async fn branch_for_a_task_is_an_output_line_while_results_without_a_task_are_only_logged() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;

    w.d.send(json!({"type": "branchCreated", "branchName": "free", "success": true}))
        .await;
    w.d.send(
        json!({"type": "gitConfigInherited", "success": true, "userEmail": "a@b.c",
               "userName": "A B"}),
    )
    .await;
    w.d.send(json!({"type": "gitConfigInherited", "success": false, "error": "no config"}))
        .await;
    w.d.send(
        json!({"type": "branchCreated", "taskId": w.task, "branchName": "feature/ü",
               "success": true}),
    )
    .await;
    w.d.send(
        json!({"type": "branchCreated", "taskId": w.task, "branchName": "main",
               "success": false, "error": "already exists"}),
    )
    .await;
    handled(&mut w.d).await;

    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["content"], "✓ Branch 'feature/ü' created successfully");
    assert_eq!(line["isError"], false);
    let line = next_line(&mut tap, owner).await;
    assert_eq!(
        line["content"],
        "✗ Failed to create branch 'main': already exists"
    );
    assert_eq!(line["isError"], true);
    let rows = eventually(Duration::from_secs(5), "lines stored", || async {
        let rows = outputs(&w.env, w.task).await;
        (rows.len() >= 2).then_some(rows)
    })
    .await;
    assert_eq!(rows.len(), 2, "the other results wrote nothing");
}

#[tokio::test]
async fn checkpoint_gets_the_tasks_next_number_its_patch_and_a_history_event() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;
    let patch: Vec<u8> = [0x1f, 0x8b, 0x08, 0x00]
        .into_iter()
        .chain(0..=255)
        .collect();

    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
               "commitSha": "0123456789abcdef", "branchName": "mesh/t1",
               "checkpointNumber": 42, "filesChanged": [{"path": "a.rs", "status": "M"}],
               "linesAdded": 10, "linesRemoved": 2, "message": "first ✓",
               "patchData": STANDARD.encode(&patch), "patchBaseSha": "base1",
               "patchFilesCount": 3}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(
        line["content"],
        "✓ Checkpoint #1 created: first ✓ (0123456)"
    );
    assert_eq!(line["isError"], false);

    let rows = checkpoint_rows(&w.env, w.task).await;
    assert_eq!(rows.len(), 1);
    let cp = &rows[0];
    assert_eq!(
        cp.checkpoint_number, 1,
        "the daemon's own number is not used"
    );
    assert_eq!(cp.commit_sha.as_deref(), Some("0123456789abcdef"));
    assert_eq!(cp.branch_name.as_deref(), Some("mesh/t1"));
    assert_eq!(cp.message, "first ✓");
    assert_eq!(
        cp.files_changed,
        Some(json!([{"path": "a.rs", "status": "M"}]))
    );
    assert_eq!((cp.lines_added, cp.lines_removed), (Some(10), Some(2)));
    let patches = patch_rows(&w.env, w.task).await;
    assert_eq!(patches.len(), 1);
    let p = &patches[0];
    assert_eq!(p.checkpoint_id, Some(cp.id));
    assert_eq!(p.patch_data, patch, "stored decoded");
    assert_eq!(p.size_bytes as usize, patch.len());
    assert_eq!(p.base_sha.as_deref(), Some("base1"));
    assert_eq!(p.files_count, Some(3));
    assert!(
        (6.99..=7.0).contains(&p.days_left),
        "expires in 7 days: {}",
        p.days_left
    );

    let history: (String, Option<String>, Value) =
        eventually(Duration::from_secs(5), "history event", || async {
            sqlx::query_as(
                "SELECT event_type, event_subtype, data FROM history_events
                 WHERE task_id = $1 AND owner_id = $2",
            )
            .bind(w.task)
            .bind(owner)
            .fetch_optional(&w.env.pool)
            .await
            .unwrap()
        })
        .await;
    assert_eq!(
        (history.0.as_str(), history.1.as_deref()),
        ("checkpoint", Some("created"))
    );
    assert_eq!(history.2["checkpointNumber"], 1);
    assert_eq!(history.2["hasPatch"], true);

    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
               "commitSha": "fedcba", "checkpointNumber": 1, "message": "second"}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["content"], "✓ Checkpoint #2 created: second (fedcba)");
    assert_eq!(checkpoint_rows(&w.env, w.task).await.len(), 2);
    assert_eq!(
        patch_rows(&w.env, w.task).await.len(),
        1,
        "no patch, none stored"
    );
}

#[tokio::test]
async fn ten_checkpoints_sent_in_a_burst_are_numbered_one_to_ten() {
    let mut w = world().await;
    for i in 0..10 {
        w.d.send(
            json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
                   "commitSha": format!("sha{i}"), "checkpointNumber": 1,
                   "message": format!("burst {i}")}),
        )
        .await;
    }
    let rows = eventually(Duration::from_secs(10), "ten checkpoints", || async {
        let rows = checkpoint_rows(&w.env, w.task).await;
        (rows.len() >= 10).then_some(rows)
    })
    .await;
    let numbers: Vec<i32> = rows.iter().map(|r| r.checkpoint_number).collect();
    assert_eq!(numbers, (1..=10).collect::<Vec<_>>());
    let messages: Vec<&str> = rows.iter().map(|r| r.message.as_str()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("burst {i}")).collect();
    assert_eq!(messages, expected, "numbered in arrival order");
}

#[tokio::test]
async fn concurrent_checkpoints_of_one_task_never_share_a_number() {
    // As if twenty pods stored checkpoints of one task at the same moment.
    let env = TestEnv::new().await;
    let owner = env.owner().await;
    let task = env.task(owner.owner_id, "running", None).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(&env.db_url)
        .await
        .unwrap();
    let stores = (0..20).map(|i| {
        let pool = pool.clone();
        async move {
            let sha = format!("sha{i}");
            let checkpoint = NewCheckpoint {
                task_id: task,
                commit_sha: &sha,
                branch_name: None,
                message: "race",
                files_changed: None,
                lines_added: None,
                lines_removed: None,
            };
            checkpoints::create(&pool, owner.owner_id, &checkpoint, None).await
        }
    });
    let stored = futures_util::future::join_all(stores).await;
    let mut numbers: Vec<i32> = stored
        .into_iter()
        .map(|r| r.unwrap().expect("the owner's task").checkpoint_number)
        .collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=20).collect::<Vec<_>>());

    let stranger = env.owner().await;
    let checkpoint = NewCheckpoint {
        task_id: task,
        commit_sha: "x",
        branch_name: None,
        message: "not yours",
        files_changed: None,
        lines_added: None,
        lines_removed: None,
    };
    let refused = checkpoints::create(&pool, stranger.owner_id, &checkpoint, None).await;
    assert_eq!(refused.unwrap(), None);
    assert_eq!(checkpoint_rows(&env, task).await.len(), 20);
}

#[tokio::test]
async fn oversized_or_garbled_checkpoint_patch_is_refused_and_nothing_of_it_is_stored() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;

    let oversized = STANDARD.encode(vec![0u8; MAX_PATCH_BYTES + 1]);
    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
               "commitSha": "abc1234", "branchName": "b", "message": "big",
               "patchData": oversized, "patchBaseSha": "base", "patchFilesCount": 1}),
    )
    .await;
    let reply = w.d.recv().await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["code"], "PATCH_TOO_LARGE");
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["messageType"], "error");
    assert_eq!(
        line["content"],
        "✗ Checkpoint patch refused: larger than 10 MiB"
    );

    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
               "commitSha": "abc1234", "message": "garbled", "patchData": "not base64!",
               "patchBaseSha": "base"}),
    )
    .await;
    assert_eq!(w.d.recv().await["code"], "PARSE_ERROR");
    let line = next_line(&mut tap, owner).await;
    assert_eq!(
        line["content"],
        "✗ Checkpoint patch refused: not valid base64"
    );

    assert!(
        checkpoint_rows(&w.env, w.task).await.is_empty(),
        "no checkpoint"
    );
    assert!(patch_rows(&w.env, w.task).await.is_empty(), "no patch");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM history_events")
        .fetch_one(&w.env.pool)
        .await
        .unwrap();
    assert_eq!(history, 0);
}

#[tokio::test]
async fn patch_without_a_commit_is_stored_alone_and_a_failed_checkpoint_stores_nothing() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;

    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": true,
               "message": "wip", "patchData": STANDARD.encode(b"gz"),
               "patchBaseSha": "base2", "patchFilesCount": 2}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["content"], "✓ Patch saved: wip (2 files)");
    let patches = patch_rows(&w.env, w.task).await;
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].checkpoint_id, None);
    assert_eq!(patches[0].patch_data, b"gz");
    assert_eq!(patches[0].base_sha.as_deref(), Some("base2"));

    w.d.send(
        json!({"type": "checkpointCreated", "taskId": w.task, "success": false,
               "message": "cp", "error": "nothing to commit"}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["messageType"], "error");
    assert_eq!(line["content"], "✗ Checkpoint failed: nothing to commit");
    handled(&mut w.d).await;
    assert!(checkpoint_rows(&w.env, w.task).await.is_empty());
    assert_eq!(patch_rows(&w.env, w.task).await.len(), 1);
}

#[tokio::test]
async fn export_patch_reaches_web_clients_with_the_patch_and_its_figures() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;

    let diff = "diff --git a/ü.rs b/ü.rs\n+fn 日本() {}\n";
    w.d.send(
        json!({"type": "exportPatchCreated", "taskId": w.task, "success": true,
               "patchContent": diff, "filesCount": 2, "linesAdded": 5,
               "linesRemoved": 1, "baseCommitSha": "def456"}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["messageType"], "system");
    assert_eq!(
        line["content"],
        "✓ Export patch created: 2 files changed, +5 -1 lines (base: def456)"
    );
    assert_eq!(line["toolName"], "export_patch");
    assert_eq!(
        line["toolInput"],
        json!({"patchContent": diff, "filesCount": 2, "linesAdded": 5, "linesRemoved": 1,
               "baseCommitSha": "def456"})
    );
    let stored: Value = eventually(Duration::from_secs(5), "stored", || async {
        sqlx::query_scalar("SELECT tool_input FROM task_outputs WHERE task_id = $1")
            .bind(w.task)
            .fetch_optional(&w.env.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(stored["patchContent"], diff);

    w.d.send(
        json!({"type": "exportPatchCreated", "taskId": w.task, "success": false,
               "error": "no worktree"}),
    )
    .await;
    let line = next_line(&mut tap, owner).await;
    assert_eq!(line["messageType"], "error");
    assert_eq!(line["content"], "✗ Export patch failed: no worktree");
}

#[tokio::test]
async fn merge_result_reaches_clients_a_caller_waiting_on_another_replica_and_the_supervisor() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let (mut s, supervisor) = with_supervisor(&w, "simple", "execute").await;
    let mut tap_task = Tap::task(&w.env, w.task).await;
    let mut tap_owner = Tap::owner(&w.env, owner).await;

    let merge = DaemonCommand::MergeTaskToTarget {
        task_id: w.task,
        target_branch: Some("main".into()),
        squash: true,
    };
    let waiting = wait_on(&w.b, Kind::Merge, w.task, w.d.id(), merge);
    assert_eq!(w.d.recv().await["type"], "mergeTaskToTarget");
    w.d.send(
        json!({"type": "mergeToTargetResult", "taskId": w.task, "success": true,
               "message": "merged into main", "commitSha": "abc123"}),
    )
    .await;

    let answer = waiting.await.unwrap().expect("the caller got the answer");
    assert_eq!(answer["commitSha"], "abc123");
    for tap in [&mut tap_task, &mut tap_owner] {
        let e = tap.next_of(owner, "mergeResult").await;
        assert_eq!(e["taskId"], json!(w.task));
        assert_eq!(e["success"], true);
        assert_eq!(e["message"], "merged into main");
        assert_eq!(e["commitSha"], "abc123");
    }
    let told = s.recv().await;
    assert_eq!(told["type"], "sendMessage");
    assert_eq!(told["taskId"], json!(supervisor));
    let text = told["message"].as_str().unwrap();
    assert!(
        text.starts_with("[INFO] Merge completed: merged into main"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("makima"));

    w.d.send(
        json!({"type": "mergeToTargetResult", "taskId": w.task, "success": false,
               "message": "conflicts", "conflicts": ["a.rs", "b.rs"]}),
    )
    .await;
    let e = tap_task.next_of(owner, "mergeResult").await;
    assert_eq!(e["success"], false);
    assert_eq!(e["conflicts"], json!(["a.rs", "b.rs"]));
    assert!(
        s.try_recv(QUIET).await.is_none(),
        "a failed merge is not announced"
    );
}

#[tokio::test]
async fn pr_created_stores_the_url_answers_the_caller_and_tells_the_supervisor_the_next_step() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let (mut s, supervisor) = with_supervisor(&w, "specification", "execute").await;
    let mut tap_task = Tap::task(&w.env, w.task).await;
    let mut tap_owner = Tap::owner(&w.env, owner).await;

    let create = DaemonCommand::CreatePr {
        task_id: w.task,
        title: "t".into(),
        body: None,
        base_branch: "main".into(),
        branch: "meshgate/t".into(),
    };
    let waiting = wait_on(&w.b, Kind::Pr, w.task, w.d.id(), create);
    assert_eq!(w.d.recv().await["type"], "createPR");
    let url = "https://github.com/o/r/pull/17";
    w.d.send(
        json!({"type": "prCreated", "taskId": w.task, "success": true,
               "message": "created", "prUrl": url, "prNumber": 17}),
    )
    .await;

    let answer = waiting.await.unwrap().expect("the caller got the answer");
    assert_eq!(answer["prNumber"], 17);
    // The URL is stored before the result is announced.
    let updated = tap_owner.next_of(owner, "taskUpdated").await;
    assert_eq!(updated["updatedFields"], json!(["pr_url"]));
    for tap in [&mut tap_task, &mut tap_owner] {
        let e = tap.next_of(owner, "prResult").await;
        assert_eq!(e["taskId"], json!(w.task));
        assert_eq!(e["prUrl"], url);
        assert_eq!(e["prNumber"], 17);
    }
    assert_eq!(pr_url(&w.env, w.task).await.as_deref(), Some(url));
    assert_eq!(w.env.task_row(w.task).await.version, 2);

    let told = s.recv().await;
    assert_eq!(told["taskId"], json!(supervisor));
    let text = told["message"].as_str().unwrap();
    assert!(text.contains(url), "{text}");
    assert!(
        text.contains("Advance the contract to the review phase"),
        "{text}"
    );
    assert!(!text.to_lowercase().contains("makima"));
}

#[tokio::test]
async fn failed_pr_asks_the_supervisor_to_retry_and_stores_no_url() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let (mut s, _) = with_supervisor(&w, "simple", "execute").await;
    let mut tap = Tap::task(&w.env, w.task).await;

    w.d.send(
        json!({"type": "prCreated", "taskId": w.task, "success": false,
               "message": "gh auth failed"}),
    )
    .await;
    let e = tap.next_of(owner, "prResult").await;
    assert_eq!(e["success"], false);
    assert_eq!(e["message"], "gh auth failed");
    let told = s.recv().await;
    let text = told["message"].as_str().unwrap();
    assert!(text.starts_with("[ERROR] PR creation failed"), "{text}");
    assert!(text.contains("gh auth failed"));
    assert_eq!(pr_url(&w.env, w.task).await, None);
    assert_eq!(w.env.task_row(w.task).await.version, 1);
}

#[tokio::test]
async fn patch_for_the_supervisor_reaches_its_daemon_on_another_replica() {
    let mut w = world().await;
    let (mut s, supervisor) = with_supervisor(&w, "simple", "execute").await;

    let patch = STANDARD.encode(b"gzip bytes");
    w.d.send(json!({"type": "mergePatchToSupervisor", "taskId": w.task,
                    "supervisorTaskId": supervisor, "patchData": patch, "baseSha": "base9"}))
        .await;
    let cmd = s.recv().await;
    assert_eq!(
        cmd,
        json!({"type": "applyPatchToWorktree", "targetTaskId": supervisor,
               "sourceTaskId": w.task, "patchData": patch, "baseSha": "base9"})
    );
    handled(&mut w.d).await;

    let oversized = STANDARD.encode(vec![1u8; MAX_PATCH_BYTES + 1]);
    w.d.send(json!({"type": "mergePatchToSupervisor", "taskId": w.task,
                    "supervisorTaskId": supervisor, "patchData": oversized, "baseSha": "b"}))
        .await;
    assert_eq!(w.d.recv().await["code"], "PATCH_TOO_LARGE");
    assert!(
        s.try_recv(QUIET).await.is_none(),
        "an oversized patch is not passed on"
    );
}

#[tokio::test]
async fn patch_for_a_supervisor_that_is_offline_or_on_no_daemon_becomes_an_error_line() {
    let mut w = world().await;
    let owner = w.owner.owner_id;
    let mut tap = Tap::task(&w.env, w.task).await;
    let gone = offline_daemon(&w.env, owner).await;
    let offline = w.env.task(owner, "running", Some(gone)).await;
    let unassigned = w.env.task(owner, "pending", None).await;

    for (supervisor, why) in [
        (offline, "the supervisor's daemon is offline"),
        (unassigned, "the supervisor task is not on a daemon"),
    ] {
        w.d.send(json!({"type": "mergePatchToSupervisor", "taskId": w.task,
                        "supervisorTaskId": supervisor, "patchData": STANDARD.encode(b"p"),
                        "baseSha": "b"}))
            .await;
        let line = next_line(&mut tap, owner).await;
        assert_eq!(line["messageType"], "error");
        assert_eq!(line["content"], format!("✗ Patch not delivered: {why}"));
    }
    handled(&mut w.d).await;

    w.d.send(json!({"type": "mergePatchToSupervisor", "taskId": w.task,
                    "supervisorTaskId": Uuid::new_v4(), "patchData": STANDARD.encode(b"p"),
                    "baseSha": "b"}))
        .await;
    assert_eq!(w.d.recv().await["code"], "TASK_NOT_FOUND");
}

// ---------------------------------------------------------------------------
// Another owner's daemon
// ---------------------------------------------------------------------------

/// Owner A (daemon on pod A, a worker task and a supervisor task on another
/// daemon of A in one contract, a file) and owner B (a daemon on pod B with
/// a task of its own).
pub struct TwoOwners {
    pub env: TestEnv,
    _pods: (Pod, Pod),
    pub alice: NewKey,
    pub alice_daemons: Vec<Daemon>,
    pub alice_task: Uuid,
    pub alice_supervisor: Uuid,
    pub alice_file: Uuid,
    pub bob: Daemon,
    pub bob_task: Uuid,
}

pub async fn two_owners() -> TwoOwners {
    let env = TestEnv::new().await;
    let (a, b) = (env.pod().await, env.pod().await);
    let (alice, bob_key) = (env.owner().await, env.owner().await);
    let worker = Daemon::connect(a.addr(), &alice.key, "worker").await;
    let sup = Daemon::connect(a.addr(), &alice.key, "supervisor").await;
    let alice_task = env.task(alice.owner_id, "running", Some(worker.id())).await;
    let alice_supervisor = env.task(alice.owner_id, "running", Some(sup.id())).await;
    let c = contract(&env, alice.owner_id, "simple", "execute").await;
    join_contract(&env, alice_supervisor, c, true).await;
    join_contract(&env, alice_task, c, false).await;
    let alice_file = sqlx::query_scalar(
        "INSERT INTO files (owner_id, name, repo_file_path, repo_sync_status, body)
         VALUES ($1, 'plan', 'docs/plan.md', 'pending', '[{\"type\":\"paragraph\",\"text\":\"old\"}]')
         RETURNING id",
    )
    .bind(alice.owner_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    // Bob's daemon has the same machine id as Alice's: another identity all the same.
    let bob = Daemon::connect(b.addr(), &bob_key.key, "worker").await;
    let bob_task = env.task(bob_key.owner_id, "running", Some(bob.id())).await;
    TwoOwners {
        env,
        _pods: (a, b),
        alice,
        alice_daemons: vec![worker, sup],
        alice_task,
        alice_supervisor,
        alice_file,
        bob,
        bob_task,
    }
}

/// Everything of `owner` a message could change, as one JSON value.
pub async fn snapshot(env: &TestEnv, owner: Uuid) -> Value {
    sqlx::query_scalar(
        "SELECT jsonb_build_object(
           'tasks', (SELECT jsonb_agg(jsonb_build_object('id', id, 'version', version,
                      'status', status, 'pr_url', pr_url, 'updated_at', updated_at) ORDER BY id)
                     FROM tasks WHERE owner_id = $1),
           'files', (SELECT jsonb_agg(to_jsonb(f) ORDER BY id) FROM files f WHERE owner_id = $1),
           'outputs', (SELECT count(*) FROM task_outputs WHERE owner_id = $1),
           'checkpoints', (SELECT count(*) FROM task_checkpoints c JOIN tasks t ON t.id = c.task_id
                           WHERE t.owner_id = $1),
           'patches', (SELECT count(*) FROM checkpoint_patches p JOIN tasks t ON t.id = p.task_id
                       WHERE t.owner_id = $1),
           'history', (SELECT count(*) FROM history_events WHERE owner_id = $1))",
    )
    .bind(owner)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

impl TwoOwners {
    /// Bob's daemon sends `frame`: it is refused with `code`, and nothing of
    /// Alice's changes, reaches her topics or reaches her daemons.
    pub async fn refused(mut self, frame: Value, code: &str) {
        let alice = self.alice.owner_id;
        let mut taps = vec![
            Tap::owner(&self.env, alice).await,
            Tap::task(&self.env, self.alice_task).await,
            Tap::task(&self.env, self.alice_supervisor).await,
        ];
        let before = snapshot(&self.env, alice).await;

        self.bob.send(frame.clone()).await;
        let reply = self.bob.recv().await;
        assert_eq!(reply["type"], "error", "{frame}");
        assert_eq!(reply["code"], code, "{frame}");
        assert!(
            !reply["message"].as_str().unwrap().contains("owner"),
            "reveals nothing"
        );

        for tap in &mut taps {
            assert!(
                tap.try_next(alice, QUIET).await.is_none(),
                "no event: {frame}"
            );
        }
        for d in &mut self.alice_daemons {
            assert!(d.try_recv(QUIET).await.is_none(), "no command: {frame}");
        }
        assert_eq!(
            snapshot(&self.env, alice).await,
            before,
            "nothing changed: {frame}"
        );
    }
}

async fn refused_for_alices_task(frame: impl FnOnce(Uuid) -> Value) {
    let world = two_owners().await;
    let frame = frame(world.alice_task);
    world.refused(frame, "TASK_NOT_FOUND").await;
}

#[tokio::test]
async fn completion_action_result_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "completionActionResult", "taskId": t, "success": true,
               "message": "forged", "prUrl": "https://evil/pull/1"})
    })
    .await;
}

#[tokio::test]
async fn clone_worktree_result_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(
        |t| json!({"type": "cloneWorktreeResult", "taskId": t, "success": true, "message": "x"}),
    )
    .await;
}

#[tokio::test]
async fn check_target_exists_result_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "checkTargetExistsResult", "taskId": t, "exists": true, "targetDir": "/"})
    })
    .await;
}

#[tokio::test]
async fn branch_created_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(
        |t| json!({"type": "branchCreated", "taskId": t, "branchName": "x", "success": true}),
    )
    .await;
}

#[tokio::test]
async fn checkpoint_created_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "checkpointCreated", "taskId": t, "success": true, "commitSha": "abc",
               "branchName": "b", "message": "forged", "patchData": STANDARD.encode(b"p"),
               "patchBaseSha": "base"})
    })
    .await;
}

#[tokio::test]
async fn export_patch_created_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "exportPatchCreated", "taskId": t, "success": true,
               "patchContent": "forged"})
    })
    .await;
}

#[tokio::test]
async fn merge_to_target_result_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "mergeToTargetResult", "taskId": t, "success": true, "message": "forged"})
    })
    .await;
}

#[tokio::test]
async fn pr_created_for_another_owners_task_is_refused_and_changes_nothing() {
    refused_for_alices_task(|t| {
        json!({"type": "prCreated", "taskId": t, "success": true, "message": "forged",
               "prUrl": "https://evil/pull/1"})
    })
    .await;
}

#[tokio::test]
async fn merge_patch_to_supervisor_for_another_owners_task_is_refused_and_changes_nothing() {
    let world = two_owners().await;
    let frame = json!({"type": "mergePatchToSupervisor", "taskId": world.alice_task,
                       "supervisorTaskId": world.alice_supervisor,
                       "patchData": STANDARD.encode(b"p"), "baseSha": "b"});
    world.refused(frame, "TASK_NOT_FOUND").await;
}

#[tokio::test]
async fn patch_from_own_task_to_another_owners_supervisor_is_refused_and_never_reaches_it() {
    let world = two_owners().await;
    let frame = json!({"type": "mergePatchToSupervisor", "taskId": world.bob_task,
                       "supervisorTaskId": world.alice_supervisor,
                       "patchData": STANDARD.encode(b"p"), "baseSha": "b"});
    world.refused(frame, "TASK_NOT_FOUND").await;
}
