//! Daemon rows: one per (owner, machine id), so a daemon keeps its id across
//! reconnects. Whether it is connected *now* is the registry's business
//! (Redis); the row keeps history (last seen, directories).
//!
//! A pod writes these rows through one [`DaemonRows`]: registrations,
//! directory reports, heartbeats and disconnects that arrive while a write
//! is in flight wait for it and then go out together, one statement per
//! kind. A fleet reconnecting after a pod restart is thousands of
//! registrations a second, and one statement and one commit each was what
//! bound `bench register` (bench/RESULTS.md). A lone write goes out at once.
//!
//! One flush runs at a time per pod, so this pod's statements never lock
//! the same rows in different orders. Another pod's may (one daemon moving
//! to it while another moves back): PostgreSQL then aborts one statement
//! with a deadlock error, and it is tried once more.
//!
//! One bad write does not fail its batch: when a statement is refused for
//! its data (SQLSTATE classes 22 and 23), its writes are tried one by one,
//! so only the bad one fails. When PostgreSQL cannot be reached, everything
//! queued fails with that error at once instead of each batch waiting out
//! the pool's acquire timeout in turn.
//!
//! Each write carries the time it happened (this pod's clock), and a time
//! column only moves forward: a batch that waited does not overwrite a
//! later time another pod wrote.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::{
    batch_queue::{BatchQueue, Turn},
    Error, Result,
};

/// Writes per flush at most (bounds one statement's size and lock time).
pub const MAX_BATCH: usize = 512;

/// What `authenticate` stores.
#[derive(Debug, Clone)]
pub struct Registration {
    pub owner_id: Uuid,
    pub machine_id: String,
    pub hostname: String,
    pub max_concurrent_tasks: i32,
}

/// Where a daemon keeps its work, as it reported.
#[derive(Debug, Clone)]
pub struct Directories {
    pub working: String,
    pub home: String,
    pub worktrees: String,
}

/// A write to an existing row (`id` of `owner_id`; another owner's id
/// changes nothing).
#[derive(Debug, Clone)]
enum Touch {
    Directories(Directories),
    Heartbeat(DateTime<Utc>),
    Disconnected(DateTime<Utc>),
}

enum Pending {
    Register {
        row: Registration,
        at: DateTime<Utc>,
        done: oneshot::Sender<Result<Uuid>>,
    },
    Touch {
        owner_id: Uuid,
        id: Uuid,
        touch: Touch,
        done: oneshot::Sender<Result<()>>,
    },
}

/// The pod's batched writer of daemon rows.
pub struct DaemonRows {
    pool: PgPool,
    queue: Arc<BatchQueue<Pending>>,
    writes: AtomicU64,
    statements: AtomicU64,
}

/// Writes asked for and statements that carried them, since the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCounts {
    pub writes: u64,
    pub statements: u64,
}

impl DaemonRows {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            queue: Arc::default(),
            writes: AtomicU64::new(0),
            statements: AtomicU64::new(0),
        })
    }

    pub fn counts(&self) -> RowCounts {
        RowCounts {
            writes: self.writes.load(Ordering::Relaxed),
            statements: self.statements.load(Ordering::Relaxed),
        }
    }

    /// Creates or refreshes the row of (owner, machine id) and returns its id.
    pub async fn register(self: &Arc<Self>, row: Registration) -> Result<Uuid> {
        let (done, answer) = oneshot::channel();
        self.push(Pending::Register {
            row,
            at: Utc::now(),
            done,
        });
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    /// Records a heartbeat.
    pub async fn heartbeat(self: &Arc<Self>, owner_id: Uuid, id: Uuid) -> Result<()> {
        self.touch(owner_id, id, Touch::Heartbeat(Utc::now())).await
    }

    /// Stores the directories a daemon reported.
    pub async fn set_directories(
        self: &Arc<Self>,
        owner_id: Uuid,
        id: Uuid,
        dirs: Directories,
    ) -> Result<()> {
        self.touch(owner_id, id, Touch::Directories(dirs)).await
    }

    /// Records that the daemon's current connection ended.
    pub async fn disconnected(self: &Arc<Self>, owner_id: Uuid, id: Uuid) -> Result<()> {
        self.touch(owner_id, id, Touch::Disconnected(Utc::now()))
            .await
    }

    async fn touch(self: &Arc<Self>, owner_id: Uuid, id: Uuid, touch: Touch) -> Result<()> {
        let (done, answer) = oneshot::channel();
        self.push(Pending::Touch {
            owner_id,
            id,
            touch,
            done,
        });
        answer.await.unwrap_or_else(|_| Err(abandoned()))
    }

    fn push(self: &Arc<Self>, pending: Pending) {
        if let Some(turn) = self.queue.push(pending) {
            tokio::spawn(flush(self.clone(), turn));
        }
    }
}

