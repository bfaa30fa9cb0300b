//! Names of every Redis key and channel (documented in `redis/README.md`).
//!
//! Keys a script touches together share a hash tag, so they sit in one hash
//! slot and the script runs on Redis Cluster as on one server. The registry
//! is split into buckets: a daemon's hash, its bucket's reap schedule and
//! every pod's command channel for that bucket share the bucket's tag, so
//! `route.lua` reads the entry and `SPUBLISH`es in the same slot, one round
//! trip. Bucket tags are chosen so bucket `k` lands in the `k`-th equal
//! share of the 16,384 slots: on a cluster with slots split evenly, buckets
//! (and so daemons, routing and reaping) spread evenly over the primaries.

use uuid::Uuid;

/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;

#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    /// Hash tag of each bucket (without braces); `None` for the one bucket
    /// of a single server, whose names carry no tag (as before buckets
    /// existed, so pods of both versions work together during an upgrade).
    tags: Vec<Option<String>>,
}

impl Keys {
    /// `buckets` ≥ 1; every pod of a deployment must use the same number.
    /// `tagged`: always on a cluster; on one server only with several
    /// buckets (nothing needs them there, but the names must agree).
    pub fn new(prefix: &str, buckets: usize, tagged: bool) -> Self {
        let buckets = buckets.max(1);
        let tagged = tagged || buckets > 1;
        Self {
            prefix: prefix.to_owned(),
            tags: (0..buckets)
                .map(|k| tagged.then(|| bucket_tag(k, buckets)))
                .collect(),
        }
    }

    /// Number of registry buckets.
    pub fn buckets(&self) -> usize {
        self.tags.len()
    }

    /// The bucket of a daemon.
    pub fn bucket_of(&self, daemon_id: Uuid) -> usize {
        (daemon_id.as_u128() % self.tags.len() as u128) as usize
    }

    fn in_bucket(&self, bucket: usize, rest: &str) -> String {
        match &self.tags[bucket] {
            Some(tag) => format!("{}:{{{tag}}}:{rest}", self.prefix),
            None => format!("{}:{rest}", self.prefix),
        }
    }

    /// Registry entry of one daemon (hash, leased), in its bucket's slot.
    pub fn daemon(&self, daemon_id: Uuid) -> String {
        format!(
            "{}{daemon_id}",
            self.daemon_prefix(self.bucket_of(daemon_id))
        )
    }

    /// Prefix of [`Keys::daemon`] in one bucket, for scripts that build the
    /// key themselves (same slot: the tag is in the prefix).
    pub fn daemon_prefix(&self, bucket: usize) -> String {
        self.in_bucket(bucket, "daemon:")
    }

    /// When each gone daemon of a bucket is due for cleanup (zset: id → ms).
    pub fn reap(&self, bucket: usize) -> String {
        self.in_bucket(bucket, "reap")
    }

    /// Per-owner index of connected daemons (zset: id → lease deadline).
    pub fn owner_daemons(&self, owner_id: Uuid) -> String {
        format!("{}:owner:{owner_id}:daemons", self.prefix)
    }

    /// Prefix of the command channels of a bucket (followed by the pod id).
    pub fn pod_channel_prefix(&self, bucket: usize) -> String {
        self.in_bucket(bucket, "pod:")
    }

    /// One pod's command channel in one bucket.
    pub fn pod_channel(&self, bucket: usize, pod_id: &str) -> String {
        format!("{}{pod_id}", self.pod_channel_prefix(bucket))
    }

    /// All of one pod's command channels, by bucket.
    pub fn pod_channels(&self, pod_id: &str) -> Vec<String> {
        (0..self.buckets())
            .map(|b| self.pod_channel(b, pod_id))
            .collect()
    }

    /// All of one pod's event-hub self-ping channels, by bucket.
    pub fn pod_event_channels(&self, pod_id: &str) -> Vec<String> {
        (0..self.buckets())
            .map(|b| self.in_bucket(b, &format!("podev:{pod_id}")))
            .collect()
    }

    /// The question in flight to a daemon of `kind` about a task, and the
    /// pods waiting for its answer (hash, TTL; see `redis/pending_join.lua`).
    pub fn pending(&self, kind: &str, task_id: Uuid) -> String {
        format!("{}:ask:{kind}:{task_id}", self.prefix)
    }

    /// Claim of one stale-copy interrupt (PROTOCOL.md §1.4), for one
    /// reconcile window.
    pub fn stale_interrupt(&self, daemon_id: Uuid, task_id: Uuid) -> String {
        format!("{}:stale:{daemon_id}:{task_id}", self.prefix)
    }

