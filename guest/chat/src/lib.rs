//! The default spool chat handler (queue `"chat"`).
//!
//! This file is the glue between the WIT world `handler` and the rules, which
//! live in plain Rust modules so they can be unit-tested on the host target:
//!
//! - [`common::decide`]: the priority rule (`admit`);
//! - [`payload`]: what a chat job body may contain (`admit`, `handle`);
//! - [`prompt`]: system prompt + recent history + user prompt (`shape-prompt`);
//! - [`content`]: thinking, code, JSON and text blocks (`parse-content`).
//!
//! `handle` runs them in turn around one model call and returns
//! `{"response": …, "model": …, "usage": {"promptTokens": …, "completionTokens": …}}`.

pub mod content;
pub mod payload;
pub mod prompt;

wit_bindgen::generate!({
    world: "handler",
    path: "../../wit",
});

use exports::spool::handler::hooks::Guest;
use spool::handler::logging::{self, Level};
use spool::handler::types::{
    ChatMessage, CodeBlock, ContentBlock, Job, JobError, JobOutput, ModelError, ModelParams, ModelRequest,
    PriorityClass, PriorityDecision, RetryHint, Role,
};
use spool::handler::{events, model};

use content::Block;
use payload::Payload;

struct Chat;

impl Guest for Chat {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Payload::parse(&job.payload)?;
        Ok(common::decide(job.priority, &job.user_tier).into())
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
        let history: Vec<prompt::Message> = history.into_iter().map(Into::into).collect();
        prompt::shape(&payload, &history).into()
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        content::parse(&text).into_iter().map(Into::into).collect()
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload = Payload::parse(&job.payload).map_err(JobError::Reject)?;

        events::progress(10, "shaping prompt");
        let request = prompt::shape(&payload, &payload.history);
        let kept = request.messages.len() - 2; // all but the system prompt and the user's prompt

        events::progress(30, "calling model");
        let reply = model::chat(&request.into())?;

        events::progress(90, "parsing answer");
        let blocks = content::parse(&reply.text);

        logging::log(
            Level::Info,
            &format!(
                "chat answered by {}: {kept} of {} history turns sent, {} characters in {} blocks",
                reply.model,
                payload.history.len(),
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
        Ok(JobOutput {
            result: result.to_string(),
            blocks: blocks.into_iter().map(Into::into).collect(),
        })
    }
}

export!(Chat);

/// How a failed model call ends the job: rate limits and outages are retried
/// (after the wait the backend asked for, if any); refusals are final.
impl From<ModelError> for JobError {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::RateLimited(after_ms) => JobError::Retry(RetryHint {
                reason: "model rate-limited".to_owned(),
                after_ms,
            }),
            ModelError::Unavailable(reason) => JobError::Retry(RetryHint { reason, after_ms: None }),
            ModelError::Rejected(reason) | ModelError::Denied(reason) => JobError::Reject(reason),
        }
    }
}

// Conversions between the rule modules' plain types and the generated ones.

impl From<common::Decision> for PriorityDecision {
    fn from(decision: common::Decision) -> Self {
        let class = match decision.class {
            common::Class::High => PriorityClass::High,
            common::Class::Normal => PriorityClass::Normal,
            common::Class::Low => PriorityClass::Low,
        };
        PriorityDecision {
            class,
            score: decision.score,
        }
    }
}

impl From<ChatMessage> for prompt::Message {
    fn from(message: ChatMessage) -> Self {
        let role = match message.role {
            Role::System => prompt::Role::System,
            Role::User => prompt::Role::User,
            Role::Assistant => prompt::Role::Assistant,
            Role::Tool => prompt::Role::Tool,
        };
        prompt::Message {
            role,
            content: message.content,
        }
    }
}

impl From<prompt::Message> for ChatMessage {
    fn from(message: prompt::Message) -> Self {
        let role = match message.role {
            prompt::Role::System => Role::System,
            prompt::Role::User => Role::User,
            prompt::Role::Assistant => Role::Assistant,
            prompt::Role::Tool => Role::Tool,
        };
        ChatMessage {
            role,
            content: message.content,
        }
    }
}

impl From<prompt::Request> for ModelRequest {
    fn from(request: prompt::Request) -> Self {
        ModelRequest {
            model: request.model,
            messages: request.messages.into_iter().map(Into::into).collect(),
            params: ModelParams {
                temperature: request.temperature,
                top_p: None,
                max_tokens: request.max_tokens,
                stop: Vec::new(),
                json_output: false,
            },
        }
    }
}

impl From<Block> for ContentBlock {
    fn from(block: Block) -> Self {
        match block {
            Block::Text(text) => ContentBlock::Text(text),
            Block::Code { language, code } => ContentBlock::Code(CodeBlock { language, code }),
            Block::Json(json) => ContentBlock::Json(json),
            Block::Thinking(thinking) => ContentBlock::Thinking(thinking),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_errors_map_to_retry_or_reject() {
        let retry = |reason: &str, after_ms| {
            JobError::Retry(RetryHint {
                reason: reason.to_owned(),
                after_ms,
            })
        };
        let cases = [
            (
                ModelError::RateLimited(Some(1500)),
                retry("model rate-limited", Some(1500)),
            ),
            (ModelError::RateLimited(None), retry("model rate-limited", None)),
            (
                ModelError::Unavailable("502 Bad Gateway".to_owned()),
                retry("502 Bad Gateway", None),
            ),
            (
                ModelError::Rejected("unknown model".to_owned()),
                JobError::Reject("unknown model".to_owned()),
            ),
            (
                ModelError::Denied("call budget used up".to_owned()),
                JobError::Reject("call budget used up".to_owned()),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(format!("{:?}", JobError::from(error)), format!("{expected:?}"));
        }
    }
}
