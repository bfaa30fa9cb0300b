//! Keys and logins: `registerToolKey`, `revokeToolKey`,
//! `authenticationRequired`, `reauthStatus`.

use serde_json::json;

use super::session::{Ctx, Step};
use crate::{
    cluster::{
        reauth::{self, ReauthRecord},
        toolkeys::{self, ToolKeyEntry},
    },
    db::tasks::TaskRef,
    metrics::Metrics,
    protocol::{
        claude::{MessageType, OutputEvent},
        client::ClientEvent,
        daemon::{AuthenticationRequired, ReauthStatus, RegisterToolKey, RevokeToolKey},
    },
};

/// Longest tool key accepted.
const MAX_KEY_LEN: usize = 512;
/// Longest login URL accepted.
const MAX_URL_LEN: usize = 4096;

fn redis_failed(ctx: &Ctx<'_>, kind: &str, e: &crate::Error) -> Step {
    Metrics::inc(&ctx.state.metrics.redis_errors);
    tracing::error!(daemon_id = %ctx.daemon_id, kind, error = %e, "message not recorded");
    Step::Reply(super::session::error(
        "REDIS_UNAVAILABLE",
        format!("{kind} was not recorded; send it again later"),
    ))
}

/// `registerToolKey`: the task's program may now call the API with this key
/// on any replica. Only its hash is stored.
pub async fn register_tool_key(ctx: &Ctx<'_>, task: TaskRef, m: RegisterToolKey) -> Step {
    let key = m.key.expose();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Step::Reply(super::session::error(
            "PARSE_ERROR",
            "key must be 1 to 512 bytes",
        ));
    }
    let entry = ToolKeyEntry {
        task_id: task.id,
        owner_id: ctx.owner_id,
        daemon_id: ctx.daemon_id,
    };
    match toolkeys::register(
        &ctx.state.redis,
        key,
        &entry,
        ctx.state.config.tool_key_ttl_ms,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(task_id = %task.id, daemon_id = %ctx.daemon_id, "tool key registered");
            Step::Nothing
        }
        Err(e) => redis_failed(ctx, "registerToolKey", &e),
    }
}

/// `revokeToolKey`: the task's key stops working everywhere.
pub async fn revoke_tool_key(ctx: &Ctx<'_>, task: TaskRef, _m: RevokeToolKey) -> Step {
    match toolkeys::revoke(&ctx.state.redis, task.id).await {
        Ok(revoked) => {
            tracing::info!(task_id = %task.id, revoked, "tool key revoked");
            Step::Nothing
        }
        Err(e) => redis_failed(ctx, "revokeToolKey", &e),
    }
}

/// `authenticationRequired`: the daemon's Claude login expired. Followers of
/// the task see an `auth_required` output event with the login link.
pub async fn authentication_required(
    ctx: &Ctx<'_>,
    task: Option<TaskRef>,
    m: AuthenticationRequired,
) -> Step {
    if m.login_url.len() > MAX_URL_LEN {
        return Step::Reply(super::session::error("PARSE_ERROR", "loginUrl is too long"));
    }
    let hostname = m.hostname.unwrap_or_else(|| ctx.hostname.to_owned());
    tracing::warn!(daemon_id = %ctx.daemon_id, task_id = ?task.as_ref().map(|t| t.id), %hostname, "daemon requires authentication");
    let Some(task) = task else {
        // No task to show it on; the daemon's reauth routes remain.
        return Step::Nothing;
    };
    let mut event = OutputEvent::new(MessageType::AuthRequired, "Authentication required", false);
    event.is_error = Some(true);
    event.tool_input = Some(json!({
        "loginUrl": m.login_url,
        "hostname": hostname,
        "taskId": task.id,
    }));
    let event = ClientEvent::TaskOutput {
        task_id: task.id,
        id: None,
        event,
    };
    ctx.publish(Some(task.id), false, &event).await;
    Step::Nothing
}

/// `reauthStatus`: stored under the daemon and request id with a TTL, so the
/// status route answers on any replica.
pub async fn reauth_status(ctx: &Ctx<'_>, m: ReauthStatus) -> Step {
    let record = ReauthRecord {
        owner_id: ctx.owner_id,
        request_id: m.request_id,
        status: m.status,
        login_url: m.login_url,
        error: m.error,
        token_saved: m.token_saved,
    };
    let ttl = ctx.state.config.reauth_ttl_ms;
    match reauth::store(&ctx.state.redis, ctx.daemon_id, &record, ttl).await {
        Ok(()) => Step::Nothing,
        Err(e) => redis_failed(ctx, "reauthStatus", &e),
    }
}