    /// A tool key entry by the key's SHA-256.
    pub fn tool_key(&self, hash: &str) -> String {
        format!("{}:toolkey:{hash}", self.prefix)
    }

    /// Which key hash a task's tool key has.
    pub fn tool_key_of_task(&self, task_id: Uuid) -> String {
        format!("{}:toolkey-task:{task_id}", self.prefix)
    }

    /// Last reauth status of a daemon's request.
    pub fn reauth(&self, daemon_id: Uuid, request_id: Uuid) -> String {
        format!("{}:reauth:{daemon_id}:{request_id}", self.prefix)
    }

    /// A web client ticket (by hash).
    pub fn ticket(&self, hash: &str) -> String {
        format!("{}:ticket:{hash}", self.prefix)
    }

    /// Announcements that a task's daemon changed (every pod listens).
    pub fn task_routes(&self) -> String {
        format!("{}:taskroutes", self.prefix)
    }

    /// Events of one owner (task updates, files, daemon presence).
    pub fn owner_events(&self, owner_id: Uuid) -> String {
        format!("{}:ev:owner:{owner_id}", self.prefix)
    }

    /// Events of one task (output, updates, merge/PR results).
    pub fn task_events(&self, task_id: Uuid) -> String {
        format!("{}:ev:task:{task_id}", self.prefix)
    }
}

/// The hash slot of a key or channel (honouring `{hash tags}`).
pub fn slot(key: &str) -> u16 {
    fred::util::redis_keyslot(key.as_bytes())
}

/// The first tag `"<k>.<j>"` (j = 0, 1, …) whose slot falls in bucket `k`'s
/// share of the slot space. Deterministic, so every pod derives the same.
fn bucket_tag(k: usize, buckets: usize) -> String {
    let lo = k * SLOTS / buckets;
    let hi = ((k + 1) * SLOTS / buckets).max(lo + 1);
    (0u32..)
        .map(|j| format!("{k}.{j}"))
        .find(|tag| (lo..hi).contains(&usize::from(slot(&format!("{{{tag}}}")))))
        .expect("a tag exists for every slot range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemons_keys_and_channels_share_one_slot() {
        let keys = Keys::new("mg", 16, true);
        let d = Uuid::new_v4();
        let b = keys.bucket_of(d);
        let s = slot(&keys.daemon(d));
        assert_eq!(slot(&keys.reap(b)), s);
        assert_eq!(slot(&keys.pod_channel(b, "pod-a")), s);
        assert_eq!(slot(&format!("{}{d}", keys.daemon_prefix(b))), s);
    }

    #[test]
    fn buckets_fall_in_equal_shares_of_the_slots() {
        let keys = Keys::new("mg", 16, true);
        for b in 0..16 {
            let s = usize::from(slot(&keys.reap(b)));
            assert!(
                (b * 1024..(b + 1) * 1024).contains(&s),
                "bucket {b}: slot {s}"
            );
        }
        // Three primaries splitting the slots evenly get 5 or 6 buckets each.
        let mut per_primary = [0; 3];
        for b in 0..16 {
            per_primary[usize::from(slot(&keys.reap(b))) * 3 / SLOTS] += 1;
        }
        assert!(
            per_primary.iter().all(|&n| (5..=6).contains(&n)),
            "{per_primary:?}"
        );
    }

    #[test]
    fn daemons_spread_over_buckets() {
        let keys = Keys::new("mg", 16, true);
        let mut counts = [0; 16];
        for _ in 0..16_000 {
            counts[keys.bucket_of(Uuid::new_v4())] += 1;
        }
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
    }

    #[test]
    fn one_bucket_on_a_cluster_keeps_every_daemon_in_one_slot() {
        let keys = Keys::new("mg", 1, true);
        let a = slot(&keys.daemon(Uuid::new_v4()));
        assert_eq!(slot(&keys.daemon(Uuid::new_v4())), a);
        assert_eq!(keys.pod_channels("p").len(), 1);
    }

    #[test]
    fn one_server_with_one_bucket_keeps_the_untagged_names() {
        let keys = Keys::new("mg", 1, false);
        let d = Uuid::nil();
        assert_eq!(keys.daemon(d), format!("mg:daemon:{d}"));
        assert_eq!(keys.reap(0), "mg:reap");
        assert_eq!(keys.pod_channels("p"), vec!["mg:pod:p"]);
        assert_eq!(keys.pod_event_channels("p"), vec!["mg:podev:p"]);
        // Several buckets need tags even on one server (names must agree).
        assert!(Keys::new("mg", 4, false).reap(0).starts_with("mg:{"));
    }
}
