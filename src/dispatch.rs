//! Dispatch: pending tasks go to connected daemons of their owner with free
//! capacity (`maxConcurrentTasks` minus active tasks), never to a daemon in
//! the task's failed list, never to two daemons, whichever pods run it.
//!
//! Each pod runs one dispatcher. It is kicked with an owner id when something
//! changes the picture (a task created or put back to pending, a daemon
//! connected, a task finished) and also sweeps owners with pending tasks
//! periodically, so nothing waits forever if a kick is lost (a pod died).
//! Correctness does not depend on kicks: the owner's advisory lock and the
//! conditional UPDATE do.

use std::collections::HashSet;

use base64::{engine::general_purpose::STANDARD, Engine};
use tokio::{sync::mpsc, time::MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    cluster::{
        events::{self, Audience},
        registry::{self, DaemonEntry},
        routing, task_routes,
    },
    db::{self, dispatch::PendingTask},
    metrics::Metrics,
    protocol::{client::ClientEvent, daemon::DaemonCommand},
    state::AppState,
    Error, Result,
};

/// Pending tasks considered per owner and round.
const ROUND: i64 = 200;

/// Handle to kick the pod's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Uuid>,
}

impl Dispatcher {
    pub fn new() -> (Self, mpsc::Receiver<Uuid>) {
        let (tx, rx) = mpsc::channel(4096);
        (Self { tx }, rx)
    }

    /// Asks for a dispatch round for `owner_id` soon. Never waits; when the
    /// queue is full the periodic sweep covers it.
    pub fn kick(&self, owner_id: Uuid) {
        let _ = self.tx.try_send(owner_id);
    }
}

/// Runs the dispatcher until `stop`.
pub async fn run(state: AppState, mut rx: mpsc::Receiver<Uuid>, stop: CancellationToken) {
    let mut sweep = tokio::time::interval(state.config.dispatch_sweep());
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let mut owners = HashSet::new();
        let sweeping = tokio::select! {
            _ = stop.cancelled() => return,
            Some(owner) = rx.recv() => { owners.insert(owner); false }
            _ = sweep.tick() => true,
        };
        while let Ok(owner) = rx.try_recv() {
            owners.insert(owner);
        }
        if sweeping {
            match db::dispatch::owners_with_pending(&state.db, 1_000).await {
                Ok(found) => owners.extend(found),
                Err(e) => {
                    Metrics::inc(&state.metrics.db_errors);
                    tracing::warn!(error = %e, "dispatch sweep failed");
                }
            }
        }
        for owner in owners {
            // Kicks wait for another pod's round on the same owner (their
            // new task may not be in it); sweeps skip busy owners.
            if let Err(e) = dispatch_owner(&state, owner, !sweeping).await {
                Metrics::inc(&state.metrics.db_errors);
                tracing::warn!(owner_id = %owner, error = %e, "dispatch round failed; the sweep will retry");
            }
        }
    }
}

/// One dispatch round for an owner. Returns how many tasks were sent.
pub async fn dispatch_owner(state: &AppState, owner_id: Uuid, wait: bool) -> Result<usize> {
    // Most kicks (a daemon connecting, a task finishing) find nothing to
    // do: check that cheaply before listing every daemon of the owner.
    if !db::dispatch::has_pending(&state.db, owner_id).await? {
        return Ok(0);
    }
    let daemons = registry::list_owner(&state.redis, owner_id).await?;
    if daemons.is_empty() {
        return Ok(0);
    }
    let Some(mut tx) = db::dispatch::begin(&state.db, owner_id, wait).await? else {
        return Ok(0);
    };
    let pending = db::dispatch::pending(&mut tx, owner_id, ROUND).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = daemons.iter().map(|d| d.id).collect();
    let active = db::dispatch::active_counts(&mut tx, owner_id, &ids).await?;
    let mut free: Vec<(DaemonEntry, i64)> = daemons
        .into_iter()
        .map(|d| {
            let used = active.get(&d.id).copied().unwrap_or(0);
            let left = i64::from(d.max_concurrent_tasks) - used;
            (d, left)
        })
        .collect();
    let mut assigned = Vec::new();
    for task in pending {
        let Some(slot) = pick(&mut free, &task) else {
            continue;
        };
        let daemon_id = free[slot].0.id;
        if let Some(version) = db::dispatch::assign(&mut tx, task.id, daemon_id).await? {
            free[slot].1 -= 1;
            assigned.push((task, daemon_id, version));
        }
    }
    tx.commit().await?;
    let sent = assigned.len();
    for (task, daemon_id, version) in assigned {
        // Only this pod's entry (see `task_routes`: releases are announced).
        state.task_routes.drop_task(task.id);
        spawn(state, owner_id, task, daemon_id, version).await;
    }
    Ok(sent)
}

