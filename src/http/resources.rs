//! Contracts, files and task checkpoints.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{param::Path, payload::Json, ApiResponse, Enum, Object, OpenApi, Tags};
use serde_json::Value;
use uuid::Uuid;

use super::{
    auth::UserKey,
    error::ApiError,
    tasks::{owned_task, send_to_task, Accepted},
};
use crate::{
    db::resources::{self, CheckpointView, ContractView, FileView, NewContract, RepositoryView},
    protocol::daemon::DaemonCommand,
    state::AppState,
};

#[derive(Tags)]
enum ApiTags {
    /// Contracts, files and checkpoints.
    Resources,
}

/// Kind of contract.
#[derive(Debug, Clone, Copy, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ContractType {
    Simple,
    Specification,
}

impl ContractType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Specification => "specification",
        }
    }
}

/// A repository a contract works on.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct Repository {
    #[oai(validator(max_length = 2000))]
    pub repository_url: Option<String>,
    #[oai(validator(max_length = 4096))]
    pub local_path: Option<String>,
}

/// A new contract.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CreateContract {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    #[oai(validator(max_length = 20000))]
    pub description: Option<String>,
    pub contract_type: ContractType,
    #[oai(validator(min_length = 1, max_length = 64))]
    pub phase: String,
    pub local_only: bool,
    #[oai(validator(max_items = 20))]
    pub repositories: Vec<Repository>,
}

/// A contract.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Contract {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    /// `simple` or `specification`.
    pub contract_type: String,
    pub phase: String,
    pub local_only: bool,
    /// Deliverable ids completed, per phase.
    pub completed_deliverables: Value,
    pub repositories: Vec<Repository>,
    pub created_at: DateTime<Utc>,
}

impl From<ContractView> for Contract {
    fn from(c: ContractView) -> Self {
        Self {
            id: c.id,
            name: c.name,
            description: c.description,
            contract_type: c.contract_type,
            phase: c.phase,
            local_only: c.local_only,
            completed_deliverables: c.completed_deliverables,
            repositories: c
                .repositories
                .into_iter()
                .map(|r| Repository {
                    repository_url: r.repository_url,
                    local_path: r.local_path,
                })
                .collect(),
            created_at: c.created_at,
        }
    }
}

/// A new file.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CreateFile {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// Path of the file in the task's repository.
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub repo_file_path: String,
    pub contract_id: Option<Uuid>,
}

/// A file.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct File {
    pub id: Uuid,
    pub name: String,
    /// Elements (headings, paragraphs, lists, code) read from the repository.
    pub body: Value,
    pub repo_file_path: Option<String>,
    /// `none`, `pending`, `synced` or `failed`.
    pub repo_sync_status: String,
    pub repo_synced_at: Option<DateTime<Utc>>,
    pub version: i32,
}

impl From<FileView> for File {
    fn from(f: FileView) -> Self {
        Self {
            id: f.id,
            name: f.name,
            body: f.body,
            repo_file_path: f.repo_file_path,
            repo_sync_status: f.repo_sync_status,
            repo_synced_at: f.repo_synced_at,
            version: f.version,
        }
    }
}

/// Which task's daemon reads the file.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SyncFile {
    pub task_id: Uuid,
}

/// A checkpoint of a task.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Checkpoint {
    pub checkpoint_number: i32,
    pub commit_sha: Option<String>,
    pub branch_name: Option<String>,
    pub message: String,
    pub files_changed: Option<Value>,
    pub lines_added: Option<i32>,
    pub lines_removed: Option<i32>,
    /// Whether a (not yet expired) patch is stored to resume from.
    pub has_patch: bool,
    pub created_at: DateTime<Utc>,
}

impl From<CheckpointView> for Checkpoint {
    fn from(c: CheckpointView) -> Self {
        Self {
            checkpoint_number: c.checkpoint_number,
            commit_sha: c.commit_sha,
            branch_name: c.branch_name,
            message: c.message,
            files_changed: c.files_changed,
            lines_added: c.lines_added,
            lines_removed: c.lines_removed,
            has_patch: c.has_patch,
            created_at: c.created_at,
        }
    }
}

#[derive(ApiResponse)]
enum ContractCreated {
    #[oai(status = 201)]
    Created(Json<Contract>),
}

#[derive(ApiResponse)]
enum FileCreated {
    #[oai(status = 201)]
    Created(Json<File>),
}

pub struct ResourcesApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::Resources")]
impl ResourcesApi {
    /// Creates a contract with its repositories.
    #[oai(path = "/contracts", method = "post")]
    async fn create_contract(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        body: Json<CreateContract>,
    ) -> Result<ContractCreated, ApiError> {
        let b = body.0;
        let new = NewContract {
            name: b.name,
            description: b.description,
            contract_type: b.contract_type.as_str().to_owned(),
            phase: b.phase,
            local_only: b.local_only,
            repositories: b
                .repositories
                .into_iter()
                .map(|r| RepositoryView {
                    repository_url: r.repository_url,
                    local_path: r.local_path,
                })
                .collect(),
        };
        let view = resources::create_contract(&state.db, key.0.owner_id, &new).await?;
        Ok(ContractCreated::Created(Json(view.into())))
    }

    /// One contract, with its phase and completed deliverables.
    #[oai(path = "/contracts/:id", method = "get")]
    async fn get_contract(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Contract>, ApiError> {
        let view = resources::get_contract(&state.db, key.0.owner_id, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("contract"))?;
        Ok(Json(view.into()))
    }

    /// The task's checkpoints, oldest first.
    #[oai(path = "/tasks/:id/checkpoints", method = "get")]
    async fn checkpoints(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Vec<Checkpoint>>, ApiError> {
        owned_task(&state, key.0.owner_id, id.0).await?;
        let rows = resources::checkpoints(&state.db, key.0.owner_id, id.0).await?;
        Ok(Json(rows.into_iter().map(Checkpoint::from).collect()))
    }

    /// Creates a file kept in sync with a file of a repository.
    #[oai(path = "/files", method = "post")]
    async fn create_file(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        body: Json<CreateFile>,
    ) -> Result<FileCreated, ApiError> {
        let b = body.0;
        let view = resources::create_file(
            &state.db,
            key.0.owner_id,
            &b.name,
            &b.repo_file_path,
            b.contract_id,
        )
        .await?;
        Ok(FileCreated::Created(Json(view.into())))
    }

    /// One file.
    #[oai(path = "/files/:id", method = "get")]
    async fn get_file(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<File>, ApiError> {
        let view = resources::get_file(&state.db, key.0.owner_id, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("file"))?;
        Ok(Json(view.into()))
    }

    /// Asks the daemon of `taskId` to read the file from its repository
    /// (`readRepoFile`); the body arrives as a `fileUpdated` event.
    #[oai(path = "/files/:id/sync", method = "post")]
    async fn sync_file(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<SyncFile>,
    ) -> Result<Accepted, ApiError> {
        let owner = key.0.owner_id;
        let file = resources::get_file(&state.db, owner, id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("file"))?;
        let path = file.repo_file_path.ok_or_else(|| {
            ApiError::bad_request("NO_REPO_PATH", "the file has no repository path")
        })?;
        let task = owned_task(&state, owner, body.0.task_id).await?;
        let command = DaemonCommand::ReadRepoFile {
            request_id: file.id,
            file_path: path,
            repository_url: None,
        };
        let accepted = send_to_task(&state, owner, task.id, command).await?;
        resources::mark_sync_pending(&state.db, owner, file.id).await?;
        Ok(accepted)
    }
}
