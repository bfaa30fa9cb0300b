//! Parsing of task output lines (PROTOCOL.md §1.3).
//!
//! A daemon streams its task's output one line at a time in `taskOutput`
//! frames. Each line is usually Claude Code `stream-json`, sometimes plain
//! text. [`parse_output_line`] turns one line into an [`OutputEvent`], the
//! structured form that is stored and pushed to web clients, or into nothing
//! for lines that carry no user-visible information.

use serde::{Deserialize, Serialize};

/// Longest `tool_result` content kept, in characters; longer content is cut
/// here and gets `...` appended.
pub const TOOL_RESULT_MAX_CHARS: usize = 500;

/// The kind of a task output event, as sent in `messageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Session-level message from Claude Code (e.g. session start).
    System,
    /// Text written by the assistant.
    Assistant,
    /// The assistant invoked a tool.
    ToolUse,
    /// The result of a tool invocation (possibly truncated).
    ToolResult,
    /// Final result of the session, with cost and duration when known.
    Result,
    /// An error reported by Claude Code.
    Error,
    /// A line that is not Claude Code JSON, passed through as text.
    Raw,
    /// The daemon's Claude login expired (`authenticationRequired`); the
    /// login URL is in `toolInput`. Published, not stored.
    AuthRequired,
}

impl MessageType {
    /// The wire name of this kind (`system`, `tool_use`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::Assistant => "assistant",
            Self::ToolUse => "tool_use",
            Self::ToolResult => "tool_result",
            Self::Result => "result",
            Self::Error => "error",
            Self::Raw => "raw",
            Self::AuthRequired => "auth_required",
        }
    }

    /// Every kind.
    pub const ALL: [Self; 8] = [
        Self::System,
        Self::Assistant,
        Self::ToolUse,
        Self::ToolResult,
        Self::Result,
        Self::Error,
        Self::Raw,
        Self::AuthRequired,
    ];

    /// The kind written `name` ([`Self::as_str`] backwards).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One structured task output event, parsed from one output line.
///
/// Serialized in camelCase; `None` fields are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputEvent {
    /// What kind of output this is.
    pub message_type: MessageType,
    /// Human-readable content of the event.
    pub content: String,
    /// Name of the tool, for `tool_use` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    /// Input given to the tool, for `tool_use` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_input: Option<serde_json::Value>,
    /// Whether the event reports an error (`tool_result`, `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// Total cost of the session in US dollars, for `result` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Duration of the session in milliseconds, for `result` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Whether the daemon marked the line as partial (not yet complete).
    pub is_partial: bool,
}

impl OutputEvent {
    /// An event with the given kind and content and no optional fields.
    pub fn new(message_type: MessageType, content: impl Into<String>, is_partial: bool) -> Self {
        Self {
            message_type,
            content: content.into(),
            tool_name: None,
            tool_input: None,
            is_error: None,
            cost_usd: None,
            duration_ms: None,
            is_partial,
        }
    }
}

/// Top-level Claude Code stream-json message (only the fields we use).
#[derive(Debug, Deserialize)]
struct StreamMessage {
    #[serde(rename = "type")]
    msg_type: String,
    subtype: Option<String>,
    message: Option<StreamMessageBody>,
    tool_name: Option<String>,
    tool_input: Option<serde_json::Value>,
    tool_result: Option<StreamToolResult>,
    result: Option<String>,
    cost_usd: Option<f64>,
    duration_ms: Option<i64>,
    error: Option<String>,
}

/// The `message` of an `assistant` stream-json message.
#[derive(Debug, Deserialize)]
struct StreamMessageBody {
    content: Option<Vec<ContentBlock>>,
}

/// One content block of an assistant message.
#[derive(Debug, Deserialize)]
struct ContentBlock {
    #[serde(rename = "type")]
    block_type: String,
    text: Option<String>,
    name: Option<String>,
    input: Option<serde_json::Value>,
}

/// The `tool_result` of a `tool_result` stream-json message.
#[derive(Debug, Deserialize)]
struct StreamToolResult {
    content: Option<String>,
    is_error: Option<bool>,
}

/// Parses one `taskOutput.output` line.
///
/// Returns `None` for blank lines, for stream-json messages of unknown type
/// and for messages that carry nothing to show (e.g. an assistant message
/// without text or tool use). A line that is not JSON, or JSON that does not
/// have the stream-json shape, becomes a `raw` event with the trimmed line.
pub fn parse_output_line(line: &str, is_partial: bool) -> Option<OutputEvent> {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return None;
    }
    if trimmed.starts_with('{') {
        if let Ok(msg) = serde_json::from_str::<StreamMessage>(trimmed) {
            return event_from_message(msg, is_partial);
        }
    }
    Some(OutputEvent::new(MessageType::Raw, trimmed, is_partial))
}

