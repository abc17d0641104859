//! `GET /api/queues/{queue}/jobs?state=waiting|active|delayed`: the jobs a
//! queue holds right now in an unfinished state, for the console's job lists
//! (finished ones are `history`'s, dead ones `dead`'s). Owns the query and
//! the answer's shape; which ids are listed is `Queue::unfinished`'s.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::job_view::JobView;
use super::jobs::route;
use spool_core::queue::JobState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `waiting`, `active` or `delayed`.
    #[serde(default = "waiting")]
    #[param(default = "waiting", pattern = "^(waiting|active|delayed)$")]
    state: String,
    /// At most this many (1 to 1000): higher classes first, then oldest first.
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 1, maximum = 1000)]
    limit: usize,
}

fn waiting() -> String {
    "waiting".into()
}

fn default_limit() -> usize {
    50
}

#[derive(Serialize, ToSchema)]
pub struct JobList {
    queue: String,
    state: JobState,
    jobs: Vec<JobView>,
}

/// The queue's waiting, active or delayed jobs as they stand now.
#[utoipa::path(get, path = "/api/queues/{queue}/jobs", tag = "queues",
    params(super::schemas::QueuePath, ListQuery),
    responses((status = 200, body = JobList), (status = 404, description = "No such queue", body = super::error::ErrorBody),
        (status = 422, description = "Unknown state or bad limit", body = super::error::ErrorBody)))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let route = route(&state, &queue)?;
    let wanted = match JobState::parse(&query.state) {
        Some(s @ (JobState::Waiting | JobState::Active | JobState::Delayed)) => s,
        _ => {
            return Err(ApiError::invalid(
                "invalid_query",
                "state must be `waiting`, `active` or `delayed`",
            ));
        }
    };
    let limit = super::bounds::checked_limit(query.limit)?;
    let ids = state.queue.unfinished(&route.keys, wanted, limit).await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        // An entry may outlive its job's stay in that state (a cancelled
        // waiting job, a claim just finished): show only what still holds.
        if let Some(record) = state.queue.job(&id).await?
            && record.state == wanted
        {
            jobs.push(JobView::from(&record));
        }
    }
    Ok(Json(JobList {
        queue,
        state: wanted,
        jobs,
    }))
}
