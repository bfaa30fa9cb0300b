//! The web client protocol (PROTOCOL.md §2).
//!
//! [`ClientEvent`] is every event the server pushes to a web client, over
//! WebSocket or Server-Sent Events; [`ClientRequest`] is what a WebSocket
//! client may send; [`Topic`] is the parsed form of a subscription topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::claude::OutputEvent;

/// An event pushed from the server to a web client.
///
/// `None` fields are omitted from the frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ClientEvent {
    /// A subscription is in place.
    Subscribed {
        /// The topic, as the client wrote it.
        topic: String,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// The topic, as the client wrote it.
        topic: String,
    },
    /// One parsed output line of a task.
    TaskOutput {
        /// The task.
        task_id: Uuid,
        /// The stored row's id (as in `GET /tasks/{id}/outputs`), so a client
        /// that re-read stored lines can skip their live copies. Absent for
        /// lines that are not stored (e.g. the auth-required notice).
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        /// The parsed line; its fields sit beside `taskId` on the wire.
        #[serde(flatten)]
        event: OutputEvent,
    },
    /// A task record changed.
    TaskUpdated {
        /// The task.
        task_id: Uuid,
        /// The task's version after the change.
        version: i32,
        /// The task's status after the change.
        status: String,
        /// Names of the fields that changed.
        updated_fields: Vec<String>,
        /// Who changed it (e.g. `daemon`, `user`).
        updated_by: String,
    },
    /// A file record changed.
    FileUpdated {
        /// The file.
        file_id: Uuid,
        /// The file's version after the change.
        version: i32,
        /// Names of the fields that changed.
        updated_fields: Vec<String>,
        /// Who changed it.
        updated_by: String,
    },
    /// Outcome of merging a task into its target branch.
    MergeResult {
        /// The task.
        task_id: Uuid,
        /// Whether the merge succeeded.
        success: bool,
        /// Human-readable outcome.
        message: String,
        /// The merge commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit_sha: Option<String>,
        /// Paths in conflict.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conflicts: Option<Vec<String>>,
    },
    /// Outcome of opening a pull request for a task (tag `prResult`).
    PrResult {
        /// The task.
        task_id: Uuid,
        /// Whether the pull request was created.
        success: bool,
        /// Human-readable outcome.
        message: String,
        /// URL of the pull request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pr_url: Option<String>,
        /// Number of the pull request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pr_number: Option<i32>,
    },
    /// A daemon of the owner connected.
    DaemonConnected {
        /// The daemon.
        daemon_id: Uuid,
        /// Host name of the daemon.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
    /// A daemon of the owner disconnected.
    DaemonDisconnected {
        /// The daemon.
        daemon_id: Uuid,
        /// Host name of the daemon.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
    },
    /// The server may have missed events of `topic` for this client and
    /// could not fill the gap itself: re-read the state (e.g. `GET /tasks`).
    Resync {
        /// The topic, in canonical form.
        topic: String,
    },
    /// A client request was rejected.
    Error {
        /// Machine-readable code (e.g. `FORBIDDEN`, `BAD_TOPIC`).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
}

impl ClientEvent {
    /// The wire tag of this event (for logs and metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::TaskOutput { .. } => "taskOutput",
            Self::TaskUpdated { .. } => "taskUpdated",
            Self::FileUpdated { .. } => "fileUpdated",
            Self::MergeResult { .. } => "mergeResult",
            Self::PrResult { .. } => "prResult",
            Self::DaemonConnected { .. } => "daemonConnected",
            Self::DaemonDisconnected { .. } => "daemonDisconnected",
            Self::Resync { .. } => "resync",
            Self::Error { .. } => "error",
        }
    }
}

/// A request from a web client (WebSocket only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientRequest {
    /// Start receiving the events of a topic.
    Subscribe {
        /// `task:<uuid>` or `owner`; see [`Topic`].
        topic: String,
        /// Task topics: replay the stored outputs after this output id
        /// first (`0`: the whole task), then continue live (§2.1).
        #[serde(default)]
        since: Option<u64>,
    },
    /// Stop receiving the events of a topic.
    Unsubscribe {
        /// The topic given to `subscribe`.
        topic: String,
    },
}

/// A subscription topic.
///
/// Written `task:<uuid>` or `owner`; [`Topic::from_str`] parses it and
/// `Display` writes it back in canonical form (lowercase hyphenated uuid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Output, status updates and merge/PR results of one task.
    Task(Uuid),
    /// Status updates of all the owner's tasks, file updates, daemon presence.
    Owner,
}

/// A topic string that is neither `owner` nor `task:<uuid>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic must be `owner` or `task:<uuid>`")]
pub struct BadTopic;

