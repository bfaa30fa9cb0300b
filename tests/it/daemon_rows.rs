//! Daemon rows written in batches ([`meshgate::db::daemons::DaemonRows`]),
//! against the test PostgreSQL: writes made together share one statement,
//! each caller gets its own answer, another owner's id changes nothing,
//! one bad write fails alone, times only move forward, and a database that
//! is gone fails every queued caller at once without wedging the queue.

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use meshgate::db::daemons::{DaemonRows, Directories, Registration, RowCounts};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::harness::TestEnv;

fn registration(owner_id: Uuid, machine: &str, hostname: &str) -> Registration {
    Registration {
        owner_id,
        machine_id: machine.into(),
        hostname: hostname.into(),
        max_concurrent_tasks: 2,
    }
}

type Row = (
    String,
    Option<String>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

async fn row(env: &TestEnv, id: Uuid) -> Row {
    sqlx::query_as(
        "SELECT hostname, working_directory, last_heartbeat_at, last_disconnected_at
         FROM daemons WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

// The default test runtime has one thread: every call below is queued
// before the flusher first runs, so each group is one batch.
#[tokio::test]
async fn registrations_made_together_share_one_statement_and_each_gets_its_row() {
    let env = TestEnv::new().await;
    let rows = DaemonRows::new(env.pool.clone());
    let (alice, bob) = (env.owner().await.owner_id, env.owner().await.owner_id);
    // Alice registers m0..m19 twice (the second hostname must win), Bob
    // m0..m9 once: 50 registrations, 30 rows.
    let mut asked = Vec::new();
    for round in ["first", "second"] {
        for i in 0..20 {
            asked.push(registration(
                alice,
                &format!("m{i}"),
                &format!("{round}-{i}"),
            ));
        }
    }
    for i in 0..10 {
        asked.push(registration(bob, &format!("m{i}"), &format!("bob-{i}")));
    }
    let ids: Vec<Uuid> = join_all(asked.iter().map(|r| rows.register(r.clone())))
        .await
        .into_iter()
        .map(|r| r.expect("registered"))
        .collect();
    assert_eq!(
        rows.counts(),
        RowCounts {
            writes: 50,
            statements: 1
        }
    );
    for i in 0..20 {
        assert_eq!(ids[i], ids[20 + i], "one machine, one id");
        assert_eq!(row(&env, ids[i]).await.0, format!("second-{i}"));
    }
    for i in 0..10 {
        assert_ne!(
            ids[40 + i],
            ids[i],
            "another owner's machine is another row"
        );
        assert_eq!(row(&env, ids[40 + i]).await.0, format!("bob-{i}"));
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM daemons")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(count, 30);

    // Registering again keeps the id, alone in its statement.
    let again = rows
        .register(registration(alice, "m3", "third"))
        .await
        .unwrap();
    assert_eq!(again, ids[3]);
    assert_eq!(rows.counts().statements, 2);
}

#[tokio::test]
async fn touches_reach_only_the_owners_row_and_the_last_report_wins() {
    let env = TestEnv::new().await;
    let rows = DaemonRows::new(env.pool.clone());
    let (alice, mallory) = (env.owner().await.owner_id, env.owner().await.owner_id);
    let mine = rows.register(registration(alice, "m", "h")).await.unwrap();
    let dirs = |w: &str| Directories {
        working: w.into(),
        home: "/home/a".into(),
        worktrees: "/home/a/trees".into(),
    };
    let before = rows.counts().statements;
    let (a, b, c, d, e, f) = tokio::join!(
        rows.set_directories(alice, mine, dirs("/work/first")),
        rows.set_directories(alice, mine, dirs("/work/second")),
        rows.set_directories(mallory, mine, dirs("/stolen")),
        rows.heartbeat(alice, mine),
        rows.heartbeat(mallory, mine),
        rows.disconnected(mallory, mine),
    );
    for outcome in [a, b, c, d, e, f] {
        outcome.expect("written (or nothing to write)");
    }
    // One statement per kind: directories, heartbeats, disconnects.
    assert_eq!(rows.counts().statements - before, 3);
    let (_, working, beat, gone) = row(&env, mine).await;
    assert_eq!(working.as_deref(), Some("/work/second"));
    assert!(beat.is_some(), "Alice's heartbeat is stored");
    assert_eq!(gone, None, "Mallory's disconnect changed nothing");

    let first = beat.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    rows.heartbeat(alice, mine).await.unwrap();
    rows.disconnected(alice, mine).await.unwrap();
    let (_, _, beat, gone) = row(&env, mine).await;
    assert!(beat.unwrap() > first);
    assert!(gone.is_some());

    // A later time written by another pod is not overwritten by an earlier one.
    sqlx::query(
        "UPDATE daemons SET last_heartbeat_at = now() + interval '1 hour',
                            last_connected_at = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(mine)
    .execute(&env.pool)
    .await
    .unwrap();
    let (_, _, later, _) = row(&env, mine).await;
    rows.heartbeat(alice, mine).await.unwrap();
    rows.register(registration(alice, "m", "h")).await.unwrap();
    let (_, _, beat, _) = row(&env, mine).await;
    assert_eq!(beat, later);
    let connected: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_connected_at FROM daemons WHERE id = $1")
            .bind(mine)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(connected, later);
}

#[tokio::test]
async fn one_write_postgresql_refuses_fails_alone() {
    let env = TestEnv::new().await;
    let rows = DaemonRows::new(env.pool.clone());
    let owner = env.owner().await.owner_id;
    // PostgreSQL refuses NUL in text (the socket refuses it earlier; this
    // is the writer's own guard).
    let hostnames: Vec<String> = (0..10)
        .map(|i| {
            if i == 4 {
                "bad\0host".into()
            } else {
                format!("h{i}")
            }
        })
        .collect();
    let outcomes = join_all(
        hostnames
            .iter()
            .enumerate()
            .map(|(i, h)| rows.register(registration(owner, &format!("m{i}"), h))),
    )
    .await;
    for (i, outcome) in outcomes.iter().enumerate() {
        if i == 4 {
            let e = outcome.as_ref().expect_err("refused");
            assert!(!e.is_db_unavailable(), "a data error, not an outage: {e}");
        } else {
            let id = *outcome.as_ref().expect("the others are stored");
            assert_eq!(row(&env, id).await.0, format!("h{i}"));
        }
    }
    // The batch, then each of its ten alone.
    assert_eq!(rows.counts().statements, 11);

    let ids: Vec<Uuid> = outcomes.into_iter().filter_map(Result::ok).collect();
    let dirs = |w: &str| Directories {
        working: w.into(),
        home: "/h".into(),
        worktrees: "/t".into(),
    };
    let (good, bad) = tokio::join!(
        rows.set_directories(owner, ids[0], dirs("/good")),
        rows.set_directories(owner, ids[1], dirs("/bad\0")),
    );
    good.expect("stored");
    assert!(bad.is_err());
    assert_eq!(row(&env, ids[0]).await.1.as_deref(), Some("/good"));
    assert_eq!(row(&env, ids[1]).await.1, None);
}

#[tokio::test]
async fn a_database_that_is_gone_fails_every_caller_and_the_queue_goes_on() {
    let env = TestEnv::new().await;
    // Nothing listens on port 1: every connection attempt is refused.
    let gone = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
        .unwrap();
    let rows = DaemonRows::new(gone);
    let owner = env.owner().await.owner_id;
    let (registered, beaten) = tokio::join!(
        join_all((0..20).map(|i| rows.register(registration(owner, &format!("m{i}"), "h")))),
        join_all((0..5).map(|_| rows.heartbeat(owner, Uuid::new_v4()))),
    );
    let errors = registered
        .into_iter()
        .map(|r| r.map(|_| ()))
        .chain(beaten)
        .map(|r| r.expect_err("nothing is written"));
    for e in errors {
        assert!(e.is_db_unavailable(), "reported as unavailable: {e}");
    }
    // Only the first statement waited for the database; the heartbeats
    // behind it got its error without trying.
    assert_eq!(
        rows.counts(),
        RowCounts {
            writes: 25,
            statements: 1
        }
    );
    let beat = rows.heartbeat(owner, Uuid::new_v4()).await;
    assert!(beat.expect_err("still failing").is_db_unavailable());
    assert_eq!(
        rows.counts().writes,
        26,
        "the queue took the later write too"
    );
}
