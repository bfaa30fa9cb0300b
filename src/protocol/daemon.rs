//! The daemon protocol (PROTOCOL.md §1.1 and §1.2).
//!
//! [`DaemonMessage`] is every frame a daemon may send; [`decode`] turns one
//! text frame into it, or into a [`DecodeError`] whose message can be sent
//! back in an `error` frame. [`DaemonCommand`] is every frame the server may
//! send to a daemon.
//!
//! Daemons already exist in the field: the shapes here must match the
//! protocol exactly (internally tagged by `type`, camelCase field names,
//! unknown fields ignored).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Longest piece of client input echoed back in an error message, in chars.
const MAX_SNIPPET_CHARS: usize = 100;

/// Longest serde error text used as is in a [`DecodeError`], in chars; a
/// longer one is recomputed with shortened input strings.
const MAX_PLAIN_DETAIL_CHARS: usize = 160;

/// Longest detail text of a [`DecodeError`], in chars.
const MAX_DETAIL_CHARS: usize = 300;

/// A secret string (API key, tool key, auth code).
///
/// It is plain text on the wire, but its `Debug` output is redacted so that
/// logging a message never leaks it. Use [`Secret::expose`] to read it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Unwraps the secret value.
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// State of a daemon re-authentication request (`reauthStatus.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReauthState {
    /// The daemon started the login flow; no URL yet.
    Pending,
    /// The login URL is available (`loginUrl`).
    UrlReady,
    /// Login finished and the token is in place.
    Completed,
    /// Login failed (`error` says why).
    Failed,
}

impl ReauthState {
    /// The wire name (`pending`, `url_ready`, `completed`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::UrlReady => "url_ready",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

/// A message from a daemon to the server (PROTOCOL.md §1.1).
///
/// Each variant holds a struct of the same name with the message's fields.
/// Optional fields may be absent or `null`; both decode to `None`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum DaemonMessage {
    /// First message of a connection: identifies the daemon.
    Authenticate(Authenticate),
    /// Periodic liveness signal with the tasks currently running.
    Heartbeat(Heartbeat),
    /// Periodic state report of a running supervisor task.
    SupervisorHeartbeat(SupervisorHeartbeat),
    /// One line of task output (Claude Code stream-json or raw text).
    TaskOutput(TaskOutput),
    /// A task changed status.
    TaskStatusChange(TaskStatusChange),
    /// A short progress summary of a task.
    TaskProgress(TaskProgress),
    /// A task finished.
    TaskComplete(TaskComplete),
    /// After a daemon restart, a task from before the restart was found.
    TaskRecoveryDetected(TaskRecoveryDetected),
    /// A running task registers a tool key for calling meshgate's API.
    RegisterToolKey(RegisterToolKey),
    /// A task's tool key is no longer valid.
    RevokeToolKey(RevokeToolKey),
    /// The daemon's Claude login expired; a user must log in.
    AuthenticationRequired(AuthenticationRequired),
    /// Progress of a re-authentication (answers `triggerReauth`/`submitAuthCode`).
    ReauthStatus(ReauthStatus),
    /// Outcome of a `retryCompletionAction` command.
    CompletionActionResult(CompletionActionResult),
    /// The daemon's directories, reported after authentication.
    DaemonDirectories(DaemonDirectories),
    /// Outcome of a `cloneWorktree` command.
    CloneWorktreeResult(CloneWorktreeResult),
    /// Outcome of a `checkTargetExists` command.
    CheckTargetExistsResult(CheckTargetExistsResult),
    /// Outcome of a `readRepoFile` command.
    RepoFileContent(RepoFileContent),
    /// Outcome of a `createBranch` command.
    BranchCreated(BranchCreated),
    /// Outcome of a `createCheckpoint` command.
    CheckpointCreated(CheckpointCreated),
    /// Outcome of an `inheritGitConfig` command.
    GitConfigInherited(GitConfigInherited),
    /// Outcome of a `createExportPatch` command.
    ExportPatchCreated(ExportPatchCreated),
    /// Outcome of a `mergeTaskToTarget` command.
    MergeToTargetResult(MergeToTargetResult),
    /// Outcome of a `createPR` command (tag `prCreated`).
    PrCreated(PrCreated),
    /// Outcome of a `getWorktreeDiff` command.
    WorktreeDiffResult(WorktreeDiffResult),
    /// Outcome of a `getWorktreeInfo` command.
    WorktreeInfoResult(WorktreeInfoResult),
    /// Outcome of a `getTaskDiff` command.
    TaskDiff(TaskDiff),
    /// Outcome of a `commitWorktree` command.
    WorktreeCommitResult(WorktreeCommitResult),
    /// A finished task's patch must be merged into its supervisor's worktree.
    MergePatchToSupervisor(MergePatchToSupervisor),
}

impl DaemonMessage {
    /// The wire tags of all daemon messages, in protocol order.
    pub const TAGS: [&'static str; 28] = [
        "authenticate",
        "heartbeat",
        "supervisorHeartbeat",
        "taskOutput",
        "taskStatusChange",
        "taskProgress",
        "taskComplete",
        "taskRecoveryDetected",
        "registerToolKey",
        "revokeToolKey",
        "authenticationRequired",
        "reauthStatus",
        "completionActionResult",
        "daemonDirectories",
        "cloneWorktreeResult",
        "checkTargetExistsResult",
        "repoFileContent",
        "branchCreated",
        "checkpointCreated",
        "gitConfigInherited",
        "exportPatchCreated",
        "mergeToTargetResult",
        "prCreated",
        "worktreeDiffResult",
        "worktreeInfoResult",
        "taskDiff",
        "worktreeCommitResult",
        "mergePatchToSupervisor",
    ];

    /// The wire tag of this message (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authenticate(_) => "authenticate",
            Self::Heartbeat(_) => "heartbeat",
            Self::SupervisorHeartbeat(_) => "supervisorHeartbeat",
            Self::TaskOutput(_) => "taskOutput",
            Self::TaskStatusChange(_) => "taskStatusChange",
            Self::TaskProgress(_) => "taskProgress",
            Self::TaskComplete(_) => "taskComplete",
            Self::TaskRecoveryDetected(_) => "taskRecoveryDetected",
            Self::RegisterToolKey(_) => "registerToolKey",
            Self::RevokeToolKey(_) => "revokeToolKey",
            Self::AuthenticationRequired(_) => "authenticationRequired",
            Self::ReauthStatus(_) => "reauthStatus",
            Self::CompletionActionResult(_) => "completionActionResult",
            Self::DaemonDirectories(_) => "daemonDirectories",
            Self::CloneWorktreeResult(_) => "cloneWorktreeResult",
            Self::CheckTargetExistsResult(_) => "checkTargetExistsResult",
            Self::RepoFileContent(_) => "repoFileContent",
            Self::BranchCreated(_) => "branchCreated",
            Self::CheckpointCreated(_) => "checkpointCreated",
            Self::GitConfigInherited(_) => "gitConfigInherited",
            Self::ExportPatchCreated(_) => "exportPatchCreated",
            Self::MergeToTargetResult(_) => "mergeToTargetResult",
            Self::PrCreated(_) => "prCreated",
            Self::WorktreeDiffResult(_) => "worktreeDiffResult",
            Self::WorktreeInfoResult(_) => "worktreeInfoResult",
            Self::TaskDiff(_) => "taskDiff",
            Self::WorktreeCommitResult(_) => "worktreeCommitResult",
            Self::MergePatchToSupervisor(_) => "mergePatchToSupervisor",
        }
    }

    /// The task this message is about, when it names one (`taskId`).
    ///
    /// `requestId`s (re-authentication, repository file reads) are not task
    /// ids and give `None`.
    pub fn task_id(&self) -> Option<Uuid> {
        match self {
            Self::SupervisorHeartbeat(SupervisorHeartbeat { task_id, .. })
            | Self::TaskOutput(TaskOutput { task_id, .. })
            | Self::TaskStatusChange(TaskStatusChange { task_id, .. })
            | Self::TaskProgress(TaskProgress { task_id, .. })
            | Self::TaskComplete(TaskComplete { task_id, .. })
            | Self::TaskRecoveryDetected(TaskRecoveryDetected { task_id, .. })
            | Self::RegisterToolKey(RegisterToolKey { task_id, .. })
            | Self::RevokeToolKey(RevokeToolKey { task_id })
            | Self::CompletionActionResult(CompletionActionResult { task_id, .. })
            | Self::CloneWorktreeResult(CloneWorktreeResult { task_id, .. })
            | Self::CheckTargetExistsResult(CheckTargetExistsResult { task_id, .. })
            | Self::CheckpointCreated(CheckpointCreated { task_id, .. })
            | Self::ExportPatchCreated(ExportPatchCreated { task_id, .. })
            | Self::MergeToTargetResult(MergeToTargetResult { task_id, .. })
            | Self::PrCreated(PrCreated { task_id, .. })
            | Self::WorktreeDiffResult(WorktreeDiffResult { task_id, .. })
            | Self::WorktreeInfoResult(WorktreeInfoResult { task_id, .. })
            | Self::TaskDiff(TaskDiff { task_id, .. })
            | Self::WorktreeCommitResult(WorktreeCommitResult { task_id, .. })
            | Self::MergePatchToSupervisor(MergePatchToSupervisor { task_id, .. }) => {
                Some(*task_id)
            }
            Self::AuthenticationRequired(AuthenticationRequired { task_id, .. })
            | Self::BranchCreated(BranchCreated { task_id, .. }) => *task_id,
            Self::Authenticate(_)
            | Self::Heartbeat(_)
            | Self::ReauthStatus(_)
            | Self::DaemonDirectories(_)
            | Self::RepoFileContent(_)
            | Self::GitConfigInherited(_) => None,
        }
    }
}

