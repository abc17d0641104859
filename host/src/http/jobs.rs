//! Submitting jobs and reading their state: POST /api/chat, POST
//! /api/queues/{queue}/jobs, GET /api/job/{id}, GET /api/queue/stats, queue
//! pause/resume and history.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::job_view::{CHAT_QUEUE, JobView};
use super::schemas::{Attempt, ChatRequest};
use spool_core::access::Identity;
use spool_core::events::JobEvents;
use spool_core::intake::Route;
use spool_core::intake::{IntakeError, Submission};
use spool_core::queue::{CancelOutcome, JobRecord, JobState, QueueStats};

const DEFAULT_PRIORITY: u8 = 5;

/// The fields of a chat submission the host owns: who asks and how urgently.
/// Everything else in the body (prompt, conversationHistory, model, ...) is the
/// handler's payload, checked by its `admit`, never read here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatHostFields {
    user_id: String,
    job_id: Option<String>,
    priority: Option<serde_json::Number>,
    user_tier: Option<String>,
}

/// A job for any queue: the payload goes to the queue's handler as it is.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GenericFields {
    /// The handler's input; the host never reads it.
    payload: Value,
    /// Names the job (and makes the submission idempotent), like `Idempotency-Key`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    job_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 128, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_id: String,
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_tier: Option<String>,
    /// 1-3 low, 4-7 normal, 8-10 high.
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 10, default = 5)]
    priority: Option<serde_json::Number>,
}

/// Where to follow a job just submitted (or, for a repeated client-chosen
/// id, the job that id already names).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// Always true (design E's field: a refusal is an error body instead).
    pub success: bool,
    /// What happened, in words (design E's field).
    pub message: &'static str,
    pub job_id: String,
    /// `GET` this for the job's state.
    pub status_url: String,
    /// Server-sent events of the job's progress.
    pub stream_url: String,
    pub queue: String,
    pub state: JobState,
    /// The priority class the queue's rule chose.
    pub class: String,
    pub score: u8,
    /// Present (true) when the id already named this job: nothing new was queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// The `Idempotency-Key` header, documented once for both submit routes.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct SubmitHeaders {
    /// Names the job like `jobId`: a repeat gets the first job, never a second one.
    #[param(
        rename = "Idempotency-Key",
        pattern = "^[A-Za-z0-9_-]{1,128}$",
        nullable = false
    )]
    idempotency_key: Option<String>,
}

/// Design E's chat submission: the `chat` queue's handler decides its priority class.
#[utoipa::path(post, path = "/api/chat", tag = "jobs", params(SubmitHeaders), request_body = ChatRequest,
    responses(
        (status = 202, description = "Queued", body = Accepted),
        (status = 200, description = "The id already names this job", body = Accepted),
        (status = 422, description = "A field is invalid, or the handler refused the job", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full", body = super::error::ErrorBody)))]
pub async fn submit_chat(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let submission = with_idempotency_key(&headers, chat_submission(body)?)?;
    submit(&state, &caller, CHAT_QUEUE, submission).await
}

/// A job for a named queue.
#[utoipa::path(post, path = "/api/queues/{queue}/jobs", tag = "jobs",
    params(super::schemas::QueuePath, SubmitHeaders),
    request_body = GenericFields,
    responses(
        (status = 202, description = "Queued", body = Accepted),
        (status = 200, description = "The id already names this job", body = Accepted),
        (status = 404, description = "No such queue", body = super::error::ErrorBody),
        (status = 422, description = "A field is invalid, or the handler refused the job", body = super::error::ErrorBody)))]
pub async fn submit_generic(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(queue): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let submission = with_idempotency_key(&headers, generic_submission(body)?)?;
    submit(&state, &caller, &queue, submission).await
}

/// The longest user id and tier accepted, in characters.
const MAX_USER_ID: usize = 128;
const MAX_USER_TIER: usize = 32;

/// A user id: 1 to 128 characters of printable text.
pub fn checked_user_id(id: &str) -> Result<(), ApiError> {
    if (1..=MAX_USER_ID).contains(&id.chars().count()) && !id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_user_id",
            format!("userId must be 1 to {MAX_USER_ID} characters of printable text"),
        ))
    }
}

