//! Reconciliation (PROTOCOL.md §1.4): a daemon's `heartbeat.activeTasks` is
//! its word on what it runs, and tasks converge to it, so that a lost
//! command, a socket replaced mid-flight, a pod crash or a daemon restart
//! leaves no task stuck and none running twice.
//!
//! On each heartbeat (at most one per [`min_interval`]), the tasks the
//! daemon listed and those active on it are read in one query, and
//! [`plan`] decides, for each:
//! - own and listed: confirmed (and no longer missing);
//! - own, unconfirmed, not listed, its `spawnTask` older than the window
//!   (`MESHGATE_RECONCILE_AFTER_MS`): `spawnTask` again, on this socket;
//!   after [`MAX_SPAWN_ATTEMPTS`] the daemon evidently does not take it, and
//!   it is handed back;
//! - own, confirmed, not listed: missing from now; missing for longer than
//!   the window: handed back exactly as after a disconnect (retried, or
//!   failed at `maxRetries`);
//! - listed but not its own (another daemon's, pending, finished, unknown,
//!   another owner's) for longer than the window: `interruptTask {graceful:
//!   false}`, so a stale copy stops; a task that finished or was released
//!   within the window is left alone.
//!
//! Each repair is one conditional statement ([`crate::db::reconcile`]) or,
//! for interrupts, a Redis claim with the window as its lifetime: however
//! many pods see the daemon, each happens once. Each has a metric and a log
//! line with the task and daemon ids. A failed query skips the round; the
//! next heartbeat tries again.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::session::{Registered, Session};
use crate::{
    cluster::reaper,
    db::reconcile::{self as queries, Reported},
    dispatch,
    metrics::Metrics,
    protocol::daemon::DaemonCommand,
    state::AppState,
    Result,
};

/// `spawnTask`s (the first included) a daemon gets for a task it never
/// confirms before the task is handed back.
pub const MAX_SPAWN_ATTEMPTS: i32 = 3;

/// What a connection remembers between heartbeats.
#[derive(Debug, Default)]
pub struct Memory {
    last: Option<Instant>,
}

/// Heartbeats closer together than this share one reconciliation (a flood
/// of heartbeats costs one query per interval, not one each).
fn min_interval(window: Duration) -> Duration {
    (window / 4).min(Duration::from_secs(1))
}

/// What one heartbeat asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub confirm: Vec<Uuid>,
    pub mark_missing: Vec<Uuid>,
    pub resend: Vec<Uuid>,
    pub hand_back: Vec<Uuid>,
    pub interrupt: Vec<Uuid>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// Decides, from the rows behind a heartbeat, what to repair.
pub fn plan(owner_id: Uuid, listed: &HashSet<Uuid>, rows: &[Reported]) -> Plan {
    let mut p = Plan::default();
    let mut known = HashSet::new();
    for r in rows {
        known.insert(r.id);
        let is_listed = listed.contains(&r.id);
        if r.own_active {
            match (is_listed, r.unconfirmed) {
                (true, _) => {
                    if !r.confirmed_at_set || r.missing {
                        p.confirm.push(r.id);
                    }
                }
                (false, true) => {
                    if r.spawn_due {
                        if r.spawn_attempts >= MAX_SPAWN_ATTEMPTS {
                            p.hand_back.push(r.id);
                        } else {
                            p.resend.push(r.id);
                        }
                    }
                }
                (false, false) => {
                    if !r.missing {
                        p.mark_missing.push(r.id);
                    } else if r.missing_long {
                        p.hand_back.push(r.id);
                    }
                }
            }
        } else if is_listed {
            let leave = r.owner_id == owner_id && (r.recently_finished || r.recently_released);
            if !leave {
                p.interrupt.push(r.id);
            }
        }
    }
    // Listed, and no such task at all.
    p.interrupt
        .extend(listed.iter().filter(|id| !known.contains(id)).copied());
    p
}

/// Reconciles after a heartbeat listing `listed`.
pub async fn after_heartbeat(s: &mut Session, me: &Registered, listed: &[Uuid]) {
    let window = s.state.config.reconcile_after();
    if s.reconcile
        .last
        .is_some_and(|at| at.elapsed() < min_interval(window))
    {
        return;
    }
    s.reconcile.last = Some(Instant::now());
    if let Err(e) = reconcile(s, me, listed, window).await {
        Metrics::inc(&s.state.metrics.db_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "reconciliation skipped; the next heartbeat tries again");
    }
}

