//! Where a task's commands go, cached briefly on each pod: task id →
//! (owner, daemon). Sending a command to a task (`POST …/message`,
//! interrupt, …) would otherwise ask PostgreSQL on every request; the owner
//! of a task never changes and its daemon changes only when it is assigned
//! or released.
//!
//! Every place that changes a task's daemon calls [`forget`]: the entry is
//! dropped on this pod and the task id published on the pods' shared
//! `taskroutes` channel, so every pod drops it. Releases are announced (a
//! task leaving its daemon); an assignment only drops this pod's entry: a
//! task without a daemon is never cached, so any entry for it predates its
//! release, whose announcement already dropped it. Should an announcement
//! be lost, an entry still lives at most `MESHGATE_TASK_ROUTE_CACHE_MS`;
//! every entry learnt before the command subscriber's subscriptions were
//! last renewed (after a reconnect, a topology change, a silent channel:
//! announcements may have been missed meanwhile) is ignored. A lookup that
//! raced with a change (announced while PostgreSQL was being read) is not
//! cached.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::Redis;
use crate::metrics::Metrics;

/// Entries kept at most; past it the cache starts over (cheap, and a cache
/// this large is only a sign of many tasks being messaged at once).
const MAX_ENTRIES: usize = 100_000;

struct Route {
    owner_id: Uuid,
    daemon_id: Uuid,
    at: Instant,
    /// `Redis::resubscribed` when the lookup started.
    subscriptions: u64,
}

/// Taken before reading PostgreSQL, passed to [`TaskRoutes::store`].
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    changes: u64,
    subscriptions: u64,
}

pub struct TaskRoutes {
    ttl: Duration,
    map: Mutex<HashMap<Uuid, Route>>,
    /// Bumped by every change; a lookup started before a change is not
    /// stored (see [`TaskRoutes::store`]).
    changes: AtomicU64,
    /// `Redis::resubscribed`: entries from before the last renewal of the
    /// subscriptions are ignored.
    subscriptions: Arc<AtomicU64>,
}

impl TaskRoutes {
    /// `ttl` zero: nothing is cached. `subscriptions` counts renewals of
    /// the subscriber that receives the announcements.
    pub fn new(ttl: Duration, subscriptions: Arc<AtomicU64>) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
            changes: AtomicU64::new(0),
            subscriptions,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Route>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon of `task_id` if it is cached as `owner_id`'s, assigned, and
    /// fresh. `None` means: ask PostgreSQL.
    pub fn get(&self, owner_id: Uuid, task_id: Uuid) -> Option<Uuid> {
        let map = self.lock();
        let route = map.get(&task_id)?;
        let fresh = route.at.elapsed() < self.ttl
            && route.subscriptions == self.subscriptions.load(Ordering::SeqCst);
        (route.owner_id == owner_id && fresh).then_some(route.daemon_id)
    }

    /// A mark to pass to [`TaskRoutes::store`], taken before reading
    /// PostgreSQL.
    pub fn mark(&self) -> Mark {
        Mark {
            changes: self.changes.load(Ordering::SeqCst),
            subscriptions: self.subscriptions.load(Ordering::SeqCst),
        }
    }

    /// Caches what PostgreSQL said, unless a change was announced since
    /// `mark` (what was read may already be stale).
    pub fn store(&self, mark: Mark, owner_id: Uuid, task_id: Uuid, daemon_id: Uuid) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if self.changes.load(Ordering::SeqCst) != mark.changes {
            return;
        }
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
        map.insert(
            task_id,
            Route {
                owner_id,
                daemon_id,
                at: Instant::now(),
                subscriptions: mark.subscriptions,
            },
        );
    }

    /// Drops one task's entry (its daemon changed).
    pub fn drop_task(&self, task_id: Uuid) {
        let mut map = self.lock();
        self.changes.fetch_add(1, Ordering::SeqCst);
        map.remove(&task_id);
    }

    /// Drops everything (announcements may have been missed).
    pub fn clear(&self) {
        let mut map = self.lock();
        self.changes.fetch_add(1, Ordering::SeqCst);
        map.clear();
    }

    /// Handles a message of the `taskroutes` channel.
    pub fn on_message(&self, text: &str) {
        match text.parse::<Uuid>() {
            Ok(task_id) => self.drop_task(task_id),
            Err(_) => {
                tracing::warn!("malformed message on the task routes channel; cache cleared");
                self.clear();
            }
        }
    }
}