/// Who a submission is from: a key bound to a tenant decides user and tier,
/// whatever the body says; other callers (an unbound service key, the local
/// anonymous user) are trusted with the body's, once checked.
pub fn as_caller(caller: &Identity, mut submission: Submission) -> Result<Submission, ApiError> {
    if let Some(tenant) = &caller.user {
        submission.user_id = tenant.user_id.clone();
        submission.user_tier = tenant.tier.clone();
        return Ok(submission);
    }
    if !submission.user_id.is_empty() {
        checked_user_id(&submission.user_id)?;
    }
    checked_user_tier(&submission.user_tier)?;
    Ok(submission)
}

/// A user tier: at most 32 characters of printable text.
pub fn checked_user_tier(tier: &str) -> Result<(), ApiError> {
    if tier.chars().count() <= MAX_USER_TIER && !tier.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_user_tier",
            format!("userTier must be at most {MAX_USER_TIER} characters of printable text"),
        ))
    }
}

/// The job, if the caller may see it: another tenant's job is "not found",
/// so that ids do not leak.
pub async fn visible_job(
    state: &AppState,
    caller: &Identity,
    id: &str,
) -> Result<JobRecord, ApiError> {
    checked_job_id(id)?;
    match state.queue.job(id).await? {
        Some(record) if caller.owns(&record.user_id) => Ok(record),
        _ => Err(job_not_found(id)),
    }
}

/// The `Idempotency-Key` header names the job like a `jobId` field does; if
/// both are given they must agree.
fn with_idempotency_key(
    headers: &HeaderMap,
    mut submission: Submission,
) -> Result<Submission, ApiError> {
    let Some(key) = headers.get("idempotency-key") else {
        return Ok(submission);
    };
    let key = key.to_str().map_err(|_| {
        ApiError::invalid("invalid_job_id", "the Idempotency-Key header is not text")
    })?;
    checked_client_job_id(key)?;
    match &submission.job_id {
        // Conflict rather than 422: each name alone is valid, the request names the job twice.
        Some(field) if field != key => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflicting_job_id",
            format!("the Idempotency-Key header `{key}` and the jobId field `{field}` differ"),
        )),
        _ => {
            submission.job_id = Some(key.to_owned());
            Ok(submission)
        }
    }
}

/// The longest job id a client may choose.
const MAX_CLIENT_JOB_ID: usize = 128;

/// A client-chosen job id: 1 to 128 of `A-Z a-z 0-9 _ -`. (`.` is left to the
/// host, whose follow-up ids are `{job}.1`, `{job}.2`...)
fn checked_client_job_id(id: &str) -> Result<(), ApiError> {
    let valid = (1..=MAX_CLIENT_JOB_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_job_id",
            format!("a job id must be 1 to {MAX_CLIENT_JOB_ID} of the characters A-Z a-z 0-9 _ -"),
        ))
    }
}

/// The longest job id there is: a client's (128) with follow-up suffixes.
const MAX_JOB_ID: usize = 256;

/// A job id in a path: the characters job ids are made of (`.` separates a
/// follow-up's suffix); anything else names no job and must not reach a key.
pub fn checked_job_id(id: &str) -> Result<(), ApiError> {
    let valid = (1..=MAX_JOB_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_job_id",
            format!("a job id is 1 to {MAX_JOB_ID} of the characters A-Z a-z 0-9 _ - ."),
        ))
    }
}

/// Reads a chat submission (design E's body); the handler gets the rest as payload.
pub fn chat_submission(body: Value) -> Result<Submission, ApiError> {
    let Value::Object(mut object) = body else {
        return Err(ApiError::invalid(
            "invalid_body",
            "the body must be a JSON object",
        ));
    };
    let fields: ChatHostFields = serde_json::from_value(Value::Object(object.clone()))
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    for host_field in ["userId", "userTier", "priority", "jobId"] {
        object.remove(host_field);
    }
    // Design E's chats always say whose they are (a tenant key's user replaces it).
    checked_user_id(&fields.user_id)?;
    if let Some(id) = &fields.job_id {
        checked_client_job_id(id)?;
    }
    Ok(Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: Value::Object(object).to_string(),
        message: None,
        job_id: fields.job_id,
        parent: None,
    })
}

/// Reads a generic submission: `{payload, priority?, userId?, userTier?}`.
pub fn generic_submission(body: Value) -> Result<Submission, ApiError> {
    let fields: GenericFields = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    if let Some(id) = &fields.job_id {
        checked_client_job_id(id)?;
    }
    Ok(Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: fields.payload.to_string(),
        message: None,
        job_id: fields.job_id,
        parent: None,
    })
}

