//! Results of git operations a daemon ran for a task.

use super::session::{Ctx, Step};
use crate::{
    db::tasks::TaskRef,
    protocol::daemon::{
        BranchCreated, CheckTargetExistsResult, CheckpointCreated, CloneWorktreeResult,
        CompletionActionResult, ExportPatchCreated, GitConfigInherited, MergePatchToSupervisor,
        MergeToTargetResult, PrCreated,
    },
};

pub async fn completion_action_result(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: CompletionActionResult,
) -> Step {
    Step::Nothing
}

pub async fn clone_worktree_result(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: CloneWorktreeResult,
) -> Step {
    Step::Nothing
}

pub async fn check_target_exists_result(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: CheckTargetExistsResult,
) -> Step {
    Step::Nothing
}

pub async fn branch_created(_ctx: &Ctx<'_>, _task: Option<TaskRef>, _m: BranchCreated) -> Step {
    Step::Nothing
}

pub async fn checkpoint_created(_ctx: &Ctx<'_>, _task: TaskRef, _m: CheckpointCreated) -> Step {
    Step::Nothing
}

pub async fn git_config_inherited(_ctx: &Ctx<'_>, _m: GitConfigInherited) -> Step {
    Step::Nothing
}

pub async fn export_patch_created(_ctx: &Ctx<'_>, _task: TaskRef, _m: ExportPatchCreated) -> Step {
    Step::Nothing
}

pub async fn merge_to_target_result(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: MergeToTargetResult,
) -> Step {
    Step::Nothing
}

pub async fn pr_created(_ctx: &Ctx<'_>, _task: TaskRef, _m: PrCreated) -> Step {
    Step::Nothing
}

pub async fn merge_patch_to_supervisor(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: MergePatchToSupervisor,
) -> Step {
    Step::Nothing
}