/// First message of a connection: identifies the daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticate {
    /// The owner's API key.
    pub api_key: Secret,
    /// Stable id of the machine; with the owner it identifies the daemon.
    pub machine_id: String,
    /// Host name of the machine.
    pub hostname: String,
    /// How many tasks the daemon runs at once.
    pub max_concurrent_tasks: i32,
}

/// Periodic liveness signal with the tasks currently running.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Ids of the tasks running on the daemon.
    pub active_tasks: Vec<Uuid>,
}

/// Periodic state report of a running supervisor task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorHeartbeat {
    /// The supervisor task.
    pub task_id: Uuid,
    /// The contract the supervisor works on.
    pub contract_id: Uuid,
    /// Supervisor state (e.g. `working`, `waiting_for_tasks`).
    pub state: String,
    /// Current contract phase.
    pub phase: String,
    /// What the supervisor is doing right now.
    #[serde(default)]
    pub current_activity: Option<String>,
    /// Progress percentage, 0–100.
    pub progress: u8,
    /// Tasks the supervisor is waiting on.
    pub pending_task_ids: Vec<Uuid>,
    /// When the daemon produced this heartbeat.
    pub timestamp: DateTime<Utc>,
}

/// One line of task output (Claude Code stream-json or raw text).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskOutput {
    /// The task that produced the line.
    pub task_id: Uuid,
    /// The line itself; see [`crate::protocol::claude::parse_output_line`].
    pub output: String,
    /// Whether the line is incomplete.
    pub is_partial: bool,
}

/// A task changed status.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatusChange {
    /// The task.
    pub task_id: Uuid,
    /// Status before the change.
    pub old_status: String,
    /// Status after the change.
    pub new_status: String,
}

/// A short progress summary of a task.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskProgress {
    /// The task.
    pub task_id: Uuid,
    /// Summary text.
    pub summary: String,
}

/// A task finished.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskComplete {
    /// The task.
    pub task_id: Uuid,
    /// Whether it succeeded.
    pub success: bool,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// After a daemon restart, a task from before the restart was found.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecoveryDetected {
    /// The task.
    pub task_id: Uuid,
    /// The task's state before the restart.
    pub previous_state: String,
    /// Whether its worktree survived.
    pub worktree_intact: bool,
    /// Where the worktree is.
    #[serde(default)]
    pub worktree_path: Option<String>,
    /// Whether the task must be resumed from a stored patch.
    pub needs_patch: bool,
}

/// A running task registers a tool key for calling meshgate's API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisterToolKey {
    /// The task the key belongs to.
    pub task_id: Uuid,
    /// The tool key.
    pub key: Secret,
}

/// A task's tool key is no longer valid.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokeToolKey {
    /// The task whose key is revoked.
    pub task_id: Uuid,
}

/// The daemon's Claude login expired; a user must log in.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationRequired {
    /// The task that hit the expired login, if any.
    #[serde(default)]
    pub task_id: Option<Uuid>,
    /// Where to log in.
    pub login_url: String,
    /// Host name of the daemon.
    #[serde(default)]
    pub hostname: Option<String>,
}

/// Progress of a re-authentication (answers `triggerReauth`/`submitAuthCode`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReauthStatus {
    /// Id of the re-authentication request.
    pub request_id: Uuid,
    /// Where the request stands.
    pub status: ReauthState,
    /// Where to log in (when `url_ready`).
    #[serde(default)]
    pub login_url: Option<String>,
    /// Why it failed (when `failed`).
    #[serde(default)]
    pub error: Option<String>,
    /// Whether the new token was saved; `false` when absent.
    #[serde(default)]
    pub token_saved: bool,
}

/// Outcome of a `retryCompletionAction` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletionActionResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the action succeeded.
    pub success: bool,
    /// Human-readable outcome.
    pub message: String,
    /// URL of the pull request, when the action created one.
    #[serde(default)]
    pub pr_url: Option<String>,
}

/// The daemon's directories, reported after authentication.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonDirectories {
    /// The daemon's working directory.
    pub working_directory: String,
    /// The daemon's home directory.
    pub home_directory: String,
    /// Where the daemon keeps task worktrees.
    pub worktrees_directory: String,
}

/// Outcome of a `cloneWorktree` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneWorktreeResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the clone succeeded.
    pub success: bool,
    /// Human-readable outcome.
    pub message: String,
    /// Where the worktree was cloned to.
    #[serde(default)]
    pub target_dir: Option<String>,
}

/// Outcome of a `checkTargetExists` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckTargetExistsResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the directory exists.
    pub exists: bool,
    /// The directory checked.
    pub target_dir: String,
}

