//! Command routing: `send_command` works the same from every pod.
//!
//! The sender runs `redis/route.lua`, which reads the daemon's registry entry
//! and publishes the command on the channel of the pod holding its current
//! connection, fenced with that connection's id, in one round trip (shared
//! by the commands routed at the same moment: [`super::route_batch`]).
//! PUBLISH's receiver count tells the sender at once when no pod holds the
//! daemon.
//! The holding pod's [`listen`] loop hands the command to the socket if the
//! connection id still matches.

use std::{collections::HashMap, sync::atomic::Ordering};

use fred::{prelude::*, types::Value};
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{liveness::Channel, pending, pubsub, route_batch, Redis};
use crate::{
    daemon::connections::{Connections, DeliverError},
    metrics::Metrics,
    protocol::daemon::DaemonCommand,
    state::AppState,
    Error, Result,
};

/// Sends `command` to the daemon's current connection, wherever it is.
/// Fails fast with [`Error::DaemonOffline`] when no pod holds the daemon.
pub async fn send_command(
    redis: &Redis,
    metrics: &Metrics,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> Result<()> {
    let json = serde_json::to_string(command)
        .map_err(|e| Error::Internal(format!("command not serialisable: {e}")))?;
    let kind = command.kind();
    // The kind travels ahead of the JSON so the receiving pod can count
    // deliveries by type without parsing the command.
    let payload = format!("{kind}|{json}");
    let outcome = route(redis, metrics, daemon_id, payload).await;
    let label = match &outcome {
        Ok(()) => "sent",
        Err(Error::DaemonOffline(_)) => "offline",
        Err(_) => "failed",
    };
    metrics.command(kind, label);
    outcome
}

async fn route(redis: &Redis, metrics: &Metrics, daemon_id: Uuid, payload: String) -> Result<()> {
    redis.ensure_connected()?;
    let bucket = &redis.route_batches[redis.keys.bucket_of(daemon_id)];
    let receivers = route_batch::route(bucket, redis.keys.daemon(daemon_id), daemon_id, payload)
        .await
        .inspect_err(|_| Metrics::inc(&metrics.redis_errors))?;
    if receivers <= 0 {
        Metrics::inc(&metrics.commands_offline);
        return Err(Error::DaemonOffline(daemon_id));
    }
    Metrics::inc(&metrics.commands_sent);
    Ok(())
}

/// Subscribes to this pod's command channels (one per registry bucket) and
/// dispatches what arrives to local sockets until `stop` is cancelled.
/// Subscriptions are renewed after a reconnect (see [`super::pubsub`]);
/// messages lost while lagging are counted.
pub async fn listen(state: &AppState, stop: CancellationToken) -> Result<JoinHandle<()>> {
    let redis = state.redis.clone();
    let conns = state.conns.clone();
    let waiters = state.waiters.clone();
    let liveness = state.liveness.clone();
    let metrics = state.metrics.clone();
    let routes = state.task_routes.clone();
    let mut rx = redis.subscriber.message_rx();
    let mut reconnects = redis.subscriber.reconnect_rx();
    let manager = pubsub::on_reconnect(&redis.subscriber, {
        let redis = redis.clone();
        move || {
            let redis = redis.clone();
            async move { Ok(redis.resubscribe(&redis.subscriber).await?) }
        }
    });
    let channels: HashMap<String, usize> = redis
        .keys
        .pod_channels(&state.pod_id)
        .into_iter()
        .enumerate()
        .map(|(b, c)| (c, b))
        .collect();
    for channel in channels.keys() {
        redis.subscribe(&redis.subscriber, channel).await?;
    }
    let routes_channel = redis.keys.task_routes();
    redis.subscribe(&redis.subscriber, &routes_channel).await?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                Ok(_) = reconnects.recv() => {
                    // Whatever was published to this pod while its
                    // subscriber was gone is lost; Redis cannot say how much.
                    Metrics::inc(&metrics.pubsub_reconnects);
                    tracing::error!("command subscriber reconnected; commands published meanwhile were lost");
                    // So may be announcements of task route changes.
                    routes.clear();
                    continue;
                }
                msg = rx.recv() => msg,
            };
            match msg {
                Ok(msg) => {
                    let Some(&bucket) = channels.get(&*msg.channel) else {
                        if *msg.channel == *routes_channel {
                            routes.on_message(msg.value.as_str().as_deref().unwrap_or(""));
                        }
                        continue;
                    };
                    if msg.value.as_str().is_some_and(|t| t.starts_with("P|")) {
                        liveness.seen(Channel::Commands, bucket);
                    } else {
                        dispatch(&conns, &waiters, &metrics, msg.value);
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    routes.clear();
                    metrics.pubsub_messages_lost.fetch_add(n, Ordering::Relaxed);
                    tracing::error!(
                        lost = n,
                        "pod fell behind its Redis subscription; messages lost"
                    );
                }
                Err(RecvError::Closed) => break,
            }
        }
        manager.abort();
    }))
}

