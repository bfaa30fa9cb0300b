//! Numbers the scenarios report: nearest-rank latency percentiles (the
//! peer's `latencySummary`), the stamped 101-byte `sendMessage` text, and
//! the [`Recorder`] that counts what the simulated daemons receive.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{protocol::daemon::DaemonCommand, sim::Observer};

/// The peer's supervisor message: 101 bytes of text.
pub const MESSAGE: &str =
    "Please rerun the integration suite, then summarise the failing tests and suggest a fix for each test.";

/// Nanoseconds since the Unix epoch (`CLOCK_REALTIME`, shared by every
/// process on the machine).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A 101-byte message that starts with its send time: 19 digits of
/// nanoseconds since the epoch, a space, then the start of [`MESSAGE`].
/// (meshgate's `sendMessage` has no field for a timestamp, and the HTTP
/// route takes only `{message}`, so the stamp travels in the text.)
pub fn stamped_message(ns: u64) -> String {
    let mut m = format!("{ns:019} ");
    m.push_str(&MESSAGE[..MESSAGE.len() - m.len()]);
    m
}

/// The send time [`stamped_message`] put into `message`.
pub fn message_stamp(message: &str) -> Option<u64> {
    message.get(..19)?.parse().ok()
}

/// Nearest-rank summary of a latency sample, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
}

/// Rounds to `d` decimals (reports carry µs resolution in ms).
pub fn round(x: f64, d: i32) -> f64 {
    let f = 10f64.powi(d);
    (x * f).round() / f
}

/// Element at quantile `q` by nearest rank: the smallest value with at
/// least `q` of the sample at or below it. `sorted` must be sorted.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let rank = (q * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// Summarises `sample` (sorted here).
pub fn summarize(mut sample: Vec<f64>) -> Summary {
    if sample.is_empty() {
        return Summary::default();
    }
    sample.sort_by(|a, b| a.total_cmp(b));
    let n = sample.len();
    let q = |f| Some(round(nearest_rank(&sample, f), 3));
    Summary {
        n,
        min: Some(round(sample[0], 3)),
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        max: Some(round(sample[n - 1], 3)),
        mean: Some(round(sample.iter().sum::<f64>() / n as f64, 3)),
    }
}

/// Compares what was sent to each daemon with what each received.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    pub missing: u64,
    pub extra: u64,
    pub daemons_mismatched: u64,
}

pub fn routing_check(sent: &[u32], received: &[u32]) -> Routing {
    let mut r = Routing::default();
    for (s, g) in sent.iter().zip(received) {
        let (s, g) = (u64::from(*s), u64::from(*g));
        if s != g {
            r.daemons_mismatched += 1;
        }
        if g < s {
            r.missing += s - g;
        } else {
            r.extra += g - s;
        }
    }
    r
}

/// Width of one delivery-rate bin.
pub const BIN_MS: u64 = 100;
const MAX_BINS: usize = 3_000;

/// Records, per measured phase, the `sendMessage` commands the daemons
/// receive (count, per daemon, per 100 ms, latency from the stamp) and the
/// time each registration took.
pub struct Recorder {
    t0_ns: AtomicU64,
    count: AtomicU64,
    bad: AtomicU64,
    /// A counter for the scenario's own use; `reset` leaves it alone.
    marks: AtomicU64,
    outside_bins: AtomicU64,
    per_daemon: Vec<AtomicU32>,
    bins: Vec<AtomicU32>,
    latencies_ms: Mutex<Vec<f64>>,
    /// The slowest arrival of the phase: (ms, seconds after t0, slot).
    worst: Mutex<(f64, f64, usize)>,
    registrations_ms: Mutex<Vec<f64>>,
}

impl Recorder {
    pub fn new(daemons: usize) -> Self {
        Self {
            t0_ns: AtomicU64::new(now_ns()),
            count: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            marks: AtomicU64::new(0),
            outside_bins: AtomicU64::new(0),
            per_daemon: (0..daemons).map(|_| AtomicU32::new(0)).collect(),
            bins: (0..MAX_BINS).map(|_| AtomicU32::new(0)).collect(),
            latencies_ms: Mutex::new(Vec::with_capacity(1 << 16)),
            worst: Mutex::new((0.0, 0.0, 0)),
            registrations_ms: Mutex::new(Vec::new()),
        }
    }

