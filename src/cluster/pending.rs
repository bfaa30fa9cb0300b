//! Request/response across pods: an HTTP call on one pod waits for a
//! daemon's answer that arrives on whichever pod holds the daemon.
//!
//! The waiting pod adds itself to a Redis entry per (kind, task) that names
//! the question in flight (a digest of the command: route, task and body)
//! with a TTL of one request timeout, set when the command leaves and never
//! extended (`redis/pending_join.lua`). The first caller sends the command;
//! later identical calls only wait, so one command answers them all; a call
//! with a different body waits for its turn and sends its own. The pod that
//! receives the answer takes the entry (`redis/pending_take.lua`) and
//! publishes the answer to a command channel of each waiting pod, where
//! [`Waiters`] hands it to every local caller of that question. A call made
//! after an entry expired (its command got no answer) sends a new command.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::oneshot;
use uuid::Uuid;

use sha2::{Digest, Sha256};

use super::{pod_message::PodMessage, routing, Redis};
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
/// Marker answer meaning "the command could not be sent (Redis failed)".
const UNSENT: &str = "\"unsent\"";

/// (`kind:question`, task): what one group of identical callers waits for.
type Key = (String, Uuid);

/// The digest that tells questions apart: same route, task and body give
/// the same command JSON, so the same digest.
pub fn question(command_json: &str) -> String {
    let digest = Sha256::digest(command_json.as_bytes());
    hex::encode(&digest[..8])
}

/// The callers on this pod waiting for answers.
#[derive(Default)]
pub struct Waiters {
    inner: Mutex<HashMap<Key, Vec<oneshot::Sender<Arc<str>>>>>,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Vec<oneshot::Sender<Arc<str>>>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, key: Key) -> oneshot::Receiver<Arc<str>> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(key).or_default().push(tx);
        rx
    }

    /// Hands an answer to every local caller waiting for it (`key` is
    /// `kind:question`).
    pub fn deliver(&self, key: &str, task_id: Uuid, answer: &str) -> usize {
        let waiting = self
            .lock()
            .remove(&(key.to_owned(), task_id))
            .unwrap_or_default();
        let answer: Arc<str> = answer.into();
        let n = waiting.len();
        for tx in waiting {
            let _ = tx.send(answer.clone());
        }
        n
    }

    /// Drops callers that gave up (timed out), so the map does not grow.
    fn prune(&self, key: &Key) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(key) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                map.remove(key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
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
    pub timeout: Duration,
}

/// Sends `command` to `daemon_id` (unless an identical call already did)
/// and waits for the daemon's answer of `kind` about `task_id`. A call
/// whose command differs from the one in flight for the task waits for
/// that one's answer (or expiry) and then sends its own: the daemon's
/// answers name only the task, so one question at a time per kind and task
/// is what keeps each answer with its question. Returns the answer frame as
/// the daemon sent it (JSON text).
pub async fn request(
    r: Request<'_>,
    kind: Kind,
    task_id: Uuid,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<Arc<str>, WaitError> {
    let outcome = ask(&r, kind, task_id, daemon_id, command).await;
    let counter = match &outcome {
        Ok(_) => &r.metrics.pending_answered,
        Err(WaitError::Timeout) => &r.metrics.pending_timeouts,
        Err(WaitError::Offline) => &r.metrics.pending_offline,
        Err(WaitError::Failed(_)) => &r.metrics.redis_errors,
    };
    Metrics::inc(counter);
    outcome
}

/// What `pending_join.lua` said.
enum Joined {
    /// This caller sends the command.
    First,
    /// The same question is in flight: wait for its answer.
    Same { left: Duration },
    /// Another question is in flight: try again when it is answered.
    Busy { left: Duration },
}

async fn ask(
    r: &Request<'_>,
    kind: Kind,
    task_id: Uuid,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<Arc<str>, WaitError> {
    let json = serde_json::to_string(command).map_err(|e| {
        WaitError::Failed(Error::Internal(format!("command not serialisable: {e}")))
    })?;
    let q = question(&json);
    let key: Key = (format!("{}:{q}", kind.as_str()), task_id);
    let deadline = tokio::time::Instant::now() + r.timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        // Registered before joining, so an answer that comes back at once
        // finds this caller.
        let rx = r.waiters.add(key.clone());
        let joined = match join(r, kind, task_id, &q).await {
            Ok(j) => j,
            Err(e) => {
                r.waiters.prune(&key);
                return Err(e);
            }
        };
        let until = match joined {
            Joined::First => {
                if let Err(e) = send(r, kind, task_id, daemon_id, command).await {
                    r.waiters.prune(&key);
                    return Err(e);
                }
                deadline
            }
            Joined::Same { left } => deadline.min(tokio::time::Instant::now() + left),
            Joined::Busy { left } => {
                drop(rx);
                r.waiters.prune(&key);
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Err(WaitError::Timeout);
                }
                // The question in flight ends with its answer or its TTL;
                // look again soon (backing off), never past this deadline.
                let nap = pause.min(left.max(Duration::from_millis(1)));
                tokio::time::sleep_until(deadline.min(now + nap)).await;
                pause = (pause * 2).min(Duration::from_millis(200));
                continue;
            }
        };
        return match tokio::time::timeout_at(until, rx).await {
            Ok(Ok(answer)) if &*answer == OFFLINE => Err(WaitError::Offline),
            Ok(Ok(answer)) if &*answer == UNSENT => Err(WaitError::Failed(
                fred::error::Error::new(fred::error::ErrorKind::IO, "command not sent").into(),
            )),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) | Err(_) => {
                r.waiters.prune(&key);
                Err(WaitError::Timeout)
            }
        };
    }
}

