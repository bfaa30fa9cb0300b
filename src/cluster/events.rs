//! Events for web clients, published on Redis channels per owner and per
//! task, so a client on any replica sees what happened on any other.
//! Publishing is best-effort: a lost event is logged, never fatal, because
//! the durable state is in PostgreSQL and clients can re-read it.

use serde::Serialize;
use uuid::Uuid;

use super::Redis;
use crate::protocol::client::ClientEvent;

/// Where an event goes: the owner's channel, the task's channel, or both.
#[derive(Debug, Clone, Copy)]
pub struct Audience {
    pub owner_id: Uuid,
    pub task_id: Option<Uuid>,
    /// Whether the owner-wide topic also gets it (output lines do not).
    pub to_owner: bool,
}

/// The envelope on the wire: the event plus its owner, so a pod can check
/// ownership before handing it to a client.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<'a> {
    owner_id: Uuid,
    /// A stored output line's id, beside the event so that the receiving
    /// hub reads it without parsing the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    output_id: Option<i64>,
    event: &'a ClientEvent,
}

/// The published form of an event: `{ownerId, outputId?, event}` (every
/// event channel carries this, so the receiving pod can check ownership and
/// place a stored output line in its task's stream). `None` (logged) if it
/// cannot be serialised.
pub fn payload(owner_id: Uuid, event: &ClientEvent) -> Option<String> {
    let output_id = match event {
        ClientEvent::TaskOutput { id, .. } => *id,
        _ => None,
    };
    serde_json::to_string(&Envelope {
        owner_id,
        output_id,
        event,
    })
    .inspect_err(|e| tracing::error!(error = %e, "event could not be serialised"))
    .ok()
}

/// Publishes one event, logging (not returning) failures.
pub async fn publish_can_fail(redis: &Redis, audience: Audience, event: &ClientEvent) {
    let Some(payload) = payload(audience.owner_id, event) else {
        return;
    };
    let mut channels = Vec::with_capacity(2);
    if audience.to_owner {
        channels.push(redis.keys.owner_events(audience.owner_id));
    }
    if let Some(task_id) = audience.task_id {
        channels.push(redis.keys.task_events(task_id));
    }
    for channel in channels {
        if let Err(e) = redis.publish(&channel, &payload).await {
            tracing::warn!(error = %e, %channel, owner_id = %audience.owner_id, "event not published");
        }
    }
}
