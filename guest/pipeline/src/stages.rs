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
