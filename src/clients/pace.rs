//! How fast a pod reads stored lines for its clients' replays, all clients
//! together (`MESHGATE_CLIENT_REPLAY_RATE` lines per second). Without a
//! bound, a hundred browsers resuming long tasks at once take the pod's and
//! PostgreSQL's CPU from the live lines of everybody else; with it, a
//! replay takes longer and live output stays on time. Each page reserves
//! its lines before it is read and waits its turn; nothing is dropped.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct ReplayBudget {
    /// Lines per second; 0: no bound.
    per_s: f64,
    /// Lines that may be read at once after a quiet time.
    burst: f64,
    /// Lines available (negative: reserved ahead) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl ReplayBudget {
    pub fn new(lines_per_s: u64) -> Self {
        let per_s = lines_per_s as f64;
        let burst = (per_s / 10.0).max(super::stream::PAGE as f64);
        Self {
            per_s,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Reserves `lines` and returns how long to wait before reading them.
    fn reserve(&self, lines: u64) -> Duration {
        if self.per_s <= 0.0 {
            return Duration::ZERO;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (available, at) = *state;
        let refilled =
            (available + now.duration_since(at).as_secs_f64() * self.per_s).min(self.burst);
        let left = refilled - lines as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_s)
        }
    }

    /// Waits until `lines` more may be read.
    pub async fn take(&self, lines: u64) {
        let wait = self.reserve(lines);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_queue_up_at_the_rate() {
        let b = ReplayBudget::new(10_000);
        // The burst (1,000 lines) is free; the next 1,000 wait 0.1 s, the
        // 1,000 after those 0.2 s: callers are spaced at the rate.
        assert!(b.reserve(1_000) <= Duration::from_millis(1));
        let second = b.reserve(1_000);
        assert!(
            second > Duration::from_millis(90) && second <= Duration::from_millis(100),
            "{second:?}"
        );
        let third = b.reserve(1_000);
        assert!(
            third > Duration::from_millis(190) && third <= Duration::from_millis(200),
            "{third:?}"
        );
    }

    #[test]
    fn zero_means_no_bound() {
        let b = ReplayBudget::new(0);
        for _ in 0..100 {
            assert_eq!(b.reserve(1_000_000), Duration::ZERO);
        }
    }
}
