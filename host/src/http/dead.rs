//! Dead letters over HTTP: list a queue's dead jobs, replay one (a fresh set of
//! attempts), purge one or all. The CLI's `spool dead` calls these.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::jobs::route;
use spool_core::queue::Replay;

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    50
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let keys = &route(&state, &queue)?.keys;
    let dead = state
        .queue
        .dead_letters(keys, query.limit.clamp(1, 1000))
        .await?;
    Ok(Json(json!({ "queue": queue, "dead": dead })))
}

pub async fn replay(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(
        json!({ "jobId": job, "queue": queue, "state": "waiting" }),
    ))
}

pub async fn purge_all(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let keys = &route(&state, &queue)?.keys;
    let purged = state.queue.purge_dead(keys, None).await?;
    Ok(Json(json!({ "queue": queue, "purged": purged })))
}

pub async fn purge_one(
    State(state): State<Arc<AppState>>,
    ApiPath((queue, job)): ApiPath<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    super::jobs::checked_job_id(&job)?;
    let keys = &route(&state, &queue)?.keys;
    match state.queue.purge_dead(keys, Some(&job)).await? {
        0 => Err(ApiError::not_found(
            "not_dead",
            format!("job `{job}` is not in the dead-letter queue of `{queue}`"),
        )),
        purged => Ok(Json(json!({ "queue": queue, "purged": purged }))),
    }
}
