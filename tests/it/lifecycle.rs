//! Task lifecycle and supervisor messages (`taskStatusChange`,
//! `taskProgress`, `taskComplete`, `taskRecoveryDetected`,
//! `supervisorHeartbeat`): the daemon talks to pod A, observers (a Redis
//! tap, a supervisor daemon) sit elsewhere, and rows are read back from
//! PostgreSQL. A daemon may only ever touch its own owner's tasks that are
//! assigned to it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use meshgate::{
    cluster::toolkeys::{self, ToolKeyEntry},
    db::accounts::NewKey,
    Pod,
};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    client::Daemon,
    harness::{eventually, TestEnv},
    tap::Tap,
};

const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

// ---------------------------------------------------------------------------
// World and fixtures
// ---------------------------------------------------------------------------

/// Two pods, one owner, and that owner's daemon `m1` on pod A.
struct World {
    env: TestEnv,
    a: Pod,
    b: Pod,
    owner: NewKey,
    d: Daemon,
}

impl World {
    async fn new() -> Self {
        let env = TestEnv::new().await;
        let (a, b) = (env.pod().await, env.pod().await);
        let owner = env.owner().await;
        let d = Daemon::connect(a.addr(), &owner.key, "m1").await;
        Self {
            env,
            a,
            b,
            owner,
            d,
        }
    }

    fn owner_id(&self) -> Uuid {
        self.owner.owner_id
    }

    async fn finish(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

async fn contract(env: &TestEnv, owner: Uuid, phase: &str, local_only: bool) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO contracts (owner_id, name, description, contract_type, phase, local_only)
         VALUES ($1, 'Add search', 'Full-text search for notes', 'simple', $2, $3) RETURNING id",
    )
    .bind(owner)
    .bind(phase)
    .bind(local_only)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn repository(env: &TestEnv, contract: Uuid, url: &str) {
    sqlx::query("INSERT INTO contract_repositories (contract_id, repository_url) VALUES ($1, $2)")
        .bind(contract)
        .bind(url)
        .execute(&env.pool)
        .await
        .unwrap();
}

/// A task of `contract` named `name`, in `status`, on `daemon`.
async fn contract_task(
    env: &TestEnv,
    owner: Uuid,
    contract: Uuid,
    name: &str,
    status: &str,
    daemon: Option<Uuid>,
    is_supervisor: bool,
) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO tasks (owner_id, contract_id, name, plan, status, daemon_id, is_supervisor,
                            base_branch)
         VALUES ($1, $2, $3, 'do it', $4, $5, $6, 'develop') RETURNING id",
    )
    .bind(owner)
    .bind(contract)
    .bind(name)
    .bind(status)
    .bind(daemon)
    .bind(is_supervisor)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn supervisor_state(env: &TestEnv, contract: Uuid, task: Uuid) {
    sqlx::query(
        "INSERT INTO supervisor_states (contract_id, task_id, phase) VALUES ($1, $2, 'execute')",
    )
    .bind(contract)
    .bind(task)
    .execute(&env.pool)
    .await
    .unwrap();
}

async fn directive(env: &TestEnv, owner: Uuid) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO directives (owner_id, title, status) VALUES ($1, 'ship it', 'active') RETURNING id",
    )
    .bind(owner)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

async fn step(env: &TestEnv, directive: Uuid, status: &str, depends_on: &[Uuid]) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO directive_steps (directive_id, name, status, depends_on)
         VALUES ($1, 'step', $2, $3) RETURNING id",
    )
    .bind(directive)
    .bind(status)
    .bind(depends_on)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// A running task on `daemon` that runs `step` of `directive`.
async fn step_task(env: &TestEnv, owner: Uuid, daemon: Uuid, directive: Uuid, step: Uuid) -> Uuid {
    let task = env.task(owner, "running", Some(daemon)).await;
    sqlx::query("UPDATE tasks SET directive_id = $2, directive_step_id = $3 WHERE id = $1")
        .bind(task)
        .bind(directive)
        .bind(step)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE directive_steps SET task_id = $2, status = 'running' WHERE id = $1")
        .bind(step)
        .bind(task)
        .execute(&env.pool)
        .await
        .unwrap();
    task
}

