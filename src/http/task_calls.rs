//! Calls that wait for a daemon's answer (diff, worktree info/diff, commit,
//! merge, PR). Each sends one command to the daemon holding the task,
//! wherever it is connected, and waits for the answer on any replica
//! ([`crate::cluster::pending`]). 409 `DAEMON_OFFLINE`, 504
//! `DAEMON_TIMEOUT`, 502 `DAEMON_ERROR`.

use poem::web::Data;
use poem_openapi::{param::Path, payload::Json, Object, OpenApi, Tags};
use serde_json::Value;
use uuid::Uuid;

use super::{auth::UserKey, error::ApiError, tasks::owned_task};
use crate::{
    cluster::pending::{self, Kind, WaitError},
    protocol::daemon::{self, DaemonCommand, DaemonMessage},
    state::AppState,
};

#[derive(Tags)]
enum ApiTags {
    /// Calls answered by the task's daemon.
    TaskCalls,
}

/// A unified diff.
#[derive(Debug, Object)]
pub struct Diff {
    pub diff: String,
}

/// The state of a task's worktree.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct WorktreeInfo {
    pub task_id: Uuid,
    pub success: bool,
    pub worktree_path: Option<String>,
    pub exists: bool,
    pub files_changed: i32,
    pub insertions: i32,
    pub deletions: i32,
    pub files: Option<Value>,
    pub branch: Option<String>,
    pub head_sha: Option<String>,
}

/// A commit message.
#[derive(Debug, Object)]
pub struct CommitBody {
    #[oai(validator(min_length = 1, max_length = 10000))]
    pub message: String,
}

/// The commit made.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Commit {
    pub commit_sha: String,
}

/// Merge options.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct MergeBody {
    #[oai(validator(max_length = 255))]
    pub target_branch: Option<String>,
    pub squash: Option<bool>,
}

/// A merge's outcome; conflicts are `success: false` with a 200.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Merge {
    pub success: bool,
    pub message: String,
    pub commit_sha: Option<String>,
    pub conflicts: Option<Vec<String>>,
}

/// A pull request to open.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct PrBody {
    #[oai(validator(min_length = 1, max_length = 300))]
    pub title: String,
    #[oai(validator(max_length = 60000))]
    pub body: Option<String>,
    #[oai(validator(min_length = 1, max_length = 255))]
    pub base_branch: String,
    #[oai(validator(min_length = 1, max_length = 255))]
    pub branch: String,
}

/// The pull request opened.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Pr {
    pub success: bool,
    pub message: String,
    pub pr_url: Option<String>,
    pub pr_number: Option<i32>,
}

