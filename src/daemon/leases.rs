//! Keeps the registry leases of this pod's sockets alive. If the pod dies,
//! the leases lapse and the reaper takes over; if Redis lost the entries
//! (restart), they are written again from the pod's own copy.

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::{
    cluster::registry::{self, RefreshOutcome},
    metrics::Metrics,
    state::AppState,
};

/// Entries refreshed per script call, to keep each call short.
const BATCH: usize = 500;

/// Refreshes every lease each `lease_refresh` until `stop`.
pub async fn keep(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(state.config.lease_refresh());
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => refresh_once(&state).await,
        }
    }
}

async fn refresh_once(state: &AppState) {
    let entries = state.conns.entries();
    for chunk in entries.chunks(BATCH) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.id, e.owner_id, e.conn)).collect();
        let outcomes = registry::refresh(&state.redis, &batch, state.lease()).await;
        for (entry, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                RefreshOutcome::Refreshed => {}
                // Logged per bucket by `refresh`; the next round retries.
                RefreshOutcome::Unknown => Metrics::inc(&state.metrics.redis_errors),
                RefreshOutcome::Missing => {
                    tracing::warn!(daemon_id = %entry.id, "registry entry missing; registering again");
                    if let Err(e) = registry::register(&state.redis, entry, state.lease()).await {
                        Metrics::inc(&state.metrics.redis_errors);
                        tracing::warn!(daemon_id = %entry.id, error = %e, "re-registration failed");
                    }
                }
                RefreshOutcome::Replaced => {
                    tracing::info!(daemon_id = %entry.id, "a newer connection exists; closing ours");
                    state.conns.close(entry.id, entry.conn);
                }
            }
        }
    }
}