/// 1 to 10, default 5. JSON has one number type: `8.0` is 8.
pub fn checked_priority(priority: Option<serde_json::Number>) -> Result<u8, ApiError> {
    let Some(given) = priority else {
        return Ok(DEFAULT_PRIORITY);
    };
    given
        .as_f64()
        .filter(|p| p.fract() == 0.0 && (1.0..=10.0).contains(p))
        .map(|p| p as u8)
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_priority",
                format!("priority must be an integer from 1 to 10, got {given}"),
            )
        })
}

/// [`Accepted::message`] of a new job (design E's words) and of a repeated id.
pub const QUEUED: &str = "Task queued successfully";
pub const ALREADY_QUEUED: &str = "This job id already names a job: nothing new was queued";

/// Runs the queue's priority rule (in Wasm), then enqueues: 202 and where to
/// follow the job. A submission under a client-chosen id that is taken in the
/// same queue is a retry of the first: 200 with that job, never a second one.
pub async fn submit(
    state: &AppState,
    caller: &Identity,
    queue: &str,
    submission: Submission,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let submission = as_caller(caller, submission)?;
    match state.intake.submit(queue, &submission).await {
        Ok(accepted) => Ok((
            StatusCode::ACCEPTED,
            Json(Accepted {
                success: true,
                message: QUEUED,
                status_url: format!("/api/job/{}", accepted.id),
                stream_url: format!("/stream/status/{}", accepted.id),
                job_id: accepted.id,
                queue: accepted.queue,
                state: JobState::Waiting,
                class: accepted.class.to_owned(),
                score: accepted.score,
                duplicate: None,
            }),
        )),
        Err(IntakeError::Duplicate(id)) => {
            let record = state.queue.job(&id).await?;
            match record {
                Some(record) if record.queue == queue && caller.owns(&record.user_id) => Ok((
                    StatusCode::OK,
                    Json(Accepted {
                        success: true,
                        message: ALREADY_QUEUED,
                        job_id: id.clone(),
                        status_url: format!("/api/job/{id}"),
                        stream_url: format!("/stream/status/{id}"),
                        queue: record.queue,
                        state: record.state,
                        class: record.class,
                        score: record.score,
                        duplicate: Some(true),
                    }),
                )),
                _ => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "job_id_taken",
                    format!("job id `{id}` is taken by a job of another queue"),
                )),
            }
        }
        Err(error) => Err(error.into()),
    }
}

pub fn route<'a>(state: &'a AppState, queue: &str) -> Result<&'a Route, ApiError> {
    Ok(state.intake.route(queue)?)
}

/// A job and its finished attempts.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    job: JobView,
    #[schema(value_type = Vec<Attempt>)]
    attempt_history: Vec<Value>,
}

/// A job's state, progress and result (design E), with its attempts.
#[utoipa::path(get, path = "/api/job/{id}", tag = "jobs", params(super::schemas::JobPath),
    responses((status = 200, body = JobDetail),
        (status = 404, description = "No such job (or it expired)", body = super::error::ErrorBody)))]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobDetail>, ApiError> {
    let record = visible_job(&state, &caller, &id).await?;
    Ok(Json(JobDetail {
        job: JobView::from(&record),
        attempt_history: state.queue.attempt_history(&id).await?,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancelled {
    job_id: String,
    /// `cancelled`, or `active` while a running job is asked to stop.
    state: JobState,
    /// `requested` when the job is running: it stops at its next host call.
    #[serde(skip_serializing_if = "Option::is_none")]
    cancel: Option<&'static str>,
}

/// Cancels a waiting or delayed job at once; asks an active one to stop.
#[utoipa::path(delete, path = "/api/job/{id}", tag = "jobs", params(super::schemas::JobPath),
    responses((status = 200, description = "Cancelled", body = Cancelled),
        (status = 202, description = "Running: asked to stop", body = Cancelled),
        (status = 404, description = "No such job", body = super::error::ErrorBody),
        (status = 409, description = "Already finished", body = super::error::ErrorBody)))]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Cancelled>), ApiError> {
    visible_job(&state, &caller, &id).await?;
    match state.queue.cancel(&id, state.retention).await? {
        CancelOutcome::Cancelled => Ok((
            StatusCode::OK,
            Json(Cancelled {
                job_id: id,
                state: JobState::Cancelled,
                cancel: None,
            }),
        )),
        CancelOutcome::Requested => Ok((
            StatusCode::ACCEPTED,
            Json(Cancelled {
                job_id: id,
                state: JobState::Active,
                cancel: Some("requested"),
            }),
        )),
        CancelOutcome::AlreadyFinished(finished) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("job `{id}` already finished ({})", finished.as_str()),
        )),
        CancelOutcome::NotFound => Err(job_not_found(&id)),
    }
}