/// Maps a parsed stream-json message to an event, if it has one.
fn event_from_message(msg: StreamMessage, is_partial: bool) -> Option<OutputEvent> {
    let event = match msg.msg_type.as_str() {
        "system" => system_event(msg.subtype.as_deref()),
        "assistant" => assistant_event(msg.message?)?,
        "tool_use" => tool_use_event(msg.tool_name, msg.tool_input),
        "tool_result" => tool_result_event(msg.tool_result?),
        "result" => result_event(msg.result, msg.cost_usd, msg.duration_ms),
        "error" => error_event(msg.error),
        _ => return None,
    };
    Some(OutputEvent {
        is_partial,
        ..event
    })
}

fn system_event(subtype: Option<&str>) -> OutputEvent {
    let content = match subtype {
        Some("init") => "Session started".to_string(),
        Some(sub) => format!("System: {sub}"),
        None => "System message".to_string(),
    };
    OutputEvent::new(MessageType::System, content, false)
}

/// Text blocks win (joined by newlines); otherwise the first tool use.
fn assistant_event(body: StreamMessageBody) -> Option<OutputEvent> {
    let blocks = body.content?;
    let texts: Vec<&str> = blocks
        .iter()
        .filter(|b| b.block_type == "text")
        .filter_map(|b| b.text.as_deref())
        .collect();
    if !texts.is_empty() {
        return Some(OutputEvent::new(
            MessageType::Assistant,
            texts.join("\n"),
            false,
        ));
    }
    let tool = blocks.into_iter().find(|b| b.block_type == "tool_use")?;
    Some(tool_use_event(tool.name, tool.input))
}

fn tool_use_event(name: Option<String>, input: Option<serde_json::Value>) -> OutputEvent {
    let content = format!("Using tool: {}", name.as_deref().unwrap_or("unknown"));
    OutputEvent {
        tool_name: name,
        tool_input: input,
        ..OutputEvent::new(MessageType::ToolUse, content, false)
    }
}

fn tool_result_event(result: StreamToolResult) -> OutputEvent {
    let content = truncate_chars(result.content.unwrap_or_default(), TOOL_RESULT_MAX_CHARS);
    OutputEvent {
        is_error: result.is_error,
        ..OutputEvent::new(MessageType::ToolResult, content, false)
    }
}

fn result_event(
    result: Option<String>,
    cost_usd: Option<f64>,
    duration_ms: Option<i64>,
) -> OutputEvent {
    let content = result.unwrap_or_else(|| "Task completed".to_string());
    OutputEvent {
        cost_usd,
        duration_ms,
        ..OutputEvent::new(MessageType::Result, content, false)
    }
}

fn error_event(error: Option<String>) -> OutputEvent {
    let content = error.unwrap_or_else(|| "An error occurred".to_string());
    OutputEvent {
        is_error: Some(true),
        ..OutputEvent::new(MessageType::Error, content, false)
    }
}

