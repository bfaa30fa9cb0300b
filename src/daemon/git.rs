//! Results of git operations a daemon ran for a task: completion actions,
//! clones, branches, checkpoints, export patches, merges and pull requests,
//! and the hand-over of a finished task's patch to its supervisor.
//!
//! Each result becomes what web clients see (a task output line or a
//! `mergeResult`/`prResult` event) and, where it matters, a row: the task's
//! PR URL, a numbered checkpoint, a recovery patch. Merge and PR results
//! also resolve HTTP callers waiting on any pod and tell the contract's
//! supervisor what to do next, wherever its daemon is connected.

use base64::Engine;
use serde_json::json;
use uuid::Uuid;

use super::{
    output, replies,
    session::{self, Ctx, Step},
};
use crate::{
    cluster::pending::Kind,
    db::{
        self,
        checkpoints::{self, ContractSupervisor, NewCheckpoint, NewPatch},
        history::{self, HistoryEvent},
        outputs::NewOutput,
        tasks::TaskRef,
    },
    protocol::{
        claude::{MessageType, OutputEvent},
        client::ClientEvent,
        daemon::{
            BranchCreated, CheckTargetExistsResult, CheckpointCreated, CloneWorktreeResult,
            CompletionActionResult, DaemonCommand, ExportPatchCreated, GitConfigInherited,
            MergePatchToSupervisor, MergeToTargetResult, PrCreated,
        },
    },
    Error,
};

/// Largest patch accepted, decoded (a checkpoint's gzip bytes, a patch for
/// a supervisor, an export patch's text).
pub const MAX_PATCH_BYTES: usize = 10 * 1024 * 1024;

/// `completionActionResult`: the PR URL, if one was created, is stored; the
/// outcome becomes an output line (once the URL is stored: if it could not
/// be, the daemon is told to send the result again).
pub async fn completion_action_result(
    ctx: &Ctx<'_>,
    task: TaskRef,
    m: CompletionActionResult,
) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, pr_url = ?m.pr_url, "completion action result");
    if let Some(url) = &m.pr_url {
        if let Some(refused) = record_pr_url(ctx, &task, url, "completionActionResult").await {
            return refused;
        }
    }
    let line = if m.success {
        format!("✓ Completion action succeeded: {}", m.message)
    } else {
        format!("✗ Completion action failed: {}", m.message)
    };
    outcome_line(ctx, task.id, m.success, line).await;
    Step::Nothing
}

/// `cloneWorktreeResult`: an output line.
pub async fn clone_worktree_result(ctx: &Ctx<'_>, task: TaskRef, m: CloneWorktreeResult) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, target_dir = ?m.target_dir, "clone worktree result");
    let line = if m.success {
        format!("✓ Clone succeeded: {}", m.message)
    } else {
        format!("✗ Clone failed: {}", m.message)
    };
    outcome_line(ctx, task.id, m.success, line).await;
    Step::Nothing
}

/// `checkTargetExistsResult`: an output line.
pub async fn check_target_exists_result(
    ctx: &Ctx<'_>,
    task: TaskRef,
    m: CheckTargetExistsResult,
) -> Step {
    let line = if m.exists {
        format!("Target directory exists: {}", m.target_dir)
    } else {
        format!("Target directory does not exist: {}", m.target_dir)
    };
    output::system_line(ctx, task.id, line).await;
    Step::Nothing
}

/// `branchCreated`: an output line when the branch was for a task, else
/// only logged.
pub async fn branch_created(ctx: &Ctx<'_>, task: Option<TaskRef>, m: BranchCreated) -> Step {
    tracing::info!(task_id = ?task.as_ref().map(|t| t.id), branch = %m.branch_name, success = m.success, error = ?m.error, "branch created result");
    if let Some(task) = task {
        let line = if m.success {
            format!("✓ Branch '{}' created successfully", m.branch_name)
        } else {
            let why = m.error.as_deref().unwrap_or_default();
            format!("✗ Failed to create branch '{}': {why}", m.branch_name)
        };
        outcome_line(ctx, task.id, m.success, line).await;
    }
    Step::Nothing
}

