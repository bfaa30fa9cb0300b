//! Routes for the programs tasks run, authenticated by `X-Tool-Key` (a key
//! the task registered with `registerToolKey`), on any replica.

use poem::{web::Data, Request};
use poem_openapi::{auth::ApiKey, payload::Json, Object, OpenApi, SecurityScheme, Tags};
use uuid::Uuid;

use super::error::ApiError;
use crate::{
    cluster::toolkeys::{self, ToolKeyEntry},
    state::AppState,
};

#[derive(Tags)]
enum ApiTags {
    /// Calls made by the programs tasks run.
    Tool,
}

/// A tool key registered by a running task.
#[derive(SecurityScheme)]
#[oai(
    ty = "api_key",
    key_name = "X-Tool-Key",
    key_in = "header",
    checker = "check_tool_key"
)]
pub struct ToolKey(pub ToolKeyEntry);

async fn check_tool_key(req: &Request, key: ApiKey) -> poem::Result<ToolKeyEntry> {
    let state = req.data::<AppState>().ok_or_else(|| {
        poem::Error::from_string(
            "state missing",
            poem::http::StatusCode::INTERNAL_SERVER_ERROR,
        )
    })?;
    match toolkeys::lookup(&state.redis, &key.key).await {
        Ok(Some(entry)) => Ok(entry),
        Ok(None) => {
            Err(ApiError::unauthorized("AUTH_FAILED", "unknown or revoked tool key").into())
        }
        Err(e) => Err(ApiError::from(e).into()),
    }
}

/// Who a tool key acts for.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct WhoAmI {
    /// The task that registered the key.
    pub task_id: Uuid,
    /// The task's owner.
    pub owner_id: Uuid,
}

pub struct ToolApi;

#[OpenApi(prefix_path = "/api/v1/mesh", tag = "ApiTags::Tool")]
impl ToolApi {
    /// The task and owner of a live tool key; 401 when unknown or revoked.
    #[oai(path = "/tool/whoami", method = "get")]
    async fn whoami(&self, key: ToolKey, _state: Data<&AppState>) -> Json<WhoAmI> {
        Json(WhoAmI {
            task_id: key.0.task_id,
            owner_id: key.0.owner_id,
        })
    }
}
