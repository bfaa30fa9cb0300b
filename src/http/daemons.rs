//! `GET /api/v1/mesh/daemons[/{id}]`: connected daemons of the caller's
//! owner, read from the shared registry so every replica answers the same.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{param::Path, payload::Json, ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::{auth::UserKey, error::ApiError};
use crate::{cluster::registry, state::AppState};

#[derive(Tags)]
enum ApiTags {
    /// Daemons connected to any replica.
    Daemons,
}

/// A connected daemon.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct Daemon {
    /// Stable id per (owner, machine id).
    pub id: Uuid,
    pub hostname: String,
    pub machine_id: String,
    /// Tasks it may run at once.
    pub max_concurrent_tasks: i32,
    /// When its current connection registered.
    pub connected_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Tasks it reported running in its last heartbeat.
    pub active_task_ids: Vec<Uuid>,
    #[oai(skip_serializing_if_is_none)]
    pub working_directory: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub home_directory: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub worktrees_directory: Option<String>,
}

impl From<registry::DaemonEntry> for Daemon {
    fn from(e: registry::DaemonEntry) -> Self {
        Self {
            id: e.id,
            hostname: e.hostname,
            machine_id: e.machine_id,
            max_concurrent_tasks: e.max_concurrent_tasks,
            connected_at: e.connected_at,
            last_heartbeat_at: e.last_heartbeat_at,
            active_task_ids: e.active_task_ids,
            working_directory: e.working_directory,
            home_directory: e.home_directory,
            worktrees_directory: e.worktrees_directory,
        }
    }
}

#[derive(ApiResponse)]
enum DaemonResponse {
    /// The daemon.
    #[oai(status = 200)]
    Ok(Json<Daemon>),
}

pub struct DaemonsApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::Daemons")]
impl DaemonsApi {
    /// Connected daemons of the owner, whichever replica holds them.
    #[oai(path = "/daemons", method = "get")]
    async fn list(
        &self,
        key: UserKey,
        state: Data<&AppState>,
    ) -> Result<Json<Vec<Daemon>>, ApiError> {
        let entries = registry::list_owner(&state.redis, key.0.owner_id).await?;
        Ok(Json(entries.into_iter().map(Daemon::from).collect()))
    }

    /// One connected daemon of the owner; 404 when it is not connected (or
    /// is another owner's).
    #[oai(path = "/daemons/:id", method = "get")]
    async fn get(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<DaemonResponse, ApiError> {
        match registry::get(&state.redis, key.0.owner_id, id.0).await? {
            Some(entry) => Ok(DaemonResponse::Ok(Json(entry.into()))),
            None => Err(ApiError::not_found("daemon")),
        }
    }
}
