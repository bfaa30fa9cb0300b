//! One daemon connection's state and the dispatch of its messages. The
//! socket loop hands every text frame to [`Session::on_text`], which decodes
//! it, checks that a task it names is this daemon's, and calls the function
//! named after the message.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{files, git, keys, lifecycle, outbox, output, presence, replies, supervisor};
use crate::{
    auth::Principal,
    cluster::{
        events::{self, Audience},
        routing,
    },
    db::{self, tasks::TaskRef},
    metrics::Metrics,
    protocol::{
        client::ClientEvent,
        daemon::{self, DaemonCommand, DaemonMessage},
    },
    state::AppState,
    Result,
};

/// What the socket loop should do after a frame.
#[derive(Debug)]
pub enum Step {
    Nothing,
    Reply(DaemonCommand),
    /// Reply, then close the socket (the daemon should reconnect).
    ReplyAndClose(DaemonCommand),
}

/// The daemon identity once `authenticate` succeeded.
#[derive(Debug, Clone)]
pub struct Registered {
    pub daemon_id: Uuid,
    pub hostname: String,
}

/// How long a task's ownership, once checked, is trusted for `taskOutput`
/// without asking PostgreSQL again.
const OWNERSHIP_TTL: Duration = Duration::from_secs(5);

/// State of one connection.
pub struct Session {
    pub state: AppState,
    pub principal: Principal,
    /// Fencing token of this socket in the registry.
    pub conn: Uuid,
    pub registered: Option<Registered>,
    /// Sender half of the socket's command queue, handed to the local
    /// connection table at registration.
    pub tx: outbox::Sender,
    pub close: CancellationToken,
    /// Set when the pod closes the socket because its command queue is full.
    pub slow: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Reconciliation's memory of this connection (PROTOCOL.md §1.4).
    pub reconcile: super::reconcile::Memory,
    /// Tasks recently confirmed as this daemon's (for the output hot path).
    owned: HashMap<Uuid, (TaskRef, Instant)>,
}

/// What a message handler gets: who is speaking, and the pod's handles.
pub struct Ctx<'a> {
    pub state: &'a AppState,
    pub owner_id: Uuid,
    pub daemon_id: Uuid,
    pub hostname: &'a str,
    /// The frame as the daemon sent it (answers are forwarded as they are).
    pub raw: &'a str,
}

impl Ctx<'_> {
    /// Sends a command to a daemon wherever it is connected.
    pub async fn send(&self, daemon_id: Uuid, command: &DaemonCommand) -> Result<()> {
        routing::send_command(&self.state.redis, &self.state.metrics, daemon_id, command).await
    }

    /// Publishes an event on the task's topic (and the owner's, if asked).
    pub async fn publish(&self, task_id: Option<Uuid>, to_owner: bool, event: &ClientEvent) {
        let audience = Audience {
            owner_id: self.owner_id,
            task_id,
            to_owner,
        };
        events::publish_can_fail(&self.state.redis, audience, event).await;
    }

    /// Publishes `taskUpdated` for a change this daemon made.
    pub async fn task_updated(&self, task_id: Uuid, version: i32, status: &str, fields: &[&str]) {
        let event = ClientEvent::TaskUpdated {
            task_id,
            version,
            status: status.to_owned(),
            updated_fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            updated_by: "daemon".into(),
        };
        self.publish(Some(task_id), true, &event).await;
    }

    /// Counts and logs a failed database call, and tells the daemon that its
    /// message was not recorded.
    pub fn db_failed(&self, kind: &str, e: &crate::Error) -> Step {
        Metrics::inc(&self.state.metrics.db_errors);
        tracing::error!(daemon_id = %self.daemon_id, owner_id = %self.owner_id, kind, error = %e, "message not recorded");
        Step::Reply(error(
            "DB_UNAVAILABLE",
            format!("{kind} was not recorded; send it again later"),
        ))
    }
}

impl Session {
    pub fn new(
        state: AppState,
        principal: Principal,
        tx: outbox::Sender,
        close: CancellationToken,
    ) -> Self {
        Self {
            state,
            principal,
            conn: Uuid::new_v4(),
            registered: None,
            tx,
            close,
            slow: Default::default(),
            reconcile: Default::default(),
            owned: HashMap::new(),
        }
    }

    /// Decodes one text frame and runs what it asks for.
    pub async fn on_text(&mut self, text: &str) -> Step {
        Metrics::inc(&self.state.metrics.daemon_frames_in);
        let message = match daemon::decode(text) {
            Ok(m) => m,
            Err(e) => {
                Metrics::inc(&self.state.metrics.daemon_parse_errors);
                return Step::Reply(e.to_error_command());
            }
        };
        let Some(me) = self.registered.clone() else {
            return match message {
                DaemonMessage::Authenticate(m) => presence::authenticate(self, m).await,
                other => Step::Reply(error(
                    "NOT_REGISTERED",
                    format!("send authenticate before {}", other.kind()),
                )),
            };
        };
        match message {
            DaemonMessage::Authenticate(_) => Step::Nothing, // the seed ignores a repeat
            DaemonMessage::Heartbeat(m) => presence::heartbeat(self, &me, m).await,
            DaemonMessage::DaemonDirectories(m) => presence::directories(self, &me, m).await,
            other => self.dispatch(&me, text, other).await,
        }
    }

