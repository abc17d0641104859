//! Answering a request with its job's outcome: routes that speak a
//! request/response protocol (`/api/embeddings`, the OpenAI `/v1` routes)
//! submit a job and hold the request open until it ends, following its event
//! stream through the hub like any SSE watcher.
//!
//! Owns the wait and how a job that did not complete is answered. It must not
//! read a job's result: what the handler returned is the calling route's.

use std::time::Duration;

use axum::http::StatusCode;

use super::AppState;
use super::error::ApiError;
use super::stream::refused;
use spool_core::access::Identity;
use spool_core::events::{Event, JobEvents};
use spool_core::follow::{Follower, Step};
use spool_core::queue::{JobRecord, JobState};

/// Longest a request is held open for its job (queueing, pacing and
/// retries included); after it the client gets 504 and the job id.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Follows a job's events from its start, as a watcher of the caller's key.
pub async fn follow(
    state: &AppState,
    caller: &Identity,
    job_id: &str,
) -> Result<Follower<JobEvents>, ApiError> {
    let source = super::jobs::job_events(state, job_id).await?;
    Follower::open(
        &state.hub,
        source,
        "0-0",
        state.quiet_interval(),
        &caller.key_id,
    )
    .await
    .map_err(refused)
}

/// The next event of a followed job: `Ok(None)` once it has ended. A
/// follower interrupted (slow reader, store hiccup) is reopened after the
/// last event it delivered, so nothing is missed.
pub async fn next_event(
    state: &AppState,
    caller: &Identity,
    follower: &mut Follower<JobEvents>,
    job_id: &str,
) -> Result<Option<Event>, ApiError> {
    loop {
        match follower.next().await {
            None => return Ok(None),
            Some(Step::Entry(event)) => return Ok(Some(event)),
            Some(Step::Quiet) => continue,
            Some(Step::Interrupted(interruption)) => {
                let source = super::jobs::job_events(state, job_id).await?;
                *follower = Follower::open(
                    &state.hub,
                    source,
                    &interruption.last_id,
                    state.quiet_interval(),
                    &caller.key_id,
                )
                .await
                .map_err(refused)?;
            }
        }
    }
}

/// Waits (up to [`MAX_WAIT`]) for the job to end and returns its record;
/// a job that did not complete is an error naming it.
pub async fn completed(
    state: &AppState,
    caller: &Identity,
    job_id: &str,
) -> Result<JobRecord, ApiError> {
    let mut follower = follow(state, caller, job_id).await?;
    let ended = async {
        while let Some(event) = next_event(state, caller, &mut follower, job_id).await? {
            if event.is_terminal() {
                break;
            }
        }
        Ok::<_, ApiError>(())
    };
    match tokio::time::timeout(MAX_WAIT, ended).await {
        Ok(result) => result?,
        Err(_) => return Err(still_running(job_id)),
    }
    let record = state.queue.job(job_id).await?;
    match record {
        Some(record) if record.state == JobState::Completed => Ok(record),
        Some(record) => Err(not_completed(&record)),
        None => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "job_expired",
            format!("job {job_id} ended but its record is gone (retention)"),
        )),
    }
}

/// 504: the job goes on; its id says where to find its outcome.
pub fn still_running(job_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "job_still_running",
        format!(
            "job {job_id} did not finish within {} s; it goes on: GET /api/job/{job_id}",
            MAX_WAIT.as_secs()
        ),
    )
}

/// A job that failed or was cancelled: 502, with its error.
pub fn not_completed(record: &JobRecord) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "job_failed",
        format!(
            "job {} ended {}: {}",
            record.id,
            record.state.as_str(),
            record.error.as_deref().unwrap_or("no error recorded")
        ),
    )
}