/// `checkpointCreated`: a commit becomes the task's next numbered
/// checkpoint (with its recovery patch, if sent); a patch without a commit
/// is stored alone. A patch that is too large or not base64 is refused and
/// nothing of the message is stored.
pub async fn checkpoint_created(ctx: &Ctx<'_>, task: TaskRef, m: CheckpointCreated) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, commit_sha = ?m.commit_sha, has_patch = m.patch_data.is_some(), "checkpoint result");
    if !m.success {
        let why = m.error.as_deref().unwrap_or("unknown error");
        output::error_line(ctx, task.id, format!("✗ Checkpoint failed: {why}")).await;
        return Step::Nothing;
    }
    let decoded = match (&m.patch_data, m.patch_base_sha.as_deref()) {
        (Some(data), Some(base_sha)) => match decode_patch(data) {
            Ok(bytes) => Some((bytes, base_sha)),
            Err(refused) => return refuse_patch(ctx, task.id, "Checkpoint patch", refused).await,
        },
        (Some(_), None) => {
            tracing::warn!(task_id = %task.id, "checkpoint patch without a base commit ignored");
            None
        }
        (None, _) => None,
    };
    let patch = decoded.as_ref().map(|(data, base_sha)| NewPatch {
        data,
        base_sha,
        files_count: m.patch_files_count,
    });
    match (m.commit_sha.as_deref(), patch) {
        (Some(sha), patch) => store_checkpoint(ctx, &task, &m, sha, patch.as_ref()).await,
        (None, Some(patch)) => store_patch_only(ctx, &task, &m, &patch).await,
        (None, None) => {
            tracing::warn!(task_id = %task.id, "checkpoint with neither a commit nor a patch");
            Step::Nothing
        }
    }
}

async fn store_checkpoint(
    ctx: &Ctx<'_>,
    task: &TaskRef,
    m: &CheckpointCreated,
    sha: &str,
    patch: Option<&NewPatch<'_>>,
) -> Step {
    let checkpoint = NewCheckpoint {
        task_id: task.id,
        commit_sha: sha,
        branch_name: m.branch_name.as_deref(),
        message: &m.message,
        files_changed: m.files_changed.as_ref(),
        lines_added: m.lines_added,
        lines_removed: m.lines_removed,
    };
    let stored = match checkpoints::create(&ctx.state.db, ctx.owner_id, &checkpoint, patch).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return session::task_not_found(task.id),
        Err(e) => {
            let line = "✗ Checkpoint commit succeeded but could not be recorded".to_owned();
            output::error_line(ctx, task.id, line).await;
            return ctx.db_failed("checkpointCreated", &e);
        }
    };
    let number = stored.checkpoint_number;
    let line = format!(
        "✓ Checkpoint #{number} created: {} ({})",
        m.message,
        short_sha(sha)
    );
    outcome_line(ctx, task.id, true, line).await;
    let event = HistoryEvent {
        owner_id: ctx.owner_id,
        contract_id: task.contract_id,
        task_id: Some(task.id),
        event_type: "checkpoint",
        event_subtype: Some("created"),
        phase: None,
        data: json!({
            "checkpointNumber": number,
            "commitSha": sha,
            "message": m.message,
            "filesChanged": m.files_changed,
            "linesAdded": m.lines_added,
            "linesRemoved": m.lines_removed,
            "hasPatch": patch.is_some(),
        }),
    };
    history::record_can_fail(&ctx.state.db, &event).await;
    Step::Nothing
}

