//! Realistic Claude Code `stream-json` output lines for a simulated task.
//!
//! A task of `n` lines starts with a `system` init line, ends with a `result`
//! line, and in between cycles through the shapes a real run produces:
//! assistant text, an assistant `tool_use` block, a `tool_result` (some of
//! them longer than the 500 characters the server keeps), and a top-level
//! `tool_use`. These are the shapes `parse_claude_output` of the seed reads
//! (see [`crate::protocol::claude::parse_output_line`]).
//!
//! With a stamp, assistant text and tool results start with
//! `[sent <ns>] ` (nanoseconds since the Unix epoch), which survives parsing
//! into the event's `content`, so a web client can measure how long a line
//! took from the daemon to it ([`parse_stamp`]).

use serde_json::json;
use uuid::Uuid;

const SENTENCES: [&str; 6] = [
    "I'll start by reading the module that handles the request parsing.",
    "The failing test expects a 404 for an unknown id; the handler returns 500 because the lookup error is not mapped.",
    "Let me run the test suite to see which cases still fail after the change.",
    "I've updated the error mapping and added a regression test for the missing row case.",
    "The integration tests pass now; next I'll check clippy and formatting.",
    "Summarising the change: the lookup returns Option and the route maps None to NOT_FOUND.",
];

const FILES: [&str; 5] = [
    "src/lib.rs",
    "src/http/tasks.rs",
    "src/db/tasks.rs",
    "tests/api.rs",
    "Cargo.toml",
];

const TOOLS: [&str; 4] = ["Read", "Edit", "Grep", "Bash"];

/// Filler for tool results: a plausible excerpt of source code.
const SOURCE: &str = "pub async fn get_task(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<Task>> {\n    let row = sqlx::query_as::<_, Task>(\"SELECT * FROM tasks WHERE owner_id = $1 AND id = $2\")\n        .bind(owner)\n        .bind(id)\n        .fetch_optional(pool)\n        .await?;\n    Ok(row)\n}\n";

/// A small per-task number so that tasks do not all print the same lines.
fn salt(task_id: Uuid) -> usize {
    task_id.as_bytes()[15] as usize
}

fn stamped(stamp_ns: Option<u64>, text: &str) -> String {
    match stamp_ns {
        Some(ns) => format!("[sent {ns}] {text}"),
        None => text.to_owned(),
    }
}

