//! Queries of reconciliation (PROTOCOL.md §1.4): what a daemon's heartbeat
//! says about its tasks, against their rows. Every change is one
//! conditional statement that repeats the condition it acts on, so however
//! many pods see the same heartbeat state (a daemon reconnecting between
//! them), each repair happens once.
//!
//! Times are compared with the database's `now()`, never a pod's clock.

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    dispatch::PendingTask,
    tasks::{TaskChange, ACTIVE_STATUSES},
};
use crate::Result;

/// A task a heartbeat is about: one the daemon listed, or one active on it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reported {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub daemon_id: Option<Uuid>,
    pub status: String,
    /// Active on this daemon (of this owner).
    pub own_active: bool,
    /// The daemon said it has the task (a status change or a heartbeat).
    pub confirmed_at_set: bool,
    /// `starting` with no word from the daemon yet.
    pub unconfirmed: bool,
    /// The last `spawnTask` left more than the reconcile window ago.
    pub spawn_due: bool,
    pub spawn_attempts: i32,
    /// Heartbeats have left it out since some time.
    pub missing: bool,
    /// … for longer than the reconcile window.
    pub missing_long: bool,
    /// Finished on this daemon within the window (completion actions may
    /// still run; the daemon may still list it).
    pub recently_finished: bool,
    /// Released from this daemon within the window.
    pub recently_released: bool,
}

/// The rows behind one heartbeat of `daemon_id`: the tasks it listed
/// (whoever's they are) and the tasks active on it.
pub async fn reported(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    listed: &[Uuid],
    window_ms: i64,
) -> Result<Vec<Reported>> {
    Ok(sqlx::query_as(
        "SELECT id, owner_id, daemon_id, status,
                (daemon_id = $2 AND owner_id = $1 AND status = ANY($4)) AS own_active,
                confirmed_at IS NOT NULL AS confirmed_at_set,
                (status = 'starting' AND confirmed_at IS NULL) AS unconfirmed,
                COALESCE(spawn_sent_at, updated_at) < now() - $5 * interval '1 millisecond' AS spawn_due,
                spawn_attempts,
                missing_since IS NOT NULL AS missing,
                COALESCE(missing_since < now() - $5 * interval '1 millisecond', false) AS missing_long,
                COALESCE(daemon_id = $2 AND status = ANY($6)
                         AND completed_at > now() - $5 * interval '1 millisecond', false) AS recently_finished,
                COALESCE(released_from = $2
                         AND released_at > now() - $5 * interval '1 millisecond', false) AS recently_released
         FROM tasks
         WHERE (daemon_id = $2 AND owner_id = $1 AND status = ANY($4)) OR id = ANY($3)",
    )
    .bind(owner_id)
    .bind(daemon_id)
    .bind(listed)
    .bind(&ACTIVE_STATUSES[..])
    .bind(window_ms as f64)
    .bind(&super::tasks::FINISHED_STATUSES[..])
    .fetch_all(pool)
    .await?)
}

/// The daemon listed these active tasks of its own: confirmed, and no
/// longer missing. Returns the ids confirmed for the first time.
pub async fn confirm(pool: &PgPool, daemon_id: Uuid, ids: &[Uuid]) -> Result<Vec<Uuid>> {
    Ok(sqlx::query_scalar::<_, Option<Uuid>>(
        "UPDATE tasks t SET confirmed_at = COALESCE(t.confirmed_at, now()), missing_since = NULL
         FROM (SELECT id, confirmed_at IS NULL AS first FROM tasks
               WHERE id = ANY($2) AND daemon_id = $1 AND status = ANY($3) FOR UPDATE) old
         WHERE t.id = old.id
         RETURNING CASE WHEN old.first THEN t.id END",
    )
    .bind(daemon_id)
    .bind(ids)
    .bind(&ACTIVE_STATUSES[..])
    .fetch_all(pool)
    .await?
    .into_iter()
    .flatten()
    .collect())
}

/// Confirmed tasks the heartbeat left out: missing from now on (unless
/// already).
pub async fn mark_missing(pool: &PgPool, daemon_id: Uuid, ids: &[Uuid]) -> Result<()> {
    sqlx::query(
        "UPDATE tasks SET missing_since = now()
         WHERE id = ANY($2) AND daemon_id = $1 AND status = ANY($3) AND missing_since IS NULL
           AND (confirmed_at IS NOT NULL OR status <> 'starting')",
    )
    .bind(daemon_id)
    .bind(ids)
    .bind(&ACTIVE_STATUSES[..])
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims the re-sending of an unconfirmed task's `spawnTask` (its last one
/// left more than the window ago): returns what the command needs, or
/// `None` when another pod claimed it or the task moved on.
pub async fn claim_resend(
    pool: &PgPool,
    daemon_id: Uuid,
    task_id: Uuid,
    window_ms: i64,
) -> Result<Option<PendingTask>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET spawn_sent_at = now(), spawn_attempts = spawn_attempts + 1
         WHERE id = $1 AND daemon_id = $2 AND status = 'starting' AND confirmed_at IS NULL
           AND COALESCE(spawn_sent_at, updated_at) < now() - $3 * interval '1 millisecond'
         RETURNING id, name, plan, repository_url, base_branch, target_branch, contract_id,
                   parent_task_id, is_supervisor, failed_daemon_ids, retry_count",
    )
    .bind(task_id)
    .bind(daemon_id)
    .bind(window_ms as f64)
    .fetch_optional(pool)
    .await?)
}

/// Hands back a task its daemon lost: retried on another daemon (this one
/// added to its failed list), or failed once its retries are used up,
/// exactly as after a disconnect. Only while the condition still holds:
/// missing for longer than the window, or never confirmed after
/// `max_attempts` `spawnTask`s, the last one more than the window ago.
pub async fn hand_back(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    task_id: Uuid,
    window_ms: i64,
    max_attempts: i32,
) -> Result<Option<TaskChange>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET
           status = CASE WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END,
           error_message = CASE WHEN retry_count < max_retries THEN error_message
                                ELSE 'the daemon lost the task and the task used up its retries' END,
           completed_at = CASE WHEN retry_count < max_retries THEN NULL ELSE now() END,
           daemon_id = NULL,
           failed_daemon_ids = array_append(failed_daemon_ids, $2),
           retry_count = retry_count + 1,
           released_from = $2, released_at = now(),
           confirmed_at = NULL, missing_since = NULL, spawn_sent_at = NULL, spawn_attempts = 0,
           version = version + 1,
           updated_at = now()
         WHERE id = $3 AND owner_id = $1 AND daemon_id = $2 AND status = ANY($4)
           AND (missing_since < now() - $5 * interval '1 millisecond'
                OR (status = 'starting' AND confirmed_at IS NULL AND spawn_attempts >= $6
                    AND COALESCE(spawn_sent_at, updated_at) < now() - $5 * interval '1 millisecond'))
         RETURNING id, owner_id, status, version, retry_count",
    )
    .bind(owner_id)
    .bind(daemon_id)
    .bind(task_id)
    .bind(&ACTIVE_STATUSES[..])
    .bind(window_ms as f64)
    .bind(max_attempts)
    .fetch_optional(pool)
    .await?)
}
