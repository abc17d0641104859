//! Dead letters over HTTP: list a queue's dead jobs, replay one (a fresh set of
//! attempts), purge one or all. The CLI's `spool dead` calls these.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::jobs::route;
use spool_core::queue::{DeadLetter, JobState, Replay};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many, oldest first (1 to 1000).
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 1, maximum = 1000)]
    limit: usize,
}

#[derive(Serialize, ToSchema)]
pub struct DeadList {
    queue: String,
    dead: Vec<DeadLetter>,
}

#[derive(Serialize, ToSchema)]
pub struct Purged {
    queue: String,
    /// Dead letters removed.
    purged: u64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Replayed {
    job_id: String,
    queue: String,
    state: JobState,
}

fn default_limit() -> usize {
    50
}

/// The queue's dead letters: jobs that failed every attempt.
#[utoipa::path(get, path = "/api/queues/{queue}/dead", tag = "queues",
    params(super::schemas::QueuePath, ListQuery),
    responses((status = 200, body = DeadList), (status = 404, description = "No such queue", body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DeadList>, ApiError> {
    let keys = &route(&state, &queue)?.keys;
    let dead = state
        .queue
        .dead_letters(keys, super::bounds::checked_limit(query.limit)?)
        .await?;
    Ok(Json(DeadList { queue, dead }))
}

/// Queues a dead job again, with a fresh set of attempts.
#[utoipa::path(post, path = "/api/queues/{queue}/dead/{job}/replay", tag = "queues",
    params(super::schemas::DeadJobPath),
    responses((status = 200, body = Replayed),
        (status = 404, description = "Not a dead letter of this queue", body = super::error::ErrorBody),
        (status = 409, description = "The id now names another job", body = super::error::ErrorBody)))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<Json<Replayed>, ApiError> {
    super::jobs::checked_job_id(&job)?;
    let keys = &route(&state, &queue)?.keys;
    match state.queue.replay(keys, &job).await? {
        Replay::Replayed(_) => {}
        Replay::NotDead => {
            return Err(ApiError::not_found(
                "not_dead",
                format!("job `{job}` is not in the dead-letter queue of `{queue}`"),
            ));
        }
        Replay::Taken(other) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_id_taken",
                format!(
                    "job id `{job}` now names another job (of queue `{other}`); the dead letter in `{queue}` is not replayed over it"
                ),
            ));
        }
    }
    tracing::info!(%queue, %job, "dead job replayed");
    Ok(Json(Replayed {
        job_id: job,
        queue,
        state: JobState::Waiting,
    }))
}

/// Deletes every dead letter of the queue.
#[utoipa::path(delete, path = "/api/queues/{queue}/dead", tag = "queues",
    params(super::schemas::QueuePath),
    responses((status = 200, body = Purged), (status = 404, description = "No such queue", body = super::error::ErrorBody)))]
pub async fn purge_all(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Purged>, ApiError> {
    let keys = &route(&state, &queue)?.keys;
    let purged = state.queue.purge_dead(keys, None).await?;
    Ok(Json(Purged { queue, purged }))
}

/// Deletes one dead letter.
#[utoipa::path(delete, path = "/api/queues/{queue}/dead/{job}", tag = "queues",
    params(super::schemas::DeadJobPath),
    responses((status = 200, body = Purged), (status = 404, description = "Not a dead letter of this queue", body = super::error::ErrorBody)))]
pub async fn purge_one(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<Json<Purged>, ApiError> {
    super::jobs::checked_job_id(&job)?;
    let keys = &route(&state, &queue)?.keys;
    match state.queue.purge_dead(keys, Some(&job)).await? {
        0 => Err(ApiError::not_found(
            "not_dead",
            format!("job `{job}` is not in the dead-letter queue of `{queue}`"),
        )),
        purged => Ok(Json(Purged { queue, purged })),
    }
}
