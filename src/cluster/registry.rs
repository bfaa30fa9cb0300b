//! The daemon registry: one leased hash per connected daemon, saying which
//! pod holds its current connection, plus a per-owner index for listing.
//!
//! Every write that must not race (replace an older connection, refresh,
//! remove only our own entry) is one Lua script in `redis/`, fenced by the
//! connection id: a stale socket can never remove or overwrite the entry of
//! the connection that replaced it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fred::{error::Error, prelude::*};
use futures_util::future::join_all;
use uuid::Uuid;

use super::Redis;
use crate::Result;

/// What is known about a connected daemon, as every pod sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonEntry {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub pod: String,
    pub conn: Uuid,
    pub hostname: String,
    pub machine_id: String,
    pub max_concurrent_tasks: i32,
    pub connected_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub active_task_ids: Vec<Uuid>,
    pub working_directory: Option<String>,
    pub home_directory: Option<String>,
    pub worktrees_directory: Option<String>,
}

impl DaemonEntry {
    fn from_fields(id: Uuid, f: &HashMap<String, String>) -> Option<Self> {
        let time = |k: &str| {
            f.get(k)
                .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            id,
            owner_id: f.get("owner")?.parse().ok()?,
            pod: f.get("pod")?.clone(),
            conn: f.get("conn")?.parse().ok()?,
            hostname: f.get("hostname").cloned().unwrap_or_default(),
            machine_id: f.get("machineId").cloned().unwrap_or_default(),
            max_concurrent_tasks: f
                .get("maxConcurrentTasks")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            connected_at: time("connectedAt")?,
            last_heartbeat_at: time("lastHeartbeatAt"),
            active_task_ids: f
                .get("activeTaskIds")
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            working_directory: f.get("workingDirectory").cloned(),
            home_directory: f.get("homeDirectory").cloned(),
            worktrees_directory: f.get("worktreesDirectory").cloned(),
        })
    }

    /// Field/value pairs written at registration (pod and conn are added by
    /// the script).
    fn fields(&self) -> Vec<String> {
        let mut v = vec![
            "owner".into(),
            self.owner_id.to_string(),
            "hostname".into(),
            self.hostname.clone(),
            "machineId".into(),
            self.machine_id.clone(),
            "maxConcurrentTasks".into(),
            self.max_concurrent_tasks.to_string(),
            "connectedAt".into(),
            self.connected_at.to_rfc3339(),
            "activeTaskIds".into(),
            serde_json::to_string(&self.active_task_ids).unwrap_or_else(|_| "[]".into()),
        ];
        let optional = [
            (
                "lastHeartbeatAt",
                self.last_heartbeat_at.map(|t| t.to_rfc3339()),
            ),
            ("workingDirectory", self.working_directory.clone()),
            ("homeDirectory", self.home_directory.clone()),
            ("worktreesDirectory", self.worktrees_directory.clone()),
        ];
        for (k, val) in optional {
            if let Some(val) = val {
                v.push(k.into());
                v.push(val);
            }
        }
        v
    }
}

/// Lease settings every registry write needs.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub ttl_ms: u64,
    pub grace_ms: u64,
}

/// Outcome of refreshing one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    Refreshed,
    /// Redis failed for this entry's bucket (e.g. its shard is failing
    /// over): nothing is known; the next round tries again.
    Unknown,
    /// The entry is gone (lease lapsed or Redis restarted): register again.
    Missing,
    /// A newer connection of the daemon exists elsewhere: close ours.
    Replaced,
}

/// Makes `entry` the daemon's current connection. Returns the connection id
/// it replaced, whose pod has been told to close it.
pub async fn register(redis: &Redis, entry: &DaemonEntry, lease: Lease) -> Result<Option<Uuid>> {
    let bucket = redis.keys.bucket_of(entry.id);
    let keys = vec![redis.keys.daemon(entry.id), redis.keys.reap(bucket)];
    let mut args = vec![
        entry.id.to_string(),
        entry.pod.clone(),
        entry.conn.to_string(),
        lease.ttl_ms.to_string(),
        lease.grace_ms.to_string(),
        redis.keys.pod_channel_prefix(bucket),
        redis.publish_command().to_owned(),
    ];
    args.extend(entry.fields());
    // The owner index lives in another slot; both go out together. Only the
    // registration decides: once it is done (and an older socket told to
    // close), failing the caller would leave nobody holding the daemon. A
    // missed index entry is written again by the next lease refresh.
    let ids = [entry.id];
    let (replaced, indexed) = tokio::join!(
        redis
            .scripts
            .register
            .evalsha_with_reload::<Option<String>, _, _>(&redis.client, keys, args),
        index(redis, entry.owner_id, &ids, lease),
    );
    if let Err(e) = indexed {
        tracing::warn!(daemon_id = %entry.id, error = %e, "owner index not updated; the next lease refresh will");
    }
    Ok(replaced?.and_then(|c| c.parse().ok()))
}

/// Adds or refreshes daemons in their owner's listing index.
async fn index(redis: &Redis, owner_id: Uuid, daemons: &[Uuid], lease: Lease) -> Result<(), Error> {
    let mut args = Vec::with_capacity(1 + daemons.len());
    args.push(lease.ttl_ms.to_string());
    args.extend(daemons.iter().map(Uuid::to_string));
    let _: i64 = redis
        .scripts
        .owner_touch
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.owner_daemons(owner_id)],
            args,
        )
        .await?;
    Ok(())
}

