//! Task lifecycle messages: `taskStatusChange`, `taskProgress`,
//! `taskComplete`, `taskRecoveryDetected`.
//!
//! The dispatcher has checked that the task is this owner's and assigned to
//! this daemon; every write repeats that condition in its SQL, so a task
//! reassigned in the meantime is left alone and answered `TASK_NOT_FOUND`.
//! The durable change comes first and is all or nothing (a failure asks the
//! daemon to send the message again); what follows it — events, history,
//! messages to the supervisor's daemon — is best effort: logged, never an
//! error to the daemon.

use std::fmt::Write as _;

use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

use super::session::{error, task_not_found, Ctx, Step};
use crate::{
    cluster::{task_routes, toolkeys},
    db::{
        contracts::{self, PrReadiness},
        directives::{self, Advanced},
        history::{self, HistoryEvent},
        supervisors,
        tasks::{self, CompletedTask, Supervisor, TaskRef},
    },
    metrics::Metrics,
    protocol::{
        client::ClientEvent,
        daemon::{
            DaemonCommand, TaskComplete, TaskProgress, TaskRecoveryDetected, TaskStatusChange,
        },
    },
    Error, Result,
};

/// Longest status a daemon may report (statuses are free text, see the schema).
const MAX_STATUS_CHARS: usize = 32;
/// Longest supervisor-name part of an automatic PR branch: a long name
/// would make a ref git hosts refuse.
const MAX_BRANCH_NAME_CHARS: usize = 64;
/// Base of an automatic PR when the supervisor task names none.
const DEFAULT_BASE_BRANCH: &str = "main";

/// `taskStatusChange`: the daemon's status becomes the task's. A supervisor
/// that starts running gets its durable state created, or restored when it
/// survives from before a daemon restart.
pub async fn task_status_change(ctx: &Ctx<'_>, task: TaskRef, m: TaskStatusChange) -> Step {
    let status = m.new_status.as_str();
    let chars = status.chars().count();
    if chars == 0 || chars > MAX_STATUS_CHARS {
        return Step::Reply(error("PARSE_ERROR", "newStatus must be 1 to 32 characters"));
    }
    let changed = match change_status(ctx, task.id, status).await {
        Ok(Some(changed)) => changed,
        Ok(None) => return task_not_found(task.id),
        Err(e) => return ctx.db_failed("taskStatusChange", &e),
    };
    tracing::info!(task_id = %task.id, old_status = %m.old_status, new_status = status, "task status changed");
    ctx.task_updated(changed.id, changed.version, &changed.status, &["status"])
        .await;
    if status == "running" {
        let started = HistoryEvent {
            owner_id: ctx.owner_id,
            contract_id: changed.contract_id,
            task_id: Some(changed.id),
            event_type: "task",
            event_subtype: Some("started"),
            phase: None,
            data: json!({ "name": changed.name, "isSupervisor": changed.is_supervisor }),
        };
        history::record_can_fail(&ctx.state.db, &started).await;
    }
    Step::Nothing
}

/// The status and, for a supervisor starting to run, its state, in one
/// transaction: a supervisor is never `running` without a state.
async fn change_status(ctx: &Ctx<'_>, task_id: Uuid, status: &str) -> Result<Option<TaskRef>> {
    let mut tx = ctx.state.db.begin().await?;
    let Some(changed) =
        tasks::set_status(&mut *tx, ctx.owner_id, ctx.daemon_id, task_id, status).await?
    else {
        return Ok(None);
    };
    let starting_supervisor = changed.is_supervisor && status == "running";
    if let Some(contract_id) = changed.contract_id.filter(|_| starting_supervisor) {
        let started =
            supervisors::start_or_restore(&mut *tx, ctx.owner_id, contract_id, task_id).await?;
        match started {
            Some(s) if s.restoration_count > 0 => {
                tracing::info!(%task_id, %contract_id, restoration_count = s.restoration_count, "supervisor state restored");
            }
            Some(_) => tracing::info!(%task_id, %contract_id, "supervisor state initialised"),
            None => tracing::warn!(%task_id, %contract_id, "supervisor's contract not found"),
        }
    }
    tx.commit().await?;
    Ok(Some(changed))
}