/// Line `i` (0-based) of a task that prints `total` lines.
pub fn line(task_id: Uuid, i: u32, total: u32, stamp_ns: Option<u64>) -> String {
    let s = salt(task_id) + i as usize;
    if i + 1 >= total {
        let turns = total.saturating_sub(2) / 4 + 1;
        return json!({
            "type": "result",
            "subtype": "success",
            "is_error": false,
            "result": format!("Done: {} ({turns} turns)", SENTENCES[5]),
            "cost_usd": 0.0042 * f64::from(turns),
            "duration_ms": 1_500 * u64::from(turns),
            "num_turns": turns,
            "session_id": task_id,
        })
        .to_string();
    }
    if i == 0 {
        return json!({
            "type": "system",
            "subtype": "init",
            "session_id": task_id,
            "model": "claude-sonnet-4-5",
            "cwd": format!("/home/sim/worktrees/{}", task_id.simple()),
            "tools": ["Bash", "Read", "Edit", "Write", "Grep", "Glob"],
            "permissionMode": "acceptEdits",
        })
        .to_string();
    }
    let file = FILES[s % FILES.len()];
    match (i - 1) % 4 {
        0 => json!({
            "type": "assistant",
            "message": {
                "role": "assistant",
                "content": [{"type": "text", "text": stamped(stamp_ns, SENTENCES[s % SENTENCES.len()])}],
            },
        })
        .to_string(),
        1 => json!({
            "type": "assistant",
            "message": {
                "role": "assistant",
                "content": [{
                    "type": "tool_use",
                    "id": format!("toolu_{:016x}", (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                    "name": TOOLS[s % TOOLS.len()],
                    "input": {"file_path": file},
                }],
            },
        })
        .to_string(),
        2 => {
            // Every third result is long, so the server's 500-character cut runs.
            let repeat = if s % 3 == 0 { 4 } else { 1 };
            let body = SOURCE.repeat(repeat);
            json!({
                "type": "tool_result",
                "tool_result": {"content": stamped(stamp_ns, &body), "is_error": false},
            })
            .to_string()
        }
        _ => json!({
            "type": "tool_use",
            "tool_name": "Bash",
            "tool_input": {"command": format!("cargo test --test api -- {}", file.replace('/', "_"))},
        })
        .to_string(),
    }
}

/// Line `i` (0-based) of `total` of run `run`, as plain text: the server
/// stores it as a `raw` output whose content is exactly this line, so a
/// check can tell which run printed it and where it belongs
/// ([`parse_numbered`]).
pub fn numbered(run: u64, i: u32, total: u32) -> String {
    let s = SENTENCES[(run as usize + i as usize) % SENTENCES.len()];
    format!("[run {run} line {i}/{total}] {s}")
}

/// (run, line, total) of a [`numbered`] line's content.
pub fn parse_numbered(content: &str) -> Option<(u64, u32, u32)> {
    let rest = content.strip_prefix("[run ")?;
    let (run, rest) = rest.split_once(" line ")?;
    let (line, rest) = rest.split_once('/')?;
    let (total, _) = rest.split_once(']')?;
    Some((run.parse().ok()?, line.parse().ok()?, total.parse().ok()?))
}

/// The send time a stamped `content` starts with, in ns since the epoch.
pub fn parse_stamp(content: &str) -> Option<u64> {
    let rest = content.strip_prefix("[sent ")?;
    let end = rest.find(']')?;
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::claude::{parse_output_line, MessageType};

    fn kinds(total: u32) -> Vec<MessageType> {
        let task = Uuid::new_v4();
        (0..total)
            .map(|i| {
                parse_output_line(&line(task, i, total, None), false)
                    .expect("every generated line yields an event")
                    .message_type
            })
            .collect()
    }

    #[test]
    fn a_task_starts_with_system_init_and_ends_with_result() {
        let k = kinds(12);
        assert_eq!(k[0], MessageType::System);
        assert_eq!(*k.last().unwrap(), MessageType::Result);
        for shape in [
            MessageType::Assistant,
            MessageType::ToolUse,
            MessageType::ToolResult,
        ] {
            assert!(k.contains(&shape), "{shape:?} missing from {k:?}");
        }
        assert!(!k.contains(&MessageType::Raw), "{k:?}");
    }

    #[test]
    fn a_one_line_task_prints_only_its_result() {
        assert_eq!(kinds(1), vec![MessageType::Result]);
    }

    #[test]
    fn a_numbered_line_is_stored_as_it_was_sent_and_parses_back() {
        let line = numbered(42, 7, 20);
        let event = parse_output_line(&line, false).unwrap();
        assert_eq!(event.message_type, MessageType::Raw);
        assert_eq!(event.content, line);
        assert_eq!(parse_numbered(&event.content), Some((42, 7, 20)));
        assert_eq!(parse_numbered("[run 1 line x/2] y"), None);
        assert_eq!(parse_numbered("Session started"), None);
    }

    #[test]
    fn a_stamp_survives_parsing_into_the_event_content() {
        let task = Uuid::new_v4();
        let ns = 1_795_676_163_621_994_500;
        for i in [1, 3] {
            let event = parse_output_line(&line(task, i, 10, Some(ns)), false).unwrap();
            assert_eq!(parse_stamp(&event.content), Some(ns), "line {i}");
        }
        assert_eq!(parse_stamp("no stamp here"), None);
        assert_eq!(parse_stamp("[sent x] y"), None);
    }
}
