//! File messages: `repoFileContent`, the answer to `readRepoFile`.
//!
//! The daemon read a repository file for a file record (its `requestId` is
//! the file's id). Its markdown becomes the file's `body`, a JSON array of
//! [`BodyElement`]s that web clients render, and the owner's clients get a
//! `fileUpdated` event. A failed read marks the file `failed`.

use pulldown_cmark::{CodeBlockKind, Event, Parser, Tag, TagEnd};
use serde::Serialize;

use super::session::{self, Ctx, Step};
use crate::{db, protocol::client::ClientEvent, protocol::daemon::RepoFileContent};

/// Fields a successful sync changes.
const SYNCED_FIELDS: &[&str] = &["body", "repo_sync_status", "repo_synced_at"];
/// Fields a failed sync changes.
const FAILED_FIELDS: &[&str] = &["repo_sync_status"];

/// `repoFileContent`: stores the content as the file's body (or marks the
/// sync failed) if the file is the daemon owner's; `FILE_NOT_FOUND` if not.
pub async fn repo_file_content(ctx: &Ctx<'_>, m: RepoFileContent) -> Step {
    let file_id = m.request_id;
    let (stored, fields) = if let (true, Some(content)) = (m.success, m.content) {
        let Some(body) = body_of(content).await else {
            return Step::Nothing; // logged in `body_of`
        };
        let stored = db::files::store_synced_body(&ctx.state.db, ctx.owner_id, file_id, &body);
        (stored.await, SYNCED_FIELDS)
    } else {
        // A read that succeeded without content is as useless as a failed one.
        tracing::warn!(%file_id, file_path = %m.file_path, success = m.success, error = ?m.error, "daemon could not read the repository file");
        let stored = db::files::mark_sync_failed(&ctx.state.db, ctx.owner_id, file_id);
        (stored.await, FAILED_FIELDS)
    };
    match stored {
        Ok(Some(version)) => {
            tracing::info!(%file_id, file_path = %m.file_path, version, ?fields, "file sync recorded");
            let event = ClientEvent::FileUpdated {
                file_id,
                version,
                updated_fields: fields.iter().map(|f| (*f).to_owned()).collect(),
                updated_by: "daemon".into(),
            };
            ctx.publish(None, true, &event).await;
            Step::Nothing
        }
        Ok(None) => Step::Reply(session::error(
            "FILE_NOT_FOUND",
            format!("file {file_id} not found"),
        )),
        Err(e) => ctx.db_failed("repoFileContent", &e),
    }
}

/// The body as JSON, converted off the async threads (a file may be
/// megabytes of markdown).
async fn body_of(content: String) -> Option<serde_json::Value> {
    let converted =
        tokio::task::spawn_blocking(move || serde_json::to_value(markdown_to_elements(&content)))
            .await;
    match converted {
        Ok(Ok(body)) => Some(body),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "file body could not be serialised");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, "markdown conversion did not finish");
            None
        }
    }
}

/// One element of a file's body.
///
/// Inline markup (emphasis, links, inline code, images) is flattened to its
/// text. A nested list is written into the text of the item that holds it,
/// one line per nested item, indented two spaces per level and marked `- `
/// or `N. `, so `items` stays a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum BodyElement {
    /// `#` to `######`: level 1 to 6.
    Heading { level: u8, text: String },
    /// A paragraph, a quoted paragraph or an HTML block, as text.
    Paragraph { text: String },
    /// A list; each item is the item's text (see above for nesting).
    List {
        ordered: bool,
        /// Number of the first item of an ordered list, when not 1.
        #[serde(skip_serializing_if = "Option::is_none")]
        start: Option<u64>,
        items: Vec<String>,
    },
    /// A fenced or indented code block, verbatim.
    Code {
        /// First word of the fence's info string (`rust`), if any.
        language: Option<String>,
        text: String,
    },
}

/// Deepest nesting that still adds indentation; deeper items are indented
/// as at this depth, so pathological input cannot blow up the output.
const MAX_INDENT_DEPTH: usize = 16;

/// Converts markdown (CommonMark) into body elements. Never fails: anything
/// that is not a heading, list or code block is paragraph text.
pub fn markdown_to_elements(markdown: &str) -> Vec<BodyElement> {
    let mut b = Builder::default();
    for event in Parser::new(markdown) {
        b.event(event);
    }
    b.out
}

/// An open list.
#[derive(Debug)]
struct ListFrame {
    ordered: bool,
    start: u64,
    /// Number of items opened so far.
    opened: u64,
    /// Whether the open item has written its marker line yet.
    marked: bool,
}

