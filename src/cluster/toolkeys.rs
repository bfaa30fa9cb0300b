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

fn entry_prefix(redis: &Redis) -> String {
    redis.keys.tool_key_prefix()
}

/// Registers `key` for the task (replacing the task's earlier key).
pub async fn register(redis: &Redis, key: &str, entry: &ToolKeyEntry, ttl_ms: u64) -> Result<()> {
    let hash = hash_key(key);
    let json = serde_json::to_string(entry).map_err(|e| crate::Error::Internal(e.to_string()))?;
    let _: i64 = redis
        .scripts
        .toolkey_set
        .evalsha_with_reload(
            &redis.client,
            vec![
                format!("{}{hash}", entry_prefix(redis)),
                redis.keys.tool_key_of_task(entry.task_id),
            ],
            vec![json, hash, ttl_ms.to_string(), entry_prefix(redis)],
        )
        .await?;
    Ok(())
}

/// Revokes the task's key; false when it had none.
pub async fn revoke(redis: &Redis, task_id: Uuid) -> Result<bool> {
    let n: i64 = redis
        .scripts
        .toolkey_revoke
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.tool_key_of_task(task_id)],
            vec![entry_prefix(redis)],
        )
        .await?;
    Ok(n == 1)
}

/// The entry of a live key, or `None`.
pub async fn lookup(redis: &Redis, key: &str) -> Result<Option<ToolKeyEntry>> {
    let raw: Option<String> = redis
        .client
        .get(format!("{}{}", entry_prefix(redis), hash_key(key)))
        .await?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}