async fn store_patch_only(
    ctx: &Ctx<'_>,
    task: &TaskRef,
    m: &CheckpointCreated,
    patch: &NewPatch<'_>,
) -> Step {
    match checkpoints::create_patch_only(&ctx.state.db, ctx.owner_id, task.id, patch).await {
        Ok(Some(patch_id)) => {
            tracing::info!(task_id = %task.id, %patch_id, size = patch.data.len(), "patch stored for recovery");
            let files = patch.files_count.unwrap_or(0);
            let line = format!("✓ Patch saved: {} ({files} files)", m.message);
            outcome_line(ctx, task.id, true, line).await;
            Step::Nothing
        }
        Ok(None) => session::task_not_found(task.id),
        Err(e) => ctx.db_failed("checkpointCreated", &e),
    }
}

/// `gitConfigInherited`: logged only.
pub async fn git_config_inherited(ctx: &Ctx<'_>, m: GitConfigInherited) -> Step {
    if m.success {
        tracing::info!(daemon_id = %ctx.daemon_id, user_email = ?m.user_email, user_name = ?m.user_name, "daemon inherited git config");
    } else {
        tracing::warn!(daemon_id = %ctx.daemon_id, error = ?m.error, "daemon could not inherit git config");
    }
    Step::Nothing
}

/// `exportPatchCreated`: the patch and its figures reach web clients as a
/// system output line whose `toolName` is `export_patch` and whose
/// `toolInput` carries them.
pub async fn export_patch_created(ctx: &Ctx<'_>, task: TaskRef, m: ExportPatchCreated) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, files = ?m.files_count, base = ?m.base_commit_sha, "export patch result");
    if !m.success {
        let why = m.error.as_deref().unwrap_or("unknown error");
        output::error_line(ctx, task.id, format!("✗ Export patch failed: {why}")).await;
        return Step::Nothing;
    }
    if m.patch_content
        .as_ref()
        .is_some_and(|p| p.len() > MAX_PATCH_BYTES)
    {
        return refuse_patch(ctx, task.id, "Export patch", PatchRefused::TooLarge).await;
    }
    let content = format!(
        "✓ Export patch created: {} files changed, +{} -{} lines (base: {})",
        m.files_count.unwrap_or(0),
        m.lines_added.unwrap_or(0),
        m.lines_removed.unwrap_or(0),
        m.base_commit_sha.as_deref().unwrap_or("unknown"),
    );
    let mut event = OutputEvent::new(MessageType::System, content, false);
    event.tool_name = Some("export_patch".into());
    event.tool_input = Some(json!({
        "patchContent": m.patch_content,
        "filesCount": m.files_count,
        "linesAdded": m.lines_added,
        "linesRemoved": m.lines_removed,
        "baseCommitSha": m.base_commit_sha,
    }));
    push_output(ctx, task.id, event).await;
    Step::Nothing
}

/// `mergeToTargetResult`: a `mergeResult` event, the answer for waiting
/// callers, and after a successful merge a nudge to the supervisor.
pub async fn merge_to_target_result(ctx: &Ctx<'_>, task: TaskRef, m: MergeToTargetResult) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, commit_sha = ?m.commit_sha, "merge result");
    let event = ClientEvent::MergeResult {
        task_id: task.id,
        success: m.success,
        message: m.message.clone(),
        commit_sha: m.commit_sha.clone(),
        conflicts: m.conflicts.clone(),
    };
    ctx.publish(Some(task.id), true, &event).await;
    replies::resolve(ctx, Kind::Merge, &task).await;
    if m.success {
        let prompt = |_: &ContractSupervisor| merge_prompt(&m.message);
        tell_supervisor_can_fail(ctx, &task, prompt).await;
    }
    Step::Nothing
}