/// `taskProgress`: the summary is stored, and clients learn the task's real
/// status and version with it.
pub async fn task_progress(ctx: &Ctx<'_>, task: TaskRef, m: TaskProgress) -> Step {
    let db = &ctx.state.db;
    match tasks::set_progress(db, ctx.owner_id, ctx.daemon_id, task.id, &m.summary).await {
        Ok(Some(t)) => {
            ctx.task_updated(t.id, t.version, &t.status, &["progress_summary"])
                .await;
            Step::Nothing
        }
        Ok(None) => task_not_found(task.id),
        Err(e) => ctx.db_failed("taskProgress", &e),
    }
}

/// What recording a completion found out, for the side effects after it.
struct Completion {
    task: CompletedTask,
    /// The contract's state right after this completion (successes only).
    readiness: Option<PrReadiness>,
    supervisor: Option<Supervisor>,
}

/// `taskComplete`: the task's tool key stops working, its result is
/// recorded with what it means for its directive, the contract's supervisor
/// is told, and the contract's pull request is opened once every task is done.
pub async fn task_complete(ctx: &Ctx<'_>, task: TaskRef, m: TaskComplete) -> Step {
    revoke_tool_key_can_fail(ctx, task.id).await;
    let done = match record_completion(ctx, &task, m.success, m.error.as_deref()).await {
        Ok(Some(done)) => done,
        Ok(None) => return task_not_found(task.id),
        Err(e) => return ctx.db_failed("taskComplete", &e),
    };
    let t = &done.task;
    tracing::info!(task_id = %t.id, status = %t.status, "task completed");
    let fields = ["status", "completed_at", "error_message"];
    ctx.task_updated(t.id, t.version, &t.status, &fields).await;
    let finished = HistoryEvent {
        owner_id: ctx.owner_id,
        contract_id: t.contract_id,
        task_id: Some(t.id),
        event_type: "task",
        event_subtype: Some(if t.succeeded() { "completed" } else { "failed" }),
        phase: None,
        data: json!({ "name": t.name, "status": t.status, "error": t.error_message }),
    };
    history::record_can_fail(&ctx.state.db, &finished).await;
    if let Some(supervisor) = &done.supervisor {
        if !t.is_supervisor {
            let directive = done.readiness.as_ref().and_then(action_directive);
            let message = completion_message(t, directive.as_deref());
            tell_supervisor_can_fail(ctx, supervisor, message).await;
        }
        if let Some(readiness) = done.readiness.as_ref().filter(|r| r.pr_wanted()) {
            request_pr_can_fail(ctx, supervisor, readiness).await;
        }
    }
    Step::Nothing
}

/// Revokes the task's tool key. If Redis fails the key still expires on its
/// own, and recording the completion matters more than waiting for it.
async fn revoke_tool_key_can_fail(ctx: &Ctx<'_>, task_id: Uuid) {
    if let Err(e) = toolkeys::revoke(&ctx.state.redis, task_id).await {
        Metrics::inc(&ctx.state.metrics.redis_errors);
        tracing::error!(%task_id, error = %e, "tool key of a completed task not revoked; it lives until it expires");
    }
}

/// Records the completion in one transaction: the task, its directive step
/// or plan, and, under the contract's lock, whether every task of the
/// contract is now done (so exactly one of two last tasks finishing
/// together asks for the pull request).
async fn record_completion(
    ctx: &Ctx<'_>,
    task: &TaskRef,
    success: bool,
    error_message: Option<&str>,
) -> Result<Option<Completion>> {
    let owner_id = ctx.owner_id;
    let mut tx = ctx.state.db.begin().await?;
    if let Some(contract_id) = task.contract_id {
        contracts::lock(&mut *tx, owner_id, contract_id).await?;
    }
    let Some(done) = tasks::complete(
        &mut *tx,
        owner_id,
        ctx.daemon_id,
        task.id,
        success,
        error_message,
    )
    .await?
    else {
        return Ok(None);
    };
    let advanced = advance_directive(&mut tx, owner_id, &done).await?;
    let (mut readiness, mut supervisor) = (None, None);
    if let Some(contract_id) = done.contract_id {
        if done.succeeded() {
            readiness = contracts::pr_readiness(&mut *tx, owner_id, contract_id).await?;
        }
        supervisor = tasks::supervisor_of(&mut *tx, owner_id, contract_id).await?;
    }
    tx.commit().await?;
    if let Some(directive_id) = advanced.directive_id {
        tracing::info!(task_id = %done.id, %directive_id, ready = advanced.ready, status = ?advanced.status, "directive advanced");
    }
    Ok(Some(Completion {
        task: done,
        readiness,
        supervisor,
    }))
}

