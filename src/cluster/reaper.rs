//! Cleanup after a daemon that is gone for good — its socket closed, or its
//! pod died and its lease lapsed — and did not come back within the grace
//! period. Every pod runs this loop; `redis/reap_claim.lua` hands each gone
//! daemon to exactly one of them, and the SQL is conditional, so the tasks
//! are retried exactly once. A pod that dies mid-cleanup leaves its claim to
//! expire, and another pod finishes the job.

use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    events::{self, Audience},
    task_routes,
};
use crate::{
    db::{self, tasks::TaskChange},
    metrics::Metrics,
    protocol::client::ClientEvent,
    state::AppState,
    Result,
};

/// Daemons claimed per round.
const BATCH: u32 = 50;

/// Runs a reaping round every `reaper_interval` until `stop`.
pub async fn run(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.reaper_interval());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = reap_once(&state).await {
                    Metrics::inc(&state.metrics.redis_errors);
                    tracing::warn!(error = %e, "reaper round failed; will retry");
                }
            }
        }
    }
}

/// How long a claim protects a cleanup in progress before another pod may
/// take it over.
fn claim_ttl(state: &AppState) -> Duration {
    (state.config.reaper_interval() * 10).max(Duration::from_secs(5))
}

/// One round over every registry bucket: claim due daemons and clean up
/// after each. Returns how many were cleaned up.
pub async fn reap_once(state: &AppState) -> Result<usize> {
    let mut done = 0;
    let mut failed = None;
    for bucket in 0..state.redis.keys.buckets() {
        match reap_bucket(state, bucket).await {
            Ok(n) => done += n,
            // The other buckets (other primaries, on a cluster) still go.
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) if done == 0 => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, "reaper: a bucket failed this round; will retry");
            Ok(done)
        }
        None => Ok(done),
    }
}

async fn reap_bucket(state: &AppState, bucket: usize) -> Result<usize> {
    let redis = &state.redis;
    let claims: Vec<String> = redis
        .scripts
        .reap_claim
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.reap(bucket)],
            vec![
                redis.keys.daemon_prefix(bucket),
                claim_ttl(state).as_millis().to_string(),
                BATCH.to_string(),
            ],
        )
        .await?;
    let mut done = 0;
    for pair in claims.chunks_exact(2) {
        let Ok(daemon_id) = pair[0].parse::<Uuid>() else {
            continue;
        };
        match cleanup(state, daemon_id).await {
            Ok(()) => {
                let _: i64 = redis
                    .scripts
                    .reap_done
                    .evalsha_with_reload(
                        &redis.client,
                        vec![redis.keys.reap(bucket)],
                        vec![pair[0].clone(), pair[1].clone()],
                    )
                    .await?;
                done += 1;
            }
            Err(e) => {
                Metrics::inc(&state.metrics.db_errors);
                tracing::warn!(daemon_id = %daemon_id, error = %e, "cleanup failed; the claim will expire and be retried");
            }
        }
    }
    Ok(done)
}

/// What the seed's `handle_daemon_disconnect_tasks` did, once.
async fn cleanup(state: &AppState, daemon_id: Uuid) -> Result<()> {
    let changes = db::tasks::retry_after_disconnect(&state.db, daemon_id).await?;
    Metrics::inc(&state.metrics.daemons_reaped);
    if let Some(first) = changes.first() {
        // Tasks back to pending go to another daemon of the owner.
        state.dispatcher.kick(first.owner_id);
    }
    for task in changes {
        Metrics::inc(&state.metrics.tasks_retried);
        released(
            state,
            daemon_id,
            task,
            "task released after its daemon was gone past the grace period",
        )
        .await;
    }
    Ok(())
}

/// A task left `daemon_id` (gone, or lost on it): every pod forgets its
/// route, and clients hear its new status (`pending` again, or `failed`).
/// The caller kicks the dispatcher.
pub async fn released(state: &AppState, daemon_id: Uuid, task: TaskChange, why: &str) {
    task_routes::forget(&state.redis, &state.task_routes, &state.metrics, task.id).await;
    tracing::info!(
        task_id = %task.id, daemon_id = %daemon_id, owner_id = %task.owner_id,
        status = %task.status, retry_count = task.retry_count,
        "{why}"
    );
    let event = ClientEvent::TaskUpdated {
        task_id: task.id,
        version: task.version,
        status: task.status.clone(),
        updated_fields: vec!["status".into(), "daemon_id".into(), "retry_count".into()],
        updated_by: "system".into(),
    };
    let audience = Audience {
        owner_id: task.owner_id,
        task_id: Some(task.id),
        to_owner: true,
    };
    events::publish_can_fail(&state.redis, audience, &event).await;
}
