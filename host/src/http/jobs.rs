//! Submitting jobs and reading their state: POST /api/chat, POST
//! /api/queues/{queue}/jobs, GET /api/job/{id}, GET /api/queue/stats, queue
//! pause/resume and history.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use spool_core::access::Identity;
use spool_core::intake::Route;
use spool_core::intake::{IntakeError, Submission};
use spool_core::queue::{CancelOutcome, JobRecord, JobState};

const DEFAULT_PRIORITY: i64 = 5;
/// The queue POST /api/chat submits to.
pub const CHAT_QUEUE: &str = "chat";

/// The fields of a chat submission the host owns: who asks and how urgently.
/// Everything else in the body (prompt, conversationHistory, model, ...) is the
/// handler's payload, checked by its `admit`, never read here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChatHostFields {
    user_id: String,
    job_id: Option<String>,
    priority: Option<i64>,
    user_tier: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenericFields {
    payload: Value,
    job_id: Option<String>,
    #[serde(default)]
    user_id: String,
    user_tier: Option<String>,
    priority: Option<i64>,
}

pub async fn submit_chat(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let submission = with_idempotency_key(&headers, chat_submission(body)?)?;
    submit(&state, &caller, CHAT_QUEUE, submission).await
}

pub async fn submit_generic(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(queue): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let submission = with_idempotency_key(&headers, generic_submission(body)?)?;
    submit(&state, &caller, &queue, submission).await
}

/// The longest user id and tier accepted.
const MAX_USER_ID: usize = 128;
const MAX_USER_TIER: usize = 32;

/// A user id: 1 to 128 bytes of printable text.
pub fn checked_user_id(id: &str) -> Result<(), ApiError> {
    if (1..=MAX_USER_ID).contains(&id.len()) && !id.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_user_id",
            format!("userId must be 1 to {MAX_USER_ID} bytes of printable text"),
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
    if submission.user_tier.len() > MAX_USER_TIER
        || submission.user_tier.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "invalid_user_tier",
            format!("userTier must be at most {MAX_USER_TIER} bytes of printable text"),
        ));
    }
    Ok(submission)
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
        Some(field) if field != key => Err(ApiError::invalid(
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

fn checked_priority(priority: Option<i64>) -> Result<u8, ApiError> {
    match priority.unwrap_or(DEFAULT_PRIORITY) {
        p @ 1..=10 => Ok(p as u8),
        p => Err(ApiError::invalid(
            "invalid_priority",
            format!("priority must be an integer from 1 to 10, got {p}"),
        )),
    }
}

/// Runs the queue's priority rule (in Wasm), then enqueues: 202 and where to
/// follow the job. A submission under a client-chosen id that is taken in the
/// same queue is a retry of the first: 200 with that job, never a second one.
pub async fn submit(
    state: &AppState,
    caller: &Identity,
    queue: &str,
    submission: Submission,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let submission = as_caller(caller, submission)?;
    match state.intake.submit(queue, &submission).await {
        Ok(accepted) => {
            let mut body = follow_links(&accepted.id);
            body["queue"] = json!(accepted.queue);
            body["state"] = json!("waiting");
            body["class"] = json!(accepted.class);
            body["score"] = json!(accepted.score);
            Ok((StatusCode::ACCEPTED, Json(body)))
        }
        Err(IntakeError::Duplicate(id)) => {
            let record = state.queue.job(&id).await?;
            match record {
                Some(record) if record.queue == queue && caller.owns(&record.user_id) => {
                    let mut body = follow_links(&id);
                    body["queue"] = json!(record.queue);
                    body["state"] = json!(record.state.as_str());
                    body["class"] = json!(record.class);
                    body["score"] = json!(record.score);
                    body["duplicate"] = json!(true);
                    Ok((StatusCode::OK, Json(body)))
                }
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

fn follow_links(id: &str) -> Value {
    json!({
        "jobId": id,
        "statusUrl": format!("/api/job/{id}"),
        "streamUrl": format!("/stream/status/{id}"),
    })
}

pub fn route<'a>(state: &'a AppState, queue: &str) -> Result<&'a Route, ApiError> {
    Ok(state.intake.route(queue)?)
}

pub async fn get_job(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = visible_job(&state, &caller, &id).await?;
    let mut body = record.to_json();
    body["attemptHistory"] = Value::Array(state.queue.attempt_history(&id).await?);
    Ok(Json(body))
}

/// Cancels a waiting or delayed job at once; asks an active one to stop.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    visible_job(&state, &caller, &id).await?;
    match state.queue.cancel(&id, state.retention).await? {
        CancelOutcome::Cancelled => Ok((
            StatusCode::OK,
            Json(json!({ "jobId": id, "state": "cancelled" })),
        )),
        CancelOutcome::Requested => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "jobId": id, "state": "active", "cancel": "requested" })),
        )),
        CancelOutcome::AlreadyFinished(finished) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_finished",
            format!("job `{id}` already finished ({})", finished.as_str()),
        )),
        CancelOutcome::NotFound => Err(job_not_found(&id)),
    }
}

pub fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found(
        "job_not_found",
        format!("no job `{id}` (it may have expired after its retention time)"),
    )
}

pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let mut queues = Map::new();
    let (mut waiting, mut active, mut delayed, mut completed, mut failed) = (0, 0, 0, 0, 0);
    for (name, route) in state.intake.routes.iter() {
        let stats = state.queue.stats(&route.keys).await?;
        waiting += stats.waiting;
        active += stats.active;
        delayed += stats.delayed;
        completed += stats.completed;
        failed += stats.failed;
        queues.insert(
            name.clone(),
            serde_json::to_value(&stats).unwrap_or(Value::Null),
        );
    }
    Ok(Json(json!({
        "waiting": waiting, "active": active, "delayed": delayed, "completed": completed, "failed": failed,
        "queues": queues,
    })))
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &queue, true).await
}

pub async fn resume(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &queue, false).await
}

async fn set_paused(state: &AppState, queue: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    let route = route(state, queue)?;
    state.queue.set_paused(&route.keys, paused).await?;
    tracing::info!(
        queue,
        paused,
        "queue {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(Json(json!({ "queue": queue, "paused": paused })))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    #[serde(default = "completed")]
    state: String,
    #[serde(default = "default_limit")]
    limit: u16,
}

fn completed() -> String {
    "completed".into()
}

fn default_limit() -> u16 {
    50
}

pub async fn history(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Value>, ApiError> {
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
        .history(&route.keys, wanted, query.limit.clamp(1, 1000) as isize)
        .await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        // Entries outlive their records by up to the retention time; skip those.
        if let Some(record) = state.queue.job(&id).await? {
            jobs.push(record.to_json());
        }
    }
    Ok(Json(
        json!({ "queue": queue, "state": wanted.as_str(), "jobs": jobs }),
    ))
}
