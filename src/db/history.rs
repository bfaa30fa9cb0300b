//! History events: an append-only log of what happened to contracts and
//! tasks, for people reading back what a run did.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::Result;

/// One history event.
#[derive(Debug, Clone)]
pub struct HistoryEvent<'a> {
    pub owner_id: Uuid,
    pub contract_id: Option<Uuid>,
    pub task_id: Option<Uuid>,
    /// e.g. `task`, `checkpoint`.
    pub event_type: &'a str,
    /// e.g. `started`, `completed`, `failed`, `created`.
    pub event_subtype: Option<&'a str>,
    pub phase: Option<&'a str>,
    pub data: Value,
}

pub async fn record(pool: &PgPool, e: &HistoryEvent<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO history_events (owner_id, contract_id, task_id, event_type, event_subtype, phase, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(e.owner_id)
    .bind(e.contract_id)
    .bind(e.task_id)
    .bind(e.event_type)
    .bind(e.event_subtype)
    .bind(e.phase)
    .bind(&e.data)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the event; a failure is logged, never returned (history is a
/// best-effort side effect of the real change).
pub async fn record_can_fail(pool: &PgPool, e: &HistoryEvent<'_>) {
    if let Err(err) = record(pool, e).await {
        tracing::warn!(error = %err, event_type = e.event_type, task_id = ?e.task_id, "history event not recorded");
    }
}