async fn step_status(env: &TestEnv, step: Uuid) -> (String, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT status, completed_at FROM directive_steps WHERE id = $1")
        .bind(step)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

async fn directive_row(env: &TestEnv, directive: Uuid) -> (String, Option<Uuid>) {
    sqlx::query_as("SELECT status, orchestrator_task_id FROM directives WHERE id = $1")
        .bind(directive)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Everything a lifecycle message could change on a task.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct TaskSnapshot {
    status: String,
    version: i32,
    daemon_id: Option<Uuid>,
    progress_summary: Option<String>,
    error_message: Option<String>,
    retry_count: i32,
    failed_daemon_ids: Vec<Uuid>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    interrupted_at: Option<DateTime<Utc>>,
}

async fn snapshot(env: &TestEnv, task: Uuid) -> TaskSnapshot {
    sqlx::query_as(
        "SELECT status, version, daemon_id, progress_summary, error_message, retry_count,
                failed_daemon_ids, started_at, completed_at, interrupted_at
         FROM tasks WHERE id = $1",
    )
    .bind(task)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// Supervisor state of a contract: state, progress, restorations, source,
/// last restored, last heartbeat.
type StateRow = (
    String,
    i32,
    i32,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

async fn state_row(env: &TestEnv, contract: Uuid) -> Option<StateRow> {
    sqlx::query_as(
        "SELECT state, progress, restoration_count, restoration_source, last_restored_at,
                last_heartbeat_at
         FROM supervisor_states WHERE contract_id = $1",
    )
    .bind(contract)
    .fetch_optional(&env.pool)
    .await
    .unwrap()
}

async fn count(env: &TestEnv, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// The history events of a task, as (subtype, data), oldest first.
async fn history(env: &TestEnv, task: Uuid) -> Vec<(Option<String>, Value)> {
    sqlx::query_as(
        "SELECT event_subtype, data FROM history_events
         WHERE task_id = $1 AND event_type = 'task' ORDER BY id",
    )
    .bind(task)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Waits until the task has `n` history events, and returns them.
async fn history_of(env: &TestEnv, task: Uuid, n: usize) -> Vec<(Option<String>, Value)> {
    eventually(WAIT, "history events", || async {
        let events = history(env, task).await;
        (events.len() >= n).then_some(events)
    })
    .await
}

fn status_change(task: Uuid, new_status: &str) -> Value {
    json!({"type": "taskStatusChange", "taskId": task, "oldStatus": "starting", "newStatus": new_status})
}

fn complete(task: Uuid, success: bool, error: Option<&str>) -> Value {
    json!({"type": "taskComplete", "taskId": task, "success": success, "error": error})
}

fn recovery(task: Uuid, worktree_intact: bool) -> Value {
    json!({
        "type": "taskRecoveryDetected", "taskId": task, "previousState": "running",
        "worktreeIntact": worktree_intact, "worktreePath": "/w/t", "needsPatch": !worktree_intact
    })
}

fn heartbeat(task: Uuid, contract: Uuid, progress: u32) -> Value {
    json!({
        "type": "supervisorHeartbeat", "taskId": task, "contractId": contract,
        "state": "working", "phase": "execute", "currentActivity": "reviewing",
        "progress": progress, "pendingTaskIds": [task], "timestamp": "2026-11-26T10:00:00Z"
    })
}

fn assert_task_updated(event: &Value, task: Uuid, status: &str, version: i32, fields: &[&str]) {
    assert_eq!(event["type"], "taskUpdated", "{event}");
    assert_eq!(event["taskId"], json!(task), "{event}");
    assert_eq!(event["status"], status, "{event}");
    assert_eq!(event["version"], version, "{event}");
    assert_eq!(event["updatedFields"], json!(fields), "{event}");
}

async fn expect_error(d: &mut Daemon, code: &str) {
    let reply = d.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

// ---------------------------------------------------------------------------
// taskStatusChange
// ---------------------------------------------------------------------------

#[tokio::test]
async fn status_change_to_running_is_stored_published_and_recorded_in_history() {
    let mut w = World::new().await;
    let task = w.env.task(w.owner_id(), "starting", Some(w.d.id())).await;
    let mut tap = Tap::task(&w.env, task).await;

    w.d.send(status_change(task, "running")).await;

    let event = tap.next(w.owner_id()).await;
    assert_task_updated(&event, task, "running", 2, &["status"]);
    assert_eq!(event["updatedBy"], "daemon");
    let row = snapshot(&w.env, task).await;
    assert_eq!((row.status.as_str(), row.version), ("running", 2));
    assert!(row.started_at.is_some(), "started_at set");
    let events = history_of(&w.env, task, 1).await;
    assert_eq!(events[0].0.as_deref(), Some("started"));
    assert_eq!(
        events[0].1,
        json!({"name": "test task", "isSupervisor": false})
    );
    tap.close().await;
    w.finish().await;
}

#[tokio::test]
async fn supervisor_starting_to_run_gets_a_fresh_state_and_a_restored_one_after_a_restart() {
    let mut w = World::new().await;
    let c = contract(&w.env, w.owner_id(), "plan", false).await;
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "starting",
        Some(w.d.id()),
        true,
    )
    .await;
    let mut tap = Tap::task(&w.env, sup).await;

    w.d.send(status_change(sup, "running")).await;
    tap.next_of(w.owner_id(), "taskUpdated").await;
    let (phase, task_id): (String, Uuid) =
        sqlx::query_as("SELECT phase, task_id FROM supervisor_states WHERE contract_id = $1")
            .bind(c)
            .fetch_one(&w.env.pool)
            .await
            .unwrap();
    assert_eq!(
        (phase.as_str(), task_id),
        ("plan", sup),
        "phase from the contract"
    );
    let (_, _, restorations, source, restored_at, _) = state_row(&w.env, c).await.unwrap();
    assert_eq!((restorations, source, restored_at), (0, None, None));

    // The daemon restarts and starts the supervisor again.
    w.d.send(status_change(sup, "starting")).await;
    w.d.send(status_change(sup, "running")).await;
    let event = tap.next(w.owner_id()).await;
    assert_task_updated(&event, sup, "starting", 3, &["status"]);
    let event = tap.next(w.owner_id()).await;
    assert_task_updated(&event, sup, "running", 4, &["status"]);
    let (_, _, restorations, source, restored_at, _) = state_row(&w.env, c).await.unwrap();
    assert_eq!(restorations, 1);
    assert_eq!(source.as_deref(), Some("daemon_restart"));
    assert!(restored_at.is_some());
    let events = history_of(&w.env, sup, 2).await;
    assert_eq!(events[1].1, json!({"name": "Sup", "isSupervisor": true}));
    tap.close().await;
    w.finish().await;
}

#[tokio::test]
async fn status_change_with_an_empty_or_overlong_status_is_refused_as_a_parse_error() {
    let mut w = World::new().await;
    let task = w.env.task(w.owner_id(), "running", Some(w.d.id())).await;
    let before = snapshot(&w.env, task).await;

    for status in ["", &"x".repeat(33), &"é".repeat(33)] {
        w.d.send(status_change(task, status)).await;
        expect_error(&mut w.d, "PARSE_ERROR").await;
    }
    assert_eq!(snapshot(&w.env, task).await, before, "nothing changed");
    // 32 characters of two bytes each are fine: the limit counts characters.
    let accented = "é".repeat(32);
    w.d.send(status_change(task, &accented)).await;
    let row = eventually(WAIT, "status stored", || async {
        let row = snapshot(&w.env, task).await;
        (row.version == 2).then_some(row)
    })
    .await;
    assert_eq!(row.status, accented);
    w.finish().await;
}

// ---------------------------------------------------------------------------
// taskProgress
// ---------------------------------------------------------------------------

#[tokio::test]
async fn progress_summary_is_stored_and_published_with_the_tasks_real_status_and_version() {
    let mut w = World::new().await;
    let task = w
        .env
        .task(w.owner_id(), "initializing", Some(w.d.id()))
        .await;
    let mut tap = Tap::owner(&w.env, w.owner_id()).await;

    w.d.send(json!({"type": "taskProgress", "taskId": task, "summary": "tests written"}))
        .await;

    let event = tap.next_of(w.owner_id(), "taskUpdated").await;
    assert_task_updated(&event, task, "initializing", 2, &["progress_summary"]);
    let row = snapshot(&w.env, task).await;
    assert_eq!(row.progress_summary.as_deref(), Some("tests written"));
    assert_eq!((row.status.as_str(), row.version), ("initializing", 2));
    tap.close().await;
    w.finish().await;
}

// ---------------------------------------------------------------------------
// taskComplete
// ---------------------------------------------------------------------------

#[tokio::test]
async fn failed_completion_revokes_the_tool_key_and_records_the_error() {
    let mut w = World::new().await;
    let task = w.env.task(w.owner_id(), "running", Some(w.d.id())).await;
    let redis = &w.b.state().redis;
    let entry = ToolKeyEntry {
        task_id: task,
        owner_id: w.owner_id(),
        daemon_id: w.d.id(),
    };
    toolkeys::register(redis, "tk_secret", &entry, 60_000)
        .await
        .unwrap();
    assert!(toolkeys::lookup(redis, "tk_secret")
        .await
        .unwrap()
        .is_some());
    let mut tap = Tap::task(&w.env, task).await;

    w.d.send(complete(task, false, Some("tests broke"))).await;

    let event = tap.next(w.owner_id()).await;
    assert_task_updated(
        &event,
        task,
        "failed",
        2,
        &["status", "completed_at", "error_message"],
    );
    assert_eq!(toolkeys::lookup(redis, "tk_secret").await.unwrap(), None);
    let row = snapshot(&w.env, task).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.error_message.as_deref(), Some("tests broke"));
    assert!(row.completed_at.is_some());
    let events = history_of(&w.env, task, 1).await;
    assert_eq!(events[0].0.as_deref(), Some("failed"));
    assert_eq!(
        events[0].1,
        json!({"name": "test task", "status": "failed", "error": "tests broke"})
    );
    tap.close().await;
    w.finish().await;
}

#[tokio::test]
async fn completion_is_sent_to_the_supervisors_daemon_on_another_pod() {
    let mut w = World::new().await;
    let mut sd = Daemon::connect(w.b.addr(), &w.owner.key, "sup-machine").await;
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    repository(&w.env, c, "https://git.example/notes.git").await;
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(sd.id()),
        true,
    )
    .await;
    let task = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Index notes",
        "running",
        Some(w.d.id()),
        false,
    )
    .await;
    // Another task still running: no pull request yet.
    contract_task(&w.env, w.owner_id(), c, "Search UI", "running", None, false).await;
    sqlx::query("UPDATE tasks SET progress_summary = 'indexer in place' WHERE id = $1")
        .bind(task)
        .execute(&w.env.pool)
        .await
        .unwrap();

    w.d.send(complete(task, true, None)).await;

    let got = sd.recv().await;
    assert_eq!(got["type"], "sendMessage", "{got}");
    assert_eq!(got["taskId"], json!(sup));
    let text = got["message"].as_str().unwrap();
    for part in ["Index notes", &task.to_string(), "done", "indexer in place"] {
        assert!(text.contains(part), "{part:?} in {text:?}");
    }
    assert!(!text.contains("[INFO]"), "no directive yet: {text}");
    assert!(
        sd.try_recv(QUIET).await.is_none(),
        "no createPR while a task runs"
    );
    w.finish().await;
}

#[tokio::test]
async fn supervisor_completing_is_not_told_about_itself() {
    let mut w = World::new().await;
    let c = contract(&w.env, w.owner_id(), "plan", false).await;
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(w.d.id()),
        true,
    )
    .await;
    let mut tap = Tap::task(&w.env, sup).await;

    w.d.send(complete(sup, true, None)).await;

    assert_eq!(tap.next(w.owner_id()).await["status"], "done");
    assert!(w.d.try_recv(QUIET).await.is_none(), "no sendMessage");
    tap.close().await;
    w.finish().await;
}

#[tokio::test]
async fn last_task_done_in_execute_phase_asks_the_supervisors_daemon_for_the_pull_request() {
    let mut w = World::new().await;
    let mut sd = Daemon::connect(w.b.addr(), &w.owner.key, "sup-machine").await;
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    repository(&w.env, c, "https://git.example/notes.git").await;
    // A pull request delivered in another phase does not count.
    sqlx::query(
        "UPDATE contracts SET completed_deliverables = '{\"plan\": [\"pull-request\"]}' WHERE id = $1",
    )
    .bind(c)
    .execute(&w.env.pool)
    .await
    .unwrap();
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Ünïcode Sup/er ✓",
        "running",
        Some(sd.id()),
        true,
    )
    .await;
    contract_task(&w.env, w.owner_id(), c, "Search UI", "done", None, false).await;
    let task = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Index notes",
        "running",
        Some(w.d.id()),
        false,
    )
    .await;

    w.d.send(complete(task, true, None)).await;

    let first = sd.recv().await;
    let second = sd.recv().await;
    assert_eq!(first["type"], "sendMessage", "{first}");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("[INFO] All 2 task(s) completed."),
        "{first}"
    );
    let short = &sup.to_string()[..8];
    assert_eq!(
        second,
        json!({
            "type": "createPR", "taskId": sup, "title": "Add search",
            "body": "Full-text search for notes", "baseBranch": "develop",
            "branch": format!("meshgate/ünïcode-sup-er---{short}"),
        })
    );
    assert!(sd.try_recv(QUIET).await.is_none(), "asked once");
    w.finish().await;
}