/// A step's task moves its step (and the DAG) on; a task of a directive
/// that is not a step is the directive's planning task.
async fn advance_directive(
    tx: &mut PgConnection,
    owner_id: Uuid,
    t: &CompletedTask,
) -> Result<Advanced> {
    if let Some(step_id) = t.directive_step_id {
        directives::finish_step(tx, owner_id, step_id, t.succeeded()).await
    } else if let Some(directive_id) = t.directive_id {
        directives::finish_planning(tx, owner_id, directive_id, t.id, t.succeeded()).await
    } else {
        Ok(Advanced::default())
    }
}

/// What the supervisor should know beyond the task itself (the seed's
/// `compute_action_directive`). Said only when the pull request will really
/// be requested: a local-only contract gets none.
fn action_directive(r: &PrReadiness) -> Option<String> {
    r.pr_wanted().then(|| {
        format!(
            "[INFO] All {} task(s) completed. The pull request is being created automatically.",
            r.tasks
        )
    })
}

/// The text the supervisor receives when one of its tasks ends.
fn completion_message(t: &CompletedTask, directive: Option<&str>) -> String {
    let headline = if t.succeeded() { "COMPLETED" } else { "FAILED" };
    let mut text = format!(
        "[TASK {headline}] Task \"{}\" ({}) finished with status: {}",
        t.name, t.id, t.status
    );
    // Writing to a String cannot fail.
    if let Some(summary) = t.progress_summary.as_deref().filter(|s| !s.is_empty()) {
        let _ = write!(text, "\nProgress summary: {summary}");
    }
    if let Some(failure) = t.error_message.as_deref().filter(|s| !s.is_empty()) {
        let _ = write!(text, "\nError: {failure}");
    }
    if let Some(directive) = directive {
        let _ = write!(text, "\n\n{directive}");
    }
    text
}

/// Sends the supervisor a message; one without a daemon, or whose daemon is
/// offline, misses it (it can list its tasks when it comes back).
async fn tell_supervisor_can_fail(ctx: &Ctx<'_>, supervisor: &Supervisor, message: String) {
    let command = DaemonCommand::SendMessage {
        task_id: supervisor.id,
        message,
    };
    send_to_supervisor_can_fail(ctx, supervisor, &command).await;
}

/// Asks the supervisor's daemon to open the contract's pull request.
async fn request_pr_can_fail(ctx: &Ctx<'_>, supervisor: &Supervisor, r: &PrReadiness) {
    let base_branch = supervisor
        .base_branch
        .clone()
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_BASE_BRANCH.to_owned());
    let command = DaemonCommand::CreatePr {
        task_id: supervisor.id,
        title: r.name.clone(),
        body: r.description.clone(),
        base_branch,
        branch: pr_branch(
            &ctx.state.config.pr_branch_prefix,
            &supervisor.name,
            supervisor.id,
        ),
    };
    send_to_supervisor_can_fail(ctx, supervisor, &command).await;
}

async fn send_to_supervisor_can_fail(ctx: &Ctx<'_>, s: &Supervisor, command: &DaemonCommand) {
    let kind = command.kind();
    let Some(daemon_id) = s.daemon_id else {
        tracing::info!(supervisor_id = %s.id, kind, "supervisor has no daemon; command dropped");
        return;
    };
    match ctx.send(daemon_id, command).await {
        Ok(()) => {
            tracing::info!(supervisor_id = %s.id, %daemon_id, kind, "command sent to supervisor")
        }
        Err(Error::DaemonOffline(_)) => {
            tracing::info!(supervisor_id = %s.id, %daemon_id, kind, "supervisor's daemon offline; command dropped");
        }
        Err(e) => {
            tracing::warn!(supervisor_id = %s.id, %daemon_id, kind, error = %e, "command to supervisor failed")
        }
    }
}

/// `<prefix><name>-<first 8 of id>`, the name lowercased and every
/// character other than a letter, digit, `-` or `_` replaced by `-`
/// (character by character: names may be any Unicode).
fn pr_branch(prefix: &str, supervisor_name: &str, supervisor_id: Uuid) -> String {
    let name: String = supervisor_name
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_BRANCH_NAME_CHARS)
        .collect();
    let short_id: String = supervisor_id.to_string().chars().take(8).collect();
    format!("{prefix}{name}-{short_id}")
}

