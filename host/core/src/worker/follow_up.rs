//! Follow-up jobs (the WIT `jobs` interface): a multi-stage pipeline runs each
//! stage as a job of its own. A guest asks for follow-ups while it runs; they
//! are queued only once its job completes, before the completion is recorded,
//! under ids derived from the job's, so a job that runs twice (recovery after
//! a crash) queues each follow-up once. Each is queued under the attempt's
//! fence: an attempt that lost its job queues nothing, and a follow-up takes
//! the job's message in the same step that queues it.

use serde_json::json;

use spool_runtime::EventType;

use crate::intake::{Intake, IntakeError, Submission};
use crate::queue::{Fence, JobRecord, KeyLayout, Written};
use crate::store::BoundMessage;

/// Follow-ups one job may ask for.
const MAX_FOLLOW_UPS: usize = 8;
/// Follow-ups of follow-ups, at most: a guest must not be able to loop forever.
const MAX_DEPTH: usize = 32;

/// A job to queue once the current one completes.
#[derive(Clone, Debug)]
pub struct FollowUp {
    pub id: String,
    pub queue: String,
    pub payload: String,
    /// The follow-up drives the job's message from now on.
    pub takes_message: bool,
}

/// The id of a job's `index`-th follow-up (from 0): `{job}.{index + 1}`.
pub fn follow_up_id(job_id: &str, index: usize) -> Result<String, String> {
    if index >= MAX_FOLLOW_UPS {
        return Err(format!(
            "a job may queue at most {MAX_FOLLOW_UPS} follow-ups"
        ));
    }
    if job_id.matches('.').count() >= MAX_DEPTH {
        return Err(format!(
            "a chain of follow-ups may be at most {MAX_DEPTH} jobs deep"
        ));
    }
    Ok(format!("{job_id}.{}", index + 1))
}

/// Why a completed job's follow-ups were not all queued.
pub enum NotQueued {
    /// The attempt lost its job: it must record nothing.
    Lost,
    /// A cancel was accepted: the job ends cancelled.
    Cancelled,
    /// One could not be queued (the job should be retried; the ones queued
    /// stay, and the retry's identical ids find them in place).
    Failed(String),
}

/// Queues every follow-up of a completed job with its user, tier and priority,
/// passing its message to the follow-up that asked for it.
pub async fn queue_all(
    intake: &Intake,
    fence: &Fence,
    record: &JobRecord,
    message: Option<&BoundMessage>,
    follow_ups: Vec<FollowUp>,
) -> Result<(), NotQueued> {
    for follow_up in follow_ups {
        // Queuing checks the parent's fence in the same script: one hash
        // slot, so on a cluster one queue (see `queue::KeyLayout`).
        if intake.queue.layout() == KeyLayout::Cluster && follow_up.queue != record.queue {
            return Err(NotQueued::Failed(format!(
                "could not queue follow-up {} on `{}`: on a Redis Cluster a follow-up goes to its parent's queue (`{}`)",
                follow_up.id, follow_up.queue, record.queue
            )));
        }
        let submission = Submission {
            user_id: record.user_id.clone(),
            user_tier: record.user_tier.clone(),
            priority: record.priority,
            payload: follow_up.payload,
            message: message.filter(|_| follow_up.takes_message).cloned(),
            job_id: None,
            parent: Some(fence.clone()),
        };
        match intake
            .submit_with_id(&follow_up.queue, follow_up.id.clone(), &submission)
            .await
        {
            Ok(_) => announce(intake, fence, &follow_up.id, &follow_up.queue).await?,
            Err(IntakeError::Duplicate(_)) => {}
            Err(IntakeError::Fenced) => return Err(NotQueued::Lost),
            Err(IntakeError::ParentCancelled) => return Err(NotQueued::Cancelled),
            Err(error) => {
                return Err(NotQueued::Failed(format!(
                    "could not queue follow-up {} on `{}`: {error}",
                    follow_up.id, follow_up.queue
                )));
            }
        }
    }
    Ok(())
}

async fn announce(
    intake: &Intake,
    fence: &Fence,
    follow_up: &str,
    queue: &str,
) -> Result<(), NotQueued> {
    let data = json!({ "jobId": follow_up, "queue": queue }).to_string();
    match intake
        .queue
        .append_event(fence, EventType::FollowUpQueued.as_str(), &data)
        .await
    {
        Ok(Written::Yes) => Ok(()),
        Ok(Written::Fenced) => Err(NotQueued::Lost),
        Ok(Written::Cancelled) => Err(NotQueued::Cancelled),
        Err(error) => {
            tracing::warn!(job = %fence.job_id, %error, "could not publish follow_up_queued");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_the_job_and_are_bounded() {
        assert_eq!(follow_up_id("j", 0).as_deref(), Ok("j.1"));
        assert_eq!(follow_up_id("j.1", 1).as_deref(), Ok("j.1.2"));
        assert!(follow_up_id("j", MAX_FOLLOW_UPS).is_err());
        let deep = format!("j{}", ".1".repeat(MAX_DEPTH));
        assert!(follow_up_id(&deep, 0).is_err());
        assert!(follow_up_id(&deep[..deep.len() - 2], 0).is_ok());
    }
}