async fn join(
    r: &Request<'_>,
    kind: Kind,
    task_id: Uuid,
    question: &str,
) -> std::result::Result<Joined, WaitError> {
    let ttl_ms = r.timeout.as_millis().max(1).to_string();
    let (state, left): (i64, i64) = r
        .redis
        .scripts
        .pending_join
        .evalsha_with_reload(
            &r.redis.client,
            vec![r.redis.keys.pending(kind.as_str(), task_id)],
            vec![r.redis.pod_id.to_string(), question.to_owned(), ttl_ms],
        )
        .await
        .map_err(|e| WaitError::Failed(e.into()))?;
    let left = Duration::from_millis(left.max(0) as u64);
    Ok(match state {
        1 => Joined::First,
        0 => Joined::Same { left },
        _ => Joined::Busy { left },
    })
}

/// The first caller sends the command. When it surely did not leave, every
/// caller that joined meanwhile is told at once and the next question may
/// go; when its delivery is unknown, the callers wait for an answer that
/// may still come.
async fn send(
    r: &Request<'_>,
    kind: Kind,
    task_id: Uuid,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> std::result::Result<(), WaitError> {
    match routing::send_command(r.redis, r.metrics, daemon_id, command).await {
        Ok(()) | Err(Error::DeliveryUnknown(_)) => Ok(()),
        Err(Error::DaemonOffline(_)) => {
            let _ = resolve(r.redis, kind, task_id, OFFLINE).await;
            Err(WaitError::Offline)
        }
        Err(e) => {
            let _ = resolve(r.redis, kind, task_id, UNSENT).await;
            Err(WaitError::Failed(e))
        }
    }
}

/// A daemon answered: deliver `answer` to every pod waiting for it. Returns
/// how many pods were waiting (0: nobody asked, or they gave up).
pub async fn resolve(redis: &Redis, kind: Kind, task_id: Uuid, answer: &str) -> Result<i64> {
    let taken: Vec<String> = redis
        .scripts
        .pending_take
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.pending(kind.as_str(), task_id)],
            Vec::<String>::new(),
        )
        .await?;
    let Some((question, pods)) = taken.split_first() else {
        return Ok(0);
    };
    let message = PodMessage::Answer {
        key: format!("{}:{question}", kind.as_str()),
        task: task_id,
        json: answer.to_owned(),
    }
    .encode();
    // Every pod listens on each bucket's channel; any bucket reaches it.
    let bucket = (task_id.as_u128() % redis.keys.buckets() as u128) as usize;
    for pod in pods {
        redis
            .publish(&redis.keys.pod_channel(bucket, pod), &message)
            .await?;
    }
    Ok(pods.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_differ_by_body_and_match_for_the_same_command() {
        let task_id = Uuid::new_v4();
        let commit = |message: &str| {
            serde_json::to_string(&DaemonCommand::CommitWorktree {
                task_id,
                message: message.into(),
            })
            .unwrap()
        };
        assert_eq!(question(&commit("A")), question(&commit("A")));
        assert_ne!(question(&commit("A")), question(&commit("B")));
    }

    #[tokio::test]
    async fn an_answer_reaches_only_the_callers_of_its_question() {
        let waiters = Waiters::default();
        let task = Uuid::new_v4();
        let a = waiters.add(("commit:aa".into(), task));
        let mut b = waiters.add(("commit:bb".into(), task));
        assert_eq!(waiters.deliver("commit:aa", task, "{}"), 1);
        assert_eq!(&*a.await.unwrap(), "{}");
        assert!(b.try_recv().is_err(), "B's caller got A's answer");
        assert_eq!(waiters.len(), 1);
    }
}
