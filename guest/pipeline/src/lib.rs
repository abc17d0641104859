//! Design C's two-stage document generator (queue `"documents"`), and the
//! workflows of session tasks (`simple`, `planner`, `critic`; see [`flows`]).
//!
//! A job `{"topic": …, "sections"?: 1..=10}` is answered in two stages, each a
//! job of its own: an outline, then (in a follow-up job) a document written
//! from it. Each stage announces itself with a custom event on its own job's
//! stream (`outline_generated`, `document_generated`).
//!
//! This file is the glue between the WIT world `handler` and the rules, which
//! live in plain Rust modules so they can be unit-tested on the host target:
//! [`common::decide`] (priority), [`payload`] (job body) and [`stages`]
//! (prompts, result and blocks).

mod flows;
pub mod payload;
pub mod stages;

wit_bindgen::generate!({
    world: "handler",
    path: "../../wit",
});

use exports::spool::handler::hooks::Guest;
use payload::{Payload, Stage, Workflow};
use spool::handler::logging::{self, Level};
use spool::handler::types::{
    ChatMessage, ContentBlock, Job, JobError, JobOutput, ModelError, ModelParams, ModelRequest, PriorityClass,
    PriorityDecision, RetryHint, Role,
};
use stages::OUTLINE_SYSTEM;

struct Pipeline;

impl Guest for Pipeline {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Payload::parse(&job.payload)?;
        Ok(common::decide(job.priority, &job.user_tier).into())
    }

    /// The outline-stage request (the document stage needs the outline, which
    /// only `handle` has).
    fn shape_prompt(job: Job, _history: Vec<ChatMessage>) -> ModelRequest {
        // Jobs reach this hook only after `admit` accepted their payload. The
        // hook has no error path, so should one arrive unchecked anyway its raw
        // payload text stands in for the topic.
        let payload = Payload::parse(&job.payload).unwrap_or_else(|reason| {
            logging::log(Level::Warn, &format!("shape-prompt on an invalid payload: {reason}"));
            Payload {
                topic: job.payload.clone(),
                sections: payload::DEFAULT_SECTIONS,
                workflow: Workflow::Planner,
                max_iterations: payload::DEFAULT_ITERATIONS,
                stage: Stage::First,
            }
        });
        request(OUTLINE_SYSTEM, stages::outline_prompt(&payload))
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        stages::markdown(&text)
            .map(ContentBlock::Markdown)
            .into_iter()
            .collect()
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload = Payload::parse(&job.payload).map_err(JobError::Reject)?;
        let output = flows::run(&job.queue, &payload)?;
        logging::log(
            Level::Info,
            &format!(
                "{:?} workflow on {:?}: {} stage done",
                payload.workflow,
                payload.topic,
                payload.stage.name()
            ),
        );
        Ok(output)
    }
}

export!(Pipeline);

/// A request of a system prompt and one user message to the default model.
fn request(system: &str, user: String) -> ModelRequest {
    ModelRequest {
        model: None,
        messages: vec![
            ChatMessage {
                role: Role::System,
                content: system.to_owned(),
            },
            ChatMessage {
                role: Role::User,
                content: user,
            },
        ],
        params: ModelParams {
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: Vec::new(),
            json_output: false,
        },
    }
}

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
