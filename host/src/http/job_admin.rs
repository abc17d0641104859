//! An admin's view into and hand on one job of a queue: promote a delayed job
//! so it runs now, and read the payload it was submitted with (the console's
//! job page shows it). Admin routes only: the payload is a client's data and
//! no other role sees it here.
//!
//! The host never reads a payload: the stored bytes (JSON, as the submission
//! wrote them) are handed over as the response body, unparsed.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiPath};
use super::jobs::{checked_job_id, route};
use spool_core::queue::{JobState, Promote};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promoted {
    job_id: String,
    queue: String,
    /// `waiting`: in its class's line, ahead of its retry time.
    state: JobState,
}

fn unknown_job(queue: &str, job: &str) -> ApiError {
    ApiError::not_found("unknown_job", format!("queue `{queue}` has no job `{job}`"))
}

/// Runs a delayed job (one waiting for its retry) now: it joins its class's
/// line at once, keeping its class, priority and attempts.
#[utoipa::path(post, path = "/api/queues/{queue}/jobs/{job}/promote", tag = "queues",
    params(super::schemas::QueueJobPath),
    responses((status = 200, body = Promoted),
        (status = 404, description = "No such queue, or no such job in it", body = super::error::ErrorBody),
        (status = 409, description = "The job is not delayed (the message names its state)", body = super::error::ErrorBody)))]
pub async fn promote(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<Json<Promoted>, ApiError> {
    checked_job_id(&job)?;
    let keys = &route(&state, &queue)?.keys;
    match state.queue.promote(keys, &job).await? {
        Promote::Promoted(_) => {}
        Promote::NotFound => return Err(unknown_job(&queue, &job)),
        Promote::NotDelayed(current) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_delayed",
                format!(
                    "job `{job}` is {}, not delayed: only a delayed job can be promoted",
                    current.as_str()
                ),
            ));
        }
    }
    tracing::info!(%queue, %job, "delayed job promoted");
    Ok(Json(Promoted {
        job_id: job,
        queue,
        state: JobState::Waiting,
    }))
}

/// The payload a job was submitted with, as it was stored (any JSON value).
#[utoipa::path(get, path = "/api/queues/{queue}/jobs/{job}/payload", tag = "queues",
    params(super::schemas::QueueJobPath),
    responses((status = 200, description = "The job's payload as submitted", body = serde_json::Value),
        (status = 404, description = "No such queue, or no such job in it (or it expired)", body = super::error::ErrorBody)))]
pub async fn payload(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    checked_job_id(&job)?;
    route(&state, &queue)?;
    match state.queue.job(&job).await? {
        Some(record) if record.queue == queue => {
            Ok(([(header::CONTENT_TYPE, "application/json")], record.payload))
        }
        _ => Err(unknown_job(&queue, &job)),
    }
}
