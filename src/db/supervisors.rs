//! Supervisor state (one row per contract, kept across supervisor restarts)
//! and the append-only log of supervisor heartbeats. Neither table has an
//! owner column: every query reaches the owner through the contract or task.

use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{protocol::daemon::SupervisorHeartbeat, Result};

/// `restoration_count` is 0 for a fresh state and at least 1 for a restored one.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct Started {
    pub restoration_count: i32,
}

/// The contract's supervisor task started running: its state is created
/// (phase taken from the contract) or, when a state survives from an
/// earlier run, marked restored by a daemon restart. One statement, so two
/// starts racing cannot both create it. `None`: the owner has no such contract.
///
/// A restored state is handed to the task now running it, which is the
/// contract's supervisor even if the task row was replaced.
pub async fn start_or_restore<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    contract_id: Uuid,
    task_id: Uuid,
) -> Result<Option<Started>> {
    Ok(sqlx::query_as(
        "INSERT INTO supervisor_states (contract_id, task_id, phase)
         SELECT c.id, $2, c.phase FROM contracts c WHERE c.id = $1 AND c.owner_id = $3
         ON CONFLICT (contract_id) DO UPDATE SET
           task_id = EXCLUDED.task_id,
           restoration_count = supervisor_states.restoration_count + 1,
           last_restored_at = now(),
           restoration_source = 'daemon_restart',
           updated_at = now()
         RETURNING restoration_count",
    )
    .bind(contract_id)
    .bind(task_id)
    .bind(owner_id)
    .fetch_optional(db)
    .await?)
}

/// Appends the heartbeat and brings the contract's supervisor state up to
/// date with it, in the caller's transaction. The heartbeat is stored only
/// while the task is still the owner's and assigned to `daemon_id`
/// (`false` otherwise). A contract without a state yet (the supervisor has
/// not reported `running`) only gets the heartbeat row.
pub async fn record_heartbeat(
    tx: &mut PgConnection,
    owner_id: Uuid,
    daemon_id: Uuid,
    m: &SupervisorHeartbeat,
) -> Result<bool> {
    let progress = i32::from(m.progress);
    let stored = sqlx::query(
        "INSERT INTO supervisor_heartbeats
           (task_id, contract_id, state, phase, current_activity, progress, pending_task_ids)
         SELECT t.id, t.contract_id, $4, $5, $6, $7, $8 FROM tasks t
         WHERE t.id = $1 AND t.owner_id = $2 AND t.daemon_id = $3",
    )
    .bind(m.task_id)
    .bind(owner_id)
    .bind(daemon_id)
    .bind(&m.state)
    .bind(&m.phase)
    .bind(&m.current_activity)
    .bind(progress)
    .bind(&m.pending_task_ids)
    .execute(&mut *tx)
    .await?;
    if stored.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE supervisor_states s SET
           state = $3, current_activity = $4, progress = $5, pending_task_ids = $6,
           last_heartbeat_at = now(), updated_at = now()
         FROM contracts c
         WHERE s.contract_id = $1 AND c.id = s.contract_id AND c.owner_id = $2",
    )
    .bind(m.contract_id)
    .bind(owner_id)
    .bind(&m.state)
    .bind(&m.current_activity)
    .bind(progress)
    .bind(&m.pending_task_ids)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}