#[tokio::test]
async fn two_last_tasks_finishing_together_on_two_pods_ask_for_the_pull_request_once() {
    let mut w = World::new().await;
    let mut other = Daemon::connect(w.b.addr(), &w.owner.key, "m2").await;
    let mut sd = Daemon::connect(w.b.addr(), &w.owner.key, "sup-machine").await;
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    repository(&w.env, c, "https://git.example/notes.git").await;
    contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(sd.id()),
        true,
    )
    .await;
    let one = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "One",
        "running",
        Some(w.d.id()),
        false,
    )
    .await;
    let two = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Two",
        "running",
        Some(other.id()),
        false,
    )
    .await;

    tokio::join!(
        w.d.send(complete(one, true, None)),
        other.send(complete(two, true, None))
    );

    let mut kinds = Vec::new();
    while let Some(frame) = sd.try_recv(Duration::from_secs(1)).await {
        kinds.push(frame["type"].as_str().unwrap_or_default().to_owned());
    }
    kinds.sort();
    assert_eq!(kinds, ["createPR", "sendMessage", "sendMessage"]);
    w.finish().await;
}

#[tokio::test]
async fn no_pull_request_is_asked_for_a_local_only_contract() {
    let mut w = World::new().await;
    let mut sd = Daemon::connect(w.b.addr(), &w.owner.key, "sup-machine").await;
    let c = contract(&w.env, w.owner_id(), "execute", true).await;
    repository(&w.env, c, "https://git.example/notes.git").await;
    contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(sd.id()),
        true,
    )
    .await;
    let task = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Only",
        "running",
        Some(w.d.id()),
        false,
    )
    .await;

    w.d.send(complete(task, true, None)).await;

    let got = sd.recv().await;
    assert_eq!(got["type"], "sendMessage");
    assert!(!got["message"].as_str().unwrap().contains("[INFO]"));
    assert!(sd.try_recv(QUIET).await.is_none(), "no createPR");
    w.finish().await;
}

