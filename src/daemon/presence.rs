//! Presence messages: `authenticate`, `heartbeat`, `daemonDirectories`, and
//! the cleanup when a socket ends.

use chrono::Utc;
use uuid::Uuid;

use super::{
    connections::LocalConn,
    reconcile,
    session::{error, Registered, Session, Step},
};
use crate::{
    cluster::{
        events::{self, Audience},
        registry::{self, DaemonEntry},
    },
    db::daemons::{Directories, Registration},
    metrics::Metrics,
    protocol::{
        client::ClientEvent,
        daemon::{Authenticate, DaemonCommand, DaemonDirectories, Heartbeat},
    },
};

/// Longest machine id or hostname accepted.
const MAX_NAME: usize = 255;
/// Most task ids accepted in one heartbeat.
const MAX_ACTIVE_TASKS: usize = 1_000;

/// `authenticate`: the daemon row is upserted (stable id per owner and
/// machine id), the socket becomes the daemon's current connection in the
/// registry (closing any older one, wherever it is), and `authenticated` is
/// the answer.
pub async fn authenticate(s: &mut Session, m: Authenticate) -> Step {
    let Authenticate {
        machine_id,
        hostname,
        max_concurrent_tasks,
        ..
    } = m;
    if machine_id.trim().is_empty() || machine_id.chars().count() > MAX_NAME {
        return Step::Reply(error(
            "PARSE_ERROR",
            "machineId must be 1 to 255 characters",
        ));
    }
    if hostname.chars().count() > MAX_NAME {
        return Step::Reply(error(
            "PARSE_ERROR",
            "hostname must be at most 255 characters",
        ));
    }
    if machine_id.contains('\0') || hostname.contains('\0') {
        // PostgreSQL cannot store NUL in text.
        return Step::Reply(error(
            "PARSE_ERROR",
            "machineId and hostname must not contain NUL characters",
        ));
    }
    if !(1..=10_000).contains(&max_concurrent_tasks) {
        return Step::Reply(error(
            "PARSE_ERROR",
            "maxConcurrentTasks must be between 1 and 10000",
        ));
    }
    let owner_id = s.principal.owner_id;
    let registration = Registration {
        owner_id,
        machine_id: machine_id.clone(),
        hostname: hostname.clone(),
        max_concurrent_tasks,
    };
    let daemon_id = match s.state.daemon_rows.register(registration).await {
        Ok(id) => id,
        Err(e) => {
            Metrics::inc(&s.state.metrics.db_errors);
            tracing::error!(%owner_id, error = %e, "daemon registration failed in the database");
            return Step::ReplyAndClose(error(
                "DB_UNAVAILABLE",
                "registration failed; reconnect later",
            ));
        }
    };
    let entry = DaemonEntry {
        id: daemon_id,
        owner_id,
        pod: s.state.pod_id.to_string(),
        conn: s.conn,
        hostname: hostname.clone(),
        machine_id,
        max_concurrent_tasks,
        connected_at: Utc::now(),
        last_heartbeat_at: None,
        active_task_ids: Vec::new(),
        working_directory: None,
        home_directory: None,
        worktrees_directory: None,
    };
    // Local first, so a command routed right after registration finds the socket.
    s.state.conns.insert(
        s.conn,
        LocalConn {
            entry: entry.clone(),
            tx: s.tx.clone(),
            close: s.close.clone(),
            slow: s.slow.clone(),
        },
    );
    match registry::register(&s.state.redis, &entry, s.state.lease()).await {
        Ok(replaced) => {
            if let Some(old) = replaced {
                tracing::info!(%daemon_id, old_conn = %old, "newer connection replaces an older one");
            }
        }
        Err(e) => {
            s.state.conns.remove(s.conn);
            Metrics::inc(&s.state.metrics.redis_errors);
            tracing::error!(%daemon_id, error = %e, "daemon registration failed in Redis");
            return Step::ReplyAndClose(error(
                "REDIS_UNAVAILABLE",
                "registration failed; reconnect later",
            ));
        }
    }
    tracing::info!(%daemon_id, %owner_id, conn = %s.conn, %hostname, "daemon registered");
    s.registered = Some(Registered {
        daemon_id,
        hostname: hostname.clone(),
    });
    let presence = ClientEvent::DaemonConnected {
        daemon_id,
        hostname: Some(hostname),
    };
    events::publish_can_fail(&s.state.redis, owner_audience(owner_id), &presence).await;
    // Pending tasks may now have somewhere to go.
    s.state.dispatcher.kick(owner_id);
    Step::Reply(DaemonCommand::Authenticated { daemon_id })
}

