//! Server-Sent Events: the client's frames as events named after their
//! `type`, each with an `id:` that says where the client stands in each of
//! its task topics ([`Positions`]). A browser's `EventSource` sends the last
//! one back as `Last-Event-ID` when it reconnects, on any replica, and the
//! stream resumes each task topic after it (PROTOCOL.md §2.1).

use std::{collections::BTreeMap, time::Duration};

use futures_util::StreamExt;
use poem::web::sse::Event;
use uuid::Uuid;

use super::{error_event, to_json, Client};
use crate::{protocol::client::ClientEvent, state::AppState};

/// Version prefix of the event id, so that its form can change.
const ID_VERSION: &str = "m1";
/// Task topics an id may name (more than any client follows: the topic
/// limit is far lower), so a forged header cannot cost much to parse.
const ID_MAX_TOPICS: usize = 1_000;

/// Where a client stands in each of its task topics: the id of the last
/// output line it was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Positions(BTreeMap<Uuid, i64>);

impl FromIterator<(Uuid, i64)> for Positions {
    fn from_iter<I: IntoIterator<Item = (Uuid, i64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Positions {
    /// `m1;<task>:<id>;…`, tasks in order (the id is opaque to clients).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(ID_VERSION.len() + self.0.len() * 44);
        out.push_str(ID_VERSION);
        for (task, id) in &self.0 {
            let _ = write!(out, ";{}:{id}", task.simple());
        }
        out
    }

    /// Reads an id made by [`encode`](Self::encode); `None` for anything
    /// else (a foreign or damaged id starts the stream live, as without one).
    pub fn decode(id: &str) -> Option<Self> {
        let mut parts = id.trim().split(';');
        if parts.next()? != ID_VERSION {
            return None;
        }
        let mut map = BTreeMap::new();
        for part in parts {
            if map.len() == ID_MAX_TOPICS {
                return None;
            }
            let (task, pos) = part.split_once(':')?;
            let task = Uuid::try_parse(task).ok()?;
            let pos: i64 = pos.parse().ok().filter(|p| *p >= 0)?;
            map.insert(task, pos);
        }
        Some(Self(map))
    }

    /// The position in `task`, if the id names it.
    pub fn get(&self, task: Uuid) -> Option<i64> {
        self.0.get(&task).copied()
    }
}

/// An SSE event named after the event's `type`.
pub fn sse_event(json: &str) -> Event {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow, rename = "type")]
        kind: std::borrow::Cow<'a, str>,
    }
    let kind = serde_json::from_str::<Kind>(json)
        .map(|k| k.kind.into_owned())
        .unwrap_or_else(|_| "message".into());
    Event::message(json).event_type(kind)
}

fn with_id(event: Event, id: Option<String>) -> Event {
    match id {
        Some(id) => event.id(id),
        None => event,
    }
}

/// The SSE stream of an already-subscribed client: its confirmations, then
/// its frames until it falls behind or the pod drains.
pub fn sse_stream(
    client: Client,
    confirmations: Vec<String>,
    state: AppState,
) -> impl futures_util::Stream<Item = Event> + Send + 'static {
    let overflow = client.overflow();
    let id = client.sse_ids.then(|| client.positions().encode());
    let first: Vec<Event> = confirmations
        .into_iter()
        .map(|topic| {
            let json = to_json(&ClientEvent::Subscribed { topic });
            with_id(sse_event(&json), id.clone())
        })
        .collect();
    let drain = state.lifecycle.drain.clone();
    let events = futures_util::stream::unfold(
        (client, overflow, drain, false),
        |(mut client, overflow, drain, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                _ = overflow.cancelled() => {
                    let e = error_event("TOO_SLOW", "events were dropped; reconnect and re-read".into());
                    let id = client.sse_ids.then(|| client.positions().encode());
                    let event = with_id(sse_event(&to_json(&e)), id);
                    Some((event, (client, overflow, drain, true)))
                }
                _ = drain.cancelled() => None,
                out = client.next() => {
                    let event = with_id(sse_event(&out.json), out.sse_id);
                    Some((event, (client, overflow, drain, false)))
                }
            }
        },
    );
    futures_util::stream::iter(first).chain(events)
}

/// SSE keep-alive interval.
pub fn keep_alive(state: &AppState) -> Duration {
    Duration::from_millis(state.config.sse_keepalive_ms.max(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "6f1c1a52-9a40-4b89-8c53-0d1f7e0c2a11";
    const B: &str = "0a1c1a52-9a40-4b89-8c53-0d1f7e0c2a11";

    #[test]
    fn positions_round_trip_in_task_order() {
        let p: Positions = [(A.parse().unwrap(), 42), (B.parse().unwrap(), 0)]
            .into_iter()
            .collect();
        let id = p.encode();
        assert_eq!(
            id,
            "m1;0a1c1a529a404b898c530d1f7e0c2a11:0;6f1c1a529a404b898c530d1f7e0c2a11:42"
        );
        assert_eq!(Positions::decode(&id), Some(p.clone()));
        assert_eq!(p.get(A.parse().unwrap()), Some(42));
        assert_eq!(Positions::decode("m1"), Some(Positions::default()));
    }

    #[test]
    fn foreign_or_damaged_ids_are_refused() {
        for bad in [
            "",
            "42",
            "m2;6f1c1a529a404b898c530d1f7e0c2a11:1",
            "m1;6f1c1a529a404b898c530d1f7e0c2a11",
            "m1;nope:1",
            "m1;6f1c1a529a404b898c530d1f7e0c2a11:-1",
            "m1;6f1c1a529a404b898c530d1f7e0c2a11:x",
        ] {
            assert_eq!(Positions::decode(bad), None, "{bad:?}");
        }
        let many: String = std::iter::once("m1".to_owned())
            .chain(
                (0..=ID_MAX_TOPICS).map(|i| format!(";{}:1", Uuid::from_u128(i as u128).simple())),
            )
            .collect();
        assert_eq!(Positions::decode(&many), None);
    }
}