#[derive(Debug, Default)]
struct Builder {
    out: Vec<BodyElement>,
    /// Inline text of the block being read.
    text: String,
    /// Open lists, outermost first.
    lists: Vec<ListFrame>,
    /// Finished items of the outermost list, and the open one.
    items: Vec<String>,
    item: String,
    /// Language of the code block being read.
    code: Option<Option<String>>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t)
            | Event::Code(t)
            | Event::InlineMath(t)
            | Event::DisplayMath(t)
            | Event::Html(t)
            | Event::InlineHtml(t) => self.text.push_str(&t),
            Event::SoftBreak => self.text.push(' '),
            Event::HardBreak => self.text.push('\n'),
            Event::TaskListMarker(done) => self.text.push_str(if done { "[x] " } else { "[ ] " }),
            Event::FootnoteReference(_) | Event::Rule => {}
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::CodeBlock(kind) => {
                let language = match kind {
                    CodeBlockKind::Fenced(info) => {
                        info.split_whitespace().next().map(str::to_owned)
                    }
                    CodeBlockKind::Indented => None,
                };
                self.code = Some(language);
            }
            Tag::List(start) => {
                // A tight item's own text comes before its nested list.
                self.flush_into_item();
                self.lists.push(ListFrame {
                    ordered: start.is_some(),
                    start: start.unwrap_or(1),
                    opened: 0,
                    marked: false,
                });
            }
            Tag::Item => {
                if let Some(frame) = self.lists.last_mut() {
                    frame.opened += 1;
                    frame.marked = false;
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph | TagEnd::HtmlBlock => {
                let text = take_trimmed(&mut self.text);
                self.block(BodyElement::Paragraph { text });
            }
            TagEnd::Heading(level) => {
                let text = take_trimmed(&mut self.text);
                self.block(BodyElement::Heading {
                    level: level as u8,
                    text,
                });
            }
            TagEnd::CodeBlock => {
                let mut text = std::mem::take(&mut self.text);
                if text.ends_with('\n') {
                    text.pop();
                }
                let language = self.code.take().flatten();
                self.block(BodyElement::Code { language, text });
            }
            TagEnd::Item => {
                self.flush_into_item();
                if self.lists.len() == 1 {
                    self.items.push(std::mem::take(&mut self.item));
                }
            }
            TagEnd::List(_) => self.end_list(),
            _ => {}
        }
    }

    fn end_list(&mut self) {
        let Some(frame) = self.lists.pop() else {
            return;
        };
        if self.lists.is_empty() {
            let items = std::mem::take(&mut self.items);
            let start = (frame.ordered && frame.start != 1).then_some(frame.start);
            self.out.push(BodyElement::List {
                ordered: frame.ordered,
                start,
                items,
            });
        }
    }

    /// A finished block: an element of its own, or more text of the list
    /// item it is in.
    fn block(&mut self, element: BodyElement) {
        if self.lists.is_empty() {
            let empty = match &element {
                BodyElement::Paragraph { text } => text.is_empty(),
                _ => false,
            };
            if !empty {
                self.out.push(element);
            }
            return;
        }
        self.text = match element {
            BodyElement::Heading { text, .. }
            | BodyElement::Paragraph { text }
            | BodyElement::Code { text, .. } => text,
            BodyElement::List { .. } => String::new(),
        };
        self.flush_into_item();
    }

    /// Moves pending inline text into the open list item: as the item's own
    /// text at the outermost level, or as a marked, indented line of it for
    /// a nested item.
    fn flush_into_item(&mut self) {
        let text = take_trimmed(&mut self.text);
        let depth = self.lists.len();
        let Some(frame) = self.lists.last_mut() else {
            return;
        };
        if text.is_empty() {
            return;
        }
        if depth == 1 {
            push_line(&mut self.item, "", &text);
            return;
        }
        let indent = "  ".repeat((depth - 1).min(MAX_INDENT_DEPTH));
        let prefix = if frame.marked {
            format!("{indent}  ")
        } else if frame.ordered {
            let number = frame.start.saturating_add(frame.opened.saturating_sub(1));
            format!("{indent}{number}. ")
        } else {
            format!("{indent}- ")
        };
        frame.marked = true;
        push_line(&mut self.item, &prefix, &text);
    }
}

/// Appends `text` to `item` as new line(s), each starting with `prefix`.
fn push_line(item: &mut String, prefix: &str, text: &str) {
    for line in text.lines() {
        if !item.is_empty() {
            item.push('\n');
        }
        item.push_str(prefix);
        item.push_str(line);
    }
}

