//! Bulk submission: `POST /api/queues/{queue}/jobs/bulk` and `POST
//! /api/chat/bulk`. A batch of up to `bulk_max_jobs` jobs is checked item by
//! item (fields, then each job's `admit` in Wasm) and queued in one Redis
//! script call, all or nothing: a refusal names every bad item by index and
//! queues none. Item ids behave as on the single routes (a repeat is the first
//! job, never a second one). Reads the same bodies as `jobs`; never a payload.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ErrorDetail};
use super::job_view::CHAT_QUEUE;
use super::jobs::{Accepted, GenericFields, as_caller, chat_submission, generic_submission};
use super::schemas::ChatRequest;
use spool_core::access::Identity;
use spool_core::intake::{BulkIntakeError, IntakeError, Submission};
use spool_core::queue::JobState;

/// A batch for a named queue: each item is the body of `POST /api/queues/{queue}/jobs`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkJobs {
    #[schema(value_type = Vec<GenericFields>, min_items = 1, max_items = 1000)]
    jobs: Vec<Value>,
}

/// A batch of chats: each item is the body of `POST /api/chat`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkChats {
    #[schema(value_type = Vec<ChatRequest>, min_items = 1, max_items = 1000)]
    jobs: Vec<Value>,
}

/// Every item of an accepted batch, in the order sent.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkAccepted {
    pub jobs: Vec<Accepted>,
    /// Items queued now.
    pub queued: usize,
    /// Items whose id already named a job (`duplicate: true`): nothing new queued.
    pub duplicates: usize,
}

/// What is wrong with one item of a refused batch.
#[derive(Serialize, ToSchema)]
pub struct ItemError {
    /// The item's position in `jobs`, from 0.
    pub index: usize,
    /// As on the single route: `invalid_priority`, `rejected_by_handler`, `job_id_taken`, ...
    pub code: &'static str,
    pub message: String,
}

/// A refused batch: nothing of it was queued. `items` names each bad item
/// when the fault is theirs.
#[derive(Serialize, ToSchema)]
pub struct BulkErrorBody {
    pub error: ErrorDetail,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemError>,
}

/// A refusal of the whole batch.
pub struct BulkError {
    status: StatusCode,
    code: &'static str,
    message: String,
    items: Vec<ItemError>,
}

impl From<ApiError> for BulkError {
    fn from(error: ApiError) -> Self {
        Self {
            status: error.status,
            code: error.code,
            message: error.message,
            items: Vec::new(),
        }
    }
}

impl IntoResponse for BulkError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "bulk submission failed");
        }
        let body = BulkErrorBody {
            error: ErrorDetail::new(self.status, self.code, self.message),
            items: self.items,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Up to `bulk_max_jobs` jobs for a named queue, queued all or nothing.
#[utoipa::path(post, path = "/api/queues/{queue}/jobs/bulk", tag = "jobs",
    params(super::schemas::QueuePath),
    request_body = BulkJobs,
    responses(
        (status = 202, description = "Queued (items whose id already named a job say `duplicate`)", body = BulkAccepted),
        (status = 200, description = "Every id already named a job: nothing new queued", body = BulkAccepted),
        (status = 404, description = "No such queue", body = BulkErrorBody),
        (status = 409, description = "An item's id names another queue's job; nothing queued", body = BulkErrorBody),
        (status = 422, description = "Items are invalid or refused by the handler (each named in `items`), or the batch is empty or over `bulk_max_jobs`; nothing queued", body = BulkErrorBody),
        (status = 429, description = "The queue has no room for the whole batch; nothing queued", body = BulkErrorBody)))]
pub async fn submit_generic_bulk(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(queue): ApiPath<String>,
    ApiJson(body): ApiJson<BulkJobs>,
) -> Result<(StatusCode, Json<BulkAccepted>), BulkError> {
    let submissions = read_items(&state, &caller, body.jobs, generic_submission)?;
    submit_all(&state, &caller, &queue, submissions).await
}

/// Up to `bulk_max_jobs` chats (design E's body each), queued all or nothing.
#[utoipa::path(post, path = "/api/chat/bulk", tag = "jobs",
    request_body = BulkChats,
    responses(
        (status = 202, description = "Queued (items whose id already named a job say `duplicate`)", body = BulkAccepted),
        (status = 200, description = "Every id already named a job: nothing new queued", body = BulkAccepted),
        (status = 409, description = "An item's id names another queue's job; nothing queued", body = BulkErrorBody),
        (status = 422, description = "Items are invalid or refused by the handler (each named in `items`), or the batch is empty or over `bulk_max_jobs`; nothing queued", body = BulkErrorBody),
        (status = 429, description = "The queue has no room for the whole batch; nothing queued", body = BulkErrorBody)))]