/// `taskRecoveryDetected`: after a daemon restart, a task it had is found
/// again. With its worktree intact the task goes back to `pending` to be
/// resumed (released, as the seed does); with the worktree lost it is
/// retried elsewhere as after a disconnect, or fails once out of retries.
/// A finished task stays as it is.
pub async fn task_recovery_detected(ctx: &Ctx<'_>, task: TaskRef, m: TaskRecoveryDetected) -> Step {
    tracing::info!(task_id = %task.id, previous_state = %m.previous_state, worktree_intact = m.worktree_intact, needs_patch = m.needs_patch, "task recovery detected");
    let (db, owner, daemon) = (&ctx.state.db, ctx.owner_id, ctx.daemon_id);
    let (changed, mut fields) = if m.worktree_intact {
        (
            tasks::resume_after_restart(db, owner, daemon, task.id).await,
            vec!["status", "daemon_id", "interrupted_at", "error_message"],
        )
    } else {
        (
            tasks::retry_after_restart(db, owner, daemon, task.id).await,
            vec!["status", "daemon_id", "retry_count"],
        )
    };
    let change = match changed {
        Ok(Some(change)) => change,
        Ok(None) => {
            tracing::info!(task_id = %task.id, "recovered task already finished or reassigned; left as it is");
            return Step::Nothing;
        }
        Err(e) => return ctx.db_failed("taskRecoveryDetected", &e),
    };
    let state = ctx.state;
    task_routes::forget(&state.redis, &state.task_routes, &state.metrics, change.id).await;
    if change.status == "failed" {
        fields.extend(["completed_at", "error_message"]);
    }
    let event = ClientEvent::TaskUpdated {
        task_id: change.id,
        version: change.version,
        status: change.status,
        updated_fields: fields.into_iter().map(str::to_owned).collect(),
        updated_by: "daemon_recovery".into(),
    };
    ctx.publish(Some(task.id), true, &event).await;
    Step::Nothing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(status: &str, summary: Option<&str>, error: Option<&str>) -> CompletedTask {
        CompletedTask {
            id: Uuid::nil(),
            contract_id: None,
            name: "Fix login".into(),
            status: status.into(),
            version: 3,
            is_supervisor: false,
            progress_summary: summary.map(str::to_owned),
            error_message: error.map(str::to_owned),
            directive_id: None,
            directive_step_id: None,
        }
    }

    fn readiness(phase: &str, tasks: i64, done: i64) -> PrReadiness {
        PrReadiness {
            name: "c".into(),
            description: None,
            phase: phase.into(),
            local_only: false,
            pr_delivered: false,
            tasks,
            tasks_done: done,
            has_remote: true,
        }
    }

    #[test]
    fn branch_name_is_lowercased_and_sanitised_by_character() {
        let id: Uuid = "0123abcd-0000-4000-8000-000000000000".parse().unwrap();
        assert_eq!(
            pr_branch("meshgate/", "Ünïcode Sup/er_1 ✓", id),
            "meshgate/ünïcode-sup-er_1---0123abcd"
        );
        let long = "x".repeat(500);
        let branch = pr_branch("p/", &long, id);
        assert_eq!(branch.chars().count(), 2 + MAX_BRANCH_NAME_CHARS + 9);
    }

    #[test]
    fn completion_message_names_the_task_and_everything_known_about_it() {
        let text = completion_message(
            &completed("failed", Some("half way"), Some("tests broke")),
            None,
        );
        assert!(text.contains("\"Fix login\""));
        assert!(text.contains(&Uuid::nil().to_string()));
        assert!(text.contains("status: failed"));
        assert!(text.contains("Progress summary: half way"));
        assert!(text.contains("Error: tests broke"));
        let text = completion_message(&completed("done", None, None), Some("[INFO] x"));
        assert!(!text.contains("Error:") && !text.contains("summary"));
        assert!(text.ends_with("\n\n[INFO] x"));
        assert!(!text.to_lowercase().contains("makima"));
    }

    #[test]
    fn action_directive_only_when_the_pull_request_will_be_requested() {
        assert!(action_directive(&readiness("execute", 2, 2))
            .unwrap()
            .contains("All 2 task(s)"));
        assert!(action_directive(&readiness("execute", 2, 1)).is_none());
        assert!(action_directive(&readiness("execute", 0, 0)).is_none());
        assert!(action_directive(&readiness("plan", 2, 2)).is_none());
        let mut r = readiness("execute", 1, 1);
        r.pr_delivered = true;
        assert!(action_directive(&r).is_none());
        let mut r = readiness("execute", 1, 1);
        r.local_only = true;
        assert!(action_directive(&r).is_none());
        let mut r = readiness("execute", 1, 1);
        r.has_remote = false;
        assert!(action_directive(&r).is_none());
    }
}
