//! Owners, users and API keys.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    auth::{self, Principal},
    Result,
};

/// A key as listed to its user (never the key itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub id: Uuid,
    pub key_prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A freshly created key: the only moment the plain key exists.
#[derive(Debug)]
pub struct NewKey {
    pub key_id: Uuid,
    pub owner_id: Uuid,
    pub user_id: Uuid,
    pub key: String,
}

/// Creates the owner and user of `email` when missing, then a new key.
pub async fn create_key(pool: &PgPool, email: &str, owner_name: Option<&str>) -> Result<NewKey> {
    let mut tx = pool.begin().await?;
    let existing: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT id, default_owner_id FROM users WHERE email = $1 FOR UPDATE")
            .bind(email)
            .fetch_optional(&mut *tx)
            .await?;
    let (user_id, owner_id) = match existing {
        Some(found) => found,
        None => {
            let owner_id: Uuid =
                sqlx::query_scalar("INSERT INTO owners (name) VALUES ($1) RETURNING id")
                    .bind(owner_name.unwrap_or(email))
                    .fetch_one(&mut *tx)
                    .await?;
            let user_id: Uuid = sqlx::query_scalar(
                "INSERT INTO users (email, default_owner_id) VALUES ($1, $2) RETURNING id",
            )
            .bind(email)
            .bind(owner_id)
            .fetch_one(&mut *tx)
            .await?;
            (user_id, owner_id)
        }
    };
    let key = auth::generate_key();
    let key_id: Uuid = sqlx::query_scalar(
        "INSERT INTO api_keys (user_id, key_hash, key_prefix) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(user_id)
    .bind(auth::hash_key(&key))
    .bind(auth::display_prefix(&key))
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(NewKey {
        key_id,
        owner_id,
        user_id,
        key,
    })
}

/// The keys of the user with `email`, newest first.
pub async fn list_keys(pool: &PgPool, email: &str) -> Result<Vec<KeyRow>> {
    Ok(sqlx::query_as(
        "SELECT k.id, k.key_prefix, k.created_at, k.last_used_at, k.revoked_at
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE u.email = $1 ORDER BY k.created_at DESC",
    )
    .bind(email)
    .fetch_all(pool)
    .await?)
}

/// Revokes a key; false when no such key exists (revoking twice is fine).
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<bool> {
    let done =
        sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1")
            .bind(key_id)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// The principal of a live key, or `None` for an unknown or revoked one.
pub async fn authenticate(pool: &PgPool, key: &str) -> Result<Option<Principal>> {
    let row: Option<(Uuid, Uuid, Uuid)> = sqlx::query_as(
        "SELECT k.id, u.id, u.default_owner_id
         FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(auth::hash_key(key))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(key_id, user_id, owner_id)| Principal {
        user_id,
        owner_id,
        key_id,
    }))
}

/// Records that these keys were used (batched by the caller).
pub async fn touch_last_used(pool: &PgPool, key_ids: &[Uuid]) -> Result<()> {
    sqlx::query("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1)")
        .bind(key_ids)
        .execute(pool)
        .await?;
    Ok(())
}