pub async fn submit_chat_bulk(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiJson(body): ApiJson<BulkChats>,
) -> Result<(StatusCode, Json<BulkAccepted>), BulkError> {
    let submissions = read_items(&state, &caller, body.jobs, chat_submission)?;
    submit_all(&state, &caller, CHAT_QUEUE, submissions).await
}

/// Checks the batch's size and every item's fields; names every bad item.
fn read_items(
    state: &AppState,
    caller: &Identity,
    items: Vec<Value>,
    read: fn(Value) -> Result<Submission, ApiError>,
) -> Result<Vec<Submission>, BulkError> {
    let max = state.bulk_max_jobs;
    if items.is_empty() || items.len() > max {
        return Err(ApiError::invalid(
            "invalid_batch_size",
            format!(
                "a batch carries 1 to {max} jobs (bulk_max_jobs), got {}",
                items.len()
            ),
        )
        .into());
    }
    let mut submissions = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match read(item).and_then(|submission| as_caller(caller, submission)) {
            Ok(submission) => submissions.push(submission),
            Err(error) => bad.push(ItemError {
                index,
                code: error.code,
                message: error.message,
            }),
        }
    }
    if bad.is_empty() {
        Ok(submissions)
    } else {
        Err(refused_items(StatusCode::UNPROCESSABLE_ENTITY, bad))
    }
}

fn refused_items(status: StatusCode, items: Vec<ItemError>) -> BulkError {
    BulkError {
        status,
        code: "invalid_items",
        message: format!(
            "{} of the batch's jobs are invalid (see items); nothing was queued",
            items.len()
        ),
        items,
    }
}

async fn submit_all(
    state: &AppState,
    caller: &Identity,
    queue: &str,
    submissions: Vec<Submission>,
) -> Result<(StatusCode, Json<BulkAccepted>), BulkError> {
    let owner = caller.user.as_ref().map(|tenant| tenant.user_id.as_str());
    let accepted = match state.intake.submit_bulk(queue, &submissions, owner).await {
        Ok(accepted) => accepted,
        Err(BulkIntakeError::Batch(error)) => return Err(ApiError::from(error).into()),
        Err(BulkIntakeError::Taken(index)) => {
            let id = submissions
                .get(index)
                .and_then(|s| s.job_id.clone())
                .unwrap_or_default();
            return Err(BulkError {
                status: StatusCode::CONFLICT,
                code: "job_id_taken",
                message: "an item's job id is taken by a job of another queue; nothing was queued"
                    .into(),
                items: vec![ItemError {
                    index,
                    code: "job_id_taken",
                    message: format!("job id `{id}` is taken by a job of another queue"),
                }],
            });
        }
        Err(BulkIntakeError::Items(refused)) => {
            // A trapped rule is the handler's fault, not the client's.
            let status = if refused
                .iter()
                .any(|(_, e)| matches!(e, IntakeError::HandlerFailed(_)))
            {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            let items = refused
                .into_iter()
                .map(|(index, error)| {
                    let error = ApiError::from(error);
                    ItemError {
                        index,
                        code: error.code,
                        message: error.message,
                    }
                })
                .collect();
            return Err(refused_items(status, items));
        }
    };
    let mut jobs = Vec::with_capacity(accepted.len());
    let mut duplicates = 0;
    for item in accepted {
        let id = item.accepted.id;
        let (state_now, class, score) = if item.duplicate {
            duplicates += 1;
            match state.queue.job(&id).await.map_err(ApiError::from)? {
                Some(record) => (record.state, record.class, record.score),
                // Expired between the script and now: say what the script saw.
                None => (
                    JobState::Waiting,
                    item.accepted.class.to_owned(),
                    item.accepted.score,
                ),
            }
        } else {
            (
                JobState::Waiting,
                item.accepted.class.to_owned(),
                item.accepted.score,
            )
        };
        jobs.push(Accepted {
            success: true,
            message: if item.duplicate {
                super::jobs::ALREADY_QUEUED
            } else {
                super::jobs::QUEUED
            },
            status_url: format!("/api/job/{id}"),
            stream_url: format!("/stream/status/{id}"),
            job_id: id,
            queue: item.accepted.queue,
            state: state_now,
            class,
            score,
            duplicate: item.duplicate.then_some(true),
        });
    }
    let queued = jobs.len() - duplicates;
    let status = if queued == 0 {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        Json(BulkAccepted {
            jobs,
            queued,
            duplicates,
        }),
    ))
}

#[cfg(test)]
mod tests {
    /// The batch cap the API description states (`max_items` above).
    const DESCRIBED_MAX_JOBS: usize = 1000;

    #[test]
    fn the_described_cap_is_the_default() {
        assert_eq!(
            DESCRIBED_MAX_JOBS,
            spool_core::config::Config::default().bulk_max_jobs
        );
    }
}
