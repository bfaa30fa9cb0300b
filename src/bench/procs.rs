//! CPU time and memory from `/proc` (Linux), the same readings as the
//! peer's `procstat.js`: utime+stime of a process from `/proc/PID/stat`,
//! `VmRSS` from `/proc/PID/status`, whole-machine counters from `/proc/stat`.
//!
//! The harness process also holds the simulated daemons and the HTTP load
//! generator, each on a tokio runtime of its own whose threads are named
//! (`mg-sim`, `mg-load`); [`own_threads`] splits this process's CPU time by
//! thread name from `/proc/self/task/*/stat`.

use std::{collections::BTreeMap, fs, process::Command, sync::OnceLock};

use serde::Serialize;

use super::stats::round;

fn clk_tck() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// (comm, utime+stime in seconds) of a `/proc/.../stat` file.
fn read_stat(path: &str) -> Option<(String, f64)> {
    let s = fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    // After "(comm) ": field 3 (state) is index 0; utime is field 14, stime 15.
    let rest: Vec<&str> = s[close + 2..].split(' ').collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / clk_tck()))
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds of this process's threads grouped by name: `daemons`
/// (`mg-sim*`), `loadgen` (`mg-load*`), `harness` (everything else).
/// Threads that exited are not counted; the runtimes live for the whole
/// scenario, so nothing measured is lost.
pub fn own_threads() -> BTreeMap<&'static str, f64> {
    let mut out = BTreeMap::from([("daemons", 0.0), ("loadgen", 0.0), ("harness", 0.0)]);
    if let Ok(dir) = fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let path = format!("{}/stat", entry.path().display());
            if let Some((comm, secs)) = read_stat(&path) {
                let group = if comm.starts_with("mg-sim") {
                    "daemons"
                } else if comm.starts_with("mg-load") {
                    "loadgen"
                } else {
                    "harness"
                };
                *out.entry(group).or_default() += secs;
            }
        }
    }
    out
}

/// Every process on the machine: pid → (comm, CPU seconds).
fn all_processes() -> BTreeMap<u32, (String, f64)> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Some(found) = read_stat(&format!("/proc/{pid}/stat")) {
                out.insert(pid, found);
            }
        }
    }
    out
}

/// (busy, steal, total) jiffies of the whole machine.
fn machine_jiffies() -> (f64, f64, f64) {
    let s = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0.0, 0.0, 0.0);
    }
    // user nice system idle iowait irq softirq steal
    let total: f64 = v.iter().sum();
    let idle = v[3] + v[4];
    (total - idle - v[7], v[7], total)
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The processes a phase charges CPU to.
#[derive(Clone, Default)]
pub struct Tracked {
    /// (name, pid) of child processes: pods, Redis.
    pub pids: Vec<(String, u32)>,
    /// Charge all `postgres` processes as one entry.
    pub postgres: bool,
}

/// CPU counters at one moment.
pub struct CpuSnapshot {
    procs: BTreeMap<String, Option<f64>>,
    threads: BTreeMap<&'static str, f64>,
    all: BTreeMap<u32, (String, f64)>,
    machine: (f64, f64, f64),
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuReport {
    pub cpu_seconds: BTreeMap<String, Option<f64>>,
    pub cpu_seconds_per_100k: BTreeMap<String, Option<f64>>,
    pub machine_busy_pct: f64,
    pub steal_pct: f64,
    /// Busy machine time not charged to any process listed above.
    pub other_cpu_seconds: f64,
    pub other_processes: Vec<OtherProcess>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OtherProcess {
    pub pid: u32,
    pub comm: String,
    pub cpu_seconds: f64,
}

impl Tracked {
    pub fn snapshot(&self) -> CpuSnapshot {
        let all = all_processes();
        let mut procs: BTreeMap<String, Option<f64>> = self
            .pids
            .iter()
            .map(|(name, pid)| (name.clone(), all.get(pid).map(|(_, s)| *s)))
            .collect();
        if self.postgres {
            let pg = all
                .values()
                .filter(|(comm, _)| comm == "postgres")
                .map(|(_, s)| s)
                .sum();
            procs.insert("postgres".into(), Some(pg));
        }
        CpuSnapshot {
            procs,
            threads: own_threads(),
            all,
            machine: machine_jiffies(),
        }
    }

    /// CPU between `before` and now; per-100k figures divide by `units`
    /// (commands delivered, lines stored, ...).
    pub fn report(&self, before: &CpuSnapshot, units: u64) -> CpuReport {
        let after = self.snapshot();
        let mut cpu: BTreeMap<String, Option<f64>> = BTreeMap::new();
        for (name, b) in &before.procs {
            let a = after.procs.get(name).copied().flatten();
            cpu.insert(name.clone(), a.zip(*b).map(|(a, b)| round(a - b, 2)));
        }
        for (name, b) in &before.threads {
            let a = after.threads.get(name).copied().unwrap_or(*b);
            cpu.insert((*name).to_owned(), Some(round(a - b, 2)));
        }
        let ours: f64 = cpu.values().flatten().sum();
        let (busy, steal, total) = (
            after.machine.0 - before.machine.0,
            after.machine.1 - before.machine.1,
            after.machine.2 - before.machine.2,
        );
        let mut tracked: Vec<u32> = self.pids.iter().map(|(_, p)| *p).collect();
        tracked.push(std::process::id());
        let mut others: Vec<OtherProcess> = after
            .all
            .iter()
            .filter(|(pid, (comm, _))| {
                !tracked.contains(pid) && (!self.postgres || comm != "postgres")
            })
            .filter_map(|(pid, (comm, s))| {
                let used = s - before.all.get(pid).map(|(_, b)| *b).unwrap_or(0.0);
                (used >= 0.1).then(|| OtherProcess {
                    pid: *pid,
                    comm: comm.clone(),
                    cpu_seconds: round(used, 2),
                })
            })
            .collect();
        others.sort_by(|a, b| b.cpu_seconds.total_cmp(&a.cpu_seconds));
        others.truncate(5);
        let per_100k = cpu
            .iter()
            .map(|(k, v)| {
                let per = v
                    .filter(|_| units > 0)
                    .map(|s| round(s * 1e5 / units as f64, 3));
                (k.clone(), per)
            })
            .collect();
        let pct = |x: f64| {
            if total > 0.0 {
                round(100.0 * x / total, 1)
            } else {
                0.0
            }
        };
        CpuReport {
            cpu_seconds: cpu,
            cpu_seconds_per_100k: per_100k,
            machine_busy_pct: pct(busy),
            steal_pct: pct(steal),
            other_cpu_seconds: round(busy / clk_tck() - ours, 2),
            other_processes: others,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(read_stat(&format!("/proc/{me}/stat")).is_some());
        assert!(rss_kib(me).unwrap() > 0);
        assert!(own_threads().contains_key("harness"));
    }
}