#[tokio::test]
async fn finished_step_tasks_ready_the_steps_after_them_and_idle_the_directive_at_the_end() {
    let mut w = World::new().await;
    let (env, owner, daemon) = (&w.env, w.owner.owner_id, w.d.id());
    let dir = directive(env, owner).await;
    let s1 = step(env, dir, "pending", &[]).await;
    let s2 = step(env, dir, "pending", &[s1]).await;
    let s3 = step(env, dir, "pending", &[s1, s2]).await;
    let t1 = step_task(env, owner, daemon, dir, s1).await;
    let mut tap = Tap::owner(env, owner).await;

    w.d.send(complete(t1, true, None)).await;
    tap.next_of(owner, "taskUpdated").await;
    let (status, completed_at) = step_status(env, s1).await;
    assert_eq!(status, "completed");
    assert!(completed_at.is_some());
    assert_eq!(step_status(env, s2).await.0, "ready");
    assert_eq!(step_status(env, s3).await.0, "pending", "s2 not done yet");
    assert_eq!(directive_row(env, dir).await.0, "active");

    let t2 = step_task(env, owner, daemon, dir, s2).await;
    w.d.send(complete(t2, true, None)).await;
    tap.next_of(owner, "taskUpdated").await;
    assert_eq!(step_status(env, s3).await.0, "ready");
    assert_eq!(directive_row(env, dir).await.0, "active");

    let t3 = step_task(env, owner, daemon, dir, s3).await;
    w.d.send(complete(t3, false, Some("flaky"))).await;
    tap.next_of(owner, "taskUpdated").await;
    assert_eq!(step_status(env, s3).await.0, "failed");
    assert_eq!(
        directive_row(env, dir).await.0,
        "idle",
        "no step left to run"
    );
    tap.close().await;
    w.finish().await;
}

