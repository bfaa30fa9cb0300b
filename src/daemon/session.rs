//! One daemon connection's state and the dispatch of its messages. The
//! socket loop hands every text frame to [`Session::on_text`], which decodes
//! it and calls the function named after the message.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::presence;
use crate::{
    auth::Principal,
    metrics::Metrics,
    protocol::daemon::{self, DaemonCommand, DaemonMessage},
    state::AppState,
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

/// State of one connection.
pub struct Session {
    pub state: AppState,
    pub principal: Principal,
    /// Fencing token of this socket in the registry.
    pub conn: Uuid,
    pub registered: Option<Registered>,
    /// Sender half of the socket's command queue, handed to the local
    /// connection table at registration.
    pub tx: mpsc::Sender<String>,
    pub close: CancellationToken,
}

impl Session {
    pub fn new(
        state: AppState,
        principal: Principal,
        tx: mpsc::Sender<String>,
        close: CancellationToken,
    ) -> Self {
        Self {
            state,
            principal,
            conn: Uuid::new_v4(),
            registered: None,
            tx,
            close,
        }
    }

    /// Decodes one text frame and runs what it asks for.
    pub async fn on_text(&mut self, text: &str) -> Step {
        Metrics::inc(&self.state.metrics.daemon_frames_in);
        let message = match daemon::decode(text) {
            Ok(m) => m,
            Err(e) => {
                Metrics::inc(&self.state.metrics.daemon_parse_errors);
                return Step::Reply(error("PARSE_ERROR", e.to_string()));
            }
        };
        let Some(registered) = self.registered.clone() else {
            return match message {
                DaemonMessage::Authenticate {
                    machine_id,
                    hostname,
                    max_concurrent_tasks,
                    ..
                } => presence::authenticate(self, machine_id, hostname, max_concurrent_tasks).await,
                other => Step::Reply(error(
                    "NOT_REGISTERED",
                    format!("send authenticate before {}", other.kind()),
                )),
            };
        };
        self.dispatch(&registered, message).await
    }

    async fn dispatch(&mut self, me: &Registered, message: DaemonMessage) -> Step {
        match message {
            // Already registered: the seed ignores a repeated authenticate.
            DaemonMessage::Authenticate { .. } => Step::Nothing,
            DaemonMessage::Heartbeat { active_tasks } => {
                presence::heartbeat(self, me, active_tasks).await
            }
            DaemonMessage::DaemonDirectories {
                working_directory,
                home_directory,
                worktrees_directory,
            } => {
                presence::directories(
                    self,
                    me,
                    working_directory,
                    home_directory,
                    worktrees_directory,
                )
                .await
            }
            other => {
                // Decoded and accepted; what each remaining kind does is
                // built in the message-behaviour issue.
                tracing::debug!(daemon_id = %me.daemon_id, kind = other.kind(), "message not handled yet");
                Step::Nothing
            }
        }
    }
}

/// An `error` frame.
pub fn error(code: &str, message: impl Into<String>) -> DaemonCommand {
    DaemonCommand::Error {
        code: code.to_owned(),
        message: message.into(),
    }
}