/// `prCreated`: the PR URL is stored, a `prResult` event published, waiting
/// callers answered, and the supervisor told the next step (or to retry).
pub async fn pr_created(ctx: &Ctx<'_>, task: TaskRef, m: PrCreated) -> Step {
    tracing::info!(task_id = %task.id, success = m.success, pr_url = ?m.pr_url, pr_number = ?m.pr_number, "PR result");
    // The PR exists whatever happens here: it is announced even if its URL
    // could not be stored (the daemon is told to send it again).
    let step = match (&m.pr_url, m.success) {
        (Some(url), true) => record_pr_url(ctx, &task, url, "prCreated").await,
        _ => None,
    };
    let event = ClientEvent::PrResult {
        task_id: task.id,
        success: m.success,
        message: m.message.clone(),
        pr_url: m.pr_url.clone(),
        pr_number: m.pr_number,
    };
    ctx.publish(Some(task.id), true, &event).await;
    replies::resolve(ctx, Kind::Pr, &task).await;
    let prompt = |supervisor: &ContractSupervisor| pr_prompt(task.id, &m, supervisor);
    tell_supervisor_can_fail(ctx, &task, prompt).await;
    step.unwrap_or(Step::Nothing)
}

/// `mergePatchToSupervisor`: the patch goes to the daemon of the owner's
/// supervisor task, wherever it is connected, as `applyPatchToWorktree`.
pub async fn merge_patch_to_supervisor(
    ctx: &Ctx<'_>,
    task: TaskRef,
    m: MergePatchToSupervisor,
) -> Step {
    let supervisor_id = m.supervisor_task_id;
    tracing::info!(task_id = %task.id, %supervisor_id, base_sha = %m.base_sha, "patch for the supervisor");
    if let Err(refused) = decode_patch(&m.patch_data) {
        return refuse_patch(ctx, task.id, "Patch for the supervisor", refused).await;
    }
    let supervisor = match db::tasks::of_owner(&ctx.state.db, ctx.owner_id, supervisor_id).await {
        Ok(Some(supervisor)) => supervisor,
        Ok(None) => return session::task_not_found(supervisor_id),
        Err(e) => return ctx.db_failed("mergePatchToSupervisor", &e),
    };
    let Some(daemon_id) = supervisor.daemon_id else {
        tracing::warn!(task_id = %task.id, %supervisor_id, "supervisor task is on no daemon; patch not delivered");
        let line = "✗ Patch not delivered: the supervisor task is not on a daemon".to_owned();
        output::error_line(ctx, task.id, line).await;
        return Step::Nothing;
    };
    let command = DaemonCommand::ApplyPatchToWorktree {
        target_task_id: supervisor_id,
        source_task_id: task.id,
        patch_data: m.patch_data,
        base_sha: m.base_sha,
    };
    match ctx.send(daemon_id, &command).await {
        Ok(()) => {
            tracing::info!(task_id = %task.id, %supervisor_id, %daemon_id, "patch routed to the supervisor's daemon");
        }
        Err(e) => {
            tracing::warn!(task_id = %task.id, %supervisor_id, %daemon_id, error = %e, "patch not delivered to the supervisor's daemon");
            let why = match e {
                Error::DaemonOffline(_) => "the supervisor's daemon is offline",
                _ => "it could not be routed",
            };
            output::error_line(ctx, task.id, format!("✗ Patch not delivered: {why}")).await;
        }
    }
    Step::Nothing
}

/// Stores the task's PR URL and publishes `taskUpdated`. `Some` is the
/// answer to the daemon when that failed.
async fn record_pr_url(ctx: &Ctx<'_>, task: &TaskRef, url: &str, kind: &str) -> Option<Step> {
    match checkpoints::set_pr_url(&ctx.state.db, ctx.owner_id, task.id, url).await {
        Ok(Some(updated)) => {
            ctx.task_updated(task.id, updated.version, &updated.status, &["pr_url"])
                .await;
            None
        }
        // Deleted since the dispatcher checked it.
        Ok(None) => Some(session::task_not_found(task.id)),
        Err(e) => Some(ctx.db_failed(kind, &e)),
    }
}

