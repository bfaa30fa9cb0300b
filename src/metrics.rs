//! Process counters, rendered as Prometheus text at `/metrics`.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

/// Monotonic counters; gauges are read from their owners at render time.
#[derive(Default)]
pub struct Metrics {
    pub commands_sent: AtomicU64,
    pub commands_offline: AtomicU64,
    pub commands_delivered: AtomicU64,
    pub commands_undeliverable: AtomicU64,
    pub commands_queue_full: AtomicU64,
    pub pubsub_messages_lost: AtomicU64,
    pub daemon_frames_in: AtomicU64,
    pub daemon_parse_errors: AtomicU64,
    pub daemons_reaped: AtomicU64,
    pub tasks_retried: AtomicU64,
    pub redis_errors: AtomicU64,
    pub db_errors: AtomicU64,
    pub output_lines_stored: AtomicU64,
    pub output_lines_lost: AtomicU64,
    pub events_delivered: AtomicU64,
    pub clients_dropped_slow: AtomicU64,
    pub pending_answered: AtomicU64,
    pub pubsub_reconnects: AtomicU64,
    pub pubsub_resubscribes: AtomicU64,
    pub pending_timeouts: AtomicU64,
    pub pending_offline: AtomicU64,
    pub commands_forwarded: AtomicU64,
    pub commands_unconfirmed: AtomicU64,
    pub slow_daemons_closed: AtomicU64,
    pub spawn_resent: AtomicU64,
    pub tasks_confirmed: AtomicU64,
    pub tasks_handed_back: AtomicU64,
    pub stale_copies_interrupted: AtomicU64,
    pub spawn_outcome_unknown: AtomicU64,
    pub client_replays: AtomicU64,
    pub client_replay_lines: AtomicU64,
    pub client_gaps_filled: AtomicU64,
    pub client_resyncs: AtomicU64,
    /// Commands by type, then outcome (nested so that counting one looks
    /// the type up by `&str`, without building an owned key per command).
    commands: Mutex<BTreeMap<String, BTreeMap<&'static str, u64>>>,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one command of `kind` with `outcome` (sent, offline, failed,
    /// delivered, undeliverable, queue_full).
    pub fn command(&self, kind: &str, outcome: &'static str) {
        let mut map = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(outcomes) = map.get_mut(kind) {
            *outcomes.entry(outcome).or_default() += 1;
        } else if map.len() < 1_000 {
            map.insert(kind.to_owned(), BTreeMap::from([(outcome, 1)]));
        }
    }

