//! File rows: documents whose body is a JSON array of elements, optionally
//! kept in sync with a file of a repository that a daemon reads.
//!
//! Every query is scoped to the owner: another owner's file behaves as if it
//! did not exist (`None`).

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// Replaces the body of the owner's file with what was read from the
/// repository and marks it synced now. Returns the new version.
pub async fn store_synced_body(
    pool: &PgPool,
    owner_id: Uuid,
    file_id: Uuid,
    body: &Value,
) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "UPDATE files SET body = $3, repo_sync_status = 'synced', repo_synced_at = now(),
                version = version + 1, updated_at = now()
         WHERE id = $1 AND owner_id = $2
         RETURNING version",
    )
    .bind(file_id)
    .bind(owner_id)
    .bind(body)
    .fetch_optional(pool)
    .await?)
}

/// Marks the owner's file as failed to sync (its body is kept). Returns the
/// new version.
pub async fn mark_sync_failed(pool: &PgPool, owner_id: Uuid, file_id: Uuid) -> Result<Option<i32>> {
    Ok(sqlx::query_scalar(
        "UPDATE files SET repo_sync_status = 'failed', version = version + 1, updated_at = now()
         WHERE id = $1 AND owner_id = $2
         RETURNING version",
    )
    .bind(file_id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?)
}
