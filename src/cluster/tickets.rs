//! One-use tickets for the event endpoints (browsers cannot set headers on
//! a WebSocket). Stored in Redis, hashed, with a TTL, so any replica accepts
//! a ticket another issued; GETDEL makes it single-use.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use fred::{prelude::*, types::Expiration};

use super::Redis;
use crate::{auth::Principal, Result};

#[derive(serde::Serialize, serde::Deserialize)]
struct Stored {
    user_id: uuid::Uuid,
    owner_id: uuid::Uuid,
    key_id: uuid::Uuid,
}

/// Issues a ticket for `principal`, valid `ttl_ms`.
pub async fn issue(redis: &Redis, principal: &Principal, ttl_ms: u64) -> Result<String> {
    let bytes: [u8; 24] = rand::random();
    let ticket = format!("mgt_{}", URL_SAFE_NO_PAD.encode(bytes));
    let stored = Stored {
        user_id: principal.user_id,
        owner_id: principal.owner_id,
        key_id: principal.key_id,
    };
    let json = serde_json::to_string(&stored).map_err(|e| crate::Error::Internal(e.to_string()))?;
    let _: () = redis
        .client
        .set(
            redis.keys.ticket(&crate::auth::hash_key(&ticket)),
            json,
            Some(Expiration::PX(ttl_ms as i64)),
            None,
            false,
        )
        .await?;
    Ok(ticket)
}

/// Redeems a ticket (once): the principal it was issued for, or `None`.
pub async fn redeem(redis: &Redis, ticket: &str) -> Result<Option<Principal>> {
    let raw: Option<String> = redis
        .client
        .getdel(redis.keys.ticket(&crate::auth::hash_key(ticket)))
        .await?;
    Ok(raw
        .and_then(|r| serde_json::from_str::<Stored>(&r).ok())
        .map(|s| Principal {
            user_id: s.user_id,
            owner_id: s.owner_id,
            key_id: s.key_id,
        }))
}