    /// Prometheus text exposition; `gauges` are (name, help, value).
    /// `extra`: counters kept elsewhere (name, help, value).
    pub fn render(&self, extra: &[(&str, &str, u64)], gauges: &[(&str, &str, u64)]) -> String {
        use std::fmt::Write;
        let counters: [(&str, &str, &AtomicU64); 33] = [
            (
                "meshgate_commands_sent_total",
                "Commands published to a pod holding the daemon",
                &self.commands_sent,
            ),
            (
                "meshgate_commands_offline_total",
                "Commands refused because no pod holds the daemon",
                &self.commands_offline,
            ),
            (
                "meshgate_commands_delivered_total",
                "Commands queued on a local daemon socket",
                &self.commands_delivered,
            ),
            (
                "meshgate_commands_undeliverable_total",
                "Commands that arrived for a socket that had closed or been replaced (forwarded or refused)",
                &self.commands_undeliverable,
            ),
            (
                "meshgate_commands_queue_full_total",
                "Commands refused because the daemon socket queue was full (the socket is then closed)",
                &self.commands_queue_full,
            ),
            (
                "meshgate_pubsub_messages_lost_total",
                "Pub/sub messages lost because the pod lagged behind Redis",
                &self.pubsub_messages_lost,
            ),
            (
                "meshgate_daemon_frames_total",
                "Frames received from daemons",
                &self.daemon_frames_in,
            ),
            (
                "meshgate_daemon_parse_errors_total",
                "Daemon frames answered with PARSE_ERROR",
                &self.daemon_parse_errors,
            ),
            (
                "meshgate_daemons_reaped_total",
                "Gone daemons cleaned up by this pod",
                &self.daemons_reaped,
            ),
            (
                "meshgate_tasks_retried_total",
                "Tasks put back or failed after their daemon was gone",
                &self.tasks_retried,
            ),
            (
                "meshgate_redis_errors_total",
                "Redis operations that failed",
                &self.redis_errors,
            ),
            (
                "meshgate_db_errors_total",
                "PostgreSQL operations that failed",
                &self.db_errors,
            ),
            (
                "meshgate_output_lines_stored_total",
                "Task output lines persisted",
                &self.output_lines_stored,
            ),
            (
                "meshgate_output_lines_lost_total",
                "Task output lines given up at shutdown while PostgreSQL was down",
                &self.output_lines_lost,
            ),
            (
                "meshgate_events_delivered_total",
                "Events queued to web clients",
                &self.events_delivered,
            ),
            (
                "meshgate_clients_dropped_slow_total",
                "Web clients disconnected because their queue overflowed",
                &self.clients_dropped_slow,
            ),
            (
                "meshgate_pubsub_reconnects_total",
                "Times the command subscriber reconnected (messages published meanwhile are lost)",
                &self.pubsub_reconnects,
            ),
            (
                "meshgate_pubsub_resubscribes_total",
                "Times the pod subscribed again after a subscription stopped delivering (cluster failover, slot moved)",
                &self.pubsub_resubscribes,
            ),
            (
                "meshgate_pending_answered_total",
                "Waiting calls answered by a daemon",
                &self.pending_answered,
            ),
            (
                "meshgate_pending_timeouts_total",
                "Waiting calls that timed out",
                &self.pending_timeouts,
            ),
            (
                "meshgate_pending_offline_total",
                "Waiting calls refused because the daemon was offline",
                &self.pending_offline,
            ),
            (
                "meshgate_commands_forwarded_total",
                "Commands forwarded to a daemon's newer connection after their socket was replaced",
                &self.commands_forwarded,
            ),
            (
                "meshgate_commands_unconfirmed_total",
                "Commands whose delivery receipt did not come in time (outcome unknown to the caller)",
                &self.commands_unconfirmed,
            ),
            (
                "meshgate_slow_daemons_closed_total",
                "Daemon sockets closed because their command queue was full",
                &self.slow_daemons_closed,
            ),
            (
                "meshgate_spawn_resent_total",
                "spawnTask sent again because the daemon's heartbeats did not list the task",
                &self.spawn_resent,
            ),
            (
                "meshgate_tasks_confirmed_total",
                "Started tasks first confirmed by a daemon's heartbeat",
                &self.tasks_confirmed,
            ),
            (
                "meshgate_tasks_handed_back_total",
                "Tasks handed back because their daemon's heartbeats left them out",
                &self.tasks_handed_back,
            ),
            (
                "meshgate_stale_copies_interrupted_total",
                "interruptTask sent for a task a daemon runs that is no longer its own",
                &self.stale_copies_interrupted,
            ),
            (
                "meshgate_spawn_outcome_unknown_total",
                "spawnTask whose delivery could not be confirmed (left to reconciliation)",
                &self.spawn_outcome_unknown,
            ),
            (
                "meshgate_client_replays_total",
                "Task topics a web client asked to replay from a position (subscribe with since, Last-Event-ID)",
                &self.client_replays,
            ),
            (
                "meshgate_client_replay_lines_total",
                "Stored output lines read from PostgreSQL for web clients' replays and gap repairs",
                &self.client_replay_lines,
            ),
            (
                "meshgate_client_gaps_filled_total",
                "Web client task topics filled from PostgreSQL after the pod's events subscription was interrupted",
                &self.client_gaps_filled,
            ),
            (
                "meshgate_client_resyncs_total",
                "resync events sent to web clients (events of a topic lost and not refillable)",
                &self.client_resyncs,
            ),
        ];
        let mut out = String::new();
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let name = "meshgate_commands_total";
        let _ = writeln!(
            out,
            "# HELP {name} Daemon commands by type and outcome\n# TYPE {name} counter"
        );
        let commands = self.commands.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, outcomes) in commands.iter() {
            for (outcome, n) in outcomes {
                let _ = writeln!(out, "{name}{{type=\"{kind}\",outcome=\"{outcome}\"}} {n}");
            }
        }
        drop(commands);
        for (name, help, value) in extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_by_type_and_outcome() {
        let m = Metrics::default();
        for _ in 0..3 {
            m.command("sendMessage", "delivered");
        }
        m.command("sendMessage", "queue_full");
        m.command("spawnTask", "sent");
        let text = m.render(&[], &[]);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshgate_commands_total{"))
            .collect();
        assert_eq!(
            lines,
            [
                r#"meshgate_commands_total{type="sendMessage",outcome="delivered"} 3"#,
                r#"meshgate_commands_total{type="sendMessage",outcome="queue_full"} 1"#,
                r#"meshgate_commands_total{type="spawnTask",outcome="sent"} 1"#,
            ]
        );
    }

    #[test]
    fn at_most_a_thousand_command_types_are_kept() {
        let m = Metrics::default();
        for i in 0..1_200 {
            m.command(&format!("kind{i}"), "sent");
        }
        m.command("kind0", "sent");
        let text = m.render(&[], &[]);
        let count = |prefix: &str| text.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(count("meshgate_commands_total{"), 1_000);
        assert!(text.contains(r#"meshgate_commands_total{type="kind0",outcome="sent"} 2"#));
    }
}