/// The daemon with the most free capacity that has not failed this task.
fn pick(free: &mut [(DaemonEntry, i64)], task: &PendingTask) -> Option<usize> {
    free.iter()
        .enumerate()
        .filter(|(_, (d, left))| *left > 0 && !task.failed_daemon_ids.contains(&d.id))
        .max_by_key(|(_, (_, left))| *left)
        .map(|(i, _)| i)
}

/// The `spawnTask` of a task (with the latest checkpoint patch when
/// resuming), as first sent and as re-sent by reconciliation.
pub async fn spawn_command(state: &AppState, task: PendingTask) -> DaemonCommand {
    let patch = if task.retry_count > 0 {
        db::dispatch::latest_patch(&state.db, task.id).await.unwrap_or_else(|e| {
            tracing::warn!(task_id = %task.id, error = %e, "checkpoint patch not loaded; resuming without it");
            None
        })
    } else {
        None
    };
    let (patch_data, patch_base_sha) = match patch {
        Some((bytes, sha)) => (Some(STANDARD.encode(bytes)), sha),
        None => (None, None),
    };
    DaemonCommand::SpawnTask {
        task_id: task.id,
        name: task.name,
        plan: task.plan,
        repository_url: task.repository_url,
        base_branch: task.base_branch,
        target_branch: task.target_branch,
        contract_id: task.contract_id,
        parent_task_id: task.parent_task_id,
        is_supervisor: task.is_supervisor,
        patch_data,
        patch_base_sha,
    }
}

/// Sends `spawnTask`. Delivered: clients hear the task is `starting`.
/// Surely not delivered (no pod holds the daemon, or its socket went away
/// first): the task goes back to `pending`. Unknown (Redis failed, no
/// receipt in time: the command may have gone out): the task stays
/// assigned and reconciliation decides from the daemon's heartbeats
/// (PROTOCOL.md §1.4), so it never runs on two daemons.
async fn spawn(state: &AppState, owner_id: Uuid, task: PendingTask, daemon_id: Uuid, version: i32) {
    let task_id = task.id;
    let command = spawn_command(state, task).await;
    let audience = Audience {
        owner_id,
        task_id: Some(task_id),
        to_owner: true,
    };
    match routing::send_command(&state.redis, &state.metrics, daemon_id, &command).await {
        Ok(()) => {
            tracing::info!(%task_id, %daemon_id, %owner_id, "task dispatched");
            let event = updated(task_id, version, "starting");
            events::publish_can_fail(&state.redis, audience, &event).await;
        }
        Err(Error::DaemonOffline(_)) => {
            tracing::warn!(%task_id, %daemon_id, "spawnTask not delivered (daemon offline); task back to pending");
            match db::dispatch::unassign(&state.db, task_id, daemon_id).await {
                Ok(Some(v)) => {
                    task_routes::forget(&state.redis, &state.task_routes, &state.metrics, task_id)
                        .await;
                    let event = updated(task_id, v, "pending");
                    events::publish_can_fail(&state.redis, audience, &event).await;
                }
                Ok(None) => {}
                Err(e) => {
                    // Still `starting` on a daemon that is gone: the reaper
                    // releases it after the grace period.
                    Metrics::inc(&state.metrics.db_errors);
                    tracing::error!(%task_id, error = %e, "task not put back to pending");
                }
            }
        }
        Err(e) => {
            Metrics::inc(&state.metrics.spawn_outcome_unknown);
            tracing::warn!(%task_id, %daemon_id, error = %e, "spawnTask delivery unknown; the task stays assigned and reconciliation decides from the daemon's heartbeats");
            let event = updated(task_id, version, "starting");
            events::publish_can_fail(&state.redis, audience, &event).await;
        }
    }
}

fn updated(task_id: Uuid, version: i32, status: &str) -> ClientEvent {
    ClientEvent::TaskUpdated {
        task_id,
        version,
        status: status.to_owned(),
        updated_fields: vec!["status".into(), "daemon_id".into()],
        updated_by: "system".into(),
    }
}
