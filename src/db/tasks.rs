//! Task rows.

use sqlx::PgPool;
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
