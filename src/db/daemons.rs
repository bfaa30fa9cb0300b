//! Daemon rows: one per (owner, machine id), so a daemon keeps its id across
//! reconnects. Whether it is connected *now* is the registry's business
//! (Redis); the row keeps history (last seen, directories).

use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// Creates or refreshes the row of (owner, machine id) and returns its id.
pub async fn upsert(
    pool: &PgPool,
    owner_id: Uuid,
    machine_id: &str,
    hostname: &str,
    max_concurrent_tasks: i32,
) -> Result<Uuid> {
    Ok(sqlx::query_scalar(
        "INSERT INTO daemons (owner_id, machine_id, hostname, max_concurrent_tasks, last_connected_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (owner_id, machine_id) DO UPDATE
           SET hostname = EXCLUDED.hostname,
               max_concurrent_tasks = EXCLUDED.max_concurrent_tasks,
               last_connected_at = now()
         RETURNING id",
    )
    .bind(owner_id)
    .bind(machine_id)
    .bind(hostname)
    .bind(max_concurrent_tasks)
    .fetch_one(pool)
    .await?)
}

/// Records a heartbeat.
pub async fn heartbeat(pool: &PgPool, owner_id: Uuid, daemon_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE daemons SET last_heartbeat_at = now() WHERE id = $1 AND owner_id = $2")
        .bind(daemon_id)
        .bind(owner_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Stores the directories a daemon reported.
pub async fn set_directories(
    pool: &PgPool,
    owner_id: Uuid,
    daemon_id: Uuid,
    working: &str,
    home: &str,
    worktrees: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE daemons SET working_directory = $3, home_directory = $4, worktrees_directory = $5
         WHERE id = $1 AND owner_id = $2",
    )
    .bind(daemon_id)
    .bind(owner_id)
    .bind(working)
    .bind(home)
    .bind(worktrees)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the daemon's current connection ended.
pub async fn mark_disconnected(pool: &PgPool, owner_id: Uuid, daemon_id: Uuid) -> Result<()> {
    sqlx::query("UPDATE daemons SET last_disconnected_at = now() WHERE id = $1 AND owner_id = $2")
        .bind(daemon_id)
        .bind(owner_id)
        .execute(pool)
        .await?;
    Ok(())
}
