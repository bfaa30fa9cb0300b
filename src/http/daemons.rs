//! `GET /api/v1/mesh/daemons[/{id}]`: connected daemons of the caller's
//! owner, read from the shared registry so every replica answers the same.

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::{param::Path, payload::Json, ApiResponse, Object, OpenApi, Tags};
use uuid::Uuid;

use super::{auth::UserKey, error::ApiError, tasks::Accepted};
use crate::{
    cluster::{reauth, registry, routing},
    protocol::daemon::DaemonCommand,
    state::AppState,
    Error,
};

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

/// A reauth request that was sent.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReauthStarted {
    /// Id to submit the code to and to poll the status of.
    pub request_id: Uuid,
}

#[derive(ApiResponse)]
enum ReauthStartedResponse {
    /// `triggerReauth` reached the daemon's replica.
    #[oai(status = 202)]
    Accepted(Json<ReauthStarted>),
}

/// The login code from the login page.
#[derive(Debug, Object)]
pub struct AuthCode {
    #[oai(validator(min_length = 1, max_length = 4096))]
    pub code: String,
}

/// The last status a daemon reported for a reauth request.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReauthStatusView {
    pub request_id: Uuid,
    /// `pending`, `url_ready`, `completed` or `failed`.
    pub status: String,
    pub login_url: Option<String>,
    pub error: Option<String>,
    pub token_saved: bool,
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

    /// Asks the daemon to log in to Claude again (`triggerReauth`).
    #[oai(path = "/daemons/:id/reauth", method = "post")]
    async fn reauth(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
    ) -> Result<ReauthStartedResponse, ApiError> {
        let request_id = Uuid::new_v4();
        send_to_daemon(
            &state,
            key.0.owner_id,
            id.0,
            DaemonCommand::TriggerReauth { request_id },
        )
        .await?;
        Ok(ReauthStartedResponse::Accepted(Json(ReauthStarted {
            request_id,
        })))
    }

    /// Hands the login code to the daemon (`submitAuthCode`).
    #[oai(path = "/daemons/:id/reauth/:request_id/code", method = "post")]
    async fn reauth_code(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        request_id: Path<Uuid>,
        body: Json<AuthCode>,
    ) -> Result<Accepted, ApiError> {
        let command = DaemonCommand::SubmitAuthCode {
            request_id: request_id.0,
            code: body.0.code.into(),
        };
        send_to_daemon(&state, key.0.owner_id, id.0, command).await
    }

    /// The last `reauthStatus` the daemon sent, from any replica; 404 when
    /// unknown or expired.
    #[oai(path = "/daemons/:id/reauth/:request_id", method = "get")]
    async fn reauth_status(
        &self,
        key: UserKey,
        state: Data<&AppState>,
        id: Path<Uuid>,
        request_id: Path<Uuid>,
    ) -> Result<Json<ReauthStatusView>, ApiError> {
        let record = reauth::load(&state.redis, key.0.owner_id, id.0, request_id.0)
            .await?
            .ok_or_else(|| ApiError::not_found("reauth request"))?;
        Ok(Json(ReauthStatusView {
            request_id: record.request_id,
            status: record.status.as_str().to_owned(),
            login_url: record.login_url,
            error: record.error,
            token_saved: record.token_saved,
        }))
    }
}

/// Sends a command to one of the owner's daemons: 202, or 409 when no
/// replica holds it (another owner's daemon is offline too, as far as the
/// caller can tell).
async fn send_to_daemon(
    state: &AppState,
    owner_id: Uuid,
    daemon_id: Uuid,
    command: DaemonCommand,
) -> Result<Accepted, ApiError> {
    if registry::get(&state.redis, owner_id, daemon_id)
        .await?
        .is_none()
    {
        return Err(ApiError::daemon_offline());
    }
    match routing::send_command(&state.redis, &state.metrics, daemon_id, &command).await {
        Ok(()) => Ok(Accepted::Accepted),
        Err(Error::DaemonOffline(_)) => Err(ApiError::daemon_offline()),
        Err(e) => Err(e.into()),
    }
}
