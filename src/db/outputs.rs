//! Task output rows: written in batches by the ingest queue, read oldest
//! first by the API.

use sqlx::PgPool;
use uuid::Uuid;

use crate::{protocol::claude::OutputEvent, Result};

/// One parsed output line waiting to be stored.
#[derive(Debug, Clone)]
pub struct NewOutput {
    pub task_id: Uuid,
    pub owner_id: Uuid,
    pub event: OutputEvent,
}

/// Inserts a batch in one statement, in the batch's order (the ids, which
/// order outputs, follow it). Returns the new ids in that order.
pub async fn insert_batch(pool: &PgPool, batch: &[NewOutput]) -> Result<Vec<i64>> {
    let n = batch.len();
    let (mut task, mut owner, mut kind, mut content) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut tool, mut input, mut is_error, mut cost, mut duration) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for o in batch {
        task.push(o.task_id);
        owner.push(o.owner_id);
        kind.push(o.event.message_type.as_str());
        content.push(o.event.content.as_str());
        tool.push(o.event.tool_name.as_deref());
        input.push(o.event.tool_input.as_ref().map(|v| v.to_string()));
        is_error.push(o.event.is_error);
        cost.push(o.event.cost_usd);
        duration.push(o.event.duration_ms);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO task_outputs
           (task_id, owner_id, message_type, content, tool_name, tool_input, is_error, cost_usd, duration_ms)
         SELECT t, o, k, c, tn, ti::jsonb, e, cu, d
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bool[], $8::float8[], $9::int8[])
              WITH ORDINALITY AS x(t, o, k, c, tn, ti, e, cu, d, ord)
         ORDER BY ord
         RETURNING id",
    )
    .bind(&task)
    .bind(&owner)
    .bind(&kind)
    .bind(&content)
    .bind(&tool)
    .bind(&input)
    .bind(&is_error)
    .bind(&cost)
    .bind(&duration)
    .fetch_all(pool)
    .await?)
}
