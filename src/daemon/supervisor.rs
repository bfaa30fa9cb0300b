//! Supervisor messages: `supervisorHeartbeat`.

use super::session::{Ctx, Step};
use crate::{db::tasks::TaskRef, protocol::daemon::SupervisorHeartbeat};

pub async fn supervisor_heartbeat(_ctx: &Ctx<'_>, _task: TaskRef, _m: SupervisorHeartbeat) -> Step {
    Step::Nothing
}
