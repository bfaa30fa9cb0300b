//! Tool keys: a running task registers one so the program it runs can call
//! meshgate's HTTP API (`X-Tool-Key`) on any replica until it is revoked
//! (`revokeToolKey` or `taskComplete`). Only a SHA-256 of the key is stored,
//! and every entry expires on its own after `MESHGATE_TOOL_KEY_TTL_MS`.

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Redis;
use crate::{auth::hash_key, Result};

/// What a live tool key stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolKeyEntry {
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub daemon_id: Uuid,
}

/// Registers `key` for the task (replacing the task's earlier key). The
/// key's entry and the task's index are in different slots, so this is
/// three commands, ordered so that concurrent registrations for one task
/// leave exactly the last index writer's key alive: the entry first, then
/// the index swapped (`SET … GET`), then the key it replaced revoked. If a
/// later step fails, the new entry is withdrawn again (best effort) so no
/// key stays valid that revocation cannot find.
pub async fn register(redis: &Redis, key: &str, entry: &ToolKeyEntry, ttl_ms: u64) -> Result<()> {
    let hash = hash_key(key);
    let json = serde_json::to_string(entry).map_err(|e| crate::Error::Internal(e.to_string()))?;
    let expiry = Some(Expiration::PX(ttl_ms as i64));
    let entry_key = redis.keys.tool_key(&hash);
    let _: () = redis
        .client
        .set(&entry_key, json, expiry.clone(), None, false)
        .await?;
    let swapped: Result<Option<String>, _> = redis
        .client
        .set(
            redis.keys.tool_key_of_task(entry.task_id),
            hash.as_str(),
            expiry,
            None,
            true,
        )
        .await;
    let old = match swapped {
        Ok(old) => old,
        Err(e) => {
            let _: Result<i64, _> = redis.client.del(&entry_key).await;
            return Err(e.into());
        }
    };
    if let Some(old) = old.filter(|old| *old != hash) {
        // The replaced key must stop working: one retry, then fail loudly.
        let old_key = redis.keys.tool_key(&old);
        let first: Result<i64, _> = redis.client.del(&old_key).await;
        if first.is_err() {
            let _: i64 = redis.client.del(&old_key).await?;
        }
    }
    Ok(())
}

/// Revokes the task's key; false when it had none.
pub async fn revoke(redis: &Redis, task_id: Uuid) -> Result<bool> {
    let hash: Option<String> = redis
        .client
        .getdel(redis.keys.tool_key_of_task(task_id))
        .await?;
    let Some(hash) = hash else {
        return Ok(false);
    };
    let _: i64 = redis.client.del(redis.keys.tool_key(&hash)).await?;
    Ok(true)
}

/// The entry of a live key, or `None`.
pub async fn lookup(redis: &Redis, key: &str) -> Result<Option<ToolKeyEntry>> {
    let raw: Option<String> = redis
        .client
        .get(redis.keys.tool_key(&hash_key(key)))
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}