async fn reconcile(s: &Session, me: &Registered, listed: &[Uuid], window: Duration) -> Result<()> {
    let state = &s.state;
    let owner_id = s.principal.owner_id;
    let daemon_id = me.daemon_id;
    let window_ms = window.as_millis() as i64;
    let rows = queries::reported(&state.db, owner_id, daemon_id, listed, window_ms).await?;
    let listed: HashSet<Uuid> = listed.iter().copied().collect();
    let plan = plan(owner_id, &listed, &rows);
    if plan.is_empty() {
        return Ok(());
    }
    if !plan.confirm.is_empty() {
        let first = queries::confirm(&state.db, daemon_id, &plan.confirm).await?;
        for task_id in first {
            Metrics::inc(&state.metrics.tasks_confirmed);
            tracing::debug!(%task_id, %daemon_id, "task confirmed by a heartbeat");
        }
    }
    if !plan.mark_missing.is_empty() {
        queries::mark_missing(&state.db, daemon_id, &plan.mark_missing).await?;
        for task_id in &plan.mark_missing {
            tracing::info!(%task_id, %daemon_id, "heartbeat left out a task the daemon had confirmed; handed back if it stays out");
        }
    }
    for &task_id in &plan.resend {
        resend(s, daemon_id, task_id, window_ms).await?;
    }
    let mut handed_back = false;
    for &task_id in &plan.hand_back {
        let max = MAX_SPAWN_ATTEMPTS;
        if let Some(change) =
            queries::hand_back(&state.db, owner_id, daemon_id, task_id, window_ms, max).await?
        {
            handed_back = true;
            Metrics::inc(&state.metrics.tasks_handed_back);
            let why = "task handed back: its daemon's heartbeats say it does not have it";
            reaper::released(state, daemon_id, change, why).await;
        }
    }
    if handed_back {
        state.dispatcher.kick(owner_id);
    }
    for &task_id in &plan.interrupt {
        interrupt_stale(s, daemon_id, task_id, window).await;
    }
    Ok(())
}

/// Sends `spawnTask` again on this socket (the daemon's current one: it
/// just sent the heartbeat), once the claim says no other pod did.
async fn resend(s: &Session, daemon_id: Uuid, task_id: Uuid, window_ms: i64) -> Result<()> {
    let state = &s.state;
    let Some(task) = queries::claim_resend(&state.db, daemon_id, task_id, window_ms).await? else {
        return Ok(());
    };
    let command = dispatch::spawn_command(state, task).await;
    if queue(s, &command) {
        Metrics::inc(&state.metrics.spawn_resent);
        tracing::warn!(%task_id, %daemon_id, "spawnTask sent again: the daemon's heartbeat does not list the task");
    }
    Ok(())
}

/// Tells the daemon to stop a copy of a task that is not its own (once per
/// window, whichever pod holds the daemon).
async fn interrupt_stale(s: &Session, daemon_id: Uuid, task_id: Uuid, window: Duration) {
    let state = &s.state;
    let claimed = claim_interrupt(state, daemon_id, task_id, window).await;
    match claimed {
        Ok(false) => return,
        Ok(true) => {}
        Err(e) => {
            // Better twice than never: an interrupt of a stale copy is
            // harmless to repeat.
            Metrics::inc(&state.metrics.redis_errors);
            tracing::warn!(%task_id, %daemon_id, error = %e, "interrupt claim failed; interrupting anyway");
        }
    }
    let command = DaemonCommand::InterruptTask {
        task_id,
        graceful: false,
    };
    if queue(s, &command) {
        Metrics::inc(&state.metrics.stale_copies_interrupted);
        tracing::warn!(%task_id, %daemon_id, "interruptTask sent: the daemon runs a task that is no longer its own");
    }
}

async fn claim_interrupt(
    state: &AppState,
    daemon_id: Uuid,
    task_id: Uuid,
    window: Duration,
) -> Result<bool> {
    use fred::prelude::*;
    let key = state.redis.keys.stale_interrupt(daemon_id, task_id);
    let set: Option<String> = state
        .redis
        .client
        .set(
            key,
            "1",
            Some(Expiration::PX(window.as_millis().max(1) as i64)),
            Some(SetOptions::NX),
            false,
        )
        .await?;
    Ok(set.is_some())
}

