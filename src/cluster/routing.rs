//! Command routing: `send_command` works the same from every pod, and
//! succeeds only once the command is queued on the socket of the daemon's
//! current connection.
//!
//! The sender numbers the command ([`super::receipts`]) and runs
//! `redis/route.lua`, which reads the daemon's registry entry and publishes
//! the command on the channel of the pod holding its current connection,
//! fenced with that connection's id, in one round trip (shared by the
//! commands routed at the same moment: [`super::route_batch`]). PUBLISH's
//! receiver count tells the sender at once when no pod holds the daemon.
//! The holding pod's [`listen`] loop hands the command to the socket if the
//! connection id still matches and sends the receipt back (batched).
//!
//! What can happen at the holding pod, and what the sender hears:
//! - queued on the socket: delivered;
//! - the socket was replaced meanwhile: the command follows the daemon to
//!   its newer connection (`route.lua` again, fenced so it never comes back
//!   to the gone socket, at most [`MAX_HOPS`] times), and the pod that
//!   finally holds it answers; no newer connection: offline;
//! - the socket's queue is full (the daemon does not read): offline, and the
//!   socket is closed, so the daemon reconnects and reconciliation
//!   (PROTOCOL.md §1.4) repairs what it missed;
//! - no receipt within the Redis timeout (lost with a subscriber that
//!   reconnected, a pod that died): the outcome is unknown, and the caller
//!   is told so ([`Error::DeliveryUnknown`]), never that it was delivered.

use std::sync::{atomic::Ordering, Arc};

use fred::prelude::*;
use tokio::{sync::broadcast::error::RecvError, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    liveness::{Channel, Liveness},
    pending,
    pod_message::{Envelope, Outcome, PodMessage},
    route_batch,
    task_routes::TaskRoutes,
    Redis,
};
use crate::{
    daemon::connections::{Connections, DeliverError},
    metrics::Metrics,
    protocol::daemon::DaemonCommand,
    Error, Result,
};

/// Times a command follows its daemon to a newer connection at most.
pub const MAX_HOPS: u32 = 3;

/// Sends `command` to the daemon's current connection, wherever it is, and
/// returns once it is queued on that socket. [`Error::DaemonOffline`] when
/// no pod holds the daemon (or its socket went away first),
/// [`Error::DeliveryUnknown`] when the holding pod's receipt did not come.
pub async fn send_command(
    redis: &Redis,
    metrics: &Metrics,
    daemon_id: Uuid,
    command: &DaemonCommand,
) -> Result<()> {
    let json = serde_json::to_string(command)
        .map_err(|e| Error::Internal(format!("command not serialisable: {e}")))?;
    let kind = command.kind();
    let outcome = route(redis, metrics, daemon_id, kind, json).await;
    let label = match &outcome {
        Ok(()) => "sent",
        Err(Error::DaemonOffline(_)) => "offline",
        Err(Error::DeliveryUnknown(_)) => "unconfirmed",
        Err(_) => "failed",
    };
    metrics.command(kind, label);
    outcome
}

async fn route(
    redis: &Redis,
    metrics: &Metrics,
    daemon_id: Uuid,
    kind: &'static str,
    json: String,
) -> Result<()> {
    redis.ensure_connected()?;
    let expected = redis.receipts.expect();
    let envelope = Envelope {
        from: redis.pod_id.to_string(),
        seq: expected.seq,
        hops: 0,
        kind: kind.to_owned(),
    };
    let bucket = &redis.route_batches[redis.keys.bucket_of(daemon_id)];
    let receivers = route_batch::route(
        bucket,
        redis.keys.daemon(daemon_id),
        daemon_id,
        None,
        envelope.payload(&json),
    )
    .await
    .inspect_err(|_| Metrics::inc(&metrics.redis_errors))?;
    if receivers <= 0 {
        Metrics::inc(&metrics.commands_offline);
        return Err(Error::DaemonOffline(daemon_id));
    }
    Metrics::inc(&metrics.commands_sent);
    match expected.wait(redis.timeout).await {
        Some(Outcome::Delivered) => Ok(()),
        Some(Outcome::Offline) => {
            Metrics::inc(&metrics.commands_offline);
            Err(Error::DaemonOffline(daemon_id))
        }
        Some(Outcome::Unknown) | None => {
            Metrics::inc(&metrics.commands_unconfirmed);
            tracing::warn!(%daemon_id, kind, "no delivery receipt in time; the command may or may not have reached the daemon");
            Err(Error::DeliveryUnknown(daemon_id))
        }
    }
}

/// What the listen loop hands commands and answers to.
#[derive(Clone)]
pub struct Local {
    pub redis: Arc<Redis>,
    pub conns: Arc<Connections>,
    pub waiters: Arc<pending::Waiters>,
    pub liveness: Arc<Liveness>,
    pub metrics: Arc<Metrics>,
    pub routes: Arc<TaskRoutes>,
}

