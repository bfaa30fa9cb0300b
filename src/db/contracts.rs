//! Contract rows, as the task lifecycle needs them: a lock that serialises
//! the completions of one contract's tasks, and the view that decides
//! whether the contract's pull request can be created automatically.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::Result;

/// Locks the contract row until the transaction ends; `false` when the
/// owner has no such contract.
///
/// Completions of the same contract's tasks take this lock first, so that
/// exactly one of two tasks finishing together sees "all tasks done"
/// (without it, both or neither could). `NO KEY UPDATE` leaves inserts of
/// new tasks referencing the contract unblocked.
pub async fn lock<'e>(db: impl PgExecutor<'e>, owner_id: Uuid, contract_id: Uuid) -> Result<bool> {
    let found: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM contracts WHERE id = $1 AND owner_id = $2 FOR NO KEY UPDATE",
    )
    .bind(contract_id)
    .bind(owner_id)
    .fetch_optional(db)
    .await?;
    Ok(found.is_some())
}

/// What decides the automatic pull request of a contract.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PrReadiness {
    pub name: String,
    pub description: Option<String>,
    pub phase: String,
    pub local_only: bool,
    /// `pull-request` is among the current phase's completed deliverables.
    pub pr_delivered: bool,
    /// Non-supervisor tasks of the contract.
    pub tasks: i64,
    /// Of those, the ones `done`.
    pub tasks_done: i64,
    /// At least one repository has a remote URL.
    pub has_remote: bool,
}

impl PrReadiness {
    /// The seed's condition for telling the supervisor that every task is
    /// done: execute phase, at least one task, all done, no PR yet.
    pub fn all_tasks_done(&self) -> bool {
        self.phase == "execute"
            && self.tasks > 0
            && self.tasks_done == self.tasks
            && !self.pr_delivered
    }

    /// [`Self::all_tasks_done`], and a remote repository to open the PR on.
    pub fn pr_wanted(&self) -> bool {
        self.all_tasks_done() && !self.local_only && self.has_remote
    }
}

/// The contract's [`PrReadiness`], `None` when the owner has no such
/// contract. `completed_deliverables` maps a phase to an array of ids.
pub async fn pr_readiness<'e>(
    db: impl PgExecutor<'e>,
    owner_id: Uuid,
    contract_id: Uuid,
) -> Result<Option<PrReadiness>> {
    Ok(sqlx::query_as(
        "SELECT c.name, c.description, c.phase, c.local_only,
                COALESCE(jsonb_typeof(c.completed_deliverables -> c.phase) = 'array'
                         AND (c.completed_deliverables -> c.phase) ? 'pull-request', false)
                  AS pr_delivered,
                (SELECT count(*) FROM tasks t
                  WHERE t.contract_id = c.id AND t.owner_id = c.owner_id AND NOT t.is_supervisor)
                  AS tasks,
                (SELECT count(*) FROM tasks t
                  WHERE t.contract_id = c.id AND t.owner_id = c.owner_id AND NOT t.is_supervisor
                    AND t.status = 'done')
                  AS tasks_done,
                EXISTS (SELECT 1 FROM contract_repositories r
                         WHERE r.contract_id = c.id AND btrim(r.repository_url) <> '')
                  AS has_remote
         FROM contracts c WHERE c.id = $1 AND c.owner_id = $2",
    )
    .bind(contract_id)
    .bind(owner_id)
    .fetch_optional(db)
    .await?)
}
