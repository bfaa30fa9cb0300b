//! Task output rows: written in batches by the ingest queue, read oldest
//! first by the API and by web clients' replays (PROTOCOL.md §2.1).

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    protocol::claude::{MessageType, OutputEvent},
    Result,
};

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
    let (mut tool, mut input, mut is_error, mut cost, mut duration, mut partial) = (
        Vec::with_capacity(n),
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
        partial.push(o.event.is_partial);
    }
    Ok(sqlx::query_scalar(
        "INSERT INTO task_outputs
           (task_id, owner_id, message_type, content, tool_name, tool_input, is_error, cost_usd,
            duration_ms, is_partial)
         SELECT t, o, k, c, tn, ti::jsonb, e, cu, d, p
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bool[], $8::float8[], $9::int8[], $10::bool[])
              WITH ORDINALITY AS x(t, o, k, c, tn, ti, e, cu, d, p, ord)
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
    .bind(&partial)
    .fetch_all(pool)
    .await?)
}

/// A stored line as its live event said it.
#[derive(Debug, Clone)]
pub struct StoredOutput {
    pub id: i64,
    pub event: OutputEvent,
}

#[derive(sqlx::FromRow)]
struct StoredRow {
    id: i64,
    message_type: String,
    content: String,
    tool_name: Option<String>,
    tool_input: Option<serde_json::Value>,
    is_error: Option<bool>,
    cost_usd: Option<f64>,
    duration_ms: Option<i64>,
    is_partial: bool,
}

/// At most `limit` lines of a task after the output id `after`, oldest
/// first (the owner is checked by the caller).
pub async fn page(
    pool: &PgPool,
    task_id: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredOutput>> {
    let rows: Vec<StoredRow> = sqlx::query_as(
        "SELECT id, message_type, content, tool_name, tool_input, is_error, cost_usd, duration_ms,
                is_partial
         FROM task_outputs WHERE task_id = $1 AND id > $2
         ORDER BY id LIMIT $3",
    )
    .bind(task_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredOutput {
            id: r.id,
            event: OutputEvent {
                message_type: MessageType::from_name(&r.message_type).unwrap_or(MessageType::Raw),
                content: r.content,
                tool_name: r.tool_name,
                tool_input: r.tool_input,
                is_error: r.is_error,
                cost_usd: r.cost_usd,
                duration_ms: r.duration_ms,
                is_partial: r.is_partial,
            },
        })
        .collect())
}

/// The id of a task's latest stored line (0 when it has none).
pub async fn latest_id(pool: &PgPool, task_id: Uuid) -> Result<i64> {
    Ok(
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(id), 0)::int8 FROM task_outputs WHERE task_id = $1",
        )
        .bind(task_id)
        .fetch_one(pool)
        .await?,
    )
}
