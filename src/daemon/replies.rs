//! Answers that HTTP callers wait for (`worktreeDiffResult`,
//! `worktreeInfoResult`, `taskDiff`, `worktreeCommitResult`): each resolves
//! the pending entry of its task, wherever the caller waits. The frame is
//! forwarded as the daemon sent it; the waiting side decodes it.

use super::session::{Ctx, Step};
use crate::{
    cluster::pending::{self, Kind},
    db::tasks::TaskRef,
    metrics::Metrics,
    protocol::daemon::{TaskDiff, WorktreeCommitResult, WorktreeDiffResult, WorktreeInfoResult},
};

/// Hands the raw answer to every pod waiting for (`kind`, task).
pub async fn resolve(ctx: &Ctx<'_>, kind: Kind, task: &TaskRef) -> Step {
    match pending::resolve(&ctx.state.redis, kind, task.id, ctx.raw).await {
        Ok(0) => {
            tracing::debug!(task_id = %task.id, kind = kind.as_str(), "answer nobody waits for (any more)");
        }
        Ok(_) => {}
        Err(e) => {
            Metrics::inc(&ctx.state.metrics.redis_errors);
            tracing::warn!(task_id = %task.id, kind = kind.as_str(), error = %e, "answer not delivered; callers will time out");
        }
    }
    Step::Nothing
}

pub async fn worktree_diff_result(ctx: &Ctx<'_>, task: TaskRef, _m: WorktreeDiffResult) -> Step {
    resolve(ctx, Kind::WorktreeDiff, &task).await
}

pub async fn worktree_info_result(ctx: &Ctx<'_>, task: TaskRef, _m: WorktreeInfoResult) -> Step {
    resolve(ctx, Kind::WorktreeInfo, &task).await
}

pub async fn task_diff(ctx: &Ctx<'_>, task: TaskRef, _m: TaskDiff) -> Step {
    resolve(ctx, Kind::TaskDiff, &task).await
}

pub async fn worktree_commit_result(
    ctx: &Ctx<'_>,
    task: TaskRef,
    _m: WorktreeCommitResult,
) -> Step {
    resolve(ctx, Kind::Commit, &task).await
}