/// `heartbeat`: last heartbeat and active tasks, in the registry and the
/// row; then the tasks converge to what it lists ([`reconcile`]).
pub async fn heartbeat(s: &mut Session, me: &Registered, m: Heartbeat) -> Step {
    let active_tasks = m.active_tasks;
    if active_tasks.len() > MAX_ACTIVE_TASKS {
        return Step::Reply(error("PARSE_ERROR", "activeTasks lists too many tasks"));
    }
    let now = Utc::now();
    let tasks_json = serde_json::to_string(&active_tasks).unwrap_or_else(|_| "[]".into());
    let listed = active_tasks.clone();
    s.state.conns.update_entry(s.conn, |e| {
        e.last_heartbeat_at = Some(now);
        e.active_task_ids = active_tasks;
    });
    let fields = [
        ("lastHeartbeatAt", now.to_rfc3339()),
        ("activeTaskIds", tasks_json),
    ];
    if let Err(e) = registry::touch(&s.state.redis, me.daemon_id, s.conn, &fields).await {
        Metrics::inc(&s.state.metrics.redis_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "heartbeat not recorded in the registry");
    }
    if let Err(e) = s
        .state
        .daemon_rows
        .heartbeat(s.principal.owner_id, me.daemon_id)
        .await
    {
        Metrics::inc(&s.state.metrics.db_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "heartbeat not recorded in the database");
    }
    reconcile::after_heartbeat(s, me, &listed).await;
    Step::Nothing
}

/// `daemonDirectories`: where the daemon keeps its work, for clients.
pub async fn directories(s: &mut Session, me: &Registered, m: DaemonDirectories) -> Step {
    let (working, home, worktrees) = (m.working_directory, m.home_directory, m.worktrees_directory);
    if [&working, &home, &worktrees]
        .iter()
        .any(|d| d.contains('\0'))
    {
        // PostgreSQL cannot store NUL in text.
        return Step::Reply(error(
            "PARSE_ERROR",
            "directories must not contain NUL characters",
        ));
    }
    s.state.conns.update_entry(s.conn, |e| {
        e.working_directory = Some(working.clone());
        e.home_directory = Some(home.clone());
        e.worktrees_directory = Some(worktrees.clone());
    });
    let fields = [
        ("workingDirectory", working.clone()),
        ("homeDirectory", home.clone()),
        ("worktreesDirectory", worktrees.clone()),
    ];
    let dirs = Directories {
        working,
        home,
        worktrees,
    };
    if let Err(e) = registry::touch(&s.state.redis, me.daemon_id, s.conn, &fields).await {
        Metrics::inc(&s.state.metrics.redis_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "directories not recorded in the registry");
    }
    let owner = s.principal.owner_id;
    if let Err(e) = s
        .state
        .daemon_rows
        .set_directories(owner, me.daemon_id, dirs)
        .await
    {
        Metrics::inc(&s.state.metrics.db_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "directories not recorded in the database");
    }
    Step::Nothing
}

/// The socket ended (closed, replaced or drained). If it was still the
/// daemon's current connection, the registry entry goes and the reaper is
/// scheduled after the grace period; a newer connection is left untouched.
pub async fn disconnected(s: &Session) {
    let Some(me) = &s.registered else {
        return;
    };
    s.state.conns.remove(s.conn);
    let owner_id = s.principal.owner_id;
    let current = match registry::unregister(&s.state.redis, me.daemon_id, s.conn, s.state.lease())
        .await
    {
        Ok(current) => current,
        Err(e) => {
            // The lease will lapse on its own and the reaper still runs.
            Metrics::inc(&s.state.metrics.redis_errors);
            tracing::warn!(daemon_id = %me.daemon_id, error = %e, "unregister failed; the lease will lapse");
            true
        }
    };
    tracing::info!(daemon_id = %me.daemon_id, conn = %s.conn, current, "daemon socket closed");
    if !current {
        return;
    }
    if let Err(e) = s
        .state
        .daemon_rows
        .disconnected(owner_id, me.daemon_id)
        .await
    {
        Metrics::inc(&s.state.metrics.db_errors);
        tracing::warn!(daemon_id = %me.daemon_id, error = %e, "disconnect time not recorded");
    }
    let presence = ClientEvent::DaemonDisconnected {
        daemon_id: me.daemon_id,
        hostname: Some(me.hostname.clone()),
    };
    events::publish_can_fail(&s.state.redis, owner_audience(owner_id), &presence).await;
}

fn owner_audience(owner_id: Uuid) -> Audience {
    Audience {
        owner_id,
        task_id: None,
        to_owner: true,
    }
}
