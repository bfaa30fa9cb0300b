//! `taskOutput`: each line parsed (PROTOCOL.md §1.3) and queued for batched
//! storage and publication (see [`crate::ingest`]).

use super::session::{Ctx, Step};
use crate::{
    db::{outputs::NewOutput, tasks::TaskRef},
    protocol::{
        claude::{self, MessageType, OutputEvent},
        daemon::TaskOutput,
    },
};

/// Parses the line; blank lines and unknown JSON types produce nothing.
/// Waits while the pod's output queue is full (backpressure).
pub async fn task_output(ctx: &Ctx<'_>, task: TaskRef, m: TaskOutput) -> Step {
    if let Some(event) = claude::parse_output_line(&m.output, m.is_partial) {
        ctx.state
            .outputs
            .push(NewOutput {
                task_id: task.id,
                owner_id: ctx.owner_id,
                event,
            })
            .await;
    }
    Step::Nothing
}

/// Adds a `system` line to a task's output, stored and published like the
/// daemon's own lines (e.g. "✓ PR created").
pub async fn system_line(ctx: &Ctx<'_>, task_id: uuid::Uuid, content: String) {
    ctx.state
        .outputs
        .push(NewOutput {
            task_id,
            owner_id: ctx.owner_id,
            event: OutputEvent::new(MessageType::System, content, false),
        })
        .await;
}

/// Adds an `error` line to a task's output.
pub async fn error_line(ctx: &Ctx<'_>, task_id: uuid::Uuid, content: String) {
    let mut event = OutputEvent::new(MessageType::Error, content, false);
    event.is_error = Some(true);
    ctx.state
        .outputs
        .push(NewOutput {
            task_id,
            owner_id: ctx.owner_id,
            event,
        })
        .await;
}