#[tokio::test]
async fn failed_planning_task_clears_the_orchestrator_readies_planned_steps_and_pauses_the_directive(
) {
    let mut w = World::new().await;
    let (env, owner) = (&w.env, w.owner.owner_id);
    let dir = directive(env, owner).await;
    let planner = env.task(owner, "running", Some(w.d.id())).await;
    sqlx::query("UPDATE tasks SET directive_id = $2 WHERE id = $1")
        .bind(planner)
        .bind(dir)
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE directives SET orchestrator_task_id = $2 WHERE id = $1")
        .bind(dir)
        .bind(planner)
        .execute(&env.pool)
        .await
        .unwrap();
    let first = step(env, dir, "pending", &[]).await;
    let second = step(env, dir, "pending", &[first]).await;
    let mut tap = Tap::task(env, planner).await;

    w.d.send(complete(planner, false, Some("could not plan")))
        .await;

    tap.next(owner).await;
    assert_eq!(directive_row(env, dir).await, ("paused".to_owned(), None));
    assert_eq!(step_status(env, first).await.0, "ready");
    assert_eq!(step_status(env, second).await.0, "pending");
    tap.close().await;
    w.finish().await;
}

// ---------------------------------------------------------------------------
// taskRecoveryDetected
// ---------------------------------------------------------------------------