/// Outcome of a `readRepoFile` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepoFileContent {
    /// The request id, which is the id of the file record.
    pub request_id: Uuid,
    /// Path of the file in the repository.
    pub file_path: String,
    /// The file's content, when read.
    #[serde(default)]
    pub content: Option<String>,
    /// Whether the read succeeded.
    pub success: bool,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `createBranch` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BranchCreated {
    /// The task, if the branch was created for one.
    #[serde(default)]
    pub task_id: Option<Uuid>,
    /// Name of the branch.
    pub branch_name: String,
    /// Whether it was created.
    pub success: bool,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `createCheckpoint` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointCreated {
    /// The task.
    pub task_id: Uuid,
    /// Whether the checkpoint was created.
    pub success: bool,
    /// Commit of the checkpoint.
    #[serde(default)]
    pub commit_sha: Option<String>,
    /// Branch the checkpoint was committed on.
    #[serde(default)]
    pub branch_name: Option<String>,
    /// Sequence number of the checkpoint.
    #[serde(default)]
    pub checkpoint_number: Option<i32>,
    /// Files changed (any JSON, stored as is).
    #[serde(default)]
    pub files_changed: Option<Value>,
    /// Lines added.
    #[serde(default)]
    pub lines_added: Option<i32>,
    /// Lines removed.
    #[serde(default)]
    pub lines_removed: Option<i32>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// The checkpoint message.
    pub message: String,
    /// Base64 of the gzip-compressed patch, for resuming the task.
    #[serde(default)]
    pub patch_data: Option<String>,
    /// Commit the patch applies on.
    #[serde(default)]
    pub patch_base_sha: Option<String>,
    /// Number of files in the patch.
    #[serde(default)]
    pub patch_files_count: Option<i32>,
}

/// Outcome of an `inheritGitConfig` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitConfigInherited {
    /// Whether the config was inherited.
    pub success: bool,
    /// The inherited `user.email`.
    #[serde(default)]
    pub user_email: Option<String>,
    /// The inherited `user.name`.
    #[serde(default)]
    pub user_name: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `createExportPatch` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportPatchCreated {
    /// The task.
    pub task_id: Uuid,
    /// Whether the patch was created.
    pub success: bool,
    /// The patch, uncompressed and human-readable.
    #[serde(default)]
    pub patch_content: Option<String>,
    /// Number of files in the patch.
    #[serde(default)]
    pub files_count: Option<u64>,
    /// Lines added.
    #[serde(default)]
    pub lines_added: Option<u64>,
    /// Lines removed.
    #[serde(default)]
    pub lines_removed: Option<u64>,
    /// Commit the patch is diffed against.
    #[serde(default)]
    pub base_commit_sha: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `mergeTaskToTarget` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergeToTargetResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the merge succeeded.
    pub success: bool,
    /// Human-readable outcome.
    pub message: String,
    /// The merge commit.
    #[serde(default)]
    pub commit_sha: Option<String>,
    /// Paths in conflict.
    #[serde(default)]
    pub conflicts: Option<Vec<String>>,
}

/// Outcome of a `createPR` command (tag `prCreated`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrCreated {
    /// The task.
    pub task_id: Uuid,
    /// Whether the pull request was created.
    pub success: bool,
    /// Human-readable outcome.
    pub message: String,
    /// URL of the pull request.
    #[serde(default)]
    pub pr_url: Option<String>,
    /// Number of the pull request.
    #[serde(default)]
    pub pr_number: Option<i32>,
}

/// Outcome of a `getWorktreeDiff` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorktreeDiffResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the diff was produced.
    pub success: bool,
    /// The diff.
    #[serde(default)]
    pub diff: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `getWorktreeInfo` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorktreeInfoResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the info was gathered.
    pub success: bool,
    /// Where the worktree is.
    #[serde(default)]
    pub worktree_path: Option<String>,
    /// Whether the worktree exists.
    pub exists: bool,
    /// Number of files changed.
    pub files_changed: i32,
    /// Lines inserted.
    pub insertions: i32,
    /// Lines deleted.
    pub deletions: i32,
    /// The changed files (any JSON, passed on as is).
    #[serde(default)]
    pub files: Option<Value>,
    /// Current branch.
    #[serde(default)]
    pub branch: Option<String>,
    /// Current HEAD commit.
    #[serde(default)]
    pub head_sha: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `getTaskDiff` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskDiff {
    /// The task.
    pub task_id: Uuid,
    /// Whether the diff was produced.
    pub success: bool,
    /// The diff.
    #[serde(default)]
    pub diff: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// Outcome of a `commitWorktree` command.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorktreeCommitResult {
    /// The task.
    pub task_id: Uuid,
    /// Whether the commit succeeded.
    pub success: bool,
    /// The new commit.
    #[serde(default)]
    pub commit_sha: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A finished task's patch must be merged into its supervisor's worktree,
/// which lives on another daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MergePatchToSupervisor {
    /// The finished task.
    pub task_id: Uuid,
    /// The supervisor task to merge into.
    pub supervisor_task_id: Uuid,
    /// Base64 of the gzip-compressed patch.
    pub patch_data: String,
    /// Commit the patch applies on.
    pub base_sha: String,
}

/// Why a daemon frame could not be decoded.
///
/// Every variant is answered with an `error` frame of code `PARSE_ERROR`
/// ([`DecodeError::CODE`]); the `Display` text is meant for its `message`
/// and never echoes more than about 100 characters of any input string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame is not valid JSON.
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    /// The frame is JSON but not an object with a string `type` field.
    #[error("frame is not a JSON object with a string `type` field")]
    MissingType,
    /// The `type` is not a daemon message of this protocol (possibly shortened).
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    /// The `type` is known but the fields do not fit it.
    #[error("malformed {message_type} message: {detail}")]
    Malformed {
        /// The message's `type` tag.
        message_type: &'static str,
        /// What is wrong with the fields.
        detail: String,
    },
}

impl DecodeError {
    /// The `error` frame code for every decode error.
    pub const CODE: &'static str = "PARSE_ERROR";

    /// The `error` command to send back to the daemon.
    pub fn to_error_command(&self) -> DaemonCommand {
        DaemonCommand::Error {
            code: Self::CODE.to_string(),
            message: self.to_string(),
        }
    }
}

/// Decodes one daemon text frame.
///
/// # Errors
///
/// A [`DecodeError`] saying whether the frame is not JSON, has no `type`, has
/// an unknown `type`, or does not fit its `type`.
pub fn decode(text: &str) -> Result<DaemonMessage, DecodeError> {
    serde_json::from_str(text).map_err(|err| classify_failure(text, &err))
}

/// Works out why `text` failed to decode as a [`DaemonMessage`].
fn classify_failure(text: &str, err: &serde_json::Error) -> DecodeError {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return DecodeError::NotJson(truncate_chars(&e.to_string(), MAX_DETAIL_CHARS)),
    };
    let Some(tag) = value.get("type").and_then(Value::as_str) else {
        return DecodeError::MissingType;
    };
    match DaemonMessage::TAGS.iter().find(|known| **known == tag) {
        Some(known) => DecodeError::Malformed {
            message_type: known,
            detail: malformed_detail(value, err),
        },
        None => DecodeError::UnknownType(truncate_chars(tag, MAX_SNIPPET_CHARS)),
    }
}

/// The serde error text, if short; otherwise the error computed again on a
/// copy of `value` whose strings are shortened, so that the message cannot
/// echo a huge input string.
fn malformed_detail(mut value: Value, original: &serde_json::Error) -> String {
    let detail = original.to_string();
    if detail.chars().count() <= MAX_PLAIN_DETAIL_CHARS {
        return detail;
    }
    shorten_strings(&mut value);
    let detail = match serde_json::from_value::<DaemonMessage>(value) {
        Err(e) => e.to_string(),
        Ok(_) => detail,
    };
    truncate_chars(&detail, MAX_DETAIL_CHARS)
}

/// Shortens every string inside `value` to [`MAX_SNIPPET_CHARS`] (+ `...`).
fn shorten_strings(value: &mut Value) {
    match value {
        Value::String(s) if s.len() > MAX_SNIPPET_CHARS => {
            *s = truncate_chars(s, MAX_SNIPPET_CHARS);
        }
        Value::Array(items) => items.iter_mut().for_each(shorten_strings),
        Value::Object(map) => map.values_mut().for_each(shorten_strings),
        _ => {}
    }
}

/// The first `max` characters of `s`, followed by `...` if anything was cut.
fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((byte_idx, _)) => format!("{}...", &s[..byte_idx]),
        None => s.to_string(),
    }
}