    /// Messages of a registered daemon other than presence.
    async fn dispatch(&mut self, me: &Registered, raw: &str, message: DaemonMessage) -> Step {
        let kind = message.kind();
        let task = match message.task_id() {
            None => None,
            Some(id) => match self
                .own_task(me, id, matches!(message, DaemonMessage::TaskOutput(_)))
                .await
            {
                Ok(Some(task)) => Some(task),
                Ok(None) => return task_not_found(id),
                Err(e) => return self.ctx(me, raw).db_failed(kind, &e),
            },
        };
        if let DaemonMessage::TaskComplete(m) = &message {
            // Output after completion is re-checked against the database.
            self.owned.remove(&m.task_id);
        }
        // After these a daemon slot is free or a task is pending again.
        let kick = matches!(
            message,
            DaemonMessage::TaskComplete(_) | DaemonMessage::TaskRecoveryDetected(_)
        );
        let ctx = self.ctx(me, raw);
        use DaemonMessage as M;
        let step = match (message, task) {
            (M::TaskOutput(m), Some(t)) => output::task_output(&ctx, t, m).await,
            (M::TaskStatusChange(m), Some(t)) => lifecycle::task_status_change(&ctx, t, m).await,
            (M::TaskProgress(m), Some(t)) => lifecycle::task_progress(&ctx, t, m).await,
            (M::TaskComplete(m), Some(t)) => lifecycle::task_complete(&ctx, t, m).await,
            (M::TaskRecoveryDetected(m), Some(t)) => {
                lifecycle::task_recovery_detected(&ctx, t, m).await
            }
            (M::SupervisorHeartbeat(m), Some(t)) => {
                supervisor::supervisor_heartbeat(&ctx, t, m).await
            }
            (M::RegisterToolKey(m), Some(t)) => keys::register_tool_key(&ctx, t, m).await,
            (M::RevokeToolKey(m), Some(t)) => keys::revoke_tool_key(&ctx, t, m).await,
            (M::AuthenticationRequired(m), t) => keys::authentication_required(&ctx, t, m).await,
            (M::ReauthStatus(m), _) => keys::reauth_status(&ctx, m).await,
            (M::CompletionActionResult(m), Some(t)) => {
                git::completion_action_result(&ctx, t, m).await
            }
            (M::CloneWorktreeResult(m), Some(t)) => git::clone_worktree_result(&ctx, t, m).await,
            (M::CheckTargetExistsResult(m), Some(t)) => {
                git::check_target_exists_result(&ctx, t, m).await
            }
            (M::BranchCreated(m), t) => git::branch_created(&ctx, t, m).await,
            (M::CheckpointCreated(m), Some(t)) => git::checkpoint_created(&ctx, t, m).await,
            (M::GitConfigInherited(m), _) => git::git_config_inherited(&ctx, m).await,
            (M::ExportPatchCreated(m), Some(t)) => git::export_patch_created(&ctx, t, m).await,
            (M::MergeToTargetResult(m), Some(t)) => git::merge_to_target_result(&ctx, t, m).await,
            (M::PrCreated(m), Some(t)) => git::pr_created(&ctx, t, m).await,
            (M::MergePatchToSupervisor(m), Some(t)) => {
                git::merge_patch_to_supervisor(&ctx, t, m).await
            }
            (M::RepoFileContent(m), _) => files::repo_file_content(&ctx, m).await,
            (M::WorktreeDiffResult(m), Some(t)) => replies::worktree_diff_result(&ctx, t, m).await,
            (M::WorktreeInfoResult(m), Some(t)) => replies::worktree_info_result(&ctx, t, m).await,
            (M::TaskDiff(m), Some(t)) => replies::task_diff(&ctx, t, m).await,
            (M::WorktreeCommitResult(m), Some(t)) => {
                replies::worktree_commit_result(&ctx, t, m).await
            }
            (other, _) => {
                // Presence kinds are handled before; a task-bearing kind
                // always has its task here. Nothing else can arrive.
                tracing::error!(kind = other.kind(), "message reached dispatch unexpectedly");
                Step::Nothing
            }
        };
        if kick {
            self.state.dispatcher.kick(self.principal.owner_id);
        }
        step
    }

    fn ctx<'a>(&'a self, me: &'a Registered, raw: &'a str) -> Ctx<'a> {
        Ctx {
            state: &self.state,
            owner_id: self.principal.owner_id,
            daemon_id: me.daemon_id,
            hostname: &me.hostname,
            raw,
        }
    }

    /// The task if it is this owner's and assigned to this daemon. Output
    /// lines (the hot path) trust a recent answer for a few seconds.
    async fn own_task(
        &mut self,
        me: &Registered,
        task_id: Uuid,
        cached: bool,
    ) -> Result<Option<TaskRef>> {
        if cached {
            if let Some((task, at)) = self.owned.get(&task_id) {
                if at.elapsed() < OWNERSHIP_TTL {
                    return Ok(Some(task.clone()));
                }
            }
        }
        let task = db::tasks::assigned(
            &self.state.db,
            self.principal.owner_id,
            me.daemon_id,
            task_id,
        )
        .await?;
        match &task {
            Some(t) if cached => {
                if self.owned.len() > 1_000 {
                    self.owned.clear();
                }
                self.owned.insert(task_id, (t.clone(), Instant::now()));
            }
            None => {
                self.owned.remove(&task_id);
            }
            _ => {}
        }
        Ok(task)
    }
}

/// An `error` frame.
pub fn error(code: &str, message: impl Into<String>) -> DaemonCommand {
    DaemonCommand::Error {
        code: code.to_owned(),
        message: message.into(),
    }
}

/// The answer to a message naming a task that is not this daemon's (or does
/// not exist: the two are indistinguishable on purpose).
pub fn task_not_found(task_id: Uuid) -> Step {
    Step::Reply(error("TASK_NOT_FOUND", format!("task {task_id} not found")))
}