    /// Starts a phase whose bins count from `t0_ns`.
    pub fn reset(&self, t0_ns: u64) {
        self.t0_ns.store(t0_ns, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
        self.bad.store(0, Ordering::Relaxed);
        self.outside_bins.store(0, Ordering::Relaxed);
        self.per_daemon
            .iter()
            .for_each(|c| c.store(0, Ordering::Relaxed));
        self.bins.iter().for_each(|c| c.store(0, Ordering::Relaxed));
        self.latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.worst.lock().unwrap_or_else(|e| e.into_inner()) = (0.0, 0.0, 0);
    }

    /// The slowest arrival: latency ms, when (s after the phase start), daemon slot.
    pub fn worst(&self) -> (f64, f64, usize) {
        *self.worst.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn bad(&self) -> u64 {
        self.bad.load(Ordering::Relaxed)
    }

    pub fn per_daemon(&self) -> Vec<u32> {
        self.per_daemon
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Received per second over the first `seconds` seconds, and the total
    /// received in that window.
    pub fn per_second(&self, seconds: u64) -> (Vec<u64>, u64) {
        let per_s = (1_000 / BIN_MS) as usize;
        let each: Vec<u64> = (0..seconds as usize)
            .map(|s| {
                self.bins[(s * per_s).min(MAX_BINS)..((s + 1) * per_s).min(MAX_BINS)]
                    .iter()
                    .map(|b| u64::from(b.load(Ordering::Relaxed)))
                    .sum()
            })
            .collect();
        let total = each.iter().sum();
        (each, total)
    }

    pub fn latencies(&self) -> Vec<f64> {
        self.latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn registrations(&self) -> Vec<f64> {
        self.registrations_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mark(&self) {
        self.marks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn marks(&self) -> u64 {
        self.marks.load(Ordering::Relaxed)
    }

    /// Counts one stamped arrival for daemon `slot` at `at_ns`.
    pub fn arrived(&self, slot: usize, stamp_ns: u64, at_ns: u64) {
        self.count_only(slot, at_ns);
        let ms = (at_ns as f64 - stamp_ns as f64) / 1e6;
        self.latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ms);
        let mut worst = self.worst.lock().unwrap_or_else(|e| e.into_inner());
        if ms > worst.0 {
            let t0 = self.t0_ns.load(Ordering::Relaxed);
            *worst = (ms, (at_ns as f64 - t0 as f64) / 1e9, slot);
        }
    }

    /// Counts one arrival that carries no stamp.
    pub fn count_only(&self, slot: usize, at_ns: u64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = self.per_daemon.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let t0 = self.t0_ns.load(Ordering::Relaxed);
        match at_ns
            .checked_sub(t0)
            .map(|d| (d / 1_000_000 / BIN_MS) as usize)
        {
            Some(b) if b < MAX_BINS => {
                self.bins[b].fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                self.outside_bins.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Observer for Recorder {
    fn authenticated(&self, _slot: usize, _daemon_id: Uuid, took: Duration) {
        self.registrations_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(took.as_secs_f64() * 1e3);
    }

    fn command(&self, slot: usize, command: &DaemonCommand, at: SystemTime) {
        let DaemonCommand::SendMessage { message, .. } = command else {
            return;
        };
        let at_ns = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        match message_stamp(message) {
            Some(stamp) => self.arrived(slot, stamp, at_ns),
            None => {
                self.bad.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_peers_definition() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&s, 0.5), 50.0);
        assert_eq!(nearest_rank(&s, 0.9), 90.0);
        assert_eq!(nearest_rank(&s, 0.99), 99.0);
        assert_eq!(nearest_rank(&s, 0.999), 100.0);
        assert_eq!(nearest_rank(&[7.0], 0.5), 7.0);
        assert_eq!(nearest_rank(&[1.0, 2.0], 0.0), 1.0);
    }

    #[test]
    fn a_summary_sorts_and_rounds_to_microseconds() {
        let s = summarize(vec![3.0004, 1.0, 2.0, 10.0]);
        assert_eq!(s.n, 4);
        assert_eq!(s.min, Some(1.0));
        assert_eq!(s.p50, Some(2.0));
        assert_eq!(s.p99, Some(10.0));
        assert_eq!(s.mean, Some(4.0));
        assert_eq!(summarize(Vec::new()).n, 0);
    }

    #[test]
    fn the_stamped_message_is_101_bytes_and_gives_its_stamp_back() {
        let ns = 1_795_676_163_621_994_500;
        let m = stamped_message(ns);
        assert_eq!(m.len(), 101);
        assert_eq!(message_stamp(&m), Some(ns));
        assert_eq!(message_stamp(MESSAGE), None);
    }

    #[test]
    fn routing_counts_missing_and_extra_per_daemon() {
        let r = routing_check(&[2, 2, 2], &[2, 1, 3]);
        assert_eq!(
            r,
            Routing {
                missing: 1,
                extra: 1,
                daemons_mismatched: 2
            }
        );
    }

    #[test]
    fn arrivals_land_in_their_100_ms_bin() {
        let r = Recorder::new(2);
        r.reset(1_000_000_000);
        r.arrived(0, 1_000_000_000, 1_050_000_000);
        r.arrived(1, 1_000_000_000, 3_250_000_000);
        let (each, total) = r.per_second(3);
        assert_eq!(each, vec![1, 0, 1]);
        assert_eq!(total, 2);
        assert_eq!(r.per_daemon(), vec![1, 1]);
        assert_eq!(summarize(r.latencies()).max, Some(2250.0));
    }
}