impl FromStr for Topic {
    type Err = BadTopic;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "owner" {
            return Ok(Self::Owner);
        }
        let id = s.strip_prefix("task:").ok_or(BadTopic)?;
        Uuid::parse_str(id).map(Self::Task).map_err(|_| BadTopic)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Task(id) => write!(f, "task:{id}"),
            Self::Owner => f.write_str("owner"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::protocol::claude::{parse_output_line, MessageType};

    const TASK: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
    const DAEMON: &str = "7c9e6679-7425-40de-944b-e07fc1f90ae7";

    fn id(s: &str) -> Uuid {
        Uuid::parse_str(s).unwrap()
    }

    fn wire(event: &ClientEvent) -> Value {
        let value = serde_json::to_value(event).unwrap();
        assert_eq!(value["type"], event.kind());
        let back: ClientEvent = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(&back, event);
        value
    }

    #[test]
    fn subscription_events() {
        let ev = ClientEvent::Subscribed {
            topic: "owner".into(),
        };
        assert_eq!(wire(&ev), json!({"type": "subscribed", "topic": "owner"}));
        let ev = ClientEvent::Unsubscribed {
            topic: format!("task:{TASK}"),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "unsubscribed", "topic": format!("task:{TASK}")})
        );
    }

    #[test]
    fn task_output_is_flat() {
        let event = parse_output_line(
            r#"{"type":"tool_use","tool_name":"Bash","tool_input":{"c":1}}"#,
            true,
        )
        .unwrap();
        let ev = ClientEvent::TaskOutput {
            task_id: id(TASK),
            id: None,
            event,
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "taskOutput", "taskId": TASK, "messageType": "tool_use",
                   "content": "Using tool: Bash", "toolName": "Bash", "toolInput": {"c": 1},
                   "isPartial": true})
        );
        let result = OutputEvent {
            cost_usd: Some(0.5),
            duration_ms: Some(42),
            ..OutputEvent::new(MessageType::Result, "done", false)
        };
        let ev = ClientEvent::TaskOutput {
            task_id: id(TASK),
            id: Some(7),
            event: result,
        };
        assert_eq!(wire(&ev)["durationMs"], 42);
        assert_eq!(wire(&ev)["id"], 7);
    }

    #[test]
    fn task_and_file_updates() {
        let ev = ClientEvent::TaskUpdated {
            task_id: id(TASK),
            version: 3,
            status: "running".into(),
            updated_fields: vec!["status".into()],
            updated_by: "daemon".into(),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "taskUpdated", "taskId": TASK, "version": 3, "status": "running",
                   "updatedFields": ["status"], "updatedBy": "daemon"})
        );
        let ev = ClientEvent::FileUpdated {
            file_id: id(TASK),
            version: 0,
            updated_fields: vec!["body".into()],
            updated_by: "daemon".into(),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "fileUpdated", "fileId": TASK, "version": 0,
                   "updatedFields": ["body"], "updatedBy": "daemon"})
        );
    }

    #[test]
    fn merge_and_pr_results() {
        let ev = ClientEvent::MergeResult {
            task_id: id(TASK),
            success: false,
            message: "conflict".into(),
            commit_sha: None,
            conflicts: Some(vec!["a.rs".into()]),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "mergeResult", "taskId": TASK, "success": false,
                   "message": "conflict", "conflicts": ["a.rs"]})
        );
        let ev = ClientEvent::PrResult {
            task_id: id(TASK),
            success: true,
            message: "ok".into(),
            pr_url: Some("https://x/pull/7".into()),
            pr_number: Some(7),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "prResult", "taskId": TASK, "success": true, "message": "ok",
                   "prUrl": "https://x/pull/7", "prNumber": 7})
        );
    }

    #[test]
    fn daemon_presence_and_error() {
        let ev = ClientEvent::DaemonConnected {
            daemon_id: id(DAEMON),
            hostname: Some("h".into()),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "daemonConnected", "daemonId": DAEMON, "hostname": "h"})
        );
        let ev = ClientEvent::DaemonDisconnected {
            daemon_id: id(DAEMON),
            hostname: None,
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "daemonDisconnected", "daemonId": DAEMON})
        );
        let ev = ClientEvent::Error {
            code: "FORBIDDEN".into(),
            message: "no".into(),
        };
        assert_eq!(
            wire(&ev),
            json!({"type": "error", "code": "FORBIDDEN", "message": "no"})
        );
    }

    #[test]
    fn resync_names_its_topic() {
        let ev = ClientEvent::Resync {
            topic: "owner".into(),
        };
        assert_eq!(wire(&ev), json!({"type": "resync", "topic": "owner"}));
    }

    #[test]
    fn client_requests() {
        let req: ClientRequest =
            serde_json::from_str(r#"{"type":"subscribe","topic":"owner","x":1}"#).unwrap();
        assert_eq!(
            req,
            ClientRequest::Subscribe {
                topic: "owner".into(),
                since: None,
            }
        );
        let req: ClientRequest = serde_json::from_str(&format!(
            r#"{{"type":"subscribe","topic":"task:{TASK}","since":42}}"#
        ))
        .unwrap();
        assert_eq!(
            req,
            ClientRequest::Subscribe {
                topic: format!("task:{TASK}"),
                since: Some(42),
            }
        );
        // A position is an output id: never negative, never a fraction.
        for bad in ["-1", "1.5", "\"7\""] {
            let text = format!(r#"{{"type":"subscribe","topic":"owner","since":{bad}}}"#);
            assert!(
                serde_json::from_str::<ClientRequest>(&text).is_err(),
                "{bad}"
            );
        }
        let req: ClientRequest =
            serde_json::from_str(r#"{"type":"unsubscribe","topic":"owner"}"#).unwrap();
        assert_eq!(
            req,
            ClientRequest::Unsubscribe {
                topic: "owner".into()
            }
        );
        assert!(
            serde_json::from_str::<ClientRequest>(r#"{"type":"publish","topic":"owner"}"#).is_err()
        );
    }

    #[test]
    fn topics_parse_and_print() {
        assert_eq!("owner".parse::<Topic>(), Ok(Topic::Owner));
        let upper = format!("task:{}", TASK.to_uppercase());
        assert_eq!(upper.parse::<Topic>(), Ok(Topic::Task(id(TASK))));
        assert_eq!(Topic::Task(id(TASK)).to_string(), format!("task:{TASK}"));
        assert_eq!(Topic::Owner.to_string(), "owner");
        for bad in ["", "Owner", "task:", "task:nope", "daemon:x", TASK] {
            assert_eq!(bad.parse::<Topic>(), Err(BadTopic), "{bad}");
        }
    }
}