/// Cuts `s` after `max` characters (never inside a character) and appends
/// `...` when anything was cut.
fn truncate_chars(mut s: String, max: usize) -> String {
    if let Some((byte_idx, _)) = s.char_indices().nth(max) {
        s.truncate(byte_idx);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(value: serde_json::Value) -> Option<OutputEvent> {
        parse_output_line(&value.to_string(), false)
    }

    #[test]
    fn system_init_is_session_started() {
        let ev = parse(json!({"type": "system", "subtype": "init", "session_id": "x"})).unwrap();
        assert_eq!(
            ev,
            OutputEvent::new(MessageType::System, "Session started", false)
        );
    }

    #[test]
    fn system_other_subtype_and_none() {
        let ev = parse(json!({"type": "system", "subtype": "compact"})).unwrap();
        assert_eq!(ev.content, "System: compact");
        let ev = parse(json!({"type": "system"})).unwrap();
        assert_eq!(ev.content, "System message");
    }

    #[test]
    fn assistant_text_blocks_are_joined() {
        let line = json!({"type": "assistant", "message": {"content": [
            {"type": "text", "text": "Hello"},
            {"type": "tool_use", "name": "Bash", "input": {}},
            {"type": "text", "text": "world"}
        ]}});
        let ev = parse(line).unwrap();
        assert_eq!(ev.message_type, MessageType::Assistant);
        assert_eq!(ev.content, "Hello\nworld");
        assert_eq!(ev.tool_name, None);
    }

    #[test]
    fn assistant_tool_use_block() {
        let line = json!({"type": "assistant", "message": {"content": [
            {"type": "tool_use", "id": "t1", "name": "Read", "input": {"path": "a.rs"}}
        ]}});
        let ev = parse(line).unwrap();
        assert_eq!(ev.message_type, MessageType::ToolUse);
        assert_eq!(ev.content, "Using tool: Read");
        assert_eq!(ev.tool_name.as_deref(), Some("Read"));
        assert_eq!(ev.tool_input, Some(json!({"path": "a.rs"})));
    }

    #[test]
    fn assistant_without_text_or_tool_is_nothing() {
        assert_eq!(
            parse(json!({"type": "assistant", "message": {"content": []}})),
            None
        );
        assert_eq!(parse(json!({"type": "assistant", "message": {}})), None);
        assert_eq!(parse(json!({"type": "assistant"})), None);
    }

    #[test]
    fn top_level_tool_use() {
        let line = json!({"type": "tool_use", "tool_name": "Bash", "tool_input": {"cmd": "ls"}});
        let ev = parse(line).unwrap();
        assert_eq!(ev.message_type, MessageType::ToolUse);
        assert_eq!(ev.content, "Using tool: Bash");
        assert_eq!(ev.tool_input, Some(json!({"cmd": "ls"})));
        let ev = parse(json!({"type": "tool_use"})).unwrap();
        assert_eq!(ev.content, "Using tool: unknown");
    }

    #[test]
    fn tool_result_short() {
        let line =
            json!({"type": "tool_result", "tool_result": {"content": "ok", "is_error": true}});
        let ev = parse(line).unwrap();
        assert_eq!(ev.message_type, MessageType::ToolResult);
        assert_eq!(ev.content, "ok");
        assert_eq!(ev.is_error, Some(true));
        assert_eq!(parse(json!({"type": "tool_result"})), None);
    }

    #[test]
    fn tool_result_multibyte_is_truncated_to_500_chars() {
        let long: String = "é😀".repeat(1000);
        assert_eq!(long.chars().count(), 2000);
        let line = json!({"type": "tool_result", "tool_result": {"content": long}});
        let ev = parse(line).unwrap();
        assert!(ev.content.ends_with("..."));
        assert_eq!(ev.content.chars().count(), 503);
        let kept = ev.content.strip_suffix("...").unwrap();
        assert_eq!(kept, "é😀".repeat(250));
    }

    #[test]
    fn tool_result_of_exactly_500_chars_is_kept() {
        let exact: String = "😀".repeat(500);
        let line = json!({"type": "tool_result", "tool_result": {"content": exact.clone()}});
        assert_eq!(parse(line).unwrap().content, exact);
        let over: String = "a".repeat(501);
        let line = json!({"type": "tool_result", "tool_result": {"content": over}});
        assert_eq!(
            parse(line).unwrap().content,
            format!("{}...", "a".repeat(500))
        );
    }

    #[test]
    fn result_carries_cost_and_duration() {
        let line =
            json!({"type": "result", "result": "Done", "cost_usd": 0.25, "duration_ms": 1234});
        let ev = parse(line).unwrap();
        assert_eq!(ev.message_type, MessageType::Result);
        assert_eq!(ev.content, "Done");
        assert_eq!(ev.cost_usd, Some(0.25));
        assert_eq!(ev.duration_ms, Some(1234));
        assert_eq!(
            parse(json!({"type": "result"})).unwrap().content,
            "Task completed"
        );
    }

    #[test]
    fn error_is_marked_as_error() {
        let ev = parse(json!({"type": "error", "error": "boom"})).unwrap();
        assert_eq!(ev.message_type, MessageType::Error);
        assert_eq!(ev.content, "boom");
        assert_eq!(ev.is_error, Some(true));
        assert_eq!(
            parse(json!({"type": "error"})).unwrap().content,
            "An error occurred"
        );
    }

    #[test]
    fn blank_lines_are_nothing() {
        assert_eq!(parse_output_line("", false), None);
        assert_eq!(parse_output_line("  \t \r\n", true), None);
    }

    #[test]
    fn unknown_json_type_is_nothing() {
        assert_eq!(
            parse(json!({"type": "user", "message": {"content": []}})),
            None
        );
    }

    #[test]
    fn non_json_is_raw_and_trimmed() {
        let ev = parse_output_line("  cargo build finished \n", true).unwrap();
        assert_eq!(
            ev,
            OutputEvent::new(MessageType::Raw, "cargo build finished", true)
        );
    }

    #[test]
    fn unparseable_json_is_raw() {
        let ev = parse_output_line("{not json", false).unwrap();
        assert_eq!(ev.message_type, MessageType::Raw);
        assert_eq!(ev.content, "{not json");
        let ev = parse_output_line(r#"{"type": 5}"#, false).unwrap();
        assert_eq!(ev.message_type, MessageType::Raw);
        let ev = parse_output_line(r#"{"no_type": true}"#, false).unwrap();
        assert_eq!(ev.message_type, MessageType::Raw);
    }

    #[test]
    fn is_partial_is_passed_through() {
        let ev = parse_output_line(r#"{"type":"system","subtype":"init"}"#, true).unwrap();
        assert!(ev.is_partial);
    }

    #[test]
    fn serializes_camel_case_without_none_fields() {
        let ev = parse(json!({"type": "result", "cost_usd": 1.5, "duration_ms": 10})).unwrap();
        let value = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            value,
            json!({"messageType": "result", "content": "Task completed",
                   "costUsd": 1.5, "durationMs": 10, "isPartial": false})
        );
        let back: OutputEvent = serde_json::from_value(value).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn message_type_names_match_serde() {
        for t in MessageType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), json!(t.as_str()));
            assert_eq!(MessageType::from_name(t.as_str()), Some(t));
        }
        assert_eq!(MessageType::from_name("nonsense"), None);
        assert_eq!(MessageType::ToolResult.as_str(), "tool_result");
    }
}