/// A command from the server to a daemon (PROTOCOL.md §1.2).
///
/// `None` fields are omitted from the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum DaemonCommand {
    /// Authentication succeeded.
    Authenticated {
        /// The daemon's stable id.
        daemon_id: Uuid,
    },
    /// Something the daemon sent was rejected.
    Error {
        /// Machine-readable code (e.g. `PARSE_ERROR`, `NOT_REGISTERED`).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
    /// Start a task (answered by `taskStatusChange`, `taskOutput`…, `taskComplete`).
    SpawnTask {
        /// The task.
        task_id: Uuid,
        /// Task name.
        name: String,
        /// What the task must do.
        plan: String,
        /// Repository to work in.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository_url: Option<String>,
        /// Branch to start from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        base_branch: Option<String>,
        /// Branch to deliver to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_branch: Option<String>,
        /// Contract the task belongs to.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contract_id: Option<Uuid>,
        /// Supervisor or parent task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent_task_id: Option<Uuid>,
        /// Whether the task is a contract supervisor.
        is_supervisor: bool,
        /// Stored checkpoint patch to resume from (base64 of gzip).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patch_data: Option<String>,
        /// Commit the resume patch applies on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patch_base_sha: Option<String>,
    },
    /// Stop a task (answered by `taskStatusChange`).
    InterruptTask {
        /// The task.
        task_id: Uuid,
        /// Whether to let the task wind down instead of killing it.
        graceful: bool,
    },
    /// Deliver a text message to a running task (e.g. a supervisor).
    SendMessage {
        /// The task.
        task_id: Uuid,
        /// The text.
        message: String,
    },
    /// Start re-authenticating Claude (answered by `reauthStatus`).
    TriggerReauth {
        /// Id of the re-authentication request.
        request_id: Uuid,
    },
    /// Hand the login code to the daemon (answered by `reauthStatus`).
    SubmitAuthCode {
        /// Id of the re-authentication request.
        request_id: Uuid,
        /// The code the user got from the login page.
        code: Secret,
    },
    /// Retry a task's completion action (answered by `completionActionResult`).
    RetryCompletionAction {
        /// The task.
        task_id: Uuid,
        /// The action to retry (e.g. `pr`).
        action: String,
    },
    /// Copy a task's worktree somewhere (answered by `cloneWorktreeResult`).
    CloneWorktree {
        /// The task.
        task_id: Uuid,
        /// Where to copy it to.
        target_dir: String,
    },
    /// Ask whether a directory exists (answered by `checkTargetExistsResult`).
    CheckTargetExists {
        /// The task.
        task_id: Uuid,
        /// The directory.
        target_dir: String,
    },
    /// Read a file of a repository (answered by `repoFileContent`).
    ReadRepoFile {
        /// Request id: the id of the file record.
        request_id: Uuid,
        /// Path of the file in the repository.
        file_path: String,
        /// The repository.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository_url: Option<String>,
    },
    /// Create a branch (answered by `branchCreated`).
    CreateBranch {
        /// The task, if the branch is for one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_id: Option<Uuid>,
        /// Name of the new branch.
        branch_name: String,
        /// Where to branch from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from_ref: Option<String>,
    },
    /// Commit a checkpoint of a task (answered by `checkpointCreated`).
    CreateCheckpoint {
        /// The task.
        task_id: Uuid,
        /// Checkpoint message.
        message: String,
    },
    /// Take over git user settings (answered by `gitConfigInherited`).
    InheritGitConfig {
        /// Directory to read the settings from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source_dir: Option<String>,
    },
    /// Produce a patch of a task's work (answered by `exportPatchCreated`).
    CreateExportPatch {
        /// The task.
        task_id: Uuid,
    },
    /// Merge a task's work into a branch (answered by `mergeToTargetResult`).
    MergeTaskToTarget {
        /// The task.
        task_id: Uuid,
        /// Branch to merge into.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_branch: Option<String>,
        /// Whether to squash.
        squash: bool,
    },
    /// Open a pull request (tag `createPR`; answered by `prCreated`).
    #[serde(rename = "createPR")]
    CreatePr {
        /// The task.
        task_id: Uuid,
        /// Title of the pull request.
        title: String,
        /// Body of the pull request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
        /// Branch to merge into.
        base_branch: String,
        /// Branch with the changes.
        branch: String,
    },
    /// Diff of a task's worktree (answered by `worktreeDiffResult`).
    GetWorktreeDiff {
        /// The task.
        task_id: Uuid,
    },
    /// State of a task's worktree (answered by `worktreeInfoResult`).
    GetWorktreeInfo {
        /// The task.
        task_id: Uuid,
    },
    /// Diff of a task (answered by `taskDiff`).
    GetTaskDiff {
        /// The task.
        task_id: Uuid,
    },
    /// Commit a task's worktree (answered by `worktreeCommitResult`).
    CommitWorktree {
        /// The task.
        task_id: Uuid,
        /// Commit message.
        message: String,
    },
    /// Apply another task's patch to a task's worktree.
    ApplyPatchToWorktree {
        /// The task whose worktree receives the patch.
        target_task_id: Uuid,
        /// The task the patch comes from.
        source_task_id: Uuid,
        /// Base64 of the gzip-compressed patch.
        patch_data: String,
        /// Commit the patch applies on.
        base_sha: String,
    },
    /// This replica is draining: connect again through the load balancer.
    Reconnect {
        /// Why.
        reason: String,
    },
}

impl DaemonCommand {
    /// The wire tag of this command (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authenticated { .. } => "authenticated",
            Self::Error { .. } => "error",
            Self::SpawnTask { .. } => "spawnTask",
            Self::InterruptTask { .. } => "interruptTask",
            Self::SendMessage { .. } => "sendMessage",
            Self::TriggerReauth { .. } => "triggerReauth",
            Self::SubmitAuthCode { .. } => "submitAuthCode",
            Self::RetryCompletionAction { .. } => "retryCompletionAction",
            Self::CloneWorktree { .. } => "cloneWorktree",
            Self::CheckTargetExists { .. } => "checkTargetExists",
            Self::ReadRepoFile { .. } => "readRepoFile",
            Self::CreateBranch { .. } => "createBranch",
            Self::CreateCheckpoint { .. } => "createCheckpoint",
            Self::InheritGitConfig { .. } => "inheritGitConfig",
            Self::CreateExportPatch { .. } => "createExportPatch",
            Self::MergeTaskToTarget { .. } => "mergeTaskToTarget",
            Self::CreatePr { .. } => "createPR",
            Self::GetWorktreeDiff { .. } => "getWorktreeDiff",
            Self::GetWorktreeInfo { .. } => "getWorktreeInfo",
            Self::GetTaskDiff { .. } => "getTaskDiff",
            Self::CommitWorktree { .. } => "commitWorktree",
            Self::ApplyPatchToWorktree { .. } => "applyPatchToWorktree",
            Self::Reconnect { .. } => "reconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    const T1: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const T2: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";
    const C1: &str = "16fd2706-8baf-433b-82eb-8c7fada847da";
    const R1: &str = "886313e1-3b8a-5372-9b90-0c9aee199e5d";

