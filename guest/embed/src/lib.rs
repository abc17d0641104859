//! The default spool embedding handler (queue `"embeddings"`, design A).
//!
//! Wires the hooks to the rules in [`payload`]; the host's `model::embed`
//! does the pacing, batching across jobs and caching, so a job here is one
//! call. It must not shape chat prompts: `shape-prompt` and `parse-content`
//! have nothing to do for an embedding job.
//!
//! `handle` returns `{"embeddings": [[f32]], "model": string|null, "texts": n}`,
//! one vector per text in input order.

pub mod payload;

use spool_sdk::{ChatMessage, ContentBlock, Guest, Job, JobError, JobOutput, ModelRequest, PriorityDecision};
use spool_sdk::{events, model, priority};

use payload::Payload;

struct Embed;

impl Guest for Embed {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Payload::parse(&job.payload)?;
        Ok(priority::decide(job.priority, &job.user_tier).into())
    }

    fn shape_prompt(job: Job, _history: Vec<ChatMessage>) -> ModelRequest {
        // Never asked of an embedding job; the texts stand in as the prompt.
        spool_sdk::chat::Request::new(vec![spool_sdk::chat::Message::user(job.payload)]).into()
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        vec![ContentBlock::Text(text)]
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload = Payload::parse(&job.payload)?;
        events::progress(10, "embedding");
        let vectors = model::embed(payload.model.as_deref(), &payload.texts)?;
        if vectors.len() != payload.texts.len() {
            // Retried: the host's batcher or the backend dropped an answer.
            return Err(JobError::Retry(spool_sdk::RetryHint {
                reason: format!("{} vectors for {} texts", vectors.len(), payload.texts.len()),
                after_ms: None,
            }));
        }
        let result = serde_json::json!({
            "embeddings": vectors,
            "model": payload.model,
            "texts": payload.texts.len(),
        });
        Ok(JobOutput::new::<ContentBlock>(result, []))
    }
}

spool_sdk::export!(Embed);