/// Handles one message of the pod channel: `C|daemon|conn|json` delivers a
/// command, `K|daemon|conn` closes a replaced socket, `R|kind|task|json`
/// answers local callers waiting for a daemon.
fn dispatch(conns: &Connections, waiters: &pending::Waiters, metrics: &Metrics, value: Value) {
    let Some(text) = value.as_str() else {
        tracing::warn!("non-text message on pod channel");
        return;
    };
    if let Some(rest) = text.strip_prefix("R|") {
        deliver_answer(waiters, rest);
        return;
    }
    let mut parts = text.splitn(4, '|');
    let (kind, daemon, conn) = (parts.next(), parts.next(), parts.next());
    let (Some(daemon), Some(conn)) = (
        daemon.and_then(|d| d.parse::<Uuid>().ok()),
        conn.and_then(|c| c.parse::<Uuid>().ok()),
    ) else {
        tracing::warn!("malformed message on pod channel");
        return;
    };
    match (kind, parts.next()) {
        (Some("C"), Some(rest)) => {
            let (kind, json) = rest.split_once('|').unwrap_or(("unknown", rest));
            deliver(conns, metrics, daemon, conn, kind, json);
        }
        (Some("K"), _) => {
            if conns.close(daemon, conn) {
                tracing::info!(daemon_id = %daemon, %conn, "closing socket replaced by a newer connection");
            }
        }
        _ => tracing::warn!("unknown message on pod channel"),
    }
}

/// Queues a command on the local socket `conn` of `daemon`.
fn deliver(
    conns: &Connections,
    metrics: &Metrics,
    daemon: Uuid,
    conn: Uuid,
    kind: &str,
    json: &str,
) {
    match conns.deliver(daemon, conn, json.to_owned()) {
        Ok(()) => {
            Metrics::inc(&metrics.commands_delivered);
            metrics.command(kind, "delivered");
        }
        Err(DeliverError::Gone) => {
            Metrics::inc(&metrics.commands_undeliverable);
            metrics.command(kind, "undeliverable");
            tracing::warn!(daemon_id = %daemon, %conn, kind, "command for a socket that is gone");
        }
        Err(DeliverError::QueueFull) => {
            Metrics::inc(&metrics.commands_queue_full);
            metrics.command(kind, "queue_full");
            tracing::error!(daemon_id = %daemon, %conn, kind, "daemon socket queue full; command dropped");
        }
    }
}

/// `kind|task|json`: an answer some local callers wait for.
fn deliver_answer(waiters: &pending::Waiters, rest: &str) {
    let mut parts = rest.splitn(3, '|');
    let kind = parts.next().and_then(pending::Kind::parse);
    let task = parts.next().and_then(|t| t.parse::<Uuid>().ok());
    match (kind, task, parts.next()) {
        (Some(kind), Some(task), Some(answer)) => {
            waiters.deliver(kind, task, answer);
        }
        _ => tracing::warn!("malformed answer on pod channel"),
    }
}