/// Queues a command on this socket; a full queue closes it (the daemon is
/// not reading; it reconnects and the next heartbeat repairs again).
fn queue(s: &Session, command: &DaemonCommand) -> bool {
    let json = match serde_json::to_string(command) {
        Ok(json) => json,
        Err(e) => {
            tracing::error!(error = %e, "command not encoded");
            return false;
        }
    };
    match s.tx.try_send(json) {
        Ok(()) => true,
        Err(_) => {
            let me = s.registered.as_ref().map(|r| r.daemon_id);
            if let Some(daemon_id) = me {
                if s.state.conns.close_slow(daemon_id, s.conn) {
                    Metrics::inc(&s.state.metrics.slow_daemons_closed);
                }
            }
            tracing::error!(daemon_id = ?me, kind = command.kind(), "daemon socket queue full; socket closed, the next heartbeat repairs again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid, owner_id: Uuid) -> Reported {
        Reported {
            id,
            owner_id,
            daemon_id: None,
            status: "running".into(),
            own_active: true,
            confirmed_at_set: true,
            unconfirmed: false,
            spawn_due: false,
            spawn_attempts: 1,
            missing: false,
            missing_long: false,
            recently_finished: false,
            recently_released: false,
        }
    }

    fn listed(ids: &[Uuid]) -> HashSet<Uuid> {
        ids.iter().copied().collect()
    }

    #[test]
    fn an_unconfirmed_task_left_out_after_the_window_is_sent_again_then_handed_back() {
        let (owner, t) = (Uuid::new_v4(), Uuid::new_v4());
        let mut r = Reported {
            status: "starting".into(),
            confirmed_at_set: false,
            unconfirmed: true,
            ..row(t, owner)
        };
        assert!(
            plan(owner, &listed(&[]), &[r.clone()]).is_empty(),
            "too early"
        );
        r.spawn_due = true;
        assert_eq!(plan(owner, &listed(&[]), &[r.clone()]).resend, vec![t]);
        r.spawn_attempts = MAX_SPAWN_ATTEMPTS;
        let p = plan(owner, &listed(&[]), &[r.clone()]);
        assert_eq!((p.resend.len(), p.hand_back), (0, vec![t]));
        assert_eq!(plan(owner, &listed(&[t]), &[r]).confirm, vec![t]);
    }

    #[test]
    fn a_confirmed_task_left_out_is_missing_then_handed_back() {
        let (owner, t) = (Uuid::new_v4(), Uuid::new_v4());
        let mut r = row(t, owner);
        assert!(plan(owner, &listed(&[t]), &[r.clone()]).is_empty());
        assert_eq!(
            plan(owner, &listed(&[]), &[r.clone()]).mark_missing,
            vec![t]
        );
        r.missing = true;
        assert!(
            plan(owner, &listed(&[]), &[r.clone()]).is_empty(),
            "not long enough"
        );
        r.missing_long = true;
        assert_eq!(plan(owner, &listed(&[]), &[r.clone()]).hand_back, vec![t]);
        // Listed again before that: no longer missing.
        assert_eq!(plan(owner, &listed(&[t]), &[r]).confirm, vec![t]);
    }

    #[test]
    fn listed_tasks_that_are_not_its_own_are_interrupted_unless_just_let_go() {
        let (owner, other_owner) = (Uuid::new_v4(), Uuid::new_v4());
        let (elsewhere, finished, released, foreign, unknown) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let not_own = |id, owner| Reported {
            own_active: false,
            ..row(id, owner)
        };
        let rows = [
            not_own(elsewhere, owner),
            Reported {
                status: "done".into(),
                recently_finished: true,
                ..not_own(finished, owner)
            },
            Reported {
                status: "pending".into(),
                recently_released: true,
                ..not_own(released, owner)
            },
            Reported {
                recently_released: true,
                ..not_own(foreign, other_owner)
            },
        ];
        let all = listed(&[elsewhere, finished, released, foreign, unknown]);
        let mut got = plan(owner, &all, &rows).interrupt;
        got.sort();
        let mut want = vec![elsewhere, foreign, unknown];
        want.sort();
        assert_eq!(got, want);
    }
}
