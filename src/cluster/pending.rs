//! Request/response across pods: an HTTP call on one pod waits for a
//! daemon's answer that arrives on whichever pod holds the daemon.
//!
//! The waiting pod adds itself to a Redis set per (kind, task) with a TTL
//! (`redis/pending_join.lua`); the first waiter sends the command, later
//! identical calls only wait, so one command answers them all. The pod that
//! receives the answer takes the set (`redis/pending_take.lua`) and publishes
//! the answer to a command channel of each waiting pod, where [`Waiters`] hands it to
//! every local caller. No entry outlives its TTL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;
use uuid::Uuid;

use super::{routing, Redis};
use crate::{metrics::Metrics, protocol::daemon::DaemonCommand, Error, Result};

/// Which answer a call waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `getTaskDiff` → `taskDiff`
    TaskDiff,
    /// `getWorktreeInfo` → `worktreeInfoResult`
    WorktreeInfo,
    /// `getWorktreeDiff` → `worktreeDiffResult`
    WorktreeDiff,
    /// `commitWorktree` → `worktreeCommitResult`
    Commit,
    /// `mergeTaskToTarget` → `mergeToTargetResult`
    Merge,
    /// `createPR` → `prCreated`
    Pr,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::TaskDiff => "taskDiff",
            Kind::WorktreeInfo => "worktreeInfo",
            Kind::WorktreeDiff => "worktreeDiff",
            Kind::Commit => "commit",
            Kind::Merge => "merge",
            Kind::Pr => "pr",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Kind::TaskDiff,
            Kind::WorktreeInfo,
            Kind::WorktreeDiff,
            Kind::Commit,
            Kind::Merge,
            Kind::Pr,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Marker answer meaning "the daemon went offline before the command left".
const OFFLINE: &str = "\"offline\"";

type Key = (Kind, Uuid);

/// The callers on this pod waiting for answers.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<HashMap<Key, Vec<oneshot::Sender<Arc<str>>>>>,
}

impl Waiters {
    fn add(&self, key: Key) -> oneshot::Receiver<Arc<str>> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().push(tx);
        rx
    }

    /// Hands an answer to every local caller waiting for it.
    pub fn deliver(&self, kind: Kind, task_id: Uuid, answer: &str) -> usize {
        let waiting = {
            let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            map.remove(&(kind, task_id)).unwrap_or_default()
        };
        let answer: Arc<str> = answer.into();
        let n = waiting.len();
        for tx in waiting {
            let _ = tx.send(answer.clone());
        }
        n
    }

    /// Drops callers that gave up (timed out), so the map does not grow.
    fn prune(&self, key: Key) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = map.get_mut(&key) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a waiting call got no answer.
#[derive(Debug)]
pub enum WaitError {
    /// No pod holds the daemon.
    Offline,
    /// No answer within the timeout.
    Timeout,
    /// Redis failed.
    Failed(Error),
}

/// Everything [`request`] needs.
pub struct Request<'a> {
    pub redis: &'a Redis,
    pub metrics: &'a Metrics,
    pub waiters: &'a Waiters,
    pub pod_id: &'a str,
    pub timeout: Duration,
}

/// Sends `command` to `daemon_id` (unless an identical call already did) and
/// waits for the daemon's answer of `kind` about `task_id`. Returns the
/// answer frame as the daemon sent it (JSON text).
pub async fn request(
    r: Request<'_>,
    kind: Kind,
    task_id: Uuid,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<Arc<str>, WaitError> {
    let key = (kind, task_id);
    let rx = r.waiters.add(key);
    let outcome = wait(&r, key, rx, daemon_id, command).await;
    let counter = match &outcome {
        Ok(_) => &r.metrics.pending_answered,
        Err(WaitError::Timeout) => &r.metrics.pending_timeouts,
        Err(WaitError::Offline) => &r.metrics.pending_offline,
        Err(WaitError::Failed(_)) => &r.metrics.redis_errors,
    };
    Metrics::inc(counter);
    outcome
}

async fn wait(
    r: &Request<'_>,
    key: Key,
    rx: oneshot::Receiver<Arc<str>>,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<Arc<str>, WaitError> {
    let (kind, task_id) = key;
    if let Err(e) = join_and_send(r, kind, task_id, daemon_id, command).await {
        r.waiters.prune(key);
        return Err(e);
    }
    let answer = match tokio::time::timeout(r.timeout, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) | Err(_) => {
            r.waiters.prune(key);
            return Err(WaitError::Timeout);
        }
    };
    if &*answer == OFFLINE {
        return Err(WaitError::Offline);
    }
    Ok(answer)
}

async fn join_and_send(
    r: &Request<'_>,
    kind: Kind,
    task_id: Uuid,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<(), WaitError> {
    let ttl_ms = (r.timeout + Duration::from_secs(1)).as_millis().to_string();
    let first: i64 = r
        .redis
        .scripts
        .pending_join
        .evalsha_with_reload(
            &r.redis.client,
            vec![r.redis.keys.pending(kind.as_str(), task_id)],
            vec![r.pod_id.to_owned(), ttl_ms],
        )
        .await
        .map_err(|e| WaitError::Failed(e.into()))?;
    if first != 1 {
        return Ok(());
    }
    match routing::send_command(r.redis, r.metrics, daemon_id, command).await {
        Ok(()) => Ok(()),
        Err(Error::DaemonOffline(_)) => {
            // Tell everyone who joined meanwhile, not only this caller.
            let _ = resolve(r.redis, kind, task_id, OFFLINE).await;
            Err(WaitError::Offline)
        }
        Err(e) => Err(WaitError::Failed(e)),
    }
}

/// A daemon answered: deliver `answer` to every pod waiting for it. Returns
/// how many pods were waiting (0: nobody asked, or they gave up).
pub async fn resolve(redis: &Redis, kind: Kind, task_id: Uuid, answer: &str) -> Result<i64> {
    let pods: Vec<String> = redis
        .scripts
        .pending_take
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.pending(kind.as_str(), task_id)],
            Vec::<String>::new(),
        )
        .await?;
    if pods.is_empty() {
        return Ok(0);
    }
    let message = format!("R|{}|{task_id}|{answer}", kind.as_str());
    // Every pod listens on each bucket's channel; any bucket reaches it.
    let bucket = (task_id.as_u128() % redis.keys.buckets() as u128) as usize;
    for pod in &pods {
        redis
            .publish(&redis.keys.pod_channel(bucket, pod), &message)
            .await?;
    }
    Ok(pods.len() as i64)
}
