//! Supervisor messages: `supervisorHeartbeat`.
//!
//! A supervisor task reports what it is doing every few seconds. Each
//! report is kept (the heartbeat log) and mirrored into the contract's
//! supervisor state, which is what survives a supervisor restart.

use super::session::{error, task_not_found, Ctx, Step};
use crate::{
    db::{supervisors, tasks::TaskRef},
    metrics::Metrics,
    protocol::daemon::SupervisorHeartbeat,
    Result,
};

/// `supervisorHeartbeat`: stored only for the contract of the supervisor
/// task that sends it; another contract, or a task that is no supervisor,
/// is answered as an unknown task (it is not this daemon's to report on).
/// It also counts as a heartbeat of the daemon.
pub async fn supervisor_heartbeat(ctx: &Ctx<'_>, task: TaskRef, m: SupervisorHeartbeat) -> Step {
    if m.progress > 100 {
        return Step::Reply(error("PARSE_ERROR", "progress must be 0 to 100"));
    }
    if task.contract_id != Some(m.contract_id) || !task.is_supervisor {
        return task_not_found(task.id);
    }
    match record(ctx, &m).await {
        Ok(true) => {}
        Ok(false) => return task_not_found(task.id),
        Err(e) => return ctx.db_failed("supervisorHeartbeat", &e),
    }
    tracing::debug!(task_id = %task.id, contract_id = %m.contract_id, state = %m.state, progress = m.progress, "supervisor heartbeat");
    daemon_heartbeat_can_fail(ctx).await;
    Step::Nothing
}

/// The heartbeat row and the state it updates, together or not at all.
async fn record(ctx: &Ctx<'_>, m: &SupervisorHeartbeat) -> Result<bool> {
    let mut tx = ctx.state.db.begin().await?;
    let stored = supervisors::record_heartbeat(&mut tx, ctx.owner_id, ctx.daemon_id, m).await?;
    tx.commit().await?;
    Ok(stored)
}

/// The daemon is evidently alive; its own heartbeat will say so again soon
/// if this write is lost.
async fn daemon_heartbeat_can_fail(ctx: &Ctx<'_>) {
    if let Err(e) = ctx
        .state
        .daemon_rows
        .heartbeat(ctx.owner_id, ctx.daemon_id)
        .await
    {
        Metrics::inc(&ctx.state.metrics.db_errors);
        tracing::warn!(daemon_id = %ctx.daemon_id, error = %e, "daemon heartbeat not recorded");
    }
}