    fn id(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    /// One realistic frame of each of the 28 daemon messages.
    fn samples() -> Vec<Value> {
        vec![
            json!({"type": "authenticate", "apiKey": "mk_live_abc", "machineId": "m-01",
                   "hostname": "build-01", "maxConcurrentTasks": 4}),
            json!({"type": "heartbeat", "activeTasks": [T1, T2]}),
            json!({"type": "supervisorHeartbeat", "taskId": T1, "contractId": C1,
                   "state": "working", "phase": "execute", "currentActivity": "Reviewing",
                   "progress": 42, "pendingTaskIds": [T2], "timestamp": "2025-01-02T03:04:05Z"}),
            json!({"type": "taskOutput", "taskId": T1,
                   "output": "{\"type\":\"system\",\"subtype\":\"init\"}", "isPartial": false}),
            json!({"type": "taskStatusChange", "taskId": T1, "oldStatus": "starting",
                   "newStatus": "running"}),
            json!({"type": "taskProgress", "taskId": T1, "summary": "Parser done"}),
            json!({"type": "taskComplete", "taskId": T1, "success": false, "error": "exit 1"}),
            json!({"type": "taskRecoveryDetected", "taskId": T1, "previousState": "running",
                   "worktreeIntact": true, "worktreePath": "/w/t1", "needsPatch": false}),
            json!({"type": "registerToolKey", "taskId": T1, "key": "tk_secret"}),
            json!({"type": "revokeToolKey", "taskId": T1}),
            json!({"type": "authenticationRequired", "taskId": T1,
                   "loginUrl": "https://claude.ai/login?x=1", "hostname": "build-01"}),
            json!({"type": "reauthStatus", "requestId": R1, "status": "url_ready",
                   "loginUrl": "https://claude.ai/login"}),
            json!({"type": "completionActionResult", "taskId": T1, "success": true,
                   "message": "PR opened", "prUrl": "https://github.com/o/r/pull/5"}),
            json!({"type": "daemonDirectories", "workingDirectory": "/srv",
                   "homeDirectory": "/home/u/.makima/home",
                   "worktreesDirectory": "/home/u/.makima/worktrees"}),
            json!({"type": "cloneWorktreeResult", "taskId": T1, "success": true,
                   "message": "cloned", "targetDir": "/tmp/out"}),
            json!({"type": "checkTargetExistsResult", "taskId": T1, "exists": true,
                   "targetDir": "/tmp/out"}),
            json!({"type": "repoFileContent", "requestId": R1, "filePath": "docs/plan.md",
                   "content": "# Plan", "success": true, "error": null}),
            json!({"type": "branchCreated", "branchName": "feature/x", "success": true}),
            json!({"type": "checkpointCreated", "taskId": T1, "success": true,
                   "commitSha": "abc123", "branchName": "mesh/t1", "checkpointNumber": 3,
                   "filesChanged": [{"path": "a.rs", "status": "M"}], "linesAdded": 10,
                   "linesRemoved": 2, "message": "checkpoint", "patchData": "H4sIAAAA",
                   "patchBaseSha": "def456", "patchFilesCount": 1}),
            json!({"type": "gitConfigInherited", "success": true, "userEmail": "a@b.c",
                   "userName": "A B"}),
            json!({"type": "exportPatchCreated", "taskId": T1, "success": true,
                   "patchContent": "diff --git a/a.rs b/a.rs", "filesCount": 2,
                   "linesAdded": 5, "linesRemoved": 1, "baseCommitSha": "def456"}),
            json!({"type": "mergeToTargetResult", "taskId": T1, "success": false,
                   "message": "conflicts", "conflicts": ["a.rs", "b.rs"]}),
            json!({"type": "prCreated", "taskId": T1, "success": true, "message": "created",
                   "prUrl": "https://github.com/o/r/pull/17", "prNumber": 17}),
            json!({"type": "worktreeDiffResult", "taskId": T1, "success": true,
                   "diff": "+line"}),
            json!({"type": "worktreeInfoResult", "taskId": T1, "success": true,
                   "worktreePath": "/w/t1", "exists": true, "filesChanged": 3,
                   "insertions": 20, "deletions": 4, "files": [{"path": "a.rs"}],
                   "branch": "mesh/t1", "headSha": "abc123"}),
            json!({"type": "taskDiff", "taskId": T1, "success": false, "error": "no worktree"}),
            json!({"type": "worktreeCommitResult", "taskId": T1, "success": true,
                   "commitSha": "abc123"}),
            json!({"type": "mergePatchToSupervisor", "taskId": T1, "supervisorTaskId": T2,
                   "patchData": "H4sIAAAA", "baseSha": "def456"}),
        ]
    }

    /// Decodes `value`, checking that `kind()` is its `type`.
    fn decode_ok(value: &Value) -> DaemonMessage {
        let msg = decode(&value.to_string()).unwrap();
        assert_eq!(msg.kind(), value["type"]);
        msg
    }

    /// Decodes the sample of the given tag.
    fn sample(tag: &str) -> DaemonMessage {
        let all = samples();
        let value = all.iter().find(|v| v["type"] == tag).unwrap();
        decode_ok(value)
    }

    #[test]
    fn every_message_has_a_sample_that_decodes() {
        let kinds: BTreeSet<&str> = samples().iter().map(|v| decode_ok(v).kind()).collect();
        let tags: BTreeSet<&str> = DaemonMessage::TAGS.into_iter().collect();
        assert_eq!(tags.len(), 28);
        assert_eq!(kinds, tags);
    }

    #[test]
    fn task_id_of_every_sample() {
        for value in samples() {
            let expected = value.get("taskId").map(|t| id(t.as_str().unwrap()));
            assert_eq!(decode_ok(&value).task_id(), expected, "{}", value["type"]);
        }
    }

    #[test]
    fn authenticate() {
        let DaemonMessage::Authenticate(Authenticate {
            api_key,
            machine_id,
            hostname,
            max_concurrent_tasks,
        }) = sample("authenticate")
        else {
            panic!("wrong variant")
        };
        assert_eq!(api_key.expose(), "mk_live_abc");
        assert_eq!(machine_id, "m-01");
        assert_eq!(hostname, "build-01");
        assert_eq!(max_concurrent_tasks, 4);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let text = format!(
            "{:?} {:?}",
            sample("authenticate"),
            sample("registerToolKey")
        );
        assert!(
            !text.contains("mk_live_abc") && !text.contains("tk_secret"),
            "{text}"
        );
        assert!(text.contains("Secret(<redacted>)"));
    }

    #[test]
    fn heartbeat() {
        let DaemonMessage::Heartbeat(Heartbeat { active_tasks }) = sample("heartbeat") else {
            panic!()
        };
        assert_eq!(active_tasks, vec![id(T1), id(T2)]);
        let msg = decode_ok(&json!({"type": "heartbeat", "activeTasks": []}));
        assert_eq!(
            msg,
            DaemonMessage::Heartbeat(Heartbeat {
                active_tasks: vec![]
            })
        );
    }

    #[test]
    fn supervisor_heartbeat() {
        let DaemonMessage::SupervisorHeartbeat(SupervisorHeartbeat {
            task_id,
            contract_id,
            state,
            phase,
            current_activity,
            progress,
            pending_task_ids,
            timestamp,
        }) = sample("supervisorHeartbeat")
        else {
            panic!()
        };
        assert_eq!((task_id, contract_id), (id(T1), id(C1)));
        assert_eq!((state.as_str(), phase.as_str()), ("working", "execute"));
        assert_eq!(current_activity.as_deref(), Some("Reviewing"));
        assert_eq!(progress, 42);
        assert_eq!(pending_task_ids, vec![id(T2)]);
        assert_eq!(timestamp.to_rfc3339(), "2025-01-02T03:04:05+00:00");
    }

    #[test]
    fn task_output() {
        let DaemonMessage::TaskOutput(TaskOutput {
            task_id,
            output,
            is_partial,
        }) = sample("taskOutput")
        else {
            panic!()
        };
        assert_eq!(task_id, id(T1));
        assert_eq!(output, r#"{"type":"system","subtype":"init"}"#);
        assert!(!is_partial);
    }

    #[test]
    fn task_status_change_progress_complete() {
        let DaemonMessage::TaskStatusChange(TaskStatusChange {
            old_status,
            new_status,
            ..
        }) = sample("taskStatusChange")
        else {
            panic!()
        };
        assert_eq!(
            (old_status.as_str(), new_status.as_str()),
            ("starting", "running")
        );
        let DaemonMessage::TaskProgress(TaskProgress { summary, .. }) = sample("taskProgress")
        else {
            panic!()
        };
        assert_eq!(summary, "Parser done");
        let DaemonMessage::TaskComplete(TaskComplete { success, error, .. }) =
            sample("taskComplete")
        else {
            panic!()
        };
        assert!(!success);
        assert_eq!(error.as_deref(), Some("exit 1"));
    }

    #[test]
    fn task_recovery_detected() {
        let DaemonMessage::TaskRecoveryDetected(TaskRecoveryDetected {
            previous_state,
            worktree_intact,
            worktree_path,
            needs_patch,
            ..
        }) = sample("taskRecoveryDetected")
        else {
            panic!()
        };
        assert_eq!(previous_state, "running");
        assert!(worktree_intact && !needs_patch);
        assert_eq!(worktree_path.as_deref(), Some("/w/t1"));
    }

    #[test]
    fn tool_keys() {
        let DaemonMessage::RegisterToolKey(RegisterToolKey { task_id, key }) =
            sample("registerToolKey")
        else {
            panic!()
        };
        assert_eq!((task_id, key.expose()), (id(T1), "tk_secret"));
        assert_eq!(
            sample("revokeToolKey"),
            DaemonMessage::RevokeToolKey(RevokeToolKey { task_id: id(T1) })
        );
    }

    #[test]
    fn authentication_required() {
        let DaemonMessage::AuthenticationRequired(AuthenticationRequired {
            task_id,
            login_url,
            hostname,
        }) = sample("authenticationRequired")
        else {
            panic!()
        };
        assert_eq!(task_id, Some(id(T1)));
        assert_eq!(login_url, "https://claude.ai/login?x=1");
        assert_eq!(hostname.as_deref(), Some("build-01"));
        let msg = decode_ok(&json!({"type": "authenticationRequired", "loginUrl": "u"}));
        assert_eq!(msg.task_id(), None);
    }

    #[test]
    fn reauth_status() {
        let DaemonMessage::ReauthStatus(ReauthStatus {
            request_id,
            status,
            login_url,
            error,
            token_saved,
        }) = sample("reauthStatus")
        else {
            panic!()
        };
        assert_eq!(request_id, id(R1));
        assert_eq!(status, ReauthState::UrlReady);
        assert_eq!(login_url.as_deref(), Some("https://claude.ai/login"));
        assert_eq!(error, None);
        assert!(!token_saved, "tokenSaved defaults to false");
        let msg = decode_ok(&json!({"type": "reauthStatus", "requestId": R1,
                                    "status": "completed", "tokenSaved": true}));
        let DaemonMessage::ReauthStatus(ReauthStatus {
            status,
            token_saved,
            ..
        }) = msg
        else {
            panic!()
        };
        assert_eq!(status, ReauthState::Completed);
        assert!(token_saved);
    }

    #[test]
    fn reauth_state_wire_names() {
        for (state, name) in [
            (ReauthState::Pending, "pending"),
            (ReauthState::UrlReady, "url_ready"),
            (ReauthState::Completed, "completed"),
            (ReauthState::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), json!(name));
            assert_eq!(
                serde_json::from_value::<ReauthState>(json!(name)).unwrap(),
                state
            );
            assert_eq!(state.as_str(), name);
        }
    }

    #[test]
    fn completion_action_and_directories() {
        let DaemonMessage::CompletionActionResult(CompletionActionResult {
            success,
            message,
            pr_url,
            ..
        }) = sample("completionActionResult")
        else {
            panic!()
        };
        assert!(success);
        assert_eq!(message, "PR opened");
        assert_eq!(pr_url.as_deref(), Some("https://github.com/o/r/pull/5"));
        let DaemonMessage::DaemonDirectories(DaemonDirectories {
            working_directory,
            home_directory,
            worktrees_directory,
        }) = sample("daemonDirectories")
        else {
            panic!()
        };
        assert_eq!(working_directory, "/srv");
        assert_eq!(home_directory, "/home/u/.makima/home");
        assert_eq!(worktrees_directory, "/home/u/.makima/worktrees");
    }

    #[test]
    fn clone_and_check_target() {
        let DaemonMessage::CloneWorktreeResult(CloneWorktreeResult {
            success,
            message,
            target_dir,
            ..
        }) = sample("cloneWorktreeResult")
        else {
            panic!()
        };
        assert!(success);
        assert_eq!(
            (message.as_str(), target_dir.as_deref()),
            ("cloned", Some("/tmp/out"))
        );
        let DaemonMessage::CheckTargetExistsResult(CheckTargetExistsResult {
            exists,
            target_dir,
            ..
        }) = sample("checkTargetExistsResult")
        else {
            panic!()
        };
        assert!(exists);
        assert_eq!(target_dir, "/tmp/out");
    }

    #[test]
    fn repo_file_content_with_null_error() {
        let DaemonMessage::RepoFileContent(RepoFileContent {
            request_id,
            file_path,
            content,
            success,
            error,
        }) = sample("repoFileContent")
        else {
            panic!()
        };
        assert_eq!(request_id, id(R1));
        assert_eq!(file_path, "docs/plan.md");
        assert_eq!(content.as_deref(), Some("# Plan"));
        assert!(success);
        assert_eq!(error, None);
    }

    #[test]
    fn branch_created_without_task() {
        let msg = sample("branchCreated");
        assert_eq!(
            msg,
            DaemonMessage::BranchCreated(BranchCreated {
                task_id: None,
                branch_name: "feature/x".into(),
                success: true,
                error: None,
            })
        );
        assert_eq!(msg.task_id(), None);
    }

    #[test]
    fn checkpoint_created_full() {
        let DaemonMessage::CheckpointCreated(CheckpointCreated {
            task_id,
            success,
            commit_sha,
            branch_name,
            checkpoint_number,
            files_changed,
            lines_added,
            lines_removed,
            error,
            message,
            patch_data,
            patch_base_sha,
            patch_files_count,
        }) = sample("checkpointCreated")
        else {
            panic!()
        };
        assert_eq!(task_id, id(T1));
        assert!(success);
        assert_eq!(commit_sha.as_deref(), Some("abc123"));
        assert_eq!(branch_name.as_deref(), Some("mesh/t1"));
        assert_eq!(checkpoint_number, Some(3));
        assert_eq!(
            files_changed,
            Some(json!([{"path": "a.rs", "status": "M"}]))
        );
        assert_eq!((lines_added, lines_removed), (Some(10), Some(2)));
        assert_eq!(error, None);
        assert_eq!(message, "checkpoint");
        assert_eq!(patch_data.as_deref(), Some("H4sIAAAA"));
        assert_eq!(patch_base_sha.as_deref(), Some("def456"));
        assert_eq!(patch_files_count, Some(1));
    }

    fn empty_checkpoint() -> DaemonMessage {
        DaemonMessage::CheckpointCreated(CheckpointCreated {
            task_id: id(T1),
            success: false,
            commit_sha: None,
            branch_name: None,
            checkpoint_number: None,
            files_changed: None,
            lines_added: None,
            lines_removed: None,
            error: None,
            message: "cp".into(),
            patch_data: None,
            patch_base_sha: None,
            patch_files_count: None,
        })
    }

    #[test]
    fn optional_fields_absent() {
        let value = json!({"type": "checkpointCreated", "taskId": T1, "success": false,
                           "message": "cp"});
        assert_eq!(decode_ok(&value), empty_checkpoint());
    }

    #[test]
    fn optional_fields_null() {
        let value = json!({"type": "checkpointCreated", "taskId": T1, "success": false,
                           "commitSha": null, "branchName": null, "checkpointNumber": null,
                           "filesChanged": null, "linesAdded": null, "linesRemoved": null,
                           "error": null, "message": "cp", "patchData": null,
                           "patchBaseSha": null, "patchFilesCount": null});
        assert_eq!(decode_ok(&value), empty_checkpoint());
    }

    #[test]
    fn git_config_inherited() {
        let DaemonMessage::GitConfigInherited(GitConfigInherited {
            success,
            user_email,
            user_name,
            error,
        }) = sample("gitConfigInherited")
        else {
            panic!()
        };
        assert!(success);
        assert_eq!(user_email.as_deref(), Some("a@b.c"));
        assert_eq!(user_name.as_deref(), Some("A B"));
        assert_eq!(error, None);
    }

    #[test]
    fn export_patch_created() {
        let DaemonMessage::ExportPatchCreated(ExportPatchCreated {
            patch_content,
            files_count,
            lines_added,
            lines_removed,
            base_commit_sha,
            error,
            ..
        }) = sample("exportPatchCreated")
        else {
            panic!()
        };
        assert_eq!(patch_content.as_deref(), Some("diff --git a/a.rs b/a.rs"));
        assert_eq!(
            (files_count, lines_added, lines_removed),
            (Some(2), Some(5), Some(1))
        );
        assert_eq!(base_commit_sha.as_deref(), Some("def456"));
        assert_eq!(error, None);
    }

    #[test]
    fn merge_to_target_result() {
        let DaemonMessage::MergeToTargetResult(MergeToTargetResult {
            success,
            message,
            commit_sha,
            conflicts,
            ..
        }) = sample("mergeToTargetResult")
        else {
            panic!()
        };
        assert!(!success);
        assert_eq!(message, "conflicts");
        assert_eq!(commit_sha, None);
        assert_eq!(
            conflicts,
            Some(vec!["a.rs".to_string(), "b.rs".to_string()])
        );
    }

    #[test]
    fn pr_created_tag() {
        let DaemonMessage::PrCreated(PrCreated {
            task_id,
            success,
            message,
            pr_url,
            pr_number,
        }) = sample("prCreated")
        else {
            panic!()
        };
        assert_eq!(task_id, id(T1));
        assert!(success);
        assert_eq!(message, "created");
        assert_eq!(pr_url.as_deref(), Some("https://github.com/o/r/pull/17"));
        assert_eq!(pr_number, Some(17));
        let wrong = json!({"type": "pRCreated", "taskId": T1, "success": true, "message": "m"});
        assert!(matches!(
            decode(&wrong.to_string()),
            Err(DecodeError::UnknownType(_))
        ));
    }

    #[test]
    fn diffs_and_commit() {
        let DaemonMessage::WorktreeDiffResult(WorktreeDiffResult {
            success,
            diff,
            error,
            ..
        }) = sample("worktreeDiffResult")
        else {
            panic!()
        };
        assert!(success);
        assert_eq!((diff.as_deref(), error), (Some("+line"), None));
        let DaemonMessage::TaskDiff(TaskDiff {
            success,
            diff,
            error,
            ..
        }) = sample("taskDiff")
        else {
            panic!()
        };
        assert!(!success);
        assert_eq!((diff, error.as_deref()), (None, Some("no worktree")));
        let DaemonMessage::WorktreeCommitResult(WorktreeCommitResult {
            commit_sha, error, ..
        }) = sample("worktreeCommitResult")
        else {
            panic!()
        };
        assert_eq!((commit_sha.as_deref(), error), (Some("abc123"), None));
    }

    #[test]
    fn worktree_info_result() {
        let DaemonMessage::WorktreeInfoResult(WorktreeInfoResult {
            success,
            worktree_path,
            exists,
            files_changed,
            insertions,
            deletions,
            files,
            branch,
            head_sha,
            error,
            ..
        }) = sample("worktreeInfoResult")
        else {
            panic!()
        };
        assert!(success && exists);
        assert_eq!(worktree_path.as_deref(), Some("/w/t1"));
        assert_eq!((files_changed, insertions, deletions), (3, 20, 4));
        assert_eq!(files, Some(json!([{"path": "a.rs"}])));
        assert_eq!(branch.as_deref(), Some("mesh/t1"));
        assert_eq!(head_sha.as_deref(), Some("abc123"));
        assert_eq!(error, None);
    }

    #[test]
    fn merge_patch_to_supervisor() {
        let msg = sample("mergePatchToSupervisor");
        assert_eq!(
            msg,
            DaemonMessage::MergePatchToSupervisor(MergePatchToSupervisor {
                task_id: id(T1),
                supervisor_task_id: id(T2),
                patch_data: "H4sIAAAA".into(),
                base_sha: "def456".into(),
            })
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let value = json!({"type": "taskProgress", "taskId": T1, "summary": "s",
                           "somethingNew": {"nested": [1, 2]}, "version": 9});
        let msg = decode_ok(&value);
        assert_eq!(
            msg,
            DaemonMessage::TaskProgress(TaskProgress {
                task_id: id(T1),
                summary: "s".into()
            })
        );
    }

    #[test]
    fn not_json() {
        for text in ["hello", "", "{\"type\":", "{type: heartbeat}"] {
            let err = decode(text).unwrap_err();
            assert!(matches!(err, DecodeError::NotJson(_)), "{text}: {err:?}");
            assert!(err.to_string().starts_with("frame is not valid JSON"));
        }
    }

    #[test]
    fn missing_type() {
        for text in [
            r#"{"taskId":"x"}"#,
            "[1,2]",
            "\"heartbeat\"",
            r#"{"type":7}"#,
        ] {
            assert_eq!(
                decode(text).unwrap_err(),
                DecodeError::MissingType,
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_type() {
        let err = decode(r#"{"type":"selfDestruct","taskId":"x"}"#).unwrap_err();
        assert_eq!(err, DecodeError::UnknownType("selfDestruct".into()));
        assert_eq!(err.to_string(), "unknown message type `selfDestruct`");
    }

    #[test]
    fn unknown_type_is_not_echoed_in_full() {
        let tag = "é😀".repeat(5000);
        let err = decode(&json!({"type": tag}).to_string()).unwrap_err();
        let DecodeError::UnknownType(shown) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(shown.chars().count(), MAX_SNIPPET_CHARS + 3);
        assert!(err.to_string().chars().count() < 150);
    }

    #[test]
    fn malformed_known_type() {
        let value = json!({"type": "taskOutput", "taskId": "not-a-uuid", "output": "x",
                           "isPartial": false});
        let err = decode(&value.to_string()).unwrap_err();
        let DecodeError::Malformed { message_type, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*message_type, "taskOutput");
        assert!(
            err.to_string()
                .starts_with("malformed taskOutput message: "),
            "{err}"
        );

        let value = json!({"type": "authenticate", "apiKey": "k", "machineId": "m"});
        let err = decode(&value.to_string()).unwrap_err();
        assert!(
            err.to_string().contains("missing field `hostname`"),
            "{err}"
        );

        let value = json!({"type": "supervisorHeartbeat", "taskId": T1, "contractId": C1,
                           "state": "s", "phase": "p", "progress": 300, "pendingTaskIds": [],
                           "timestamp": "2025-01-02T03:04:05Z"});
        assert!(matches!(
            decode(&value.to_string()),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_does_not_echo_huge_strings() {
        let huge = "é😀".repeat(10_000);
        let value = json!({"type": "reauthStatus", "requestId": R1, "status": huge});
        let err = decode(&value.to_string()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(
            err,
            DecodeError::Malformed {
                message_type: "reauthStatus",
                ..
            }
        ));
        assert!(text.chars().count() < 250, "{text}");
        assert!(text.contains("expected one of"), "{text}");

        let value = json!({"type": "taskOutput", "taskId": T1, "output": "x", "isPartial": huge});
        let text = decode(&value.to_string()).unwrap_err().to_string();
        assert!(text.chars().count() < 250, "{text}");
        assert!(text.contains("expected a boolean"), "{text}");
    }

    #[test]
    fn decode_error_becomes_error_command() {
        let err = decode("nope").unwrap_err();
        let DaemonCommand::Error { code, message } = err.to_error_command() else {
            panic!()
        };
        assert_eq!(code, "PARSE_ERROR");
        assert_eq!(message, err.to_string());
    }

    #[test]
    fn truncate_chars_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé...");
        assert_eq!(truncate_chars("héllo", 5), "héllo");
        assert_eq!(truncate_chars("😀😀😀", 1), "😀...");
        assert_eq!(truncate_chars("", 0), "");
    }

    /// Serializes a command, checking its `type` against `kind()` and that it
    /// reads back unchanged.
    fn wire(cmd: &DaemonCommand) -> Value {
        let value = serde_json::to_value(cmd).unwrap();
        assert_eq!(value["type"], cmd.kind());
        let back: DaemonCommand = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(&back, cmd);
        value
    }

    #[test]
    fn command_authenticated_error_reconnect() {
        let cmd = DaemonCommand::Authenticated { daemon_id: id(T2) };
        assert_eq!(wire(&cmd), json!({"type": "authenticated", "daemonId": T2}));
        let cmd = DaemonCommand::Error {
            code: "NOT_REGISTERED".into(),
            message: "m".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "error", "code": "NOT_REGISTERED", "message": "m"})
        );
        let cmd = DaemonCommand::Reconnect {
            reason: "draining".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "reconnect", "reason": "draining"})
        );
    }

    #[test]
    fn command_spawn_task() {
        let minimal = DaemonCommand::SpawnTask {
            task_id: id(T1),
            name: "n".into(),
            plan: "p".into(),
            repository_url: None,
            base_branch: None,
            target_branch: None,
            contract_id: None,
            parent_task_id: None,
            is_supervisor: false,
            patch_data: None,
            patch_base_sha: None,
        };
        assert_eq!(
            wire(&minimal),
            json!({"type": "spawnTask", "taskId": T1, "name": "n", "plan": "p",
                   "isSupervisor": false})
        );
        let full = DaemonCommand::SpawnTask {
            task_id: id(T1),
            name: "n".into(),
            plan: "p".into(),
            repository_url: Some("https://github.com/o/r".into()),
            base_branch: Some("main".into()),
            target_branch: Some("dev".into()),
            contract_id: Some(id(C1)),
            parent_task_id: Some(id(T2)),
            is_supervisor: true,
            patch_data: Some("H4sI".into()),
            patch_base_sha: Some("abc".into()),
        };
        assert_eq!(
            wire(&full),
            json!({"type": "spawnTask", "taskId": T1, "name": "n", "plan": "p",
                   "repositoryUrl": "https://github.com/o/r", "baseBranch": "main",
                   "targetBranch": "dev", "contractId": C1, "parentTaskId": T2,
                   "isSupervisor": true, "patchData": "H4sI", "patchBaseSha": "abc"})
        );
    }

    #[test]
    fn command_task_control() {
        let cmd = DaemonCommand::InterruptTask {
            task_id: id(T1),
            graceful: true,
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "interruptTask", "taskId": T1, "graceful": true})
        );
        let cmd = DaemonCommand::SendMessage {
            task_id: id(T1),
            message: "hi".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "sendMessage", "taskId": T1, "message": "hi"})
        );
        let cmd = DaemonCommand::RetryCompletionAction {
            task_id: id(T1),
            action: "pr".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "retryCompletionAction", "taskId": T1, "action": "pr"})
        );
    }

    #[test]
    fn command_reauth() {
        let cmd = DaemonCommand::TriggerReauth { request_id: id(R1) };
        assert_eq!(
            wire(&cmd),
            json!({"type": "triggerReauth", "requestId": R1})
        );
        let cmd = DaemonCommand::SubmitAuthCode {
            request_id: id(R1),
            code: "c0de".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "submitAuthCode", "requestId": R1, "code": "c0de"})
        );
        assert!(!format!("{cmd:?}").contains("c0de"));
    }

    #[test]
    fn command_worktree_and_files() {
        let cmd = DaemonCommand::CloneWorktree {
            task_id: id(T1),
            target_dir: "/o".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "cloneWorktree", "taskId": T1, "targetDir": "/o"})
        );
        let cmd = DaemonCommand::CheckTargetExists {
            task_id: id(T1),
            target_dir: "/o".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "checkTargetExists", "taskId": T1, "targetDir": "/o"})
        );
        let cmd = DaemonCommand::ReadRepoFile {
            request_id: id(R1),
            file_path: "a.md".into(),
            repository_url: None,
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "readRepoFile", "requestId": R1, "filePath": "a.md"})
        );
        let cmd = DaemonCommand::InheritGitConfig {
            source_dir: Some("/src".into()),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "inheritGitConfig", "sourceDir": "/src"})
        );
        let cmd = DaemonCommand::InheritGitConfig { source_dir: None };
        assert_eq!(wire(&cmd), json!({"type": "inheritGitConfig"}));
    }

    #[test]
    fn command_git_operations() {
        let cmd = DaemonCommand::CreateBranch {
            task_id: None,
            branch_name: "b".into(),
            from_ref: Some("main".into()),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "createBranch", "branchName": "b", "fromRef": "main"})
        );
        let cmd = DaemonCommand::CreateCheckpoint {
            task_id: id(T1),
            message: "m".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "createCheckpoint", "taskId": T1, "message": "m"})
        );
        let cmd = DaemonCommand::CreateExportPatch { task_id: id(T1) };
        assert_eq!(
            wire(&cmd),
            json!({"type": "createExportPatch", "taskId": T1})
        );
        let cmd = DaemonCommand::MergeTaskToTarget {
            task_id: id(T1),
            target_branch: Some("main".into()),
            squash: true,
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "mergeTaskToTarget", "taskId": T1, "targetBranch": "main",
                   "squash": true})
        );
        let cmd = DaemonCommand::CommitWorktree {
            task_id: id(T1),
            message: "m".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "commitWorktree", "taskId": T1, "message": "m"})
        );
    }

    #[test]
    fn command_create_pr_tag() {
        let cmd = DaemonCommand::CreatePr {
            task_id: id(T1),
            title: "t".into(),
            body: None,
            base_branch: "main".into(),
            branch: "mesh/t1".into(),
        };
        assert_eq!(cmd.kind(), "createPR");
        assert_eq!(
            wire(&cmd),
            json!({"type": "createPR", "taskId": T1, "title": "t", "baseBranch": "main",
                   "branch": "mesh/t1"})
        );
    }

    #[test]
    fn command_diff_queries_and_patch() {
        let cmd = DaemonCommand::GetWorktreeDiff { task_id: id(T1) };
        assert_eq!(wire(&cmd), json!({"type": "getWorktreeDiff", "taskId": T1}));
        let cmd = DaemonCommand::GetWorktreeInfo { task_id: id(T1) };
        assert_eq!(wire(&cmd), json!({"type": "getWorktreeInfo", "taskId": T1}));
        let cmd = DaemonCommand::GetTaskDiff { task_id: id(T1) };
        assert_eq!(wire(&cmd), json!({"type": "getTaskDiff", "taskId": T1}));
        let cmd = DaemonCommand::ApplyPatchToWorktree {
            target_task_id: id(T2),
            source_task_id: id(T1),
            patch_data: "H4sI".into(),
            base_sha: "abc".into(),
        };
        assert_eq!(
            wire(&cmd),
            json!({"type": "applyPatchToWorktree", "targetTaskId": T2, "sourceTaskId": T1,
                   "patchData": "H4sI", "baseSha": "abc"})
        );
    }
}
