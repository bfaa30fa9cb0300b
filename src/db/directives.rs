//! Directives and their DAG of steps, as task completions move them on.
//!
//! Each change locks the directive row first, so that two steps finishing
//! at once on different pods are serialised: each then sees the other's
//! step as it really is, and a step depending on both becomes `ready`
//! (without the lock each could see the other still running, and neither
//! would advance it). Steps have no owner column: the owner is checked on
//! the directive.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// Statuses in which a step still has work ahead of it.
const OPEN_STEP_STATUSES: [&str; 3] = ["pending", "ready", "running"];

/// What a finished task did to its directive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advanced {
    pub directive_id: Option<Uuid>,
    /// Steps that became `ready`.
    pub ready: u64,
    /// The directive's status, when this change set it.
    pub status: Option<&'static str>,
}

/// The task of step `step_id` ended: the step is `completed` or `failed`,
/// steps whose dependencies are now all completed become `ready`, and an
/// active directive with no open step left goes `idle`.
pub async fn finish_step(
    tx: &mut PgConnection,
    owner_id: Uuid,
    step_id: Uuid,
    succeeded: bool,
) -> Result<Advanced> {
    let directive_id: Option<Uuid> = sqlx::query_scalar(
        "SELECT d.id FROM directive_steps s JOIN directives d ON d.id = s.directive_id
         WHERE s.id = $1 AND d.owner_id = $2
         FOR UPDATE OF d",
    )
    .bind(step_id)
    .bind(owner_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(directive_id) = directive_id else {
        return Ok(Advanced::default());
    };
    sqlx::query(
        "UPDATE directive_steps SET status = $2, completed_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(step_id)
    .bind(if succeeded { "completed" } else { "failed" })
    .execute(&mut *tx)
    .await?;
    let ready = advance_ready_steps(tx, owner_id, directive_id).await?;
    let idle = sqlx::query(
        "UPDATE directives d SET status = 'idle', updated_at = now()
         WHERE d.id = $1 AND d.owner_id = $2 AND d.status = 'active'
           AND NOT EXISTS (SELECT 1 FROM directive_steps s
                           WHERE s.directive_id = d.id AND s.status = ANY($3))",
    )
    .bind(directive_id)
    .bind(owner_id)
    .bind(&OPEN_STEP_STATUSES[..])
    .execute(&mut *tx)
    .await?;
    Ok(Advanced {
        directive_id: Some(directive_id),
        ready,
        status: (idle.rows_affected() > 0).then_some("idle"),
    })
}

/// The planning (orchestrator) task of a directive ended: it is no longer
/// the directive's orchestrator, the steps it planned that are ready to run
/// become `ready`, and a failed plan pauses the directive (unless it has
/// already finished) so a person looks at it.
pub async fn finish_planning(
    tx: &mut PgConnection,
    owner_id: Uuid,
    directive_id: Uuid,
    task_id: Uuid,
    succeeded: bool,
) -> Result<Advanced> {
    // Clearing only this task keeps a newer orchestrator in place.
    let found: Option<Uuid> = sqlx::query_scalar(
        "UPDATE directives SET
           orchestrator_task_id = CASE WHEN orchestrator_task_id = $3 THEN NULL
                                       ELSE orchestrator_task_id END,
           updated_at = now()
         WHERE id = $1 AND owner_id = $2
         RETURNING id",
    )
    .bind(directive_id)
    .bind(owner_id)
    .bind(task_id)
    .fetch_optional(&mut *tx)
    .await?;
    if found.is_none() {
        return Ok(Advanced::default());
    }
    let ready = advance_ready_steps(tx, owner_id, directive_id).await?;
    let mut status = None;
    if !succeeded {
        let paused = sqlx::query(
            "UPDATE directives SET status = 'paused', updated_at = now()
             WHERE id = $1 AND owner_id = $2 AND status NOT IN ('completed', 'failed')",
        )
        .bind(directive_id)
        .bind(owner_id)
        .execute(&mut *tx)
        .await?;
        status = (paused.rows_affected() > 0).then_some("paused");
    }
    Ok(Advanced {
        directive_id: Some(directive_id),
        ready,
        status,
    })
}

/// Pending steps of the directive whose dependencies are all `completed`
/// become `ready`. A dependency that names no step of this directive is
/// never satisfied. Returns how many steps changed.
async fn advance_ready_steps(
    tx: &mut PgConnection,
    owner_id: Uuid,
    directive_id: Uuid,
) -> Result<u64> {
    let done = sqlx::query(
        "UPDATE directive_steps s SET status = 'ready', updated_at = now()
         FROM directives d
         WHERE s.directive_id = $1 AND d.id = s.directive_id AND d.owner_id = $2
           AND s.status = 'pending'
           AND NOT EXISTS (
             SELECT 1 FROM unnest(s.depends_on) AS dep(id)
             WHERE NOT EXISTS (SELECT 1 FROM directive_steps o
                               WHERE o.id = dep.id AND o.directive_id = s.directive_id
                                 AND o.status = 'completed'))",
    )
    .bind(directive_id)
    .bind(owner_id)
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}
