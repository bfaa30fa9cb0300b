//! The messages pods send each other on their command channels, in one
//! type. Two Lua scripts write some of them inside Redis
//! (`redis/route.lua`: [`PodMessage::Command`], `redis/register.lua`:
//! [`PodMessage::Kick`]), so the format stays a line of `|`-separated
//! fields that a script can build by concatenation; this module is the only
//! Rust code that writes or reads it.
//!
//! | tag | fields | meaning |
//! |---|---|---|
//! | `D` | daemon, conn, from pod, seq, hops, kind, json | a command for the socket `conn` of `daemon`; receipt `seq` (0: none wanted) goes to `from` |
//! | `C` | daemon, conn, kind, json | the same from a pod of the previous version (no receipt) |
//! | `K` | daemon, conn | close that socket: a newer connection replaced it |
//! | `A` | seq:outcome,… | delivery receipts for commands this pod sent |
//! | `R` | kind\[:question], task, json | a daemon's answer some callers on this pod wait for |
//! | `P` | ms | a self-ping ([`super::liveness`]) |
//!
//! Pod ids never contain `|` (checked at start-up), command JSON may: it is
//! always the last field.

use uuid::Uuid;

/// What became of a command at the pod holding its daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Queued on the socket of the daemon's current connection.
    Delivered,
    /// No pod holds the daemon, or its socket went away (or could not keep
    /// up) before the command reached it.
    Offline,
    /// The holding pod could not tell (Redis failed while forwarding).
    Unknown,
}

impl Outcome {
    fn code(self) -> char {
        match self {
            Outcome::Delivered => 'd',
            Outcome::Offline => 'o',
            Outcome::Unknown => 'u',
        }
    }

    fn from_code(c: &str) -> Option<Self> {
        match c {
            "d" => Some(Outcome::Delivered),
            "o" => Some(Outcome::Offline),
            "u" => Some(Outcome::Unknown),
            _ => None,
        }
    }
}

/// Who wants to hear what became of a command, and how far it travelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sending pod (receipts go to its channel).
    pub from: String,
    /// The sender's receipt number; 0 when it wants none.
    pub seq: u64,
    /// Times the command was forwarded after its socket was replaced.
    pub hops: u32,
    /// The command's type (counted by the receiver without parsing JSON).
    pub kind: String,
}

impl Envelope {
    /// The part of a `D` message that follows daemon and connection, as
    /// `route.lua` appends it: `from|seq|hops|kind|json`.
    pub fn payload(&self, json: &str) -> String {
        format!(
            "{}|{}|{}|{}|{json}",
            self.from, self.seq, self.hops, self.kind
        )
    }
}

/// One message of a pod channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodMessage {
    Command {
        daemon: Uuid,
        conn: Uuid,
        /// `None` from a pod of the previous version.
        envelope: Option<Envelope>,
        /// `kind` of a previous-version message (else in the envelope).
        legacy_kind: Option<String>,
        json: String,
    },
    Kick {
        daemon: Uuid,
        conn: Uuid,
    },
    Receipts(Vec<(u64, Outcome)>),
    Answer {
        /// `kind` or `kind:question` (see [`super::pending`]).
        key: String,
        task: Uuid,
        json: String,
    },
    Ping(i64),
}

/// Why a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl PodMessage {
    /// The text on the channel.
    pub fn encode(&self) -> String {
        match self {
            PodMessage::Command {
                daemon,
                conn,
                envelope: Some(e),
                json,
                ..
            } => format!("D|{daemon}|{conn}|{}", e.payload(json)),
            PodMessage::Command {
                daemon,
                conn,
                envelope: None,
                legacy_kind,
                json,
            } => format!(
                "C|{daemon}|{conn}|{}|{json}",
                legacy_kind.as_deref().unwrap_or("unknown")
            ),
            PodMessage::Kick { daemon, conn } => format!("K|{daemon}|{conn}"),
            PodMessage::Receipts(list) => {
                let mut out = String::with_capacity(2 + list.len() * 12);
                out.push_str("A|");
                for (i, (seq, outcome)) in list.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&seq.to_string());
                    out.push(':');
                    out.push(outcome.code());
                }
                out
            }
            PodMessage::Answer { key, task, json } => format!("R|{key}|{task}|{json}"),
            PodMessage::Ping(ms) => format!("P|{ms}"),
        }
    }

    /// Reads one message of a pod channel.
    pub fn decode(text: &str) -> Result<Self, Malformed> {
        let (tag, rest) = text.split_once('|').ok_or(Malformed("no tag"))?;
        match tag {
            "D" => {
                let mut p = rest.splitn(7, '|');
                let daemon = uuid(p.next())?;
                let conn = uuid(p.next())?;
                let from = p.next().ok_or(Malformed("no sender"))?.to_owned();
                let seq = p
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Malformed("bad receipt number"))?;
                let hops = p
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or(Malformed("bad hop count"))?;
                let kind = p.next().ok_or(Malformed("no kind"))?.to_owned();
                let json = p.next().ok_or(Malformed("no command"))?.to_owned();
                Ok(PodMessage::Command {
                    daemon,
                    conn,
                    envelope: Some(Envelope {
                        from,
                        seq,
                        hops,
                        kind,
                    }),
                    legacy_kind: None,
                    json,
                })
            }
            "C" => {
                let mut p = rest.splitn(4, '|');
                let daemon = uuid(p.next())?;
                let conn = uuid(p.next())?;
                let kind = p.next().ok_or(Malformed("no kind"))?.to_owned();
                let json = p.next().ok_or(Malformed("no command"))?.to_owned();
                Ok(PodMessage::Command {
                    daemon,
                    conn,
                    envelope: None,
                    legacy_kind: Some(kind),
                    json,
                })
            }
            "K" => {
                let mut p = rest.splitn(2, '|');
                Ok(PodMessage::Kick {
                    daemon: uuid(p.next())?,
                    conn: uuid(p.next())?,
                })
            }
            "A" => rest
                .split(',')
                .map(|item| {
                    let (seq, outcome) = item.split_once(':').ok_or(Malformed("bad receipt"))?;
                    let seq = seq.parse().map_err(|_| Malformed("bad receipt number"))?;
                    let outcome = Outcome::from_code(outcome).ok_or(Malformed("bad outcome"))?;
                    Ok((seq, outcome))
                })
                .collect::<Result<_, _>>()
                .map(PodMessage::Receipts),
            "R" => {
                let mut p = rest.splitn(3, '|');
                let key = p.next().ok_or(Malformed("no answer kind"))?.to_owned();
                let task = uuid(p.next())?;
                let json = p.next().ok_or(Malformed("no answer"))?.to_owned();
                Ok(PodMessage::Answer { key, task, json })
            }
            "P" => rest
                .parse()
                .map(PodMessage::Ping)
                .map_err(|_| Malformed("bad ping")),
            _ => Err(Malformed("unknown tag")),
        }
    }

    /// The command's type, for counting.
    pub fn command_kind(&self) -> &str {
        match self {
            PodMessage::Command {
                envelope: Some(e), ..
            } => &e.kind,
            PodMessage::Command {
                legacy_kind: Some(k),
                ..
            } => k,
            _ => "unknown",
        }
    }
}