#[tokio::test]
async fn recovery_with_an_intact_worktree_puts_the_task_back_to_pending_for_resumption() {
    let mut w = World::new().await;
    let (env, owner, daemon) = (&w.env, w.owner.owner_id, w.d.id());
    // The daemon is full (2 of 2), so the dispatcher leaves the task pending.
    env.task(owner, "running", Some(daemon)).await;
    env.task(owner, "running", Some(daemon)).await;
    let task = env.task(owner, "running", Some(daemon)).await;
    let finished = env.task(owner, "done", Some(daemon)).await;
    let mut tap = Tap::task(env, task).await;
    let mut quiet = Tap::task(env, finished).await;

    w.d.send(recovery(task, true)).await;
    w.d.send(recovery(finished, true)).await;

    let event = tap.next(owner).await;
    assert_task_updated(
        &event,
        task,
        "pending",
        2,
        &["status", "daemon_id", "interrupted_at", "error_message"],
    );
    assert_eq!(event["updatedBy"], "daemon_recovery");
    let row = snapshot(env, task).await;
    assert_eq!((row.status.as_str(), row.daemon_id), ("pending", None));
    assert!(row.interrupted_at.is_some());
    assert_eq!(
        row.error_message.as_deref(),
        Some("Daemon restarted - task ready for resumption")
    );
    assert_eq!((row.retry_count, row.failed_daemon_ids), (0, vec![]));
    assert!(quiet.try_next(owner, QUIET).await.is_none());
    assert_eq!(snapshot(env, finished).await.status, "done", "left alone");
    tap.close().await;
    quiet.close().await;
    w.finish().await;
}