pub struct TaskCallsApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::TaskCalls")]
impl TaskCallsApi {
    /// The task's diff (`getTaskDiff`).
    #[oai(path = "/tasks/:id/diff", method = "get")]
    async fn diff(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Diff>, ApiError> {
        let cmd = DaemonCommand::GetTaskDiff { task_id: id.0 };
        match ask(&state, key.0.owner_id, id.0, Kind::TaskDiff, cmd).await? {
            DaemonMessage::TaskDiff(m) => ok_or_daemon_error(m.success, m.error, || Diff {
                diff: m.diff.unwrap_or_default(),
            }),
            _ => Err(ApiError::internal()),
        }
    }

    /// The worktree's state (`getWorktreeInfo`).
    #[oai(path = "/tasks/:id/worktree", method = "get")]
    async fn worktree(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<WorktreeInfo>, ApiError> {
        let cmd = DaemonCommand::GetWorktreeInfo { task_id: id.0 };
        match ask(&state, key.0.owner_id, id.0, Kind::WorktreeInfo, cmd).await? {
            DaemonMessage::WorktreeInfoResult(m) => {
                ok_or_daemon_error(m.success, m.error, || WorktreeInfo {
                    task_id: m.task_id,
                    success: m.success,
                    worktree_path: m.worktree_path,
                    exists: m.exists,
                    files_changed: m.files_changed,
                    insertions: m.insertions,
                    deletions: m.deletions,
                    files: m.files,
                    branch: m.branch,
                    head_sha: m.head_sha,
                })
            }
            _ => Err(ApiError::internal()),
        }
    }

    /// The worktree's uncommitted diff (`getWorktreeDiff`).
    #[oai(path = "/tasks/:id/worktree/diff", method = "get")]
    async fn worktree_diff(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Diff>, ApiError> {
        let cmd = DaemonCommand::GetWorktreeDiff { task_id: id.0 };
        match ask(&state, key.0.owner_id, id.0, Kind::WorktreeDiff, cmd).await? {
            DaemonMessage::WorktreeDiffResult(m) => {
                ok_or_daemon_error(m.success, m.error, || Diff {
                    diff: m.diff.unwrap_or_default(),
                })
            }
            _ => Err(ApiError::internal()),
        }
    }

    /// Commits the worktree (`commitWorktree`).
    #[oai(path = "/tasks/:id/worktree/commit", method = "post")]
    async fn commit(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<CommitBody>,
    ) -> Result<Json<Commit>, ApiError> {
        let cmd = DaemonCommand::CommitWorktree {
            task_id: id.0,
            message: body.0.message,
        };
        match ask(&state, key.0.owner_id, id.0, Kind::Commit, cmd).await? {
            DaemonMessage::WorktreeCommitResult(m) => {
                ok_or_daemon_error(m.success, m.error, || Commit {
                    commit_sha: m.commit_sha.unwrap_or_default(),
                })
            }
            _ => Err(ApiError::internal()),
        }
    }

    /// Merges the task into its target branch (`mergeTaskToTarget`).
    #[oai(path = "/tasks/:id/merge", method = "post")]
    async fn merge(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<MergeBody>,
    ) -> Result<Json<Merge>, ApiError> {
        let cmd = DaemonCommand::MergeTaskToTarget {
            task_id: id.0,
            target_branch: body.0.target_branch,
            squash: body.0.squash.unwrap_or(false),
        };
        match ask(&state, key.0.owner_id, id.0, Kind::Merge, cmd).await? {
            DaemonMessage::MergeToTargetResult(m) => Ok(Json(Merge {
                success: m.success,
                message: m.message,
                commit_sha: m.commit_sha,
                conflicts: m.conflicts,
            })),
            _ => Err(ApiError::internal()),
        }
    }

    /// Opens a pull request (`createPR`).
    #[oai(path = "/tasks/:id/pr", method = "post")]
    async fn pr(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<PrBody>,
    ) -> Result<Json<Pr>, ApiError> {
        let b = body.0;
        let cmd = DaemonCommand::CreatePr {
            task_id: id.0,
            title: b.title,
            body: b.body,
            base_branch: b.base_branch,
            branch: b.branch,
        };
        match ask(&state, key.0.owner_id, id.0, Kind::Pr, cmd).await? {
            DaemonMessage::PrCreated(m) => {
                let message = m.message.clone();
                ok_or_daemon_error(m.success, Some(message), || Pr {
                    success: m.success,
                    message: m.message,
                    pr_url: m.pr_url,
                    pr_number: m.pr_number,
                })
            }
            _ => Err(ApiError::internal()),
        }
    }
}

/// Sends `command` to the owner's task's daemon and waits for its answer.
async fn ask(
    state: &AppState,
    owner_id: Uuid,
    task_id: Uuid,
    kind: Kind,
    command: DaemonCommand,
) -> Result<DaemonMessage, ApiError> {
    let task = owned_task(state, owner_id, task_id).await?;
    let daemon_id = task.daemon_id.ok_or_else(ApiError::daemon_offline)?;
    let request = pending::Request {
        redis: &state.redis,
        metrics: &state.metrics,
        waiters: &state.waiters,
        timeout: state.config.request_timeout(),
    };
    let raw = match pending::request(request, kind, task_id, daemon_id, &command).await {
        Ok(raw) => raw,
        Err(WaitError::Offline) => return Err(ApiError::daemon_offline()),
        Err(WaitError::Timeout) => return Err(ApiError::daemon_timeout()),
        Err(WaitError::Failed(e)) => return Err(e.into()),
    };
    daemon::decode(&raw).map_err(|e| {
        tracing::error!(error = %e, "an answer that was valid when received no longer decodes");
        ApiError::internal()
    })
}

fn ok_or_daemon_error<T>(
    success: bool,
    error: Option<String>,
    ok: impl FnOnce() -> T,
) -> Result<Json<T>, ApiError> {
    if success {
        Ok(Json(ok()))
    } else {
        Err(ApiError::daemon_error(
            error.unwrap_or_else(|| "the daemon reported a failure".into()),
        ))
    }
}
