//! The three workflows of a session task (and of any `documents` job), as
//! WIT glue. Every stage is a job of its own: it makes one model call (two for
//! a critic round), reports it as a task of the job's message (a placeholder
//! replaced by the stage's result, or removed with a `task_failed` event when
//! the stage fails) and as progress and business events on its own job's event
//! stream, then either queues the next stage as a follow-up job (which takes
//! the message over) or finishes the message.
//!
//! Jobs that drive no message (plain `documents` jobs) get `err` from every
//! `messages` call; the stages then just skip their message updates.

use serde_json::{Value, json};

use crate::payload::{Payload, Stage, Workflow};
use crate::request;
use crate::spool::handler::types::{ContentBlock, JobError, JobOutput, TaskStatus, TaskUpdate};
use crate::spool::handler::logging::{self, Level};
use crate::spool::handler::{events, jobs, messages, model};
use crate::stages::{self, ANSWER_SYSTEM, APPROVED, CRITIC_SYSTEM, DOCUMENT_SYSTEM, OUTLINE_SYSTEM};

/// Runs the payload's stage of its workflow; later stages go to `queue`.
pub fn run(queue: &str, payload: &Payload) -> Result<JobOutput, JobError> {
    match (&payload.stage, payload.workflow) {
        (_, Workflow::Simple) => simple(payload),
        (Stage::First, Workflow::Planner) => outline(queue, payload),
        (Stage::Document { outline }, _) => document(payload, outline),
        (Stage::First, Workflow::Critic) => draft(queue, payload),
        (Stage::Review { draft, round }, _) => review(queue, payload, draft, *round),
    }
}

/// One model call answers the task.
fn simple(payload: &Payload) -> Result<JobOutput, JobError> {
    let answer = stage("Answer", 10, request(ANSWER_SYSTEM, payload.topic.clone()))?;
    finish(&answer);
    Ok(output(json!({ "answer": answer }), &answer))
}

/// Design C, stage 1: the outline; the document is the next job's.
fn outline(queue: &str, payload: &Payload) -> Result<JobOutput, JobError> {
    let outline = stage("Outline", 10, request(OUTLINE_SYSTEM, stages::outline_prompt(payload)))?;
    announce("outline_generated", json!({ "outline": outline }));
    let next = follow_up(
        queue,
        payload,
        Stage::Document {
            outline: outline.clone(),
        },
    )?;
    events::progress(100, "outline done; the document is next");
    Ok(output(json!({ "outline": outline, "next": next }), &outline))
}

/// Design C, stage 2: the document, written from the outline.
fn document(payload: &Payload, outline: &str) -> Result<JobOutput, JobError> {
    let document = stage(
        "Document",
        10,
        request(DOCUMENT_SYSTEM, stages::document_prompt(payload, outline)),
    )?;
    announce("document_generated", json!({ "length": document.chars().count() }));
    finish(&document);
    Ok(JobOutput {
        result: stages::result(outline, &document),
        blocks: markdown_blocks(&document),
    })
}

/// Critic, stage 1: a draft; each review round is a job of its own.
fn draft(queue: &str, payload: &Payload) -> Result<JobOutput, JobError> {
    let draft = stage("Draft", 10, request(ANSWER_SYSTEM, payload.topic.clone()))?;
    announce("draft_generated", json!({ "length": draft.chars().count() }));
    let next = follow_up(
        queue,
        payload,
        Stage::Review {
            draft: draft.clone(),
            round: 1,
        },
    )?;
    events::progress(100, "draft done; review round 1 is next");
    Ok(output(json!({ "draft": draft, "next": next }), &draft))
}

/// Critic, one round: a critique, then (unless the critic approves) a
/// revision, and another round until `maxIterations`.
fn review(queue: &str, payload: &Payload, draft: &str, round: u8) -> Result<JobOutput, JobError> {
    let critique = stage(
        &format!("Critique {round}"),
        10,
        request(CRITIC_SYSTEM, stages::critique_prompt(payload, draft)),
    )?;
    announce("critique_generated", json!({ "round": round, "critique": critique }));
    if critique.contains(APPROVED) {
        finish(draft);
        return Ok(output(json!({ "draft": draft, "rounds": round }), draft));
    }
    let revised = stage(
        &format!("Revision {round}"),
        50,
        request(ANSWER_SYSTEM, stages::revision_prompt(payload, draft, &critique)),
    )?;
    announce("revision_generated", json!({ "round": round, "length": revised.chars().count() }));
    if round >= payload.max_iterations {
        finish(&revised);
        return Ok(output(json!({ "draft": revised, "rounds": round }), &revised));
    }
    let next = follow_up(
        queue,
        payload,
        Stage::Review {
            draft: revised.clone(),
            round: round + 1,
        },
    )?;
    events::progress(100, &format!("round {round} done; round {} is next", round + 1));
    Ok(output(
        json!({ "draft": revised, "round": round, "next": next }),
        &revised,
    ))
}

/// Queues the job of the next stage (run once this one completes). The
/// message, if this job drives one, goes with it: the next stage finishes it.
fn follow_up(queue: &str, payload: &Payload, next: Stage) -> Result<String, JobError> {
    let take_message = messages::message_id().is_some();
    jobs::follow_up(queue, &payload.next(next), take_message)
        .map_err(|reason| JobError::Reject(format!("could not queue the next stage: {reason}")))
}

/// Publishes a stage's business event. The event only informs watchers, so a
/// refusal is logged rather than failing the stage.
fn announce(event: &str, data: Value) {
    if let Err(error) = events::emit(event, &data.to_string()) {
        logging::log(Level::Warn, &format!("event {event} refused: {}", error.name()));
    }
}

/// One model call as a task of the message: started with a placeholder,
/// completed with the answer as a Markdown block, or failed with the error.
fn stage(description: &str, percent: u8, request: crate::ModelRequest) -> Result<String, JobError> {
    let task = messages::start_task(description).ok();
    events::progress(percent, description);
    match model::chat(&request) {
        Ok(reply) => {
            if let Some(task) = &task {
                let result = stages::markdown(&reply.text).map(ContentBlock::Markdown);
                let _ = messages::update_task(task, &update(TaskStatus::Completed, result, None));
            }
            Ok(reply.text)
        }
        Err(error) => {
            let failure = JobError::from(error);
            if let Some(task) = &task {
                let reason = match &failure {
                    JobError::Retry(hint) => hint.reason.clone(),
                    JobError::Reject(reason) => reason.clone(),
                };
                let _ = messages::update_task(task, &update(TaskStatus::Failed, None, Some(reason)));
            }
            Err(failure)
        }
    }
}

fn update(status: TaskStatus, result: Option<ContentBlock>, error: Option<String>) -> TaskUpdate {
    TaskUpdate {
        status,
        progress: Some(1.0),
        step: None,
        result,
        error,
    }
}

/// The final answer becomes the message's text, and the message is complete.
fn finish(text: &str) {
    if messages::append_text(text).is_ok() {
        let _ = messages::complete();
    }
    events::progress(100, "done");
}

/// A stage's output: its result JSON and its text as a Markdown block.
fn output(result: serde_json::Value, text: &str) -> JobOutput {
    JobOutput {
        result: result.to_string(),
        blocks: markdown_blocks(text),
    }
}

fn markdown_blocks(text: &str) -> Vec<ContentBlock> {
    stages::markdown(text).map(ContentBlock::Markdown).into_iter().collect()
}
