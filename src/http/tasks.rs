//! Tasks: create, read, outputs, and commands that need no answer
//! (`interrupt`, `message`, `checkpoint`).

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{
    param::{Path, Query},
    payload::Json,
    ApiResponse, Object, OpenApi, Tags,
};
use serde_json::Value;
use uuid::Uuid;

use super::{auth::UserKey, error::ApiError};
use crate::{
    cluster::routing,
    db::task_views::{self, NewTask, OutputRow, TaskView},
    protocol::daemon::DaemonCommand,
    state::AppState,
    Error,
};

#[derive(Tags)]
enum ApiTags {
    /// Tasks and what their daemons report.
    Tasks,
}

/// A new task.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CreateTask {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// What the task should do (the prompt).
    #[oai(validator(min_length = 1, max_length = 200000))]
    pub plan: String,
    pub contract_id: Option<Uuid>,
    pub is_supervisor: Option<bool>,
    #[oai(validator(max_length = 2000))]
    pub repository_url: Option<String>,
    #[oai(validator(max_length = 255))]
    pub base_branch: Option<String>,
    #[oai(validator(max_length = 255))]
    pub target_branch: Option<String>,
    /// Times the task is handed to another daemon after its daemon is gone
    /// (default 3).
    #[oai(validator(minimum(value = "0"), maximum(value = "100")))]
    pub max_retries: Option<i32>,
}

/// A task.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Task {
    pub id: Uuid,
    pub name: String,
    /// `pending`, `starting`, `running`, `done`, `failed`, …
    pub status: String,
    pub daemon_id: Option<Uuid>,
    pub contract_id: Option<Uuid>,
    pub is_supervisor: bool,
    /// Bumped on every change.
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

impl From<TaskView> for Task {
    fn from(t: TaskView) -> Self {
        Self {
            id: t.id,
            name: t.name,
            status: t.status,
            daemon_id: t.daemon_id,
            contract_id: t.contract_id,
            is_supervisor: t.is_supervisor,
            version: t.version,
            retry_count: t.retry_count,
            max_retries: t.max_retries,
            progress_summary: t.progress_summary,
            error_message: t.error_message,
            pr_url: t.pr_url,
            created_at: t.created_at,
            started_at: t.started_at,
            completed_at: t.completed_at,
        }
    }
}

/// A stored output event.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Output {
    /// Position in the task's output; pass as `after` to page.
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

impl From<OutputRow> for Output {
    fn from(o: OutputRow) -> Self {
        Self {
            id: o.id,
            message_type: o.message_type,
            content: o.content,
            tool_name: o.tool_name,
            tool_input: o.tool_input,
            is_error: o.is_error,
            cost_usd: o.cost_usd,
            duration_ms: o.duration_ms,
            created_at: o.created_at,
        }
    }
}

/// `interrupt` options.
#[derive(Debug, Object)]
pub struct Interrupt {
    /// Let the task stop at a safe point (default true).
    pub graceful: Option<bool>,
}

/// A text for the running task.
#[derive(Debug, Object)]
pub struct MessageBody {
    #[oai(validator(min_length = 1, max_length = 100000))]
    pub message: String,
}

#[derive(ApiResponse)]
enum Created {
    /// The task, `pending` until a daemon takes it.
    #[oai(status = 201)]
    Created(Json<Task>),
}

#[derive(ApiResponse)]
pub enum Accepted {
    /// The command reached a replica holding the daemon.
    #[oai(status = 202)]
    Accepted,
}