fn abandoned() -> Error {
    Error::Internal("the daemon-row write was abandoned".into())
}

/// Writes what is queued, batch after batch, until the queue is empty.
async fn flush(rows: Arc<DaemonRows>, mut turn: Turn<Pending>) {
    while let Some(taken) = turn.next(MAX_BATCH) {
        rows.writes.fetch_add(taken.len() as u64, Ordering::Relaxed);
        let mut batch = Batch {
            pool: &rows.pool,
            statements: 0,
            unreachable: None,
        };
        batch.write(taken).await;
        rows.statements
            .fetch_add(batch.statements, Ordering::Relaxed);
        if let Some(e) = batch.unreachable {
            // Everything queued meanwhile would only wait for the same error.
            let queued = rows.queue.take_all();
            rows.writes
                .fetch_add(queued.len() as u64, Ordering::Relaxed);
            for p in queued {
                p.fail(&e);
            }
        }
    }
}

impl Pending {
    fn fail(self, e: &Arc<sqlx::Error>) {
        match self {
            Pending::Register { done, .. } => {
                let _ = done.send(Err(shared(e)));
            }
            Pending::Touch { done, .. } => {
                let _ = done.send(Err(shared(e)));
            }
        }
    }
}

/// Whether PostgreSQL refused a statement for its data (it can never
/// succeed as it is), as opposed to being unreachable or failing.
fn refused_for_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23")),
        _ => false,
    }
}

/// One flush: its statements, and whether PostgreSQL was unreachable.
struct Batch<'a> {
    pool: &'a PgPool,
    /// Statements tried.
    statements: u64,
    /// Set by the first statement that could not reach PostgreSQL; no
    /// further statement is tried.
    unreachable: Option<Arc<sqlx::Error>>,
}

/// A statement over some writes of one kind.
enum Stmt<'a> {
    Directories(&'a [(Uuid, Uuid, Directories)]),
    Time(Column, &'a [(Uuid, Uuid, DateTime<Utc>)]),
}

fn directories_stmt(items: &[(Uuid, Uuid, Directories)]) -> Stmt<'_> {
    Stmt::Directories(items)
}

fn heartbeats_stmt(items: &[(Uuid, Uuid, DateTime<Utc>)]) -> Stmt<'_> {
    Stmt::Time(Column::Heartbeat, items)
}

fn disconnects_stmt(items: &[(Uuid, Uuid, DateTime<Utc>)]) -> Stmt<'_> {
    Stmt::Time(Column::Disconnected, items)
}

async fn exec(pool: &PgPool, stmt: Stmt<'_>) -> Result<(), sqlx::Error> {
    match stmt {
        Stmt::Directories(items) => update_directories(pool, items).await,
        Stmt::Time(column, items) => update_time(pool, column, items).await,
    }
}

