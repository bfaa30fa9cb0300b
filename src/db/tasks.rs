//! Task rows.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use crate::Result;

/// A task whose status changed, as needed for the `taskUpdated` event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskChange {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub status: String,
    pub version: i32,
    pub retry_count: i32,
}

/// What daemon message handlers need to know about the task a message
/// names, once it is known to be the daemon's own.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct TaskRef {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub contract_id: Option<Uuid>,
    pub name: String,
    pub status: String,
    pub is_supervisor: bool,
    pub daemon_id: Option<Uuid>,
    pub version: i32,
}

/// The task if it belongs to `owner_id` and is assigned to `daemon_id`;
/// `None` otherwise (callers answer `TASK_NOT_FOUND` and never reveal which).
pub async fn assigned(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
) -> Result<Option<TaskRef>> {
    Ok(sqlx::query_as(
        "SELECT id, owner_id, contract_id, name, status, is_supervisor, daemon_id, version
         FROM tasks WHERE id = $1 AND owner_id = $2 AND daemon_id = $3",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .fetch_optional(pool)
    .await?)
}

/// Any task of `owner_id` (for flows that cross daemons, e.g. a supervisor).
pub async fn of_owner(pool: &PgPool, owner_id: Uuid, task_id: Uuid) -> Result<Option<TaskRef>> {
    Ok(sqlx::query_as(
        "SELECT id, owner_id, contract_id, name, status, is_supervisor, daemon_id, version
         FROM tasks WHERE id = $1 AND owner_id = $2",
    )
    .bind(task_id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?)
}

/// Statuses in which a task occupies a daemon.
pub const ACTIVE_STATUSES: [&str; 3] = ["starting", "running", "initializing"];

/// The daemon is gone for good: each of its active tasks goes back to
/// `pending` for another daemon (this one added to its failed list), or
/// fails for good once its retries are used up.
///
/// One statement, conditional on the task still being active on this
/// daemon, so running it twice (two pods, or a retry after a crash) changes
/// nothing the second time.
pub async fn retry_after_disconnect(pool: &PgPool, daemon_id: Uuid) -> Result<Vec<TaskChange>> {
    Ok(sqlx::query_as(
        "UPDATE tasks t SET
           status = CASE WHEN t.retry_count < t.max_retries THEN 'pending' ELSE 'failed' END,
           error_message = CASE WHEN t.retry_count < t.max_retries THEN t.error_message
                                ELSE 'daemon disconnected and the task used up its retries' END,
           completed_at = CASE WHEN t.retry_count < t.max_retries THEN NULL ELSE now() END,
           daemon_id = NULL,
           failed_daemon_ids = array_append(t.failed_daemon_ids, $1),
           retry_count = t.retry_count + 1,
           released_from = $1, released_at = now(),
           confirmed_at = NULL, missing_since = NULL, spawn_sent_at = NULL, spawn_attempts = 0,
           version = t.version + 1,
           updated_at = now()
         FROM daemons d
         WHERE d.id = $1 AND t.daemon_id = d.id AND t.owner_id = d.owner_id
           AND t.status = ANY($2)
         RETURNING t.id, t.owner_id, t.status, t.version, t.retry_count",
    )
    .bind(daemon_id)
    .bind(&ACTIVE_STATUSES[..])
    .fetch_all(pool)
    .await?)
}

/// Statuses after which a task never runs again; recovery leaves them alone.
pub const FINISHED_STATUSES: [&str; 2] = ["done", "failed"];

/// The daemon reported a new status. Conditional on the task still being
/// this daemon's, so a task reassigned since the message was checked is not
/// touched (`None`). `started_at` is set when the task enters `running`.
pub async fn set_status<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
    status: &str,
) -> Result<Option<TaskRef>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET
           status = $4,
           started_at = CASE WHEN $4 = 'running' AND status <> 'running' THEN now()
                             ELSE started_at END,
           confirmed_at = COALESCE(confirmed_at, now()),
           missing_since = NULL,
           version = version + 1,
           updated_at = now()
         WHERE id = $1 AND owner_id = $2 AND daemon_id = $3
         RETURNING id, owner_id, contract_id, name, status, is_supervisor, daemon_id, version",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(status)
    .fetch_optional(db)
    .await?)
}

