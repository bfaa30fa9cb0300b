//! PostgreSQL access: the pool, migrations, and one module of queries per
//! table group. Every query that touches an owner's rows takes the owner id.

pub mod accounts;
pub mod checkpoints;
pub mod contracts;
pub mod daemons;
pub mod directives;
pub mod dispatch;
pub mod files;
pub mod history;
pub mod outputs;
pub mod reconcile;
pub mod resources;
pub mod supervisors;
pub mod task_views;
pub mod tasks;

use std::time::Duration;

use sqlx::{postgres::PgPoolOptions, PgPool};

use crate::{config::Config, Result};

/// Opens the pool. It connects lazily, so a replica starts (and answers
/// `/healthz`, and 503 on `/readyz`) while PostgreSQL is still coming up.
pub fn connect(config: &Config) -> Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config.db_max_connections)
        .acquire_timeout(Duration::from_secs(3))
        // No ping before every query: it doubled the round trips on the hot
        // paths (bench/RESULTS.md). A broken connection fails its query and
        // is dropped from the pool; callers already handle query errors.
        .test_before_acquire(false)
        .connect_lazy(config.database_url.expose())?)
}

/// Applies `migrations/` (idempotent; concurrent pods are serialised by
/// sqlx's advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}