impl Batch<'_> {
    /// Runs one statement (once more after a deadlock), unless PostgreSQL
    /// was already found unreachable.
    async fn run<T, F, Fut>(&mut self, statement: F) -> Result<T, Arc<sqlx::Error>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some(e) = &self.unreachable {
            return Err(e.clone());
        }
        self.statements += 1;
        let outcome = retried(statement).await;
        if let Err(e) = &outcome {
            if crate::error::sqlx_unavailable(e) {
                self.unreachable = Some(e.clone());
            }
        }
        outcome
    }

    /// Registrations first (a directory report follows its own
    /// registration, never shares its batch: the session waits in between),
    /// then each kind of touch.
    async fn write(&mut self, batch: Vec<Pending>) {
        let mut registers = Vec::new();
        let mut dirs = Touches::default();
        let (mut beats, mut gone) = (Touches::default(), Touches::default());
        for p in batch {
            match p {
                Pending::Register { row, at, done } => registers.push((row, at, done)),
                Pending::Touch {
                    owner_id,
                    id,
                    touch,
                    done,
                } => match touch {
                    Touch::Directories(d) => dirs.push((owner_id, id, d), done),
                    Touch::Heartbeat(at) => beats.push((owner_id, id, at), done),
                    Touch::Disconnected(at) => gone.push((owner_id, id, at), done),
                },
            }
        }
        if !registers.is_empty() {
            self.register(registers).await;
        }
        self.touch_all(dirs, directories_stmt).await;
        self.touch_all(beats, heartbeats_stmt).await;
        self.touch_all(gone, disconnects_stmt).await;
    }

    /// Upserts the rows in one statement or, when it was refused for its
    /// data, one by one; answers every caller with its id or its error.
    async fn register(&mut self, registers: Vec<(Registration, DateTime<Utc>, Answer<Uuid>)>) {
        let answers: Vec<Result<Uuid>> = {
            let rows: Vec<(&Registration, DateTime<Utc>)> =
                registers.iter().map(|(r, at, _)| (r, *at)).collect();
            let pool = self.pool;
            match self.run(|| upsert_many(pool, &rows)).await {
                Ok(ids) => rows.iter().map(|(r, _)| id_of(&ids, r)).collect(),
                Err(e) if refused_for_data(&e) && rows.len() > 1 => {
                    let mut answers = Vec::with_capacity(rows.len());
                    for i in 0..rows.len() {
                        let one = &rows[i..=i];
                        answers.push(match self.run(|| upsert_many(pool, one)).await {
                            Ok(ids) => id_of(&ids, rows[i].0),
                            Err(e) => Err(shared(&e)),
                        });
                    }
                    answers
                }
                Err(e) => rows.iter().map(|_| Err(shared(&e))).collect(),
            }
        };
        for ((_, _, done), answer) in registers.into_iter().zip(answers) {
            let _ = done.send(answer);
        }
    }

    /// Runs `stmt` over every write of `group`, or one by one when it was
    /// refused for its data; answers every caller.
    async fn touch_all<T>(&mut self, group: Touches<T>, stmt: for<'b> fn(&'b [T]) -> Stmt<'b>) {
        let n = group.items.len();
        if n == 0 {
            return;
        }
        let pool = self.pool;
        let outcomes = match self.run(|| exec(pool, stmt(&group.items))).await {
            Err(e) if refused_for_data(&e) && n > 1 => {
                let mut outcomes = Vec::with_capacity(n);
                for i in 0..n {
                    let one = &group.items[i..=i];
                    outcomes.push(self.run(|| exec(pool, stmt(one))).await);
                }
                outcomes
            }
            all => vec![all; n],
        };
        for (done, outcome) in group.dones.into_iter().zip(outcomes) {
            let _ = done.send(outcome.map_err(|e| shared(&e)));
        }
    }
}

type Answer<T> = oneshot::Sender<Result<T>>;

fn id_of(ids: &HashMap<(Uuid, &str), Uuid>, row: &Registration) -> Result<Uuid> {
    ids.get(&(row.owner_id, row.machine_id.as_str()))
        .copied()
        .ok_or_else(|| Error::Internal("registration missing from its batch".into()))
}