fn uuid(field: Option<&str>) -> Result<Uuid, Malformed> {
    field
        .and_then(|f| f.parse().ok())
        .ok_or(Malformed("bad uuid"))
}

/// Whether `pod_id` can travel in these messages (and in channel names).
pub fn valid_pod_id(pod_id: &str) -> bool {
    !pod_id.is_empty()
        && pod_id.len() <= 200
        && pod_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'|' && b != b':' && b != b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4())
    }

    #[test]
    fn every_message_decodes_to_what_was_encoded() {
        let (daemon, conn) = ids();
        let messages = [
            PodMessage::Command {
                daemon,
                conn,
                envelope: Some(Envelope {
                    from: "pod-a".into(),
                    seq: 42,
                    hops: 1,
                    kind: "sendMessage".into(),
                }),
                legacy_kind: None,
                json: r#"{"type":"sendMessage","message":"a|b"}"#.into(),
            },
            PodMessage::Command {
                daemon,
                conn,
                envelope: None,
                legacy_kind: Some("getTaskDiff".into()),
                json: r#"{"x":"|"}"#.into(),
            },
            PodMessage::Kick { daemon, conn },
            PodMessage::Receipts(vec![
                (1, Outcome::Delivered),
                (2, Outcome::Offline),
                (u64::MAX, Outcome::Unknown),
            ]),
            PodMessage::Answer {
                key: "commit:0123abcd".into(),
                task: daemon,
                json: r#"{"a":"|"}"#.into(),
            },
            PodMessage::Ping(1_700_000_000_000),
        ];
        for m in messages {
            assert_eq!(PodMessage::decode(&m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn what_route_lua_and_register_lua_write_decodes() {
        // The scripts concatenate: 'D|' .. daemon .. '|' .. conn .. '|' .. payload
        // and 'K|' .. daemon .. '|' .. conn.
        let (daemon, conn) = ids();
        let envelope = Envelope {
            from: "pod-b".into(),
            seq: 7,
            hops: 0,
            kind: "spawnTask".into(),
        };
        let lua = format!("D|{daemon}|{conn}|{}", envelope.payload("{}"));
        match PodMessage::decode(&lua) {
            Ok(PodMessage::Command {
                envelope: Some(e),
                json,
                ..
            }) => {
                assert_eq!(e, envelope);
                assert_eq!(json, "{}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            PodMessage::decode(&format!("K|{daemon}|{conn}")),
            Ok(PodMessage::Kick { daemon, conn })
        );
    }

    #[test]
    fn malformed_messages_are_refused_not_guessed() {
        let (daemon, conn) = ids();
        for bad in [
            "",
            "X|1",
            "D|not-a-uuid|x|p|1|0|k|{}",
            &format!("D|{daemon}|{conn}|pod|seven|0|k|{{}}"),
            &format!("D|{daemon}|{conn}|pod|7|0|k"),
            "A|1:z",
            "A|x:d",
            "P|soon",
            &format!("K|{daemon}"),
        ] {
            assert!(PodMessage::decode(bad).is_err(), "{bad:?} decoded");
        }
    }

    #[test]
    fn pod_ids_with_separators_are_refused() {
        assert!(valid_pod_id("meshgate-7f9c-abc"));
        for bad in ["", "a|b", "a:b", "a,b", "a b"] {
            assert!(!valid_pod_id(bad), "{bad:?}");
        }
    }
}
