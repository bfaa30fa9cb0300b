//! The daemon simulator against two real pods (real Redis and PostgreSQL,
//! isolated as in `tests/it/harness.rs`: a fresh database and a random
//! Redis prefix): a task created through pod B's API runs on a simulated
//! daemon connected to pod A, and its output is stored.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use meshgate::{
    sim::{NoObserver, Sim, SimConfig},
    Config, Pod,
};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

fn admin_db_url() -> String {
    std::env::var("MESHGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn redis_url() -> String {
    std::env::var("MESHGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

/// A fresh migrated database; its URL and name.
async fn fresh_database() -> (String, String) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_db_url())
        .await
        .expect("connect to the test PostgreSQL (see MESHGATE_TEST_DATABASE_URL)");
    let name = format!("mg_test_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let (base, _) = admin_db_url()
        .rsplit_once('/')
        .map(|(b, d)| (b.to_owned(), d.to_owned()))
        .unwrap();
    (format!("{base}/{name}"), name)
}

async fn pod(db_url: &str, prefix: &str) -> Pod {
    let config = Cli::parse_from([
        "meshgate",
        "--listen=127.0.0.1:0",
        &format!("--database-url={db_url}"),
        &format!("--redis-url={}", redis_url()),
        &format!("--redis-prefix={prefix}"),
        "--lease-ttl-ms=900",
        "--lease-refresh-ms=200",
        "--disconnect-grace-ms=1200",
        "--reaper-interval-ms=100",
        "--request-timeout-ms=3000",
        "--drain-ms=2000",
        "--dispatch-sweep-ms=300",
        // Pinged often: a simulated daemon that did not answer would be cut off.
        "--daemon-ping-ms=100",
    ])
    .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    meshgate::start(config, listener).await.expect("pod starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_on_pod_b_runs_on_a_simulated_daemon_of_pod_a_and_its_output_is_stored() {
    let (db_url, db_name) = fresh_database().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db_url)
        .await
        .unwrap();
    meshgate::db::migrate(&pool).await.expect("migrate");
    let key = meshgate::db::accounts::create_key(&pool, "sim@test.invalid", None)
        .await
        .unwrap();
    let prefix = format!("mgt{}", &Uuid::new_v4().simple().to_string()[..12]);
    let (a, b) = (pod(&db_url, &prefix).await, pod(&db_url, &prefix).await);

    let mut config = SimConfig::new(&format!("ws://{}", a.addr()), &key.key, 5);
    config.output_lines = 12;
    config.line_delay = Duration::from_millis(5);
    config.heartbeat = Duration::from_millis(500);
    let sim = Sim::start(config, Arc::new(NoObserver)).unwrap();
    assert!(
        sim.wait_open(5, Duration::from_secs(10)).await,
        "5 daemons connect"
    );
    assert_eq!(sim.daemon_ids().iter().flatten().count(), 5);

    let http = reqwest::Client::new();
    let api = format!("http://{}/api/v1/mesh", b.addr());
    let created: Value = http
        .post(format!("{api}/tasks"))
        .header("x-api-key", &key.key)
        .json(&json!({"name": "simulated", "plan": "print twelve lines"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = created["id"].as_str().expect("task id").to_owned();

    let mut status = String::new();
    for _ in 0..200 {
        let t: Value = http
            .get(format!("{api}/tasks/{task}"))
            .header("x-api-key", &key.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = t["status"].as_str().unwrap_or_default().to_owned();
        if status == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "done", "the task completes");

    let outputs: Vec<Value> = http
        .get(format!("{api}/tasks/{task}/outputs"))
        .header("x-api-key", &key.key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds: Vec<&str> = outputs
        .iter()
        .map(|o| o["messageType"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kinds.len(), 12, "every line is stored: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"system"));
    assert_eq!(kinds.last(), Some(&"result"));
    for shape in ["assistant", "tool_use", "tool_result"] {
        assert!(kinds.contains(&shape), "{shape} missing from {kinds:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = sim.stats().snapshot();
    assert_eq!(stats.tasks_started, 1);
    assert_eq!(stats.tasks_completed, 1);
    assert_eq!(
        (stats.open, stats.disconnects),
        (5, 0),
        "pings are answered"
    );

    sim.stop().await;
    b.shutdown().await;
    a.shutdown().await;
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&admin_db_url())
        .await
        .unwrap();
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .execute(&admin)
        .await;
}
