//! What `bench chaos` checks at the end, from two independent records:
//!
//! - the simulated daemons' own [`Ledger`]: every run of a task on a daemon
//!   (a `spawnTask` it did not have) with when it started and ended, how
//!   it ended (`taskComplete` sent, or `interruptTask` received) and how
//!   many lines it printed; and when each daemon was offline;
//! - PostgreSQL: the tasks' statuses and the stored output lines, each of
//!   which names its run and line number ([`crate::sim::output::numbered`]).
//!
//! From these: runs of one task that overlapped on two daemons (and for how
//! long, and whether the first daemon had been away past the grace period,
//! the designed reason to retry a task elsewhere), tasks completed more
//! than once, and per run the stored lines: duplicates, out of order,
//! missing, or stored without having been sent.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use uuid::Uuid;

use crate::sim::{Observer, RunEnd};

/// Every run by its number.
pub type Runs = BTreeMap<u64, Run>;
/// Per daemon slot: when it was offline.
pub type Gaps = HashMap<usize, Vec<Gap>>;

/// A daemon offline: from its socket's end (or a failed attempt) until it
/// authenticated again.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    pub from: Instant,
    pub to: Instant,
    /// The simulator dropped the socket ([`crate::sim::Sim::drop_connection`]);
    /// otherwise the server closed it or went away (a killed pod).
    pub dropped: bool,
}

impl Gap {
    /// Whether it began within `window` after `at`.
    fn began_after(&self, at: Instant, window: Duration) -> bool {
        self.from >= at && self.from <= at + window
    }
}

/// One run of a task on one daemon.
#[derive(Debug, Clone)]
pub struct Run {
    pub slot: usize,
    pub task: Uuid,
    pub start: Instant,
    pub end: Option<(Instant, RunEnd)>,
    /// Lines printed (written to the socket) when it ended.
    pub lines: u32,
}

#[derive(Default)]
struct Slot {
    /// (since, dropped by the simulator)
    offline_since: Option<(Instant, bool)>,
    gaps: Vec<Gap>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<u64, Run>,
    slots: HashMap<usize, Slot>,
}

/// The simulated daemons' records ([`Observer`]).
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

impl Ledger {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere while holding the lock leaves plain data: use it.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut inner)
    }

    /// Runs that have not ended.
    pub fn unfinished(&self) -> usize {
        self.with(|i| i.runs.values().filter(|r| r.end.is_none()).count())
    }

    /// Every run by number, and each daemon's offline periods (one still
    /// open ends at `now`).
    pub fn snapshot(&self) -> (Runs, Gaps) {
        let now = Instant::now();
        self.with(|i| {
            let runs = i.runs.iter().map(|(k, v)| (*k, v.clone())).collect();
            let gaps = i
                .slots
                .iter()
                .map(|(slot, s)| {
                    let mut g = s.gaps.clone();
                    if let Some((from, dropped)) = s.offline_since {
                        g.push(Gap {
                            from,
                            to: now,
                            dropped,
                        });
                    }
                    (*slot, g)
                })
                .collect();
            (runs, gaps)
        })
    }
}

impl Observer for Ledger {
    fn authenticated(&self, slot: usize, _daemon_id: Uuid, _took: Duration) {
        self.with(|i| {
            let s = i.slots.entry(slot).or_default();
            if let Some((from, dropped)) = s.offline_since.take() {
                s.gaps.push(Gap {
                    from,
                    to: Instant::now(),
                    dropped,
                });
            }
        });
    }

    fn disconnected(&self, slot: usize, why: &str) {
        let dropped = why == crate::sim::DROPPED;
        self.with(|i| {
            let s = i.slots.entry(slot).or_default();
            s.offline_since.get_or_insert((Instant::now(), dropped));
        });
    }

    fn task_started(&self, slot: usize, task: Uuid, run: u64) {
        let r = Run {
            slot,
            task,
            start: Instant::now(),
            end: None,
            lines: 0,
        };
        self.with(|i| i.runs.insert(run, r));
    }

    fn task_ended(&self, _slot: usize, _task: Uuid, run: u64, end: RunEnd, lines: u32) {
        self.with(|i| {
            if let Some(r) = i.runs.get_mut(&run) {
                r.end = Some((Instant::now(), end));
                r.lines = lines;
            }
        });
    }
}