/// `task_id` left its daemon (released, retried elsewhere): forgets it here
/// and tells every pod. Call it after the change is committed.
pub async fn forget(redis: &Redis, routes: &TaskRoutes, metrics: &Metrics, task_id: Uuid) {
    routes.drop_task(task_id);
    let channel = redis.keys.task_routes();
    if let Err(e) = redis.publish(&channel, &task_id.to_string()).await {
        // Other pods may keep the old daemon until their entry expires.
        Metrics::inc(&metrics.redis_errors);
        tracing::warn!(%task_id, error = %e, "task route change not announced; other pods' entries expire on their own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4())
    }

    fn cache(ttl: Duration) -> TaskRoutes {
        TaskRoutes::new(ttl, Arc::default())
    }

    #[test]
    fn a_stored_route_is_found_only_by_its_owner() {
        let routes = cache(Duration::from_secs(60));
        let (owner, task, daemon) = ids();
        routes.store(routes.mark(), owner, task, daemon);
        assert_eq!(routes.get(owner, task), Some(daemon));
        assert_eq!(routes.get(Uuid::new_v4(), task), None);
        assert_eq!(routes.get(owner, Uuid::new_v4()), None);
    }

    #[test]
    fn a_lookup_that_raced_with_a_change_is_not_stored() {
        let routes = cache(Duration::from_secs(60));
        let (owner, task, daemon) = ids();
        let mark = routes.mark();
        // The task was released while PostgreSQL was being read.
        routes.on_message(&task.to_string());
        routes.store(mark, owner, task, daemon);
        assert_eq!(routes.get(owner, task), None);
        routes.store(routes.mark(), owner, task, daemon);
        assert_eq!(routes.get(owner, task), Some(daemon));
    }

    #[test]
    fn announced_changes_and_clears_drop_entries() {
        let routes = cache(Duration::from_secs(60));
        let (owner, task, daemon) = ids();
        let other = Uuid::new_v4();
        routes.store(routes.mark(), owner, task, daemon);
        routes.store(routes.mark(), owner, other, daemon);
        routes.on_message(&task.to_string());
        assert_eq!(routes.get(owner, task), None);
        assert_eq!(routes.get(owner, other), Some(daemon));
        routes.on_message("not a uuid");
        assert_eq!(routes.get(owner, other), None);
    }

    #[test]
    fn entries_from_before_the_subscriptions_were_renewed_are_ignored() {
        let renewals = Arc::new(AtomicU64::new(0));
        let routes = TaskRoutes::new(Duration::from_secs(60), renewals.clone());
        let (owner, task, daemon) = ids();
        routes.store(routes.mark(), owner, task, daemon);
        // A lookup in flight while the subscriber was being renewed.
        let (late_task, mark) = (Uuid::new_v4(), routes.mark());
        renewals.fetch_add(1, Ordering::SeqCst);
        routes.store(mark, owner, late_task, daemon);
        assert_eq!(routes.get(owner, task), None);
        assert_eq!(routes.get(owner, late_task), None);
        routes.store(routes.mark(), owner, task, daemon);
        assert_eq!(routes.get(owner, task), Some(daemon));
    }

    #[test]
    fn entries_expire_and_a_zero_ttl_caches_nothing() {
        let routes = cache(Duration::from_millis(30));
        let (owner, task, daemon) = ids();
        routes.store(routes.mark(), owner, task, daemon);
        assert_eq!(routes.get(owner, task), Some(daemon));
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(routes.get(owner, task), None);
        let off = cache(Duration::ZERO);
        off.store(off.mark(), owner, task, daemon);
        assert_eq!(off.get(owner, task), None);
    }
}