#[tokio::test]
async fn recovery_with_a_lost_worktree_retries_the_task_elsewhere_until_its_retries_run_out() {
    let mut w = World::new().await;
    let (env, owner, daemon) = (&w.env, w.owner.owner_id, w.d.id());
    let retried = env.task(owner, "running", Some(daemon)).await;
    let last_try = env.task(owner, "running", Some(daemon)).await;
    sqlx::query("UPDATE tasks SET retry_count = 3 WHERE id = $1")
        .bind(last_try)
        .execute(&env.pool)
        .await
        .unwrap();
    let mut tap = Tap::owner(env, owner).await;

    w.d.send(recovery(retried, false)).await;
    let event = tap.next_of(owner, "taskUpdated").await;
    assert_task_updated(
        &event,
        retried,
        "pending",
        2,
        &["status", "daemon_id", "retry_count"],
    );
    w.d.send(recovery(last_try, false)).await;
    let event = tap.next_of(owner, "taskUpdated").await;
    assert_task_updated(
        &event,
        last_try,
        "failed",
        2,
        &[
            "status",
            "daemon_id",
            "retry_count",
            "completed_at",
            "error_message",
        ],
    );

    let row = snapshot(env, retried).await;
    assert_eq!((row.status.as_str(), row.daemon_id), ("pending", None));
    assert_eq!((row.retry_count, row.failed_daemon_ids), (1, vec![daemon]));
    let row = snapshot(env, last_try).await;
    assert_eq!((row.status.as_str(), row.retry_count), ("failed", 4));
    assert!(row.completed_at.is_some() && row.error_message.is_some());
    tap.close().await;
    w.finish().await;
}

// ---------------------------------------------------------------------------
// supervisorHeartbeat
// ---------------------------------------------------------------------------

#[tokio::test]
async fn supervisor_heartbeat_is_logged_and_updates_the_supervisor_and_daemon_state() {
    let mut w = World::new().await;
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(w.d.id()),
        true,
    )
    .await;
    supervisor_state(&w.env, c, sup).await;

    w.d.send(heartbeat(sup, c, 40)).await;

    eventually(WAIT, "heartbeat stored", || async {
        let sql = "SELECT count(*) FROM supervisor_heartbeats WHERE task_id = $1";
        (count(&w.env, sql, sup).await == 1).then_some(())
    })
    .await;
    let (contract_id, state, progress, pending): (Uuid, String, i32, Vec<Uuid>) = sqlx::query_as(
        "SELECT contract_id, state, progress, pending_task_ids FROM supervisor_heartbeats
         WHERE task_id = $1",
    )
    .bind(sup)
    .fetch_one(&w.env.pool)
    .await
    .unwrap();
    assert_eq!((contract_id, state.as_str(), progress), (c, "working", 40));
    assert_eq!(pending, vec![sup]);
    let (state, progress, _, _, _, last_heartbeat) = state_row(&w.env, c).await.unwrap();
    assert_eq!((state.as_str(), progress), ("working", 40));
    assert!(last_heartbeat.is_some());
    let daemon_beat: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_heartbeat_at FROM daemons WHERE id = $1")
            .bind(w.d.id())
            .fetch_one(&w.env.pool)
            .await
            .unwrap();
    assert!(daemon_beat.is_some(), "counts as a daemon heartbeat");
    w.finish().await;
}

#[tokio::test]
async fn supervisor_heartbeat_for_another_contract_a_plain_task_or_bad_progress_is_refused() {
    let mut w = World::new().await;
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    let other = contract(&w.env, w.owner_id(), "execute", false).await;
    let sup = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(w.d.id()),
        true,
    )
    .await;
    let plain = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Work",
        "running",
        Some(w.d.id()),
        false,
    )
    .await;
    supervisor_state(&w.env, c, sup).await;
    supervisor_state(&w.env, other, sup).await;
    let before = (state_row(&w.env, c).await, state_row(&w.env, other).await);

    w.d.send(heartbeat(sup, other, 40)).await;
    expect_error(&mut w.d, "TASK_NOT_FOUND").await;
    w.d.send(heartbeat(plain, c, 40)).await;
    expect_error(&mut w.d, "TASK_NOT_FOUND").await;
    for progress in [101, 300] {
        w.d.send(heartbeat(sup, c, progress)).await;
        expect_error(&mut w.d, "PARSE_ERROR").await;
    }

    let sql = "SELECT count(*) FROM supervisor_heartbeats WHERE contract_id = $1";
    assert_eq!(
        count(&w.env, sql, c).await + count(&w.env, sql, other).await,
        0
    );
    let after = (state_row(&w.env, c).await, state_row(&w.env, other).await);
    assert_eq!(before, after);
    w.finish().await;
}