/// Runs of one task on two daemons at the same time.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overlaps {
    /// Tasks with at least one overlap.
    pub tasks: usize,
    /// Pairs of runs that overlapped.
    pub pairs: usize,
    pub max_ms: u64,
    pub total_ms: u64,
    /// Pairs whose earlier run's daemon was offline for at least the grace
    /// period between the two starts: the task was handed back by design
    /// and the daemon's copy interrupted once it reported it.
    pub after_daemon_away_past_grace: usize,
    /// Every other pair: no disconnect past the grace period explains it.
    pub unexplained: usize,
    /// A few of them: (task, run numbers, ms, explained).
    pub examples: Vec<String>,
    /// Every run that overlapped another.
    #[serde(skip)]
    pub runs: HashSet<u64>,
}

/// Overlapping runs on different daemons, per task.
pub fn overlaps(runs: &Runs, gaps: &Gaps, grace: Duration, now: Instant) -> Overlaps {
    let mut by_task: HashMap<Uuid, Vec<(u64, &Run)>> = HashMap::new();
    for (n, r) in runs {
        by_task.entry(r.task).or_default().push((*n, r));
    }
    let mut out = Overlaps::default();
    for (task, mut rs) in by_task {
        rs.sort_by_key(|(_, r)| r.start);
        let mut any = false;
        for (i, (na, a)) in rs.iter().enumerate() {
            let a_end = a.end.map_or(now, |(t, _)| t);
            for (nb, b) in &rs[i + 1..] {
                if a.slot == b.slot || b.start >= a_end {
                    continue;
                }
                let b_end = b.end.map_or(now, |(t, _)| t);
                let ms = (a_end.min(b_end) - b.start).as_millis() as u64;
                let explained = gaps.get(&a.slot).is_some_and(|g| {
                    g.iter()
                        .any(|g| g.to - g.from >= grace && g.from >= a.start && g.from <= b.start)
                });
                any = true;
                out.runs.extend([*na, *nb]);
                out.pairs += 1;
                out.max_ms = out.max_ms.max(ms);
                out.total_ms += ms;
                if explained {
                    out.after_daemon_away_past_grace += 1;
                } else {
                    out.unexplained += 1;
                }
                if out.examples.len() < 5 {
                    out.examples.push(format!(
                        "task {task}: run {na} (daemon {}) and run {nb} (daemon {}) overlapped {ms} ms{}",
                        a.slot,
                        b.slot,
                        if explained {
                            ", the first daemon away past grace"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        out.tasks += usize::from(any);
    }
    out
}

/// How often the daemons ran and completed each task.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunCounts {
    pub runs: usize,
    pub completed: usize,
    pub interrupted: usize,
    pub unfinished: usize,
    /// Tasks by how many runs they had ("1", "2", ...).
    pub tasks_by_runs: BTreeMap<String, usize>,
    /// Tasks by how many runs sent `taskComplete` ("0", "1", "2", ...).
    pub tasks_by_completions: BTreeMap<String, usize>,
}

pub fn run_counts(runs: &Runs, tasks: &[Uuid]) -> RunCounts {
    let mut out = RunCounts::default();
    let mut per: HashMap<Uuid, (usize, usize)> = tasks.iter().map(|t| (*t, (0, 0))).collect();
    for r in runs.values() {
        out.runs += 1;
        let e = per.entry(r.task).or_default();
        e.0 += 1;
        match r.end {
            Some((_, RunEnd::Completed)) => {
                out.completed += 1;
                e.1 += 1;
            }
            Some((_, RunEnd::Interrupted)) => out.interrupted += 1,
            None => out.unfinished += 1,
        }
    }
    for (n, c) in per.values() {
        *out.tasks_by_runs.entry(n.to_string()).or_default() += 1;
        *out.tasks_by_completions.entry(c.to_string()).or_default() += 1;
    }
    out
}

/// The stored output lines compared with what the runs printed.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputCheck {
    pub rows: usize,
    /// Rows whose content is not a numbered line (or names an unknown run).
    pub unparsed: usize,
    pub lines_printed: u64,
    /// Rows of one run and line stored more than once (the extra copies).
    pub duplicates: usize,
    /// Rows of a run whose line number is below the one stored before it.
    pub out_of_order: usize,
    /// Rows of a line the run had not printed (by its own record).
    pub not_printed: usize,
    /// Printed lines not stored: in the run whose `taskComplete` the
    /// server recorded (the task's daemon in PostgreSQL) / in other runs
    /// (interrupted copies, copies whose reports were refused).
    pub missing_in_accepted_runs: u64,
    pub missing_in_other_runs: u64,
    /// Of those in accepted runs: printed within 2 s before the daemon's
    /// socket ended on the server's side (closed, or its pod killed) /
    /// before the simulator dropped it / neither.
    pub missing_before_server_went_away: u64,
    pub missing_before_socket_dropped: u64,
    pub missing_unexplained: u64,
    /// Stored lines of runs other than the accepted one, and the tasks
    /// that have such lines.
    pub lines_of_other_runs: usize,
    pub tasks_with_lines_of_other_runs: usize,
    /// Tasks whose stored lines of two runs interleave (by id).
    pub tasks_with_interleaved_runs: usize,
    /// `done` tasks whose accepted run is stored whole: every line once, in order.
    pub done_tasks_with_whole_output: usize,
    pub done_tasks_without_whole_output: usize,
    /// A few problems, named.
    pub examples: Vec<String>,
}

/// How soon after a line was printed its daemon's socket must have ended
/// for that to explain the line's loss (it was in flight: in a socket
/// buffer or the pod's output queue).
const IN_FLIGHT: Duration = Duration::from_secs(2);

/// `rows`: (task, output id, content) ordered by task, then id; `done`:
/// the tasks PostgreSQL has as `done`; `accepted`: the run of each done
/// task whose completion the server recorded; `line_delay`: the pause
/// between two lines of a run, to tell when a line was printed.
pub fn output_check(
    rows: &[(Uuid, i64, String)],
    runs: &Runs,
    gaps: &Gaps,
    done: &[Uuid],
    accepted: &HashMap<Uuid, u64>,
    lines_per_task: u32,
    line_delay: Duration,
) -> OutputCheck {
    let mut out = OutputCheck {
        rows: rows.len(),
        lines_printed: runs.values().map(|r| r.lines as u64).sum(),
        ..Default::default()
    };
    // Per run: stored line numbers in id order, and (first id, last id).
    let mut stored: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut span: HashMap<u64, (Uuid, i64, i64)> = HashMap::new();
    for (task, id, content) in rows {
        let parsed = crate::sim::output::parse_numbered(content);
        let Some((run, line, _)) =
            parsed.filter(|(run, _, _)| runs.get(run).is_some_and(|r| r.task == *task))
        else {
            out.unparsed += 1;
            continue;
        };
        stored.entry(run).or_default().push(line);
        let s = span.entry(run).or_insert((*task, *id, *id));
        s.2 = *id;
    }
    let mut whole: HashMap<Uuid, bool> = HashMap::new();
    let mut others = HashSet::new();
    for (n, r) in runs {
        let lines = stored.get(n).map(Vec::as_slice).unwrap_or_default();
        let mut seen = vec![0u32; r.lines.max(lines_per_task) as usize + 1];
        let mut prev: Option<u32> = None;
        let (mut dup, mut ooo, mut extra) = (0, 0, 0);
        for &l in lines {
            if l >= r.lines {
                extra += 1;
            }
            if let Some(c) = seen.get_mut(l as usize) {
                *c += 1;
                if *c > 1 {
                    dup += 1;
                }
            }
            if prev.is_some_and(|p| l < p) {
                ooo += 1;
            }
            prev = Some(l);
        }
        let lost: Vec<u32> = (0..r.lines).filter(|l| seen[*l as usize] == 0).collect();
        let missing = lost.len() as u64;
        let completed = accepted.get(&r.task) == Some(n);
        out.duplicates += dup;
        out.out_of_order += ooo;
        out.not_printed += extra;
        if completed {
            out.missing_in_accepted_runs += missing;
            for l in &lost {
                let printed = r.start + line_delay * *l;
                let ended = gaps
                    .get(&r.slot)
                    .and_then(|g| g.iter().find(|g| g.began_after(printed, IN_FLIGHT)));
                match ended {
                    Some(g) if g.dropped => out.missing_before_socket_dropped += 1,
                    Some(_) => out.missing_before_server_went_away += 1,
                    None => out.missing_unexplained += 1,
                }
            }
            let ok = missing == 0 && dup == 0 && ooo == 0 && extra == 0;
            *whole.entry(r.task).or_default() |= ok;
        } else {
            out.missing_in_other_runs += missing;
            out.lines_of_other_runs += lines.len();
            if !lines.is_empty() {
                others.insert(r.task);
            }
        }
        if dup + ooo + extra > 0 || (completed && missing > 0) {
            note(
                &mut out,
                format!(
                    "task {} run {n} (daemon {}): {} printed, {} stored, {missing} missing {lost:?}, {dup} duplicates, {ooo} out of order, {extra} not printed",
                    r.task,
                    r.slot,
                    r.lines,
                    lines.len()
                ),
            );
        }
    }
    let mut spans: HashMap<Uuid, Vec<(i64, i64)>> = HashMap::new();
    for (task, first, last) in span.values() {
        spans.entry(*task).or_default().push((*first, *last));
    }
    for s in spans.values_mut() {
        s.sort();
        if s.windows(2).any(|w| w[1].0 < w[0].1) {
            out.tasks_with_interleaved_runs += 1;
        }
    }
    out.tasks_with_lines_of_other_runs = others.len();
    for t in done {
        if whole.get(t).copied().unwrap_or(false) {
            out.done_tasks_with_whole_output += 1;
        } else {
            out.done_tasks_without_whole_output += 1;
            note(
                &mut out,
                format!("task {t} is done without its accepted run stored whole"),
            );
        }
    }
    out
}

/// Tasks a daemon ran to the end (sent `taskComplete`) in a run other
/// than the one the server recorded: the work was done twice.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletedTwice {
    pub tasks: usize,
    /// Such runs that overlapped the accepted one on another daemon: a
    /// copy cut off past the grace period finished before it heard of its
    /// interruption, and its reports were refused.
    pub stale_copies: usize,
    /// Such runs that overlapped nothing and whose daemon's socket ended
    /// within 2 s after its `taskComplete`: the completion was lost with the
    /// socket, the daemon no longer listed the task, it was handed back and
    /// ran again.
    pub completion_lost_with_socket: usize,
    pub unexplained: usize,
    pub examples: Vec<String>,
}

pub fn completed_twice(
    runs: &Runs,
    gaps: &Gaps,
    accepted: &HashMap<Uuid, u64>,
    overlapped: &HashSet<u64>,
) -> CompletedTwice {
    let mut out = CompletedTwice::default();
    let mut tasks = HashSet::new();
    for (n, r) in runs {
        let Some((at, RunEnd::Completed)) = r.end else {
            continue;
        };
        let Some(kept) = accepted.get(&r.task).filter(|k| *k != n) else {
            continue;
        };
        tasks.insert(r.task);
        let ended = gaps
            .get(&r.slot)
            .and_then(|g| g.iter().find(|g| g.began_after(at, IN_FLIGHT)));
        let why = if overlapped.contains(n) {
            out.stale_copies += 1;
            "a stale copy".to_owned()
        } else if let Some(g) = ended {
            out.completion_lost_with_socket += 1;
            format!(
                "its socket ended {} ms after its taskComplete ({})",
                (g.from - at).as_millis(),
                if g.dropped { "dropped" } else { "server side" }
            )
        } else {
            out.unexplained += 1;
            "unexplained".to_owned()
        };
        if out.examples.len() < 5 {
            out.examples.push(format!(
                "task {}: run {n} (daemon {}) completed besides the accepted run {kept}: {why}",
                r.task, r.slot
            ));
        }
    }
    out.tasks = tasks.len();
    out
}

fn note(out: &mut OutputCheck, msg: String) {
    if out.examples.len() < 8 {
        out.examples.push(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::output::numbered;

    fn run(slot: usize, task: Uuid, start: Instant, ms: u64, end: RunEnd, lines: u32) -> Run {
        Run {
            slot,
            task,
            start,
            end: Some((start + Duration::from_millis(ms), end)),
            lines,
        }
    }

    #[test]
    fn runs_on_two_daemons_at_once_are_counted_and_explained_by_a_long_absence() {
        let t0 = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let at = |ms| t0 + Duration::from_millis(ms);
        let runs = BTreeMap::from([
            // Task a: daemon 0 runs it 0–5000 ms, daemon 1 from 3000 ms.
            (1, run(0, a, at(0), 5_000, RunEnd::Interrupted, 10)),
            (2, run(1, a, at(3_000), 4_000, RunEnd::Completed, 20)),
            // Task b: one after the other on daemons 2 and 3.
            (3, run(2, b, at(0), 1_000, RunEnd::Interrupted, 5)),
            (4, run(3, b, at(1_000), 1_000, RunEnd::Completed, 20)),
        ]);
        let grace = Duration::from_millis(2_000);
        let none = HashMap::new();
        let o = overlaps(&runs, &none, grace, at(10_000));
        assert_eq!(
            (o.tasks, o.pairs, o.max_ms, o.unexplained),
            (1, 1, 2_000, 1)
        );
        let gap = |from, to| Gap {
            from: at(from),
            to: at(to),
            dropped: false,
        };
        let away = HashMap::from([(0, vec![gap(500, 2_900)])]);
        let o = overlaps(&runs, &away, grace, at(10_000));
        assert_eq!((o.after_daemon_away_past_grace, o.unexplained), (1, 0));
        let short = HashMap::from([(0, vec![gap(500, 1_000)])]);
        assert_eq!(overlaps(&runs, &short, grace, at(10_000)).unexplained, 1);
        let c = run_counts(&runs, &[a, b]);
        assert_eq!(c.tasks_by_completions.get("1"), Some(&2));
        assert_eq!(c.tasks_by_runs.get("2"), Some(&2));
        // Run 1 of task a completes too: a stale copy (it overlapped run 2).
        let mut both = runs.clone();
        both.insert(1, run(0, a, at(0), 5_000, RunEnd::Completed, 20));
        let accepted = HashMap::from([(a, 2), (b, 4)]);
        let o = overlaps(&both, &away, grace, at(10_000));
        let twice = completed_twice(&both, &away, &accepted, &o.runs);
        assert_eq!(
            (twice.tasks, twice.stale_copies, twice.unexplained),
            (1, 1, 0)
        );
    }

    #[test]
    fn stored_lines_are_checked_per_run_for_gaps_duplicates_and_order() {
        let t0 = Instant::now();
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let runs = BTreeMap::from([
            (1, run(0, a, t0, 10, RunEnd::Completed, 4)),
            (2, run(1, b, t0, 10, RunEnd::Interrupted, 2)),
            (3, run(2, b, t0, 10, RunEnd::Completed, 4)),
            (4, run(3, c, t0, 10, RunEnd::Completed, 4)),
        ]);
        let mut rows = Vec::new();
        let mut id = 0;
        let mut push = |task, run, line| {
            id += 1;
            rows.push((task, id, numbered(run, line, 4)));
        };
        for l in 0..4 {
            push(a, 1, l); // whole
        }
        push(b, 2, 0); // an interrupted run, then the whole one
        for l in 0..4 {
            push(b, 3, l);
        }
        push(c, 4, 0);
        push(c, 4, 2); // out of order, line 3 missing, 1 twice
        push(c, 4, 1);
        push(c, 4, 1);
        let gaps = HashMap::new();
        let accepted = HashMap::from([(a, 1), (b, 3), (c, 4)]);
        let o = output_check(
            &rows,
            &runs,
            &gaps,
            &[a, b, c],
            &accepted,
            4,
            Duration::ZERO,
        );
        assert_eq!(o.done_tasks_with_whole_output, 2);
        assert_eq!(o.done_tasks_without_whole_output, 1);
        assert_eq!((o.duplicates, o.out_of_order), (1, 1));
        assert_eq!(o.missing_in_accepted_runs, 1);
        assert_eq!(o.missing_unexplained, 1);
        assert_eq!(o.missing_in_other_runs, 1);
        assert_eq!(o.lines_of_other_runs, 1);
        assert_eq!(o.tasks_with_lines_of_other_runs, 1);
        assert_eq!(o.tasks_with_interleaved_runs, 0);
        assert_eq!(o.unparsed, 0);
    }
}
