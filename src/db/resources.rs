//! Contracts, files and checkpoints as the HTTP API creates and shows them
//! (owner-scoped: another owner's id behaves as if it did not exist).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// A contract with its repositories.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContractView {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub contract_type: String,
    pub phase: String,
    pub local_only: bool,
    pub completed_deliverables: Value,
    pub created_at: DateTime<Utc>,
    #[sqlx(skip)]
    pub repositories: Vec<RepositoryView>,
}

/// A repository of a contract.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RepositoryView {
    pub repository_url: Option<String>,
    pub local_path: Option<String>,
}

/// What a new contract is made of.
#[derive(Debug, Clone)]
pub struct NewContract {
    pub name: String,
    pub description: Option<String>,
    pub contract_type: String,
    pub phase: String,
    pub local_only: bool,
    pub repositories: Vec<RepositoryView>,
}

const CONTRACT_COLUMNS: &str =
    "id, name, description, contract_type, phase, local_only, completed_deliverables, created_at";

/// Creates a contract and its repositories in one transaction.
pub async fn create_contract(
    pool: &PgPool,
    owner_id: Uuid,
    c: &NewContract,
) -> Result<ContractView> {
    let mut tx = pool.begin().await?;
    let mut view: ContractView = sqlx::query_as(&format!(
        "INSERT INTO contracts (owner_id, name, description, contract_type, phase, local_only)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {CONTRACT_COLUMNS}"
    ))
    .bind(owner_id)
    .bind(&c.name)
    .bind(&c.description)
    .bind(&c.contract_type)
    .bind(&c.phase)
    .bind(c.local_only)
    .fetch_one(&mut *tx)
    .await?;
    for r in &c.repositories {
        sqlx::query("INSERT INTO contract_repositories (contract_id, repository_url, local_path) VALUES ($1, $2, $3)")
            .bind(view.id)
            .bind(&r.repository_url)
            .bind(&r.local_path)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    view.repositories = c.repositories.clone();
    Ok(view)
}

/// One contract of the owner, with its repositories.
pub async fn get_contract(pool: &PgPool, owner_id: Uuid, id: Uuid) -> Result<Option<ContractView>> {
    let view: Option<ContractView> = sqlx::query_as(&format!(
        "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?;
    let Some(mut view) = view else {
        return Ok(None);
    };
    view.repositories = sqlx::query_as(
        "SELECT repository_url, local_path FROM contract_repositories WHERE contract_id = $1 ORDER BY created_at, id",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(view))
}

/// A file.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FileView {
    pub id: Uuid,
    pub name: String,
    pub body: Value,
    pub repo_file_path: Option<String>,
    pub repo_sync_status: String,
    pub repo_synced_at: Option<DateTime<Utc>>,
    pub version: i32,
}

const FILE_COLUMNS: &str =
    "id, name, body, repo_file_path, repo_sync_status, repo_synced_at, version";

/// Creates a file; a contract id that is not the owner's is `NotFound`.
pub async fn create_file(
    pool: &PgPool,
    owner_id: Uuid,
    name: &str,
    repo_file_path: &str,
    contract_id: Option<Uuid>,
) -> Result<FileView> {
    let row: Option<FileView> = sqlx::query_as(&format!(
        "INSERT INTO files (owner_id, contract_id, name, repo_file_path)
         SELECT $1, $2, $3, $4
         WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM contracts WHERE id = $2 AND owner_id = $1)
         RETURNING {FILE_COLUMNS}"
    ))
    .bind(owner_id)
    .bind(contract_id)
    .bind(name)
    .bind(repo_file_path)
    .fetch_optional(pool)
    .await?;
    row.ok_or(Error::NotFound("contract"))
}

/// One file of the owner.
pub async fn get_file(pool: &PgPool, owner_id: Uuid, id: Uuid) -> Result<Option<FileView>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {FILE_COLUMNS} FROM files WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?)
}

/// Marks a sync as requested.
pub async fn mark_sync_pending(pool: &PgPool, owner_id: Uuid, id: Uuid) -> Result<()> {
    sqlx::query("UPDATE files SET repo_sync_status = 'pending', updated_at = now() WHERE id = $1 AND owner_id = $2")
        .bind(id)
        .bind(owner_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A checkpoint of a task.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointView {
    pub checkpoint_number: i32,
    pub commit_sha: Option<String>,
    pub branch_name: Option<String>,
    pub message: String,
    pub files_changed: Option<Value>,
    pub lines_added: Option<i32>,
    pub lines_removed: Option<i32>,
    pub has_patch: bool,
    pub created_at: DateTime<Utc>,
}

/// The checkpoints of an owner's task, oldest first.
pub async fn checkpoints(
    pool: &PgPool,
    owner_id: Uuid,
    task_id: Uuid,
) -> Result<Vec<CheckpointView>> {
    Ok(sqlx::query_as(
        "SELECT c.checkpoint_number, c.commit_sha, c.branch_name, c.message, c.files_changed,
                c.lines_added, c.lines_removed,
                EXISTS (SELECT 1 FROM checkpoint_patches p
                        WHERE p.checkpoint_id = c.id AND p.expires_at > now()) AS has_patch,
                c.created_at
         FROM task_checkpoints c JOIN tasks t ON t.id = c.task_id
         WHERE c.task_id = $1 AND t.owner_id = $2
         ORDER BY c.checkpoint_number",
    )
    .bind(task_id)
    .bind(owner_id)
    .fetch_all(pool)
    .await?)
}