/// Sends the contract's supervisor (if the task is in a contract and its
/// supervisor is on a daemon) a message; failures are logged only.
async fn tell_supervisor_can_fail(
    ctx: &Ctx<'_>,
    task: &TaskRef,
    prompt: impl FnOnce(&ContractSupervisor) -> String,
) {
    let Some(contract_id) = task.contract_id else {
        return;
    };
    let supervisor = match checkpoints::contract_supervisor(
        &ctx.state.db,
        ctx.owner_id,
        contract_id,
    )
    .await
    {
        Ok(Some(supervisor)) => supervisor,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(task_id = %task.id, %contract_id, error = %e, "supervisor not looked up; not told");
            return;
        }
    };
    let Some(daemon_id) = supervisor.daemon_id else {
        tracing::debug!(task_id = %task.id, supervisor_id = %supervisor.task_id, "supervisor is on no daemon; not told");
        return;
    };
    let command = DaemonCommand::SendMessage {
        task_id: supervisor.task_id,
        message: prompt(&supervisor),
    };
    if let Err(e) = ctx.send(daemon_id, &command).await {
        tracing::warn!(task_id = %task.id, supervisor_id = %supervisor.task_id, %daemon_id, error = %e, "supervisor not told");
    }
}

/// What the supervisor is told after a successful merge.
fn merge_prompt(message: &str) -> String {
    format!(
        "[INFO] Merge completed: {message}\n\
         Check whether all of the contract's tasks are merged.\n\
         If they are, create the pull request."
    )
}

/// What the supervisor is told after a PR attempt.
fn pr_prompt(task_id: Uuid, m: &PrCreated, supervisor: &ContractSupervisor) -> String {
    if !m.success {
        return format!(
            "[ERROR] PR creation failed for task {task_id}:\n{}\n\n\
             Please fix the issue and create the pull request again.",
            m.message
        );
    }
    let next = match (supervisor.contract_type.as_str(), supervisor.phase.as_str()) {
        ("simple", "execute") => "Mark the contract complete.",
        ("specification", "execute") => "Advance the contract to the review phase.",
        _ => "Check the contract's status.",
    };
    let pr = m.pr_url.as_deref().unwrap_or(&m.message);
    format!("[ACTION REQUIRED] PR created successfully!\nPR: {pr}\n\nNext step: {next}")
}

/// Why a patch was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchRefused {
    TooLarge,
    NotBase64,
}

impl PatchRefused {
    fn code(self) -> &'static str {
        match self {
            Self::TooLarge => "PATCH_TOO_LARGE",
            Self::NotBase64 => "PARSE_ERROR",
        }
    }

    fn reason(self) -> String {
        match self {
            Self::TooLarge => format!("larger than {} MiB", MAX_PATCH_BYTES / (1024 * 1024)),
            Self::NotBase64 => "not valid base64".to_owned(),
        }
    }
}

/// Decodes a base64 patch, refusing one over [`MAX_PATCH_BYTES`] (an
/// over-long text is refused before anything is allocated for it).
fn decode_patch(b64: &str) -> Result<Vec<u8>, PatchRefused> {
    // Padded base64 of MAX_PATCH_BYTES bytes; anything longer decodes to
    // more, or does not decode.
    const MAX_B64_LEN: usize = MAX_PATCH_BYTES.div_ceil(3) * 4;
    if b64.len() > MAX_B64_LEN {
        return Err(PatchRefused::TooLarge);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| PatchRefused::NotBase64)?;
    if bytes.len() > MAX_PATCH_BYTES {
        return Err(PatchRefused::TooLarge);
    }
    Ok(bytes)
}

/// Tells the daemon and the task's watchers why a patch was refused.
async fn refuse_patch(ctx: &Ctx<'_>, task_id: Uuid, what: &str, why: PatchRefused) -> Step {
    tracing::warn!(%task_id, daemon_id = %ctx.daemon_id, code = why.code(), "{what} refused");
    let reason = why.reason();
    output::error_line(ctx, task_id, format!("✗ {what} refused: {reason}")).await;
    Step::Reply(session::error(
        why.code(),
        format!("{what} refused: {reason}"),
    ))
}