pub struct TasksApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Creates a `pending` task; a replica dispatches it (`spawnTask`) to a
    /// connected daemon of the owner with free capacity.
    #[oai(path = "/tasks", method = "post")]
    async fn create(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        body: Json<CreateTask>,
    ) -> Result<Created, ApiError> {
        let b = body.0;
        let new = NewTask {
            name: b.name,
            plan: b.plan,
            contract_id: b.contract_id,
            is_supervisor: b.is_supervisor.unwrap_or(false),
            repository_url: b.repository_url,
            base_branch: b.base_branch,
            target_branch: b.target_branch,
            max_retries: b.max_retries.unwrap_or(3),
        };
        let task = task_views::create(&state.db, key.0.owner_id, &new).await?;
        state.dispatcher.kick(key.0.owner_id);
        Ok(Created::Created(Json(task.into())))
    }

    /// One task.
    #[oai(path = "/tasks/:id", method = "get")]
    async fn get(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<Json<Task>, ApiError> {
        Ok(Json(owned_task(&state, key.0.owner_id, id.0).await?.into()))
    }

    /// Stored output events, oldest first, after the output id `after`.
    #[oai(path = "/tasks/:id/outputs", method = "get")]
    async fn outputs(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        #[oai(validator(minimum(value = "0")))] after: Query<Option<i64>>,
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))] limit: Query<Option<i64>>,
    ) -> Result<Json<Vec<Output>>, ApiError> {
        owned_task(&state, key.0.owner_id, id.0).await?;
        let rows = task_views::outputs(
            &state.db,
            key.0.owner_id,
            id.0,
            after.0.unwrap_or(0),
            limit.0.unwrap_or(100),
        )
        .await?;
        Ok(Json(rows.into_iter().map(Output::from).collect()))
    }

    /// Sends `interruptTask` to the task's daemon.
    #[oai(path = "/tasks/:id/interrupt", method = "post")]
    async fn interrupt(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<Interrupt>,
    ) -> Result<Accepted, ApiError> {
        let graceful = body.0.graceful.unwrap_or(true);
        send_to_task(
            &state,
            key.0.owner_id,
            id.0,
            DaemonCommand::InterruptTask {
                task_id: id.0,
                graceful,
            },
        )
        .await
    }

    /// Sends `sendMessage` to the task's daemon.
    #[oai(path = "/tasks/:id/message", method = "post")]
    async fn message(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<MessageBody>,
    ) -> Result<Accepted, ApiError> {
        let command = DaemonCommand::SendMessage {
            task_id: id.0,
            message: body.0.message,
        };
        send_to_task(&state, key.0.owner_id, id.0, command).await
    }

    /// Sends `createCheckpoint`; the result arrives as events.
    #[oai(path = "/tasks/:id/checkpoint", method = "post")]
    async fn checkpoint(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        body: Json<MessageBody>,
    ) -> Result<Accepted, ApiError> {
        let command = DaemonCommand::CreateCheckpoint {
            task_id: id.0,
            message: body.0.message,
        };
        send_to_task(&state, key.0.owner_id, id.0, command).await
    }
}

/// The owner's task, or 404.
pub async fn owned_task(
    state: &AppState,
    owner_id: Uuid,
    task_id: Uuid,
) -> Result<TaskView, ApiError> {
    task_views::get(&state.db, owner_id, task_id)
        .await?
        .ok_or_else(|| ApiError::not_found("task"))
}

/// The daemon a task of `owner_id` is assigned to: from this pod's short
/// cache when it holds the task (`cluster::task_routes`), else from
/// PostgreSQL (then cached). 404 for an unknown or another owner's task, 409
/// when it has no daemon.
async fn task_daemon(state: &AppState, owner_id: Uuid, task_id: Uuid) -> Result<Uuid, ApiError> {
    if let Some(daemon) = state.task_routes.get(owner_id, task_id) {
        return Ok(daemon);
    }
    let mark = state.task_routes.mark();
    let task = owned_task(state, owner_id, task_id).await?;
    let daemon = task.daemon_id.ok_or_else(ApiError::daemon_offline)?;
    state.task_routes.store(mark, owner_id, task_id, daemon);
    Ok(daemon)
}

/// Fire-and-forget: 202 once a replica holding the task's daemon got the
/// command, 409 when no replica holds it.
pub async fn send_to_task(
    state: &AppState,
    owner_id: Uuid,
    task_id: Uuid,
    command: DaemonCommand,
) -> Result<Accepted, ApiError> {
    let daemon = task_daemon(state, owner_id, task_id).await?;
    match routing::send_command(&state.redis, &state.metrics, daemon, &command).await {
        Ok(()) => Ok(Accepted::Accepted),
        Err(Error::DaemonOffline(_)) => Err(ApiError::daemon_offline()),
        Err(e) => Err(e.into()),
    }
}