/// Subscribes to this pod's command channels (one per registry bucket) and
/// dispatches what arrives until `stop` is cancelled. Subscriptions are
/// renewed by [`pubsub::Subscriptions`]; messages lost while lagging are
/// counted (their senders hear nothing and report an unknown outcome).
pub async fn listen(local: Local, stop: CancellationToken) -> Result<JoinHandle<()>> {
    let redis = local.redis.clone();
    let mut rx = redis.subscriber.message_rx();
    let mut reconnects = redis.subscriber.reconnect_rx();
    let channels: std::collections::HashMap<String, usize> = redis
        .keys
        .pod_channels(&redis.pod_id)
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
                    // Senders of lost commands hear no receipt (unknown).
                    Metrics::inc(&local.metrics.pubsub_reconnects);
                    tracing::error!("command subscriber reconnected; commands published meanwhile were lost (their senders report an unknown outcome)");
                    // So may be announcements of task route changes.
                    local.routes.clear();
                    continue;
                }
                msg = rx.recv() => msg,
            };
            match msg {
                Ok(msg) => {
                    let Some(text) = msg.value.as_str() else {
                        tracing::warn!("non-text message on pod channel");
                        continue;
                    };
                    match channels.get(&*msg.channel) {
                        Some(&bucket) => on_message(&local, bucket, &text),
                        None if *msg.channel == *routes_channel => local.routes.on_message(&text),
                        None => {}
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    local.routes.clear();
                    local
                        .metrics
                        .pubsub_messages_lost
                        .fetch_add(n, Ordering::Relaxed);
                    tracing::error!(
                        lost = n,
                        "pod fell behind its Redis subscription; messages lost"
                    );
                }
                Err(RecvError::Closed) => break,
            }
        }
    }))
}

/// Handles one message of the pod channel of `bucket`.
fn on_message(local: &Local, bucket: usize, text: &str) {
    let message = match PodMessage::decode(text) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(reason = e.0, "malformed message on pod channel");
            return;
        }
    };
    match message {
        PodMessage::Ping(_) => local.liveness.seen(Channel::Commands, bucket),
        PodMessage::Receipts(list) => local.redis.receipts.received(list),
        PodMessage::Answer { key, task, json } => {
            local.waiters.deliver(&key, task, &json);
        }
        PodMessage::Kick { daemon, conn } => {
            if local.conns.close(daemon, conn) {
                tracing::info!(daemon_id = %daemon, %conn, "closing socket replaced by a newer connection");
            }
        }
        command @ PodMessage::Command { .. } => deliver(local, bucket, command),
    }
}

/// Queues a command on its local socket, or sends it after its daemon.
fn deliver(local: &Local, bucket: usize, command: PodMessage) {
    let kind = command.command_kind().to_owned();
    let PodMessage::Command {
        daemon,
        conn,
        envelope,
        json,
        ..
    } = command
    else {
        return;
    };
    let metrics = &local.metrics;
    // A command from a pod of the previous version wants no receipt.
    let envelope = envelope.unwrap_or_else(|| Envelope {
        from: local.redis.pod_id.to_string(),
        seq: 0,
        hops: 0,
        kind: kind.clone(),
    });
    match local.conns.deliver(daemon, conn, json) {
        Ok(()) => {
            Metrics::inc(&metrics.commands_delivered);
            metrics.command(&kind, "delivered");
            reply(local, bucket, &envelope, Outcome::Delivered);
        }
        Err(DeliverError::Gone(json)) => {
            Metrics::inc(&metrics.commands_undeliverable);
            if envelope.hops >= MAX_HOPS {
                metrics.command(&kind, "undeliverable");
                tracing::warn!(daemon_id = %daemon, %conn, kind, hops = envelope.hops, "command chased its daemon's connections too often; refused as offline");
                reply(local, bucket, &envelope, Outcome::Offline);
                return;
            }
            tokio::spawn(forward(local.clone(), bucket, daemon, conn, envelope, json));
        }
        Err(DeliverError::QueueFull) => {
            Metrics::inc(&metrics.commands_queue_full);
            metrics.command(&kind, "queue_full");
            if local.conns.close_slow(daemon, conn) {
                Metrics::inc(&metrics.slow_daemons_closed);
            }
            tracing::error!(daemon_id = %daemon, %conn, kind, "daemon socket queue full: command refused as offline and the socket closed (the daemon reconnects; reconciliation repairs what it missed)");
            reply(local, bucket, &envelope, Outcome::Offline);
        }
    }
}

/// The socket `gone` of `daemon` is not here (any more): route the command
/// again to the daemon's newer connection, one more hop.
async fn forward(
    local: Local,
    bucket: usize,
    daemon: Uuid,
    gone: Uuid,
    envelope: Envelope,
    json: String,
) {
    let redis = &local.redis;
    let next = Envelope {
        hops: envelope.hops + 1,
        ..envelope.clone()
    };
    let routed = route_batch::route(
        &redis.route_batches[bucket],
        redis.keys.daemon(daemon),
        daemon,
        Some(gone),
        next.payload(&json),
    )
    .await;
    let kind = envelope.kind.as_str();
    match routed {
        Ok(n) if n > 0 => {
            Metrics::inc(&local.metrics.commands_forwarded);
            local.metrics.command(kind, "forwarded");
            tracing::info!(daemon_id = %daemon, gone_conn = %gone, kind, hops = next.hops, "command forwarded to the daemon's newer connection");
        }
        Ok(_) => {
            local.metrics.command(kind, "undeliverable");
            tracing::warn!(daemon_id = %daemon, gone_conn = %gone, kind, "command for a socket that is gone, and no newer connection: refused as offline");
            reply(&local, bucket, &envelope, Outcome::Offline);
        }
        Err(e) => {
            Metrics::inc(&local.metrics.redis_errors);
            tracing::warn!(daemon_id = %daemon, gone_conn = %gone, kind, error = %e, "command not forwarded; its sender hears an unknown outcome");
            reply(&local, bucket, &envelope, Outcome::Unknown);
        }
    }
}

fn reply(local: &Local, bucket: usize, envelope: &Envelope, outcome: Outcome) {
    if envelope.seq == 0 {
        return;
    }
    let channel = local.redis.keys.pod_channel(bucket, &envelope.from);
    local.redis.receipts.reply(&channel, envelope.seq, outcome);
}