/// A system output line marked as an error when `ok` is false (the seed's
/// ✓/✗ lines).
async fn outcome_line(ctx: &Ctx<'_>, task_id: Uuid, ok: bool, content: String) {
    let mut event = OutputEvent::new(MessageType::System, content, false);
    event.is_error = Some(!ok);
    push_output(ctx, task_id, event).await;
}

/// Stores and publishes an output event of the task (batched, see
/// [`crate::ingest`]).
async fn push_output(ctx: &Ctx<'_>, task_id: Uuid, event: OutputEvent) {
    let line = NewOutput {
        task_id,
        owner_id: ctx.owner_id,
        event,
    };
    ctx.state.outputs.push(line).await;
}

/// The first seven characters of a commit id (character-safe).
fn short_sha(sha: &str) -> &str {
    sha.char_indices().nth(7).map_or(sha, |(at, _)| &sha[..at])
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;

    use super::*;

    #[test]
    fn patches_up_to_the_limit_decode() {
        assert_eq!(decode_patch(&STANDARD.encode(b"gz")), Ok(b"gz".to_vec()));
        let max = vec![7u8; MAX_PATCH_BYTES];
        assert_eq!(
            decode_patch(&STANDARD.encode(&max)).map(|b| b.len()),
            Ok(MAX_PATCH_BYTES)
        );
    }

    #[test]
    fn patches_over_the_limit_or_not_base64_are_refused() {
        let over = vec![7u8; MAX_PATCH_BYTES + 1];
        assert_eq!(
            decode_patch(&STANDARD.encode(&over)),
            Err(PatchRefused::TooLarge)
        );
        assert_eq!(
            decode_patch(&"A".repeat(20 * 1024 * 1024)),
            Err(PatchRefused::TooLarge)
        );
        for bad in ["not base64!", "ünï", "abc"] {
            assert_eq!(decode_patch(bad), Err(PatchRefused::NotBase64), "{bad}");
        }
        assert_eq!(PatchRefused::TooLarge.code(), "PATCH_TOO_LARGE");
        assert_eq!(PatchRefused::NotBase64.code(), "PARSE_ERROR");
    }

    #[test]
    fn short_sha_cuts_at_characters() {
        assert_eq!(short_sha("0123456789abcdef"), "0123456");
        assert_eq!(short_sha("abc"), "abc");
        assert_eq!(short_sha("ééééééééé"), "ééééééé");
    }

    fn supervisor(contract_type: &str, phase: &str) -> ContractSupervisor {
        ContractSupervisor {
            task_id: Uuid::nil(),
            daemon_id: None,
            contract_type: contract_type.into(),
            phase: phase.into(),
        }
    }

    fn pr(success: bool) -> PrCreated {
        PrCreated {
            task_id: Uuid::nil(),
            success,
            message: "gh said no".into(),
            pr_url: success.then(|| "https://x/pull/7".to_owned()),
            pr_number: success.then_some(7),
        }
    }

    #[test]
    fn supervisor_prompts_name_the_next_step_without_a_product_name() {
        let id = Uuid::nil();
        let simple = pr_prompt(id, &pr(true), &supervisor("simple", "execute"));
        assert!(
            simple.contains("https://x/pull/7") && simple.contains("Mark the contract complete")
        );
        let spec = pr_prompt(id, &pr(true), &supervisor("specification", "execute"));
        assert!(spec.contains("review phase"));
        let other = pr_prompt(id, &pr(true), &supervisor("simple", "plan"));
        assert!(other.contains("Check the contract's status"));
        let failed = pr_prompt(id, &pr(false), &supervisor("simple", "execute"));
        assert!(failed.starts_with("[ERROR]") && failed.contains("gh said no"));
        for text in [simple, spec, other, failed, merge_prompt("ok")] {
            assert!(!text.to_lowercase().contains("makima"), "{text}");
        }
    }
}
