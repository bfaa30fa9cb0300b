//! Queries of the dispatcher: which pending tasks go to which daemon.
//! Dispatch for one owner is serialised across all pods by a transaction-
//! scoped advisory lock on the owner, so capacity is never counted twice.

use std::collections::HashMap;

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::Result;

/// A pending task as the dispatcher needs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PendingTask {
    pub id: Uuid,
    pub name: String,
    pub plan: String,
    pub repository_url: Option<String>,
    pub base_branch: Option<String>,
    pub target_branch: Option<String>,
    pub contract_id: Option<Uuid>,
    pub parent_task_id: Option<Uuid>,
    pub is_supervisor: bool,
    pub failed_daemon_ids: Vec<Uuid>,
    pub retry_count: i32,
}

/// Opens the owner's dispatch transaction. `wait` blocks until no other pod
/// dispatches for this owner; otherwise `None` when one does.
pub async fn begin(
    pool: &PgPool,
    owner_id: Uuid,
    wait: bool,
) -> Result<Option<Transaction<'static, Postgres>>> {
    let mut tx = pool.begin().await?;
    let key = format!("dispatch:{owner_id}");
    if wait {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
    } else {
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
        if !got {
            return Ok(None);
        }
    }
    Ok(Some(tx))
}

/// Oldest pending tasks of the owner.
pub async fn pending(
    tx: &mut Transaction<'_, Postgres>,
    owner_id: Uuid,
    limit: i64,
) -> Result<Vec<PendingTask>> {
    Ok(sqlx::query_as(
        "SELECT id, name, plan, repository_url, base_branch, target_branch, contract_id,
                parent_task_id, is_supervisor, failed_daemon_ids, retry_count
         FROM tasks WHERE owner_id = $1 AND status = 'pending'
         ORDER BY created_at, id LIMIT $2",
    )
    .bind(owner_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// How many active tasks each of these daemons holds.
pub async fn active_counts(
    tx: &mut Transaction<'_, Postgres>,
    owner_id: Uuid,
    daemons: &[Uuid],
) -> Result<HashMap<Uuid, i64>> {
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT daemon_id, count(*) FROM tasks
         WHERE owner_id = $1 AND daemon_id = ANY($2) AND status = ANY($3)
         GROUP BY daemon_id",
    )
    .bind(owner_id)
    .bind(daemons)
    .bind(&super::tasks::ACTIVE_STATUSES[..])
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Hands a pending task to a daemon (`starting`; its `spawnTask` leaves
/// right after the commit, so that is when it counts as sent). Returns the
/// new version, or `None` if the task was no longer pending.
pub async fn assign(
    tx: &mut Transaction<'_, Postgres>,
    task_id: Uuid,
    daemon_id: Uuid,
) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "UPDATE tasks SET status = 'starting', daemon_id = $2, version = version + 1, updated_at = now(),
           spawn_sent_at = now(), spawn_attempts = 1, confirmed_at = NULL, missing_since = NULL
         WHERE id = $1 AND status = 'pending' RETURNING version",
    )
    .bind(task_id)
    .bind(daemon_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// The `spawnTask` surely did not reach the daemon (no pod holds it, or
/// its socket went away first): the task goes back to `pending` (unless
/// something else changed it meanwhile). Never after an unknown outcome.
pub async fn unassign(pool: &PgPool, task_id: Uuid, daemon_id: Uuid) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "UPDATE tasks SET status = 'pending', daemon_id = NULL, version = version + 1, updated_at = now(),
           spawn_sent_at = NULL, spawn_attempts = 0, confirmed_at = NULL, missing_since = NULL
         WHERE id = $1 AND daemon_id = $2 AND status = 'starting' RETURNING version",
    )
    .bind(task_id)
    .bind(daemon_id)
    .fetch_optional(pool)
    .await?)
}

/// The newest unexpired checkpoint patch of a task: (gzip bytes, base sha).
pub async fn latest_patch(
    pool: &PgPool,
    task_id: Uuid,
) -> Result<Option<(Vec<u8>, Option<String>)>> {
    Ok(sqlx::query_as(
        "SELECT patch_data, base_sha FROM checkpoint_patches
         WHERE task_id = $1 AND expires_at > now()
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(task_id)
    .fetch_optional(pool)
    .await?)
}

/// Whether the owner has any pending task (an index-only check).
pub async fn has_pending(pool: &PgPool, owner_id: Uuid) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM tasks WHERE owner_id = $1 AND status = 'pending')",
    )
    .bind(owner_id)
    .fetch_one(pool)
    .await?)
}

/// Owners with pending tasks (for the periodic sweep).
pub async fn owners_with_pending(pool: &PgPool, limit: i64) -> Result<Vec<Uuid>> {
    Ok(
        sqlx::query_scalar("SELECT DISTINCT owner_id FROM tasks WHERE status = 'pending' LIMIT $1")
            .bind(limit)
            .fetch_all(pool)
            .await?,
    )
}