// ---------------------------------------------------------------------------
// Isolation: another owner's task, another daemon's task
// ---------------------------------------------------------------------------

/// The five messages, each naming `task` (of `contract`).
fn every_message(task: Uuid, contract: Uuid) -> [Value; 5] {
    [
        status_change(task, "done"),
        json!({"type": "taskProgress", "taskId": task, "summary": "hijacked"}),
        complete(task, false, Some("hijacked")),
        recovery(task, false),
        heartbeat(task, contract, 99),
    ]
}

/// A running supervisor task of the world's owner on its daemon, with a
/// supervisor state and a live tool key: everything a message could touch.
async fn victim(w: &World) -> (Uuid, Uuid) {
    let c = contract(&w.env, w.owner_id(), "execute", false).await;
    let task = contract_task(
        &w.env,
        w.owner_id(),
        c,
        "Sup",
        "running",
        Some(w.d.id()),
        true,
    )
    .await;
    supervisor_state(&w.env, c, task).await;
    let entry = ToolKeyEntry {
        task_id: task,
        owner_id: w.owner_id(),
        daemon_id: w.d.id(),
    };
    toolkeys::register(&w.a.state().redis, "tk_victim", &entry, 60_000)
        .await
        .unwrap();
    (task, c)
}

/// `intruder` sends `message` about the victim task: it gets
/// `TASK_NOT_FOUND`, and the task, its supervisor state, heartbeats, history,
/// tool key and event channel show no trace of it.
async fn assert_refused(w: &World, intruder: &mut Daemon, task: Uuid, c: Uuid, message: Value) {
    let before = (snapshot(&w.env, task).await, state_row(&w.env, c).await);
    let mut tap = Tap::task(&w.env, task).await;

    intruder.send(message.clone()).await;
    let reply = intruder.recv().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("TASK_NOT_FOUND")),
        "{message}: {reply}"
    );

    assert!(
        tap.try_next(w.owner_id(), QUIET).await.is_none(),
        "{message}: no event"
    );
    let after = (snapshot(&w.env, task).await, state_row(&w.env, c).await);
    assert_eq!(before, after, "{message}: nothing changed");
    let sql = "SELECT count(*) FROM supervisor_heartbeats WHERE task_id = $1";
    assert_eq!(count(&w.env, sql, task).await, 0, "{message}");
    assert!(history(&w.env, task).await.is_empty(), "{message}");
    let key = toolkeys::lookup(&w.b.state().redis, "tk_victim")
        .await
        .unwrap();
    assert!(key.is_some(), "{message}: tool key still valid");
    tap.close().await;
}

/// A daemon of another owner, on pod B, sends message `which` about this
/// owner's task.
async fn another_owner_sends(which: usize) {
    let w = World::new().await;
    let (task, c) = victim(&w).await;
    let stranger = w.env.owner().await;
    let mut intruder = Daemon::connect(w.b.addr(), &stranger.key, "m1").await;
    let message = every_message(task, c)[which].clone();
    assert_refused(&w, &mut intruder, task, c, message).await;
    w.finish().await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_change_the_status_of_a_task() {
    another_owner_sends(0).await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_report_progress_of_a_task() {
    another_owner_sends(1).await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_complete_a_task_or_revoke_its_tool_key() {
    another_owner_sends(2).await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_send_a_task_into_recovery() {
    another_owner_sends(3).await;
}

#[tokio::test]
async fn another_owners_daemon_cannot_send_a_supervisor_heartbeat_for_a_task() {
    another_owner_sends(4).await;
}

#[tokio::test]
async fn a_task_assigned_to_another_daemon_of_the_same_owner_is_not_found_for_any_message() {
    let w = World::new().await;
    let (task, c) = victim(&w).await;
    let mut sibling = Daemon::connect(w.a.addr(), &w.owner.key, "m2").await;
    for message in every_message(task, c) {
        assert_refused(&w, &mut sibling, task, c, message).await;
    }
    w.finish().await;
}