/// Stores the daemon's progress summary (same condition as [`set_status`]).
pub async fn set_progress(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
    summary: &str,
) -> Result<Option<TaskRef>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET progress_summary = $4, version = version + 1, updated_at = now()
         WHERE id = $1 AND owner_id = $2 AND daemon_id = $3
         RETURNING id, owner_id, contract_id, name, status, is_supervisor, daemon_id, version",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(summary)
    .fetch_optional(pool)
    .await?)
}

/// A task as it is right after `taskComplete` was recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CompletedTask {
    pub id: Uuid,
    pub contract_id: Option<Uuid>,
    pub name: String,
    /// `done` or `failed`.
    pub status: String,
    pub version: i32,
    pub is_supervisor: bool,
    pub progress_summary: Option<String>,
    pub error_message: Option<String>,
    pub directive_id: Option<Uuid>,
    pub directive_step_id: Option<Uuid>,
}

impl CompletedTask {
    pub fn succeeded(&self) -> bool {
        self.status == "done"
    }
}

/// Records the end of a task (same condition as [`set_status`]).
pub async fn complete<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
    success: bool,
    error: Option<&str>,
) -> Result<Option<CompletedTask>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET
           status = CASE WHEN $4 THEN 'done' ELSE 'failed' END,
           completed_at = now(),
           error_message = $5,
           missing_since = NULL,
           version = version + 1,
           updated_at = now()
         WHERE id = $1 AND owner_id = $2 AND daemon_id = $3
         RETURNING id, contract_id, name, status, version, is_supervisor, progress_summary,
                   error_message, directive_id, directive_step_id",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(success)
    .bind(error)
    .fetch_optional(db)
    .await?)
}

/// After a daemon restart the task's worktree survived: the task goes back
/// to `pending` (released, as the seed does) to be resumed. Finished tasks
/// and tasks no longer this daemon's are left alone (`None`).
pub async fn resume_after_restart(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
) -> Result<Option<TaskChange>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET
           status = 'pending',
           daemon_id = NULL,
           error_message = 'Daemon restarted - task ready for resumption',
           interrupted_at = now(),
           released_from = $3, released_at = now(),
           confirmed_at = NULL, missing_since = NULL, spawn_sent_at = NULL, spawn_attempts = 0,
           version = version + 1,
           updated_at = now()
         WHERE id = $1 AND owner_id = $2 AND daemon_id = $3 AND NOT (status = ANY($4))
         RETURNING id, owner_id, status, version, retry_count",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(&FINISHED_STATUSES[..])
    .fetch_optional(pool)
    .await?)
}

/// After a daemon restart the task's worktree is gone: retried on another
/// daemon exactly as [`retry_after_disconnect`] does, or failed for good
/// once its retries are used up. Same conditions as [`resume_after_restart`].
pub async fn retry_after_restart(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
) -> Result<Option<TaskChange>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET
           status = CASE WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END,
           error_message = CASE WHEN retry_count < max_retries THEN error_message
                                ELSE 'worktree lost in a daemon restart and the task used up its retries' END,
           completed_at = CASE WHEN retry_count < max_retries THEN NULL ELSE now() END,
           daemon_id = NULL,
           failed_daemon_ids = array_append(failed_daemon_ids, $3),
           retry_count = retry_count + 1,
           released_from = $3, released_at = now(),
           confirmed_at = NULL, missing_since = NULL, spawn_sent_at = NULL, spawn_attempts = 0,
           version = version + 1,
           updated_at = now()
         WHERE id = $1 AND owner_id = $2 AND daemon_id = $3 AND NOT (status = ANY($4))
         RETURNING id, owner_id, status, version, retry_count",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(&FINISHED_STATUSES[..])
    .fetch_optional(pool)
    .await?)
}

/// The supervisor task of a contract, as needed to reach it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Supervisor {
    pub id: Uuid,
    pub name: String,
    pub daemon_id: Option<Uuid>,
    pub base_branch: Option<String>,
}

/// The contract's supervisor task of the same owner (the newest, should a
/// contract ever have had more than one).
pub async fn supervisor_of<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    contract_id: Uuid,
) -> Result<Option<Supervisor>> {
    Ok(sqlx::query_as(
        "SELECT id, name, daemon_id, base_branch FROM tasks
         WHERE contract_id = $1 AND owner_id = $2 AND is_supervisor
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(contract_id)
    .bind(owner_id)
    .fetch_optional(db)
    .await?)
}
