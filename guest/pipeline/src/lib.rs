//! The document pipeline (queue `"documents"`, where session tasks go too):
//! a topic answered by one of three workflows, `simple`, `planner` or
//! `critic` (see [`flows`]).
//!
//! The default, `planner`, answers `{"topic": …, "sections"?: 1..=10}` in two
//! stages, each a job of its own: an outline, then (in a follow-up job) a
//! document written from it. Each stage announces itself with a custom event
//! on its own job's stream, with design C's data: `outline_generated`
//! `{title, nodes}`, `document_generated` `{title, content, word_count}` (the
//! host also copies a later stage's events onto the first job's stream).
//!
//! This file wires the hooks to the rules, which live in plain Rust modules
//! unit-tested on the host target: [`spool_sdk::priority::decide`]
//! (priority), [`payload`] (job body) and [`stages`] (prompts, result and
//! blocks); [`flows`] runs the stages against the host.

mod flows;
pub mod payload;
pub mod stages;

use spool_sdk::logging::{self, Level};
use spool_sdk::{ChatMessage, ContentBlock, Guest, Job, JobError, JobOutput, ModelRequest, PriorityDecision, priority};

use payload::{Payload, Stage, Workflow};

struct Pipeline;

impl Guest for Pipeline {
    /// Refuses a payload the workflows cannot run (see [`Payload::parse`]):
    /// no one else checks it before the job is queued.
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Payload::parse(&job.payload)?;
        Ok(priority::decide(job.priority, &job.user_tier).into())
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
                task_id: None,
            }
        });
        stages::request(stages::OUTLINE_SYSTEM, stages::outline_prompt(&payload)).into()
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        stages::markdown(&text).into_iter().map(Into::into).collect()
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload = Payload::parse(&job.payload)?;
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

spool_sdk::export!(Pipeline);
