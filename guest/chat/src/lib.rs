//! The default spool chat handler (queue `"chat"`).
//!
//! This file wires the hooks to the rules, which live in plain Rust modules
//! unit-tested on the host target; the bindings and conversions are the SDK's.
//!
//! - [`spool_sdk::priority::decide`]: the priority rule (`admit`);
//! - [`payload`]: what a chat job body may contain (`admit`, `handle`);
//! - [`prompt`]: system prompt + recent history + user prompt (`shape-prompt`);
//! - [`content`]: thinking, code, JSON and text blocks (`parse-content`);
//! - [`memory`]: older turns recalled by similarity (`handle`).
//!
//! `handle` runs them in turn around one model call (plus one embed call
//! when older turns no longer fit the history budget) and returns
//! `{"response": …, "model": …, "usage": {"promptTokens": …, "completionTokens": …}}`.

pub mod content;
pub mod memory;
pub mod payload;
pub mod prompt;

use spool_sdk::logging::{self, Level};
use spool_sdk::{ChatMessage, ContentBlock, Guest, Job, JobError, JobOutput, ModelRequest, PriorityDecision};
use spool_sdk::{events, model, priority};

use payload::Payload;

struct Chat;

impl Guest for Chat {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Payload::parse(&job.payload)?;
        Ok(priority::decide(job.priority, &job.user_tier).into())
    }

    fn shape_prompt(job: Job, history: Vec<ChatMessage>) -> ModelRequest {
        // Jobs reach this hook only after `admit` accepted their payload. The
        // hook has no error path, so should one arrive unchecked anyway its raw
        // payload text stands in for the prompt.
        let payload = Payload::parse(&job.payload).unwrap_or_else(|reason| {
            logging::log(Level::Warn, &format!("shape-prompt on an invalid payload: {reason}"));
            Payload {
                prompt: job.payload.clone(),
                ..Payload::default()
            }
        });
        let history: Vec<_> = history.into_iter().map(Into::into).collect();
        prompt::shape(&payload, &history).into()
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        content::parse(&text).into_iter().map(Into::into).collect()
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload = Payload::parse(&job.payload)?;

        events::progress(10, "shaping prompt");
        let mut request = prompt::shape(&payload, &payload.history);
        let kept = request.messages.len() - 2; // all but the system prompt and the user's prompt
        let dropped = &payload.history[..payload.history.len() - kept];
        let recalled = recall(&payload, dropped);
        if let Some(message) = recalled.clone() {
            request.messages.insert(1, message);
        }

        events::progress(30, "calling model");
        let reply = model::chat(&request.into())?;

        events::progress(90, "parsing answer");
        let blocks = content::parse(&reply.text);

        // One line per answer is detail at a service's rate (thousands a
        // second): debug, where an operator who needs it turns it on.
        logging::log(
            Level::Debug,
            &format!(
                "chat answered by {}: {kept} of {} history turns sent{}, {} characters in {} blocks",
                reply.model,
                payload.history.len(),
                if recalled.is_some() {
                    " (older ones recalled by similarity)"
                } else {
                    ""
                },
                reply.text.chars().count(),
                blocks.len(),
            ),
        );

        let result = serde_json::json!({
            "response": reply.text,
            "model": reply.model,
            "usage": {
                "promptTokens": reply.prompt_tokens,
                "completionTokens": reply.completion_tokens,
            },
        });
        Ok(JobOutput::new(result, blocks))
    }
}

/// The older turns closest in meaning to the prompt, as one system message;
/// `None` when nothing was dropped, recall is off, or the embed call failed
/// (the answer is still worth giving without them).
fn recall(payload: &Payload, dropped: &[spool_sdk::chat::Message]) -> Option<spool_sdk::chat::Message> {
    let keep = payload.recall_turns.unwrap_or(memory::DEFAULT_RECALL);
    let candidates = memory::candidates(dropped);
    if keep == 0 || candidates.is_empty() {
        return None;
    }
    let mut texts: Vec<String> = vec![payload.prompt.chars().take(memory::MAX_RECALLED_CHARS).collect()];
    texts.extend(candidates.iter().map(|turn| turn.content.clone()));
    let vectors = match model::embed(None, &texts) {
        Ok(vectors) if vectors.len() == texts.len() => vectors,
        Ok(_) | Err(_) => {
            logging::log(Level::Warn, "could not embed older turns; answering without them");
            return None;
        }
    };
    let chosen = memory::closest(&vectors[0], &vectors[1..], keep);
    let turns: Vec<_> = chosen.iter().filter_map(|&index| candidates.get(index)).collect();
    Some(memory::recall_message(&turns))
}

spool_sdk::export!(Chat);
