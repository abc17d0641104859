//! Submitting jobs and reading their state: POST /api/chat, POST
//! /api/queues/{queue}/jobs, GET /api/job/{id}, GET /api/queue/stats, queue
//! pause/resume and history.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use spool_core::intake::Route;
use spool_core::intake::Submission;
use spool_core::queue::{CancelOutcome, JobState};

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
    priority: Option<i64>,
    user_tier: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GenericFields {
    payload: Value,
    #[serde(default)]
    user_id: String,
    user_tier: Option<String>,
    priority: Option<i64>,
}

pub async fn submit_chat(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let accepted = submit(&state, CHAT_QUEUE, chat_submission(body)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

pub async fn submit_generic(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let accepted = submit(&state, &queue, generic_submission(body)?).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
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
    for host_field in ["userId", "userTier", "priority"] {
        object.remove(host_field);
    }
    Ok(Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: Value::Object(object).to_string(),
        message: None,
    })
}

/// Reads a generic submission: `{payload, priority?, userId?, userTier?}`.
pub fn generic_submission(body: Value) -> Result<Submission, ApiError> {
    let fields: GenericFields = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    Ok(Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: fields.payload.to_string(),
        message: None,
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

/// Runs the queue's priority rule (in Wasm), then enqueues; the body
/// answers where to follow the job.
pub async fn submit(
    state: &AppState,
    queue: &str,
    submission: Submission,
) -> Result<Value, ApiError> {
    let accepted = state.intake.submit(queue, &submission).await?;
    let id = accepted.id;
    Ok(json!({
        "jobId": id,
        "queue": accepted.queue,
        "state": "waiting",
        "class": accepted.class,
        "score": accepted.score,
        "statusUrl": format!("/api/job/{id}"),
        "streamUrl": format!("/stream/status/{id}"),
    }))
}

pub fn route<'a>(state: &'a AppState, queue: &str) -> Result<&'a Route, ApiError> {
    Ok(state.intake.route(queue)?)
}

pub async fn get_job(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .queue
        .job(&id)
        .await?
        .ok_or_else(|| job_not_found(&id))?;
    let mut body = record.to_json();
    body["attemptHistory"] = Value::Array(state.queue.attempt_history(&id).await?);
    Ok(Json(body))
}

/// Cancels a waiting or delayed job at once; asks an active one to stop.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
