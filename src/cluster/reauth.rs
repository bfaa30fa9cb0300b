//! Re-authentication status of a daemon (`reauthStatus`), kept in Redis with
//! a TTL under the daemon and request id, so any replica can answer
//! `GET /api/v1/mesh/daemons/{id}/reauth/{requestId}` until it expires.

use fred::{prelude::*, types::Expiration};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Redis;
use crate::{protocol::daemon::ReauthState, Result};

/// The last status a daemon reported for a reauth request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReauthRecord {
    pub owner_id: Uuid,
    pub request_id: Uuid,
    pub status: ReauthState,
    pub login_url: Option<String>,
    pub error: Option<String>,
    pub token_saved: bool,
}

/// Stores (replaces) the status of `daemon_id`'s request.
pub async fn store(
    redis: &Redis,
    daemon_id: Uuid,
    record: &ReauthRecord,
    ttl_ms: u64,
) -> Result<()> {
    let json = serde_json::to_string(record).map_err(|e| crate::Error::Internal(e.to_string()))?;
    let key = redis.keys.reauth(daemon_id, record.request_id);
    let _: () = redis
        .client
        .set(key, json, Some(Expiration::PX(ttl_ms as i64)), None, false)
        .await?;
    Ok(())
}

/// The status of a request of `owner_id`'s daemon, or `None` when unknown,
/// expired or another owner's.
pub async fn load(
    redis: &Redis,
    owner_id: Uuid,
    daemon_id: Uuid,
    request_id: Uuid,
) -> Result<Option<ReauthRecord>> {
    let raw: Option<String> = redis
        .client
        .get(redis.keys.reauth(daemon_id, request_id))
        .await?;
    Ok(raw
        .and_then(|r| serde_json::from_str::<ReauthRecord>(&r).ok())
        .filter(|r| r.owner_id == owner_id))
}