/// Writes of one kind to existing rows, and their callers.
struct Touches<T> {
    items: Vec<T>,
    dones: Vec<Answer<()>>,
}

impl<T> Default for Touches<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            dones: Vec::new(),
        }
    }
}

impl<T> Touches<T> {
    fn push(&mut self, item: T, done: Answer<()>) {
        self.items.push(item);
        self.dones.push(done);
    }
}

/// Every caller of a failed batch gets the same error.
fn shared(e: &Arc<sqlx::Error>) -> Error {
    Error::DbShared(e.clone())
}

/// Runs `statement`, once more if PostgreSQL broke a deadlock by aborting it.
async fn retried<T, F, Fut>(mut statement: F) -> Result<T, Arc<sqlx::Error>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    match statement().await {
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("40P01") => {
            tracing::warn!(error = %db, "daemon-row batch hit a deadlock; trying again");
            statement().await.map_err(Arc::new)
        }
        other => other.map_err(Arc::new),
    }
}

/// Inserts or refreshes the rows (the last write of a key in the batch
/// wins); their ids by (owner, machine id).
async fn upsert_many<'a>(
    pool: &PgPool,
    rows: &[(&'a Registration, DateTime<Utc>)],
) -> Result<HashMap<(Uuid, &'a str), Uuid>, sqlx::Error> {
    // One row per key: a statement may not update one row twice. Sorted, so
    // concurrent batches of several pods lock rows in one order.
    let mut last: HashMap<(Uuid, &str), usize> = HashMap::with_capacity(rows.len());
    for (i, (r, _)) in rows.iter().enumerate() {
        last.insert((r.owner_id, r.machine_id.as_str()), i);
    }
    let mut unique: Vec<usize> = last.into_values().collect();
    unique.sort_by_key(|&i| (rows[i].0.owner_id, rows[i].0.machine_id.as_str()));
    let owners: Vec<Uuid> = unique.iter().map(|&i| rows[i].0.owner_id).collect();
    let machines: Vec<&str> = unique
        .iter()
        .map(|&i| rows[i].0.machine_id.as_str())
        .collect();
    let hostnames: Vec<&str> = unique
        .iter()
        .map(|&i| rows[i].0.hostname.as_str())
        .collect();
    let limits: Vec<i32> = unique
        .iter()
        .map(|&i| rows[i].0.max_concurrent_tasks)
        .collect();
    let times: Vec<DateTime<Utc>> = unique.iter().map(|&i| rows[i].1).collect();
    let returned: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
        "INSERT INTO daemons (owner_id, machine_id, hostname, max_concurrent_tasks, last_connected_at)
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::timestamptz[])
         ON CONFLICT (owner_id, machine_id) DO UPDATE
           SET hostname = EXCLUDED.hostname,
               max_concurrent_tasks = EXCLUDED.max_concurrent_tasks,
               last_connected_at = GREATEST(daemons.last_connected_at, EXCLUDED.last_connected_at)
         RETURNING owner_id, machine_id, id",
    )
    .bind(&owners)
    .bind(&machines)
    .bind(&hostnames)
    .bind(&limits)
    .bind(&times)
    .fetch_all(pool)
    .await?;
    let by_key: HashMap<(Uuid, String), Uuid> = returned
        .into_iter()
        .map(|(owner, machine, id)| ((owner, machine), id))
        .collect();
    Ok(rows
        .iter()
        .filter_map(|(r, _)| {
            let id = by_key.get(&(r.owner_id, r.machine_id.clone()))?;
            Some(((r.owner_id, r.machine_id.as_str()), *id))
        })
        .collect())
}

