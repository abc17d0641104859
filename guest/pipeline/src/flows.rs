//! The three workflows of a session task (and of any `documents` job), run
//! against the host. Every stage is a job of its own: it makes one model call
//! (two for a critic round), reports it as a task of the job's message (a
//! placeholder replaced by the stage's result, or removed with a `task_failed`
//! event when the stage fails) and as progress and business events on its own
//! job's event stream, then either queues the next stage as a follow-up job
//! (passing the message on to it) or finishes the message.
//!
//! Jobs that drive no message (plain `documents` jobs) get `err` from every
//! `messages` call; the stages then just skip their message updates.
//!
//! Owns the order of the stages and every host call. It must not word prompts
//! or shape results; those are [`crate::stages`]' rules.

use serde_json::{Value, json};
use spool_sdk::chat::Request;
use spool_sdk::logging::{self, Level};
use spool_sdk::{ContentKind, JobError, JobOutput, TaskStart, TaskStatus, TaskUpdate, events, jobs, messages, model};

use crate::payload::{Payload, Stage, Workflow};
use crate::stages::{self, ANSWER_SYSTEM, APPROVED, CRITIC_SYSTEM, DOCUMENT_SYSTEM, OUTLINE_SYSTEM, request};

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
    let answer = stage("Answer", 10, request(ANSWER_SYSTEM, &payload.topic))?;
    finish(payload, &answer);
    Ok(output(json!({ "answer": answer }), &answer))
}

/// Planner, stage 1: the outline; the document is the next job's.
fn outline(queue: &str, payload: &Payload) -> Result<JobOutput, JobError> {
    let outline = stage("Outline", 10, request(OUTLINE_SYSTEM, stages::outline_prompt(payload)))?;
    announce("outline_generated", stages::outline_event(payload, &outline));
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

/// Planner, stage 2: the document, written from the outline.
fn document(payload: &Payload, outline: &str) -> Result<JobOutput, JobError> {
    let document = stage(
        "Document",
        10,
        request(DOCUMENT_SYSTEM, stages::document_prompt(payload, outline)),
    )?;
    announce("document_generated", stages::document_event(payload, &document));
    finish(payload, &document);
    Ok(JobOutput::new(
        stages::result(outline, &document),
        stages::markdown(&document),
    ))
}

/// Critic, stage 1: a draft; each review round is a job of its own.
fn draft(queue: &str, payload: &Payload) -> Result<JobOutput, JobError> {
    let draft = stage("Draft", 10, request(ANSWER_SYSTEM, &payload.topic))?;
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
        finish(payload, draft);
        return Ok(output(json!({ "draft": draft, "rounds": round }), draft));
    }
    let revised = stage(
        &format!("Revision {round}"),
        50,
        request(ANSWER_SYSTEM, stages::revision_prompt(payload, draft, &critique)),
    )?;
    announce(
        "revision_generated",
        json!({ "round": round, "length": revised.chars().count() }),
    );
    if round >= payload.max_iterations {
        finish(payload, &revised);
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

/// The type of each stage's task (design D's `task_type`).
const STAGE_TASK_TYPE: &str = "text_generation";

/// One model call as a task of the message: started with a placeholder,
/// completed with the answer as a Markdown block, or failed with the error.
fn stage(description: &str, percent: u8, request: Request) -> Result<String, JobError> {
    let start = TaskStart {
        id: None,
        task_type: Some(STAGE_TASK_TYPE.to_owned()),
        content_type: Some(ContentKind::Markdown),
        description: description.to_owned(),
    };
    let task = messages::start_task_with(&start).ok();
    events::progress(percent, description);
    let answer = model::chat(&request.into()).map_err(JobError::from);
    if let Some(task) = &task {
        let (status, result, error) = match &answer {
            Ok(reply) => (TaskStatus::Completed, stages::markdown(&reply.text), None),
            Err(failure) => (TaskStatus::Failed, None, Some(failure.reason().to_owned())),
        };
        let update = TaskUpdate {
            status,
            progress: Some(1.0),
            step: None,
            result: result.map(Into::into),
            error,
        };
        // The task only mirrors the stage for watchers of the message: a
        // refused update must not fail the stage that did its work.
        let _ = messages::update_task(task, &update);
    }
    Ok(answer?.text)
}

/// The final answer becomes the message's text (and the result of the
/// caller's task, if it started one), and the message is complete.
fn finish(payload: &Payload, text: &str) {
    if let Some(task) = &payload.task_id {
        let update = TaskUpdate {
            status: TaskStatus::Completed,
            progress: Some(1.0),
            step: None,
            result: stages::markdown(text).map(Into::into),
            error: None,
        };
        if let Err(reason) = messages::update_task(task, &update) {
            logging::log(Level::Warn, &format!("task {task} not completed: {reason}"));
        }
    }
    if messages::append_text(text).is_ok() {
        let _ = messages::complete();
    }
    events::progress(100, "done");
}

/// A stage's output: its result JSON and its text as a Markdown block.
fn output(result: Value, text: &str) -> JobOutput {
    JobOutput::new(result, stages::markdown(text))
}
