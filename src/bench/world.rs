//! What a scenario runs against, and how it is taken down again: a fresh
//! PostgreSQL database (migrated, one owner with one key), a random Redis
//! key prefix, meshgate pods as child processes of this binary
//! (`meshgate serve`, or the pod-B injector role), and optionally a private
//! `redis-server`. Everything started here is stopped by pid; the database
//! is dropped and the prefix's keys deleted at the end.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::AsFd,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{postgres::PgPoolOptions, PgPool};
use uuid::Uuid;

use super::BenchArgs;
use crate::db::accounts::NewKey;

/// Log filter of the child pods: warnings only, so that logging a line per
/// connection or command does not cost CPU in the measurement (the peer
/// logs nothing either).
const POD_LOG: &str = "warn";

/// Tokio workers of each child pod: `MESHGATE_BENCH_POD_THREADS`, else 1.
/// The scenarios run two pods on a two-core machine beside Redis, the
/// clients and the load generator: one worker each, as with a one-CPU
/// limit per pod (the peer's nodes run their JavaScript on one thread too).
pub fn pod_worker_threads() -> String {
    std::env::var("MESHGATE_BENCH_POD_THREADS").unwrap_or_else(|_| "1".into())
}

/// The bench database and Redis prefix.
pub struct World {
    admin_url: String,
    pub db_name: String,
    pub db_url: String,
    pub pool: PgPool,
    pub redis_url: String,
    pub prefix: String,
    pub key: NewKey,
    pub http: reqwest::Client,
    /// Settings every pod started from now on gets on top of the defaults
    /// (`chaos` shortens leases and grace periods).
    pub pod_settings: Vec<(String, String)>,
}

/// Replaces the database name of a PostgreSQL URL.
fn with_db(url: &str, db: &str) -> anyhow::Result<String> {
    let (base, _) = url.rsplit_once('/').context("database URL has no path")?;
    Ok(format!("{base}/{db}"))
}

impl World {
    pub async fn new(args: &BenchArgs, redis_url: &str) -> anyhow::Result<Self> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&args.database_url)
            .await
            .context("connect to PostgreSQL (--database-url)")?;
        let db_name = format!("mg_bench_{}", &Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let db_url = with_db(&args.database_url, &db_name)?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await?;
        crate::db::migrate(&pool).await?;
        let key =
            crate::db::accounts::create_key(&pool, "bench@meshgate.invalid", Some("bench")).await?;
        Ok(Self {
            admin_url: args.database_url.clone(),
            db_name,
            db_url,
            pool,
            redis_url: redis_url.to_owned(),
            prefix: format!("mgb{}", &Uuid::new_v4().simple().to_string()[..12]),
            key,
            http: reqwest::Client::new(),
            pod_settings: Vec::new(),
        })
    }

    /// Environment of a child pod listening on `addr` (the pod's settings
    /// are all read from the environment; defaults otherwise).
    pub fn pod_env(&self, name: &str, addr: SocketAddr) -> Vec<(String, String)> {
        [
            ("MESHGATE_LISTEN", addr.to_string()),
            ("DATABASE_URL", self.db_url.clone()),
            ("REDIS_URL", self.redis_url.clone()),
            ("MESHGATE_REDIS_PREFIX", self.prefix.clone()),
            (
                "MESHGATE_POD_ID",
                format!("bench-{name}-{}", &self.prefix[3..9]),
            ),
            ("MESHGATE_DRAIN_MS", "3000".into()),
            ("MESHGATE_WORKER_THREADS", pod_worker_threads()),
            (
                "RUST_LOG",
                std::env::var("MESHGATE_BENCH_POD_LOG").unwrap_or(POD_LOG.into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.pod_settings.iter().cloned())
        .collect()
    }

    /// Starts `meshgate serve` as pod `name` and waits until it is ready.
    pub async fn serve(&self, name: &str) -> anyhow::Result<PodProc> {
        self.spawn_pod(name, &["serve"], Stdio::null()).await
    }

    /// Starts `meshgate serve` as pod `name` on `addr` (a restarted pod
    /// keeps its address) and waits until it is ready.
    pub async fn serve_at(&self, name: &str, addr: SocketAddr) -> anyhow::Result<PodProc> {
        self.spawn_pod_at(name, &["serve"], Stdio::null(), addr)
            .await
    }

    /// Starts this binary with `args` as a pod and waits for `/readyz`.
    pub async fn spawn_pod(
        &self,
        name: &str,
        args: &[&str],
        stdin: Stdio,
    ) -> anyhow::Result<PodProc> {
        self.spawn_pod_at(name, args, stdin, free_addr()?).await
    }

    async fn spawn_pod_at(
        &self,
        name: &str,
        args: &[&str],
        stdin: Stdio,
        addr: SocketAddr,
    ) -> anyhow::Result<PodProc> {
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(args)
            .envs(self.pod_env(name, addr))
            .stdin(stdin)
            .stdout(if args == ["serve"] {
                to_stderr()?
            } else {
                Stdio::piped()
            })
            .stderr(to_stderr()?)
            .spawn()
            .with_context(|| format!("start pod {name}"))?;
        let pod = PodProc {
            name: name.to_owned(),
            pid: child.id(),
            addr,
            child,
        };
        self.wait_ready(&pod).await?;
        Ok(pod)
    }

    pub async fn wait_ready(&self, pod: &PodProc) -> anyhow::Result<()> {
        let url = format!("http://{}/readyz", pod.addr);
        for _ in 0..300 {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("pod {} not ready after 30 s", pod.name)
    }

    /// The pod's `/metrics` counters and gauges.
    pub async fn metrics(&self, pod: &PodProc) -> BTreeMap<String, f64> {
        let url = format!("http://{}/metrics", pod.addr);
        let text = match self.http.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return BTreeMap::new(),
        };
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((
                    k.trim_start_matches("meshgate_").to_owned(),
                    v.parse().ok()?,
                ))
            })
            .collect()
    }

    /// Drops the database and deletes the prefix's keys.
    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
        {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name);
            if let Err(e) = sqlx::query(&drop).execute(&admin).await {
                eprintln!("bench: could not drop {}: {e}", self.db_name);
            }
            admin.close().await;
        }
        delete_prefix(&self.redis_url, &self.prefix);
    }
}

