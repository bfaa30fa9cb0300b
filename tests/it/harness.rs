//! Test pods against the real Redis and PostgreSQL: every test gets its own
//! database (migrated) and its own Redis key prefix, and starts as many
//! replicas as it likes in this process on port 0.

use std::{future::Future, time::Duration};

use clap::Parser;
use meshgate::{db::accounts::NewKey, Config, Pod};
use sqlx::{postgres::PgPoolOptions, PgPool};
use tokio::sync::OnceCell;
use uuid::Uuid;

pub fn admin_db_url() -> String {
    std::env::var("MESHGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("MESHGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Whether the suite runs against Redis Cluster (`redis-cluster://` URL):
/// pub/sub is then sharded.
pub fn sharded() -> bool {
    is_cluster_url(&redis_url())
}

pub fn is_cluster_url(url: &str) -> bool {
    url.split("://")
        .next()
        .is_some_and(|scheme| scheme.ends_with("-cluster"))
}

/// Every key matching `pattern`, on every primary of a cluster.
pub async fn redis_keys(client: &fred::clients::Client, pattern: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let keys: Vec<fred::types::Key> = if sharded() {
        client
            .scan_cluster_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    } else {
        client
            .scan_buffered(pattern, Some(1000), None)
            .try_collect()
            .await
    }
    .expect("scan keys");
    keys.iter()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect()
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replaces the database name of a PostgreSQL URL.
fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("database URL has a path");
    format!("{base}/{db}")
}

static CLEANED: OnceCell<()> = OnceCell::const_new();

/// Drops the databases earlier runs left behind (once per test binary).
async fn drop_leftovers(admin: &PgPool) {
    CLEANED
        .get_or_init(|| async {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT datname FROM pg_database WHERE datname LIKE 'mg_test_%'",
            )
            .fetch_all(admin)
            .await
            .expect("list test databases");
            for name in names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(admin)
                    .await;
            }
        })
        .await;
}

#[derive(Parser)]
#[command(args_override_self = true)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// One test's world: a fresh database and Redis prefix.
pub struct TestEnv {
    pub db_url: String,
    pub pool: PgPool,
    pub prefix: String,
    pub redis_url: String,
}

impl TestEnv {
    pub async fn new() -> Self {
        // Logs of the pods in this process, shown for failing tests.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&admin_db_url())
            .await
            .expect("connect to the test PostgreSQL (see MESHGATE_TEST_DATABASE_URL)");
        drop_leftovers(&admin).await;
        let name = format!("mg_test_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let db_url = with_db(&admin_db_url(), &name);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .expect("connect to test database");
        meshgate::db::migrate(&pool).await.expect("migrate");
        Self {
            db_url,
            pool,
            prefix: format!("mgt{}", &Uuid::new_v4().simple().to_string()[..12]),
            redis_url: redis_url(),
        }
    }

    /// Settings with short leases so tests run in seconds; `extra` flags
    /// override them.
    pub fn config(&self, extra: &[&str]) -> Config {
        let mut args = vec![
            "meshgate".to_owned(),
            "--listen=127.0.0.1:0".into(),
            format!("--database-url={}", self.db_url),
            format!("--redis-url={}", self.redis_url),
            format!("--redis-prefix={}", self.prefix),
            "--lease-ttl-ms=900".into(),
            "--lease-refresh-ms=200".into(),
            "--disconnect-grace-ms=1200".into(),
            "--reaper-interval-ms=100".into(),
            "--request-timeout-ms=2000".into(),
            "--drain-ms=3000".into(),
            "--dispatch-sweep-ms=300".into(),
            "--auth-cache-ms=300".into(),
            "--self-ping-ms=200".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Cli::parse_from(args).config
    }

    /// Starts a replica with the test settings.
    pub async fn pod(&self) -> Pod {
        self.pod_with(&[]).await
    }

    pub async fn pod_with(&self, extra: &[&str]) -> Pod {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        meshgate::start(self.config(extra), listener)
            .await
            .expect("pod starts")
    }

    /// A new owner with one key.
    pub async fn owner(&self) -> NewKey {
        let email = format!("{}@test.invalid", Uuid::new_v4().simple());
        meshgate::db::accounts::create_key(&self.pool, &email, None)
            .await
            .expect("create key")
    }

    /// A task of `owner` in `status`, assigned to `daemon`.
    pub async fn task(&self, owner: Uuid, status: &str, daemon: Option<Uuid>) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO tasks (owner_id, name, plan, status, daemon_id, max_retries)
             VALUES ($1, 'test task', 'do it', $2, $3, 3) RETURNING id",
        )
        .bind(owner)
        .bind(status)
        .bind(daemon)
        .fetch_one(&self.pool)
        .await
        .expect("insert task")
    }

    pub async fn task_row(&self, id: Uuid) -> TaskRow {
        sqlx::query_as(
            "SELECT status, daemon_id, retry_count, failed_daemon_ids, version FROM tasks WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("task row")
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct TaskRow {
    pub status: String,
    pub daemon_id: Option<Uuid>,
    pub retry_count: i32,
    pub failed_daemon_ids: Vec<Uuid>,
    pub version: i32,
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A REST client with one owner's key.
pub struct Api {
    pub base: String,
    pub key: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(addr: std::net::SocketAddr, key: &str) -> Self {
        Self {
            base: format!("http://{addr}"),
            key: key.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await
            .expect("request");
        Self::answer(resp).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> (u16, serde_json::Value) {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}
