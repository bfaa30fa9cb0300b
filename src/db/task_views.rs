//! Tasks as the HTTP API shows and creates them (owner-scoped).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{Error, Result};

/// A task as the API returns it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TaskView {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub daemon_id: Option<Uuid>,
    pub contract_id: Option<Uuid>,
    pub is_supervisor: bool,
    pub version: i32,
    pub retry_count: i32,
    pub max_retries: i32,
    pub progress_summary: Option<String>,
    pub error_message: Option<String>,
    pub pr_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "id, name, status, daemon_id, contract_id, is_supervisor, version, retry_count,
    max_retries, progress_summary, error_message, pr_url, created_at, started_at, completed_at";

/// What a new task is made of.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub name: String,
    pub plan: String,
    pub contract_id: Option<Uuid>,
    pub is_supervisor: bool,
    pub repository_url: Option<String>,
    pub base_branch: Option<String>,
    pub target_branch: Option<String>,
    pub max_retries: i32,
}

/// Creates a `pending` task. A contract id that is not the owner's answers
/// `NotFound`, as if it did not exist.
pub async fn create(pool: &PgPool, owner_id: Uuid, t: &NewTask) -> Result<TaskView> {
    let row: Option<TaskView> = sqlx::query_as(&format!(
        "INSERT INTO tasks (owner_id, contract_id, name, plan, is_supervisor, repository_url,
                            base_branch, target_branch, max_retries)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9
         WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM contracts WHERE id = $2 AND owner_id = $1)
         RETURNING {COLUMNS}"
    ))
    .bind(owner_id)
    .bind(t.contract_id)
    .bind(&t.name)
    .bind(&t.plan)
    .bind(t.is_supervisor)
    .bind(&t.repository_url)
    .bind(&t.base_branch)
    .bind(&t.target_branch)
    .bind(t.max_retries)
    .fetch_optional(pool)
    .await?;
    row.ok_or(Error::NotFound("contract"))
}

/// One task of the owner.
pub async fn get(pool: &PgPool, owner_id: Uuid, task_id: Uuid) -> Result<Option<TaskView>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tasks WHERE id = $1 AND owner_id = $2"
    ))
    .bind(task_id)
    .bind(owner_id)
    .fetch_optional(pool)
    .await?)
}

/// A stored output event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutputRow {
    pub id: i64,
    pub message_type: String,
    pub content: String,
    pub tool_name: Option<String>,
    pub tool_input: Option<Value>,
    pub is_error: Option<bool>,
    pub cost_usd: Option<f64>,
    pub duration_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Output events of an owner's task after `after`, oldest first.
pub async fn outputs(
    pool: &PgPool,
    owner_id: Uuid,
    task_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<OutputRow>> {
    Ok(sqlx::query_as(
        "SELECT id, message_type, content, tool_name, tool_input, is_error, cost_usd, duration_ms, created_at
         FROM task_outputs WHERE task_id = $1 AND owner_id = $2 AND id > $3
         ORDER BY id LIMIT $4",
    )
    .bind(task_id)
    .bind(owner_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
