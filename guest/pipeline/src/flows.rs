//! The three workflows of a session task (and of any `documents` job), as
//! WIT glue: each stage is one model call, reported as a task of the job's
//! message (a placeholder replaced by the stage's result, or removed with a
//! `task_failed` event when the stage fails) and as progress and business
//! events on the job's own event stream.
//!
//! Jobs that drive no message (plain `documents` jobs) get `err` from every
//! `messages` call; the stages then just skip their message updates.

use crate::spool::handler::types::{ContentBlock, JobError, JobOutput, TaskStatus, TaskUpdate};
use crate::spool::handler::{events, messages, model, state};
use crate::stages::{self, ANSWER_SYSTEM, APPROVED, CRITIC_SYSTEM, DOCUMENT_SYSTEM, OUTLINE_KEY, OUTLINE_SYSTEM};
use crate::{payload::Payload, request};

/// Design C: an outline (kept in job state, so a retry resumes at stage 2),
/// then a document written from it.
pub fn planner(payload: &Payload) -> Result<JobOutput, JobError> {
    let outline = match state::get(OUTLINE_KEY) {
        Some(outline) => outline,
        None => {
            let outline = stage("Outline", 10, request(OUTLINE_SYSTEM, stages::outline_prompt(payload)))?;
            state::set(OUTLINE_KEY, &outline);
            events::emit(
                "outline_generated",
                &serde_json::json!({ "outline": outline }).to_string(),
            );
            outline
        }
    };
    let document = stage(
        "Document",
        50,
        request(DOCUMENT_SYSTEM, stages::document_prompt(payload, &outline)),
    )?;
    events::emit(
        "document_generated",
        &serde_json::json!({ "length": document.chars().count() }).to_string(),
    );
    finish(&document);
    Ok(JobOutput {
        result: stages::result(&outline, &document),
        blocks: markdown_blocks(&document),
    })
}

/// One model call answers the task.
pub fn simple(payload: &Payload) -> Result<JobOutput, JobError> {
    let answer = stage("Answer", 10, request(ANSWER_SYSTEM, payload.topic.clone()))?;
    finish(&answer);
    Ok(JobOutput {
        result: serde_json::json!({ "answer": answer }).to_string(),
        blocks: markdown_blocks(&answer),
    })
}

/// A draft, then rounds of critique and revision until the critic approves
/// or `max_iterations` rounds are done.
pub fn critic(payload: &Payload) -> Result<JobOutput, JobError> {
    let rounds = u32::from(payload.max_iterations);
    let mut draft = stage("Draft", 5, request(ANSWER_SYSTEM, payload.topic.clone()))?;
    let mut done = 0;
    for round in 1..=rounds {
        let percent = (10 + 80 * (round - 1) / rounds) as u8;
        let critique = stage(
            &format!("Critique {round}"),
            percent,
            request(CRITIC_SYSTEM, stages::critique_prompt(payload, &draft)),
        )?;
        events::emit(
            "critique_generated",
            &serde_json::json!({ "round": round, "critique": critique }).to_string(),
        );
        done = round;
        if critique.contains(APPROVED) {
            break;
        }
        draft = stage(
            &format!("Revision {round}"),
            percent + (40 / rounds) as u8,
            request(ANSWER_SYSTEM, stages::revision_prompt(payload, &draft, &critique)),
        )?;
        events::emit(
            "revision_generated",
            &serde_json::json!({ "round": round, "length": draft.chars().count() }).to_string(),
        );
    }
    finish(&draft);
    Ok(JobOutput {
        result: serde_json::json!({ "draft": draft, "rounds": done }).to_string(),
        blocks: markdown_blocks(&draft),
    })
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

fn markdown_blocks(text: &str) -> Vec<ContentBlock> {
    stages::markdown(text).map(ContentBlock::Markdown).into_iter().collect()
}