/// Takes the buffer's text without surrounding whitespace.
fn take_trimmed(buffer: &mut String) -> String {
    let text = std::mem::take(buffer);
    let trimmed = text.trim();
    if trimmed.len() == text.len() {
        text
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn p(text: &str) -> BodyElement {
        BodyElement::Paragraph { text: text.into() }
    }

    fn list(ordered: bool, items: &[&str]) -> BodyElement {
        BodyElement::List {
            ordered,
            start: None,
            items: items.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn headings_and_paragraphs() {
        let body =
            markdown_to_elements("# Plan\n\nFirst line\nsame paragraph.\n\n## Next\n\nSecond.");
        assert_eq!(
            body,
            vec![
                BodyElement::Heading {
                    level: 1,
                    text: "Plan".into()
                },
                p("First line same paragraph."),
                BodyElement::Heading {
                    level: 2,
                    text: "Next".into()
                },
                p("Second."),
            ]
        );
    }

    #[test]
    fn inline_markup_is_flattened_to_text() {
        let body = markdown_to_elements("Use **bold**, _em_, `code()` and [a link](http://x).");
        assert_eq!(body, vec![p("Use bold, em, code() and a link.")]);
    }

    #[test]
    fn unordered_and_ordered_lists() {
        let body = markdown_to_elements("- a\n- *b*\n\n1. one\n2. two\n\n3. three\n4. four");
        assert_eq!(
            body,
            vec![
                list(false, &["a", "b"]),
                // A loose ordered list is still one list.
                list(true, &["one", "two", "three", "four"]),
            ]
        );
        let body = markdown_to_elements("3. c\n4. d");
        assert_eq!(
            body,
            vec![BodyElement::List {
                ordered: true,
                start: Some(3),
                items: vec!["c".into(), "d".into()],
            }]
        );
    }

    #[test]
    fn nested_lists_are_indented_lines_of_their_item() {
        let md = "- Fruit\n  - apple\n  - pear\n    1. green\n    2. red\n- Veg";
        assert_eq!(
            markdown_to_elements(md),
            vec![list(
                false,
                &[
                    "Fruit\n  - apple\n  - pear\n    1. green\n    2. red",
                    "Veg"
                ]
            )]
        );
    }

    #[test]
    fn fenced_code_keeps_its_language_and_text() {
        let md = "```rust ignore\nfn main() {\n    // *not emphasis*\n}\n```\n\n    indented\n";
        assert_eq!(
            markdown_to_elements(md),
            vec![
                BodyElement::Code {
                    language: Some("rust".into()),
                    text: "fn main() {\n    // *not emphasis*\n}".into(),
                },
                BodyElement::Code {
                    language: None,
                    text: "indented".into()
                },
            ]
        );
    }

    #[test]
    fn multi_byte_text_is_kept_whole() {
        let md = "# Ünïcødé 見出し\n\n日本語の段落 🚀 — **強調**\n\n- ça\n- 中文";
        assert_eq!(
            markdown_to_elements(md),
            vec![
                BodyElement::Heading {
                    level: 1,
                    text: "Ünïcødé 見出し".into()
                },
                p("日本語の段落 🚀 — 強調"),
                list(false, &["ça", "中文"]),
            ]
        );
    }

    #[test]
    fn blocks_inside_quotes_and_items_keep_their_text() {
        let md = "> quoted *text*\n\n- item\n\n  second paragraph\n\n  ```\n  code\n  ```\n";
        assert_eq!(
            markdown_to_elements(md),
            vec![
                p("quoted text"),
                list(false, &["item\nsecond paragraph\ncode"])
            ]
        );
    }

    #[test]
    fn empty_and_hostile_input_never_panics() {
        assert_eq!(markdown_to_elements(""), vec![]);
        assert_eq!(markdown_to_elements("\n\n---\n\n"), vec![]);
        for md in [
            "- ".repeat(10_000) + "deep",
            "> ".repeat(10_000) + "deep",
            "[".repeat(10_000),
            "*".repeat(10_000),
            "1. ".repeat(5_000) + "x",
        ] {
            let body = markdown_to_elements(&md);
            assert!(serde_json::to_string(&body).unwrap().len() < 100 * md.len());
        }
    }

    #[test]
    fn elements_serialise_with_a_type_tag() {
        let body = markdown_to_elements("# T\n\n- a\n\n```sh\nls\n```");
        assert_eq!(
            serde_json::to_value(body).unwrap(),
            json!([
                {"type": "heading", "level": 1, "text": "T"},
                {"type": "list", "ordered": false, "items": ["a"]},
                {"type": "code", "language": "sh", "text": "ls"},
            ])
        );
    }
}
