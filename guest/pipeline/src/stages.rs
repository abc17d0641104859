//! The stages of the workflows: what each asks the model, and what the last
//! one returns.
//!
//! Planner: stage 1 writes an outline of the topic; stage 2 (the next job)
//! writes the document from that outline, which its payload carries, so a
//! retry of stage 2 never redoes stage 1.
//!
//! Owns the prompts and the shape of results and blocks. It must not call the
//! host: running the stages is [`crate::flows`]' work.

use serde_json::{Value, json};
use spool_sdk::chat::{Message, Request};
use spool_sdk::content::Block;

use crate::payload::Payload;

/// System prompt of the outline stage.
pub const OUTLINE_SYSTEM: &str = "You write outlines.";

/// System prompt of the document stage.
pub const DOCUMENT_SYSTEM: &str = "You write clear, well-structured documents in Markdown.";

/// System prompt of the `simple` workflow.
pub const ANSWER_SYSTEM: &str = "You answer requests helpfully and concisely.";

/// System prompt of the critic workflow's critique stage.
pub const CRITIC_SYSTEM: &str = "You are a demanding editor. Point out what to improve, or answer APPROVED.";

/// A critique containing this word ends the critic workflow early.
pub const APPROVED: &str = "APPROVED";

/// A stage's request: its system prompt and one user message, to the host's
/// default model.
pub fn request(system: &str, user: impl Into<String>) -> Request {
    Request::new(vec![Message::system(system), Message::user(user)])
}

/// The user message of a critique round.
pub fn critique_prompt(payload: &Payload, draft: &str) -> String {
    format!("Critique this draft about {}:\n\n{}", payload.topic, draft.trim())
}

/// The user message of a revision round.
pub fn revision_prompt(payload: &Payload, draft: &str, critique: &str) -> String {
    format!(
        "Revise this draft about {} following the critique.\n\nDraft:\n{}\n\nCritique:\n{}",
        payload.topic,
        draft.trim(),
        critique.trim()
    )
}

/// The user message of the outline stage.
pub fn outline_prompt(payload: &Payload) -> String {
    format!(
        "Write an outline with {} sections about: {}",
        payload.sections, payload.topic
    )
}

/// The user message of the document stage, which carries the outline.
pub fn document_prompt(payload: &Payload, outline: &str) -> String {
    format!(
        "Write a document about: {}\n\n\
         Follow this outline, one Markdown section per item:\n\n{}",
        payload.topic,
        outline.trim(),
    )
}

/// `outline_generated`'s data, design C's `{"title", "nodes"}` (the topic and
/// the outline's items), with the whole `outline` text too.
pub fn outline_event(payload: &Payload, outline: &str) -> Value {
    json!({ "title": payload.topic, "nodes": outline_nodes(outline), "outline": outline })
}

/// An outline's items: its non-blank lines without list markers.
pub fn outline_nodes(outline: &str) -> Vec<String> {
    outline
        .lines()
        .map(|line| {
            let line = line.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '#' | '-' | '*'));
            let numbered = line.trim_start_matches(|c: char| c.is_ascii_digit());
            let line = match numbered.strip_prefix(['.', ')']) {
                Some(rest) if numbered.len() < line.len() => rest,
                _ => line,
            };
            line.trim().to_owned()
        })
        .filter(|line| !line.is_empty())
        .collect()
}

/// `document_generated`'s data, design C's `{"title", "content",
/// "word_count"}`, with its `length` in characters too.
pub fn document_event(payload: &Payload, document: &str) -> Value {
    json!({
        "title": payload.topic,
        "content": document,
        "word_count": document.split_whitespace().count(),
        "length": document.chars().count(),
    })
}

/// The document stage's result: `{"outline": …, "document": …}`.
pub fn result(outline: &str, document: &str) -> Value {
    json!({ "outline": outline, "document": document })
}

/// A stage's content block: its whole text, trimmed, as one Markdown block;
/// none when it is blank.
pub fn markdown(text: &str) -> Option<Block> {
    let text = text.trim();
    (!text.is_empty()).then(|| Block::Markdown(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Payload {
        Payload {
            topic: "Tides".to_owned(),
            sections: 4,
            workflow: crate::payload::Workflow::Planner,
            max_iterations: 2,
            stage: crate::payload::Stage::First,
            task_id: None,
        }
    }

    #[test]
    fn outline_prompt_names_count_and_topic() {
        assert_eq!(
            outline_prompt(&payload()),
            "Write an outline with 4 sections about: Tides"
        );
    }

    #[test]
    fn document_prompt_carries_topic_and_outline() {
        let prompt = document_prompt(&payload(), "\n1. Moon\n2. Sun\n");
        assert_eq!(
            prompt,
            "Write a document about: Tides\n\nFollow this outline, one Markdown section per item:\n\n1. Moon\n2. Sun"
        );
    }

    #[test]
    fn a_request_is_the_system_prompt_then_the_user_message() {
        let request = request(OUTLINE_SYSTEM, "Outline tides");
        assert_eq!(
            request.messages,
            [Message::system(OUTLINE_SYSTEM), Message::user("Outline tides")]
        );
        assert_eq!(request.model, None);
    }

    #[test]
    fn outline_nodes_are_its_items_without_markers() {
        assert_eq!(
            outline_nodes("# Tides\n\n1. Moon\n2) Sun\n- Coasts\n  * 3 kinds\n"),
            ["Tides", "Moon", "Sun", "Coasts", "3 kinds"]
        );
        assert!(outline_nodes(" \n").is_empty());
    }

    #[test]
    fn business_events_carry_design_cs_fields() {
        let outline = outline_event(&payload(), "1. Moon\n2. Sun");
        assert_eq!(outline["title"], "Tides");
        assert_eq!(outline["nodes"], json!(["Moon", "Sun"]));
        let document = document_event(&payload(), "Tides rise twice a day");
        assert_eq!(
            document,
            json!({"title": "Tides", "content": "Tides rise twice a day", "word_count": 5, "length": 22})
        );
    }

    #[test]
    fn result_is_json_with_outline_and_document() {
        assert_eq!(
            result("1. \"Moon\"", "# Tides\n"),
            json!({ "outline": "1. \"Moon\"", "document": "# Tides\n" })
        );
    }

    #[test]
    fn document_is_one_markdown_block_unless_blank() {
        assert_eq!(
            markdown("\n# Tides\n\n- Moon\n"),
            Some(Block::Markdown("# Tides\n\n- Moon".to_owned()))
        );
        assert_eq!(markdown(" \n"), None);
    }
}