/// Stores reported directories (the last report of a daemon in the batch wins).
async fn update_directories(
    pool: &PgPool,
    items: &[(Uuid, Uuid, Directories)],
) -> Result<(), sqlx::Error> {
    let items = last_per_row(items, |(owner, id, _)| (*owner, *id));
    let owners: Vec<Uuid> = items.iter().map(|(o, _, _)| *o).collect();
    let ids: Vec<Uuid> = items.iter().map(|(_, id, _)| *id).collect();
    let working: Vec<&str> = items.iter().map(|(_, _, d)| d.working.as_str()).collect();
    let home: Vec<&str> = items.iter().map(|(_, _, d)| d.home.as_str()).collect();
    let trees: Vec<&str> = items.iter().map(|(_, _, d)| d.worktrees.as_str()).collect();
    sqlx::query(
        "UPDATE daemons d
            SET working_directory = u.working, home_directory = u.home,
                worktrees_directory = u.worktrees
           FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                AS u(owner_id, id, working, home, worktrees)
          WHERE d.id = u.id AND d.owner_id = u.owner_id",
    )
    .bind(&owners)
    .bind(&ids)
    .bind(&working)
    .bind(&home)
    .bind(&trees)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Column {
    Heartbeat,
    Disconnected,
}

/// Sets a time column (the latest time of a daemon in the batch wins).
async fn update_time(
    pool: &PgPool,
    column: Column,
    items: &[(Uuid, Uuid, DateTime<Utc>)],
) -> Result<(), sqlx::Error> {
    let mut latest: HashMap<(Uuid, Uuid), DateTime<Utc>> = HashMap::new();
    for (owner, id, at) in items {
        let t = latest.entry((*owner, *id)).or_insert(*at);
        *t = (*t).max(*at);
    }
    let mut rows: Vec<_> = latest.into_iter().collect();
    rows.sort_by_key(|((_, id), _)| *id);
    let owners: Vec<Uuid> = rows.iter().map(|((o, _), _)| *o).collect();
    let ids: Vec<Uuid> = rows.iter().map(|((_, id), _)| *id).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|(_, at)| *at).collect();
    let sql = match column {
        Column::Heartbeat => {
            "UPDATE daemons d SET last_heartbeat_at = GREATEST(d.last_heartbeat_at, u.at)
               FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(owner_id, id, at)
              WHERE d.id = u.id AND d.owner_id = u.owner_id"
        }
        Column::Disconnected => {
            "UPDATE daemons d SET last_disconnected_at = GREATEST(d.last_disconnected_at, u.at)
               FROM UNNEST($1::uuid[], $2::uuid[], $3::timestamptz[]) AS u(owner_id, id, at)
              WHERE d.id = u.id AND d.owner_id = u.owner_id"
        }
    };
    sqlx::query(sql)
        .bind(&owners)
        .bind(&ids)
        .bind(&times)
        .execute(pool)
        .await?;
    Ok(())
}

/// The last item of each row, sorted by row id (one lock order).
fn last_per_row<T>(items: &[T], key: impl Fn(&T) -> (Uuid, Uuid)) -> Vec<&T> {
    let mut last: HashMap<(Uuid, Uuid), &T> = HashMap::with_capacity(items.len());
    for item in items {
        last.insert(key(item), item);
    }
    let mut rows: Vec<((Uuid, Uuid), &T)> = last.into_iter().collect();
    rows.sort_by_key(|((_, id), _)| *id);
    rows.into_iter().map(|(_, item)| item).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_item_of_each_row_is_kept_in_id_order() {
        let (o, a, b) = (Uuid::new_v4(), Uuid::from_u128(2), Uuid::from_u128(1));
        let items = [(o, a, "first"), (o, b, "only"), (o, a, "second")];
        let kept = last_per_row(&items, |(o, id, _)| (*o, *id));
        let kept: Vec<_> = kept.iter().map(|(_, id, s)| (*id, *s)).collect();
        assert_eq!(kept, vec![(b, "only"), (a, "second")]);
    }
}