/// The event stream of the job `job_id` (404 when there is no such job).
pub async fn job_events(state: &AppState, job_id: &str) -> Result<JobEvents, ApiError> {
    JobEvents::find(&state.queue, job_id)
        .await?
        .ok_or_else(|| job_not_found(job_id))
}

pub fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job_not_found",
        format!("no job `{id}` (it may have expired after its retention time)"),
    )
}

/// Design E's queue statistics: totals over every queue, and each queue's own.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// Jobs not yet finished: waiting + active + delayed (design E's `total`).
    total: u64,
    waiting: u64,
    active: u64,
    delayed: u64,
    completed: u64,
    failed: u64,
    queues: BTreeMap<String, QueueStats>,
}

#[utoipa::path(get, path = "/api/queue/stats", tag = "queues", responses((status = 200, body = Stats)))]
pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Stats>, ApiError> {
    let mut totals = Stats {
        total: 0,
        waiting: 0,
        active: 0,
        delayed: 0,
        completed: 0,
        failed: 0,
        queues: BTreeMap::new(),
    };
    for (name, route) in state.intake.routes.iter() {
        let stats = state.queue.stats(&route.keys).await?;
        totals.waiting += stats.waiting;
        totals.active += stats.active;
        totals.delayed += stats.delayed;
        totals.completed += stats.completed;
        totals.failed += stats.failed;
        totals.queues.insert(name.clone(), stats);
    }
    totals.total = totals.waiting + totals.active + totals.delayed;
    Ok(Json(totals))
}

#[derive(Serialize, ToSchema)]
pub struct Paused {
    queue: String,
    paused: bool,
}

/// Stops workers claiming the queue's jobs (submissions still queue).
#[utoipa::path(post, path = "/api/queues/{queue}/pause", tag = "queues",
    params(super::schemas::QueuePath),
    responses((status = 200, body = Paused), (status = 404, description = "No such queue", body = super::error::ErrorBody)))]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&state, &queue, true).await
}

#[utoipa::path(post, path = "/api/queues/{queue}/resume", tag = "queues",
    params(super::schemas::QueuePath),
    responses((status = 200, body = Paused), (status = 404, description = "No such queue", body = super::error::ErrorBody)))]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&state, &queue, false).await
}

async fn set_paused(state: &AppState, queue: &str, paused: bool) -> Result<Json<Paused>, ApiError> {
    let route = route(state, queue)?;
    state.queue.set_paused(&route.keys, paused).await?;
    tracing::info!(
        queue,
        paused,
        "queue {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Json(Paused {
        queue: queue.to_owned(),
        paused,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// `completed` or `failed`.
    #[serde(default = "completed")]
    #[param(default = "completed", pattern = "^(completed|failed)$")]
    state: String,
    /// At most this many, newest first (1 to 1000).
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 1, maximum = 1000)]
    limit: usize,
}

fn completed() -> String {
    "completed".into()
}

fn default_limit() -> usize {
    50
}

#[derive(Serialize, ToSchema)]
pub struct History {
    queue: String,
    state: JobState,
    jobs: Vec<JobView>,
}

/// The queue's last finished jobs (design E keeps 50), newest first.
#[utoipa::path(get, path = "/api/queues/{queue}/history", tag = "queues",
    params(super::schemas::QueuePath, HistoryQuery),
    responses((status = 200, body = History), (status = 404, description = "No such queue", body = super::error::ErrorBody)))]
pub async fn history(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<History>, ApiError> {
    let route = route(&state, &queue)?;
    let wanted = match JobState::parse(&query.state) {
        Some(s @ (JobState::Completed | JobState::Failed)) => s,
        _ => {
            return Err(ApiError::invalid(
                "invalid_query",
                "state must be `completed` or `failed`",
            ));
        }
    };
    let ids = state
        .queue
        .history(
            &route.keys,
            wanted,
            super::bounds::checked_limit(query.limit)? as isize,
        )
        .await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        // Entries outlive their records by up to the retention time; skip those.
        if let Some(record) = state.queue.job(&id).await? {
            jobs.push(JobView::from(&record));
        }
    }
    Ok(Json(History {
        queue,
        state: wanted,
        jobs,
    }))
}