/// A loopback address with a port nobody listens on right now.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// A handle on this process's stderr for a child's output (our stdout
/// carries only the one JSON line).
fn to_stderr() -> anyhow::Result<Stdio> {
    Ok(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
}

/// A child process started by the bench.
pub struct PodProc {
    pub name: String,
    pub pid: u32,
    pub addr: SocketAddr,
    pub child: Child,
}

impl PodProc {
    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (a drain), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if !self.alive() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if !self.alive() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("bench: {} did not stop in {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PodProc {
    /// A scenario that fails half-way still leaves no process behind.
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `redis-cli -u URL ARGS…`, its stdout.
pub fn redis_cli(url: &str, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-u")
        .arg(url)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `INFO` field values of a Redis.
pub fn redis_info(url: &str, section: &str) -> BTreeMap<String, String> {
    redis_cli(url, &["INFO", section])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn delete_prefix(url: &str, prefix: &str) {
    let pattern = format!("{prefix}*");
    let keys = redis_cli(url, &["--scan", "--pattern", &pattern]).unwrap_or_default();
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    for chunk in keys.chunks(500) {
        let mut args = vec!["DEL"];
        args.extend(chunk);
        let _ = redis_cli(url, &args);
    }
}

/// A `redis-server` of our own on a free loopback port (the overload run
/// lowers its pub/sub output buffer limit).
pub struct PrivateRedis {
    pub url: String,
    pub log: std::path::PathBuf,
    proc: PodProc,
}

impl PrivateRedis {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(free_addr()?).await
    }

    async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("mg-bench-redis-{}.log", addr.port()));
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(to_stderr()?)
            .spawn()
            .context("start redis-server")?;
        let url = format!("redis://{addr}");
        let proc = PodProc {
            name: "redis".into(),
            pid: child.id(),
            addr,
            child,
        };
        for _ in 0..50 {
            if redis_cli(&url, &["PING"]).is_some_and(|p| p.trim() == "PONG") {
                return Ok(Self { url, log, proc });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("redis-server did not answer on {addr}")
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// SIGKILL, `pause`, and a new server on the same port: without
    /// persistence it comes back empty.
    pub async fn restart(&mut self, pause: Duration) -> anyhow::Result<()> {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        tokio::time::sleep(pause).await;
        let next = Self::start_on(self.proc.addr).await?;
        // The old handle's process is gone: dropping it does nothing.
        *self = next;
        Ok(())
    }

    /// Lines of its log that mention output buffer limits.
    pub fn buffer_limit_log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("output buffer"))
            .map(str::to_owned)
            .collect()
    }

    pub async fn stop(self) {
        self.proc.stop(Duration::from_secs(3)).await;
        let _ = std::fs::remove_file(&self.log);
    }
}