/// Refreshes the leases of a pod's connections: `(daemon, owner, conn)`.
/// One script call per registry bucket (its keys share a slot), then one
/// index update per owner for the entries still ours; all concurrent. A
/// bucket whose call failed reports [`RefreshOutcome::Unknown`] for its
/// entries (the others still count); index failures are only logged.
pub async fn refresh(
    redis: &Redis,
    batch: &[(Uuid, Uuid, Uuid)],
    lease: Lease,
) -> Vec<RefreshOutcome> {
    let mut by_bucket: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, (daemon, _, _)) in batch.iter().enumerate() {
        by_bucket
            .entry(redis.keys.bucket_of(*daemon))
            .or_default()
            .push(i);
    }
    let calls = by_bucket.into_iter().map(|(bucket, members)| async move {
        let mut keys = Vec::with_capacity(1 + members.len());
        let mut args = Vec::with_capacity(2 + 2 * members.len());
        keys.push(redis.keys.reap(bucket));
        args.push(lease.ttl_ms.to_string());
        args.push(lease.grace_ms.to_string());
        for &i in &members {
            let (daemon, _, conn) = batch[i];
            keys.push(redis.keys.daemon(daemon));
            args.push(daemon.to_string());
            args.push(conn.to_string());
        }
        let codes: Result<Vec<i64>, Error> = redis
            .scripts
            .refresh
            .evalsha_with_reload(&redis.client, keys, args)
            .await;
        (members, codes)
    });
    let mut outcomes = vec![RefreshOutcome::Unknown; batch.len()];
    for (members, codes) in join_all(calls).await {
        let codes = match codes {
            Ok(codes) => codes,
            Err(e) => {
                tracing::warn!(entries = members.len(), error = %e, "lease refresh of a bucket failed; will retry");
                continue;
            }
        };
        for (i, code) in members.into_iter().zip(codes) {
            outcomes[i] = match code {
                1 => RefreshOutcome::Refreshed,
                0 => RefreshOutcome::Missing,
                _ => RefreshOutcome::Replaced,
            };
        }
    }
    let mut by_owner: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    for ((daemon, owner, _), outcome) in batch.iter().zip(&outcomes) {
        if *outcome == RefreshOutcome::Refreshed {
            by_owner.entry(*owner).or_default().push(*daemon);
        }
    }
    let indexed = join_all(
        by_owner
            .iter()
            .map(|(owner, daemons)| index(redis, *owner, daemons, lease)),
    )
    .await;
    if let Some(Err(e)) = indexed.into_iter().find(Result::is_err) {
        tracing::warn!(error = %e, "owner index refresh failed; listings may miss daemons until the next round");
    }
    outcomes
}

/// Removes the entry if `conn` is still current and schedules the reaper.
/// Returns whether it was current (i.e. the daemon is really gone now).
pub async fn unregister(redis: &Redis, daemon_id: Uuid, conn: Uuid, lease: Lease) -> Result<bool> {
    let keys = vec![
        redis.keys.daemon(daemon_id),
        redis.keys.reap(redis.keys.bucket_of(daemon_id)),
    ];
    let args = vec![
        daemon_id.to_string(),
        conn.to_string(),
        lease.grace_ms.to_string(),
    ];
    let current: i64 = redis
        .scripts
        .unregister
        .evalsha_with_reload(&redis.client, keys, args)
        .await?;
    // The owner index keeps the member until its deadline: removing it here
    // (another slot, so not atomically) could remove the entry a new
    // connection on another pod just wrote. Listing skips members whose
    // registry entry is gone.
    Ok(current == 1)
}

/// Updates fields of the entry if `conn` is still current.
pub async fn touch(
    redis: &Redis,
    daemon_id: Uuid,
    conn: Uuid,
    fields: &[(&str, String)],
) -> Result<bool> {
    let mut args = Vec::with_capacity(1 + 2 * fields.len());
    args.push(conn.to_string());
    for (k, v) in fields {
        args.push((*k).to_owned());
        args.push(v.clone());
    }
    let n: i64 = redis
        .scripts
        .touch
        .evalsha_with_reload(&redis.client, vec![redis.keys.daemon(daemon_id)], args)
        .await?;
    Ok(n == 1)
}

/// The connected daemons of one owner, oldest connection first. The index
/// names candidates; each daemon's own entry decides (it may be gone, or
/// have moved to another owner's index after a stale write).
pub async fn list_owner(redis: &Redis, owner_id: Uuid) -> Result<Vec<DaemonEntry>> {
    let ids: Vec<String> = redis
        .scripts
        .owner_list
        .evalsha_with_reload(
            &redis.client,
            vec![redis.keys.owner_daemons(owner_id)],
            Vec::<String>::new(),
        )
        .await?;
    let ids: Vec<Uuid> = ids.iter().filter_map(|id| id.parse().ok()).collect();
    let entries = join_all(ids.iter().map(|&id| async move {
        let fields: HashMap<String, String> = redis.client.hgetall(redis.keys.daemon(id)).await?;
        Ok::<_, Error>(DaemonEntry::from_fields(id, &fields))
    }))
    .await;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Some(entry) = entry?.filter(|e| e.owner_id == owner_id) {
            out.push(entry);
        }
    }
    out.sort_by_key(|e| e.connected_at);
    Ok(out)
}

/// One connected daemon of this owner; `None` when not connected or another
/// owner's (callers cannot tell which).
pub async fn get(redis: &Redis, owner_id: Uuid, daemon_id: Uuid) -> Result<Option<DaemonEntry>> {
    let fields: HashMap<String, String> =
        redis.client.hgetall(redis.keys.daemon(daemon_id)).await?;
    Ok(DaemonEntry::from_fields(daemon_id, &fields).filter(|e| e.owner_id == owner_id))
}
