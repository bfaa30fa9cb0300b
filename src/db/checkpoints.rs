//! Rows that a task's git results write: checkpoints and their recovery
//! patches, the task's pull request URL, and the lookup of the contract's
//! supervisor that merge and PR results report to.
//!
//! Every query is scoped to the owner: a row of another owner behaves as if
//! it did not exist (`None`).

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// How long a stored patch is kept for resuming a task.
pub const PATCH_TTL_DAYS: i32 = 7;

/// A checkpoint as the daemon reported it. Its number is not taken from the
/// daemon: [`create`] gives the task's next one.
#[derive(Debug, Clone)]
pub struct NewCheckpoint<'a> {
    pub task_id: Uuid,
    pub commit_sha: &'a str,
    pub branch_name: Option<&'a str>,
    pub message: &'a str,
    pub files_changed: Option<&'a Value>,
    pub lines_added: Option<i32>,
    pub lines_removed: Option<i32>,
}

/// A recovery patch: the gzip bytes, already decoded from base64.
#[derive(Debug, Clone)]
pub struct NewPatch<'a> {
    pub data: &'a [u8],
    pub base_sha: &'a str,
    pub files_count: Option<i32>,
}

/// A stored checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Stored {
    pub id: Uuid,
    pub checkpoint_number: i32,
}

/// Stores a checkpoint with the task's next number and, if given, its patch,
/// in one transaction. `None` when the task is not the owner's.
///
/// The task row is locked (`FOR NO KEY UPDATE`, which does not block the
/// foreign-key checks of concurrent output inserts) so that concurrent
/// checkpoints of one task are numbered one after the other, 1, 2, 3…,
/// wherever they arrive.
pub async fn create(
    pool: &PgPool,
    owner_id: Uuid,
    checkpoint: &NewCheckpoint<'_>,
    patch: Option<&NewPatch<'_>>,
) -> Result<Option<Stored>> {
    let mut tx = pool.begin().await?;
    let locked: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM tasks WHERE id = $1 AND owner_id = $2 FOR NO KEY UPDATE",
    )
    .bind(checkpoint.task_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await?;
    if locked.is_none() {
        return Ok(None); // dropping `tx` rolls back
    }
    let stored: Stored = sqlx::query_as(
        "INSERT INTO task_checkpoints
           (task_id, checkpoint_number, commit_sha, branch_name, message, files_changed,
            lines_added, lines_removed)
         SELECT $1, COALESCE(MAX(checkpoint_number), 0) + 1, $2, $3, $4, $5, $6, $7
         FROM task_checkpoints WHERE task_id = $1
         RETURNING id, checkpoint_number",
    )
    .bind(checkpoint.task_id)
    .bind(checkpoint.commit_sha)
    .bind(checkpoint.branch_name)
    .bind(checkpoint.message)
    .bind(checkpoint.files_changed)
    .bind(checkpoint.lines_added)
    .bind(checkpoint.lines_removed)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(patch) = patch {
        insert_patch(
            &mut *tx,
            owner_id,
            checkpoint.task_id,
            Some(stored.id),
            patch,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Some(stored))
}

/// Stores a patch that belongs to no checkpoint (the daemon saved the
/// worktree without committing). `None` when the task is not the owner's.
pub async fn create_patch_only(
    pool: &PgPool,
    owner_id: Uuid,
    task_id: Uuid,
    patch: &NewPatch<'_>,
) -> Result<Option<Uuid>> {
    insert_patch(pool, owner_id, task_id, None, patch).await
}

/// One statement, scoped to the owner through the task row.
async fn insert_patch<'e>(
    db: impl sqlx::PgExecutor<'e>,
    owner_id: Uuid,
    task_id: Uuid,
    checkpoint_id: Option<Uuid>,
    patch: &NewPatch<'_>,
) -> Result<Option<Uuid>> {
    // The caller bounds the patch far below i32::MAX; saturate regardless.
    let size = i32::try_from(patch.data.len()).unwrap_or(i32::MAX);
    Ok(sqlx::query_scalar(
        "INSERT INTO checkpoint_patches
           (task_id, checkpoint_id, patch_data, base_sha, files_count, size_bytes, expires_at)
         SELECT t.id, $3, $4, $5, $6, $7, now() + make_interval(days => $8)
         FROM tasks t WHERE t.id = $1 AND t.owner_id = $2
         RETURNING id",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(checkpoint_id)
    .bind(patch.data)
    .bind(patch.base_sha)
    .bind(patch.files_count)
    .bind(size)
    .bind(PATCH_TTL_DAYS)
    .fetch_optional(db)
    .await?)
}

/// A task after a change, as `taskUpdated` needs it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Updated {
    pub version: i32,
    pub status: String,
}

/// Records the pull request URL of the owner's task (bumping its version).
pub async fn set_pr_url(
    pool: &PgPool,
    owner_id: Uuid,
    task_id: Uuid,
    pr_url: &str,
) -> Result<Option<Updated>> {
    Ok(sqlx::query_as(
        "UPDATE tasks SET pr_url = $3, version = version + 1, updated_at = now()
         WHERE id = $1 AND owner_id = $2
         RETURNING version, status",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(pr_url)
    .fetch_optional(pool)
    .await?)
}

/// The supervisor task of a contract, with what decides its next step.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ContractSupervisor {
    pub task_id: Uuid,
    pub daemon_id: Option<Uuid>,
    pub contract_type: String,
    pub phase: String,
}

/// The supervisor task of the owner's contract: the newest one, preferring
/// one that is on a daemon (a contract may have had several after restarts).
pub async fn contract_supervisor(
    pool: &PgPool,
    owner_id: Uuid,
    contract_id: Uuid,
) -> Result<Option<ContractSupervisor>> {
    Ok(sqlx::query_as(
        "SELECT t.id AS task_id, t.daemon_id, c.contract_type, c.phase
         FROM tasks t JOIN contracts c ON c.id = t.contract_id AND c.owner_id = t.owner_id
         WHERE t.contract_id = $1 AND t.owner_id = $2 AND t.is_supervisor
         ORDER BY (t.daemon_id IS NOT NULL) DESC, t.created_at DESC
         LIMIT 1",
    )
    .bind(contract_id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?)
}
