//! Task lifecycle messages: `taskStatusChange`, `taskProgress`,
//! `taskComplete`, `taskRecoveryDetected`.

use super::session::{Ctx, Step};
use crate::{
    db::tasks::TaskRef,
    protocol::daemon::{TaskComplete, TaskProgress, TaskRecoveryDetected, TaskStatusChange},
};

pub async fn task_status_change(_ctx: &Ctx<'_>, _task: TaskRef, _m: TaskStatusChange) -> Step {
    Step::Nothing
}

pub async fn task_progress(_ctx: &Ctx<'_>, _task: TaskRef, _m: TaskProgress) -> Step {
    Step::Nothing
}

pub async fn task_complete(_ctx: &Ctx<'_>, _task: TaskRef, _m: TaskComplete) -> Step {
    Step::Nothing
}

pub async fn task_recovery_detected(
    _ctx: &Ctx<'_>,
    _task: TaskRef,
    _m: TaskRecoveryDetected,
) -> Step {
    Step::Nothing
}
