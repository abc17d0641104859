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
use crate::queue::{JobState, NewJob, SubmitError, class_name};
use crate::runtime::Job;

const DEFAULT_PRIORITY: i64 = 5;

/// The fields the host itself reads from a submission.
pub(super) struct Submission {
    pub user_id: String,
    pub user_tier: String,
    pub priority: u8,
    pub payload: String,
}

/// The chat API's fields (design E); anything else in the body (model, system,
/// temperature...) is passed to the handler untouched.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // Parsed to validate; the handler reads the payload itself.
struct ChatFields {
    user_id: String,
    prompt: String,
    #[serde(default)]
    conversation_history: Vec<HistoryTurn>,
    priority: Option<i64>,
    user_tier: Option<String>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct HistoryTurn {
    role: String,
    content: String,
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

pub async fn submit_chat(State(state): State<Arc<AppState>>, ApiJson(body): ApiJson<Value>) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Value::Object(mut object) = body else {
        return Err(ApiError::invalid("invalid_body", "the body must be a JSON object"));
    };
    let fields: ChatFields =
        serde_json::from_value(Value::Object(object.clone())).map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    for host_field in ["userId", "userTier", "priority"] {
        object.remove(host_field);
    }
    let submission = Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: Value::Object(object).to_string(),
    };
    submit(&state, "chat", submission).await
}

pub async fn submit_generic(
    State(state): State<Arc<AppState>>,
    ApiPath(queue): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let fields: GenericFields = serde_json::from_value(body).map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    let submission = Submission {
        user_id: fields.user_id,
        user_tier: fields.user_tier.unwrap_or_default(),
        priority: checked_priority(fields.priority)?,
        payload: fields.payload.to_string(),
    };
    submit(&state, &queue, submission).await
}

fn checked_priority(priority: Option<i64>) -> Result<u8, ApiError> {
    match priority.unwrap_or(DEFAULT_PRIORITY) {
        p @ 1..=10 => Ok(p as u8),
        p => Err(ApiError::invalid("invalid_priority", format!("priority must be an integer from 1 to 10, got {p}"))),
    }
}

/// Runs the queue's priority rule (in Wasm), then enqueues.
async fn submit(state: &AppState, queue: &str, submission: Submission) -> Result<(StatusCode, Json<Value>), ApiError> {
    submit_with_id(state, queue, uuid::Uuid::now_v7().to_string(), submission).await
}

/// [`submit`] with an id chosen by the caller (session tasks bind the job's
/// message to its id before the job is queued).
pub(super) async fn submit_with_id(
    state: &AppState,
    queue: &str,
    id: String,
    submission: Submission,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let route = state.routes.get(queue).ok_or_else(|| unknown_queue(state, queue))?;
    let handler = state.registry.get(&route.config.handler).ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "handler_unavailable", format!("handler `{}` is not loaded", route.config.handler))
    })?;
    let job = Job {
        id: id.clone(),
        queue: queue.to_owned(),
        user_id: submission.user_id.clone(),
        user_tier: submission.user_tier.clone(),
        priority: submission.priority,
        payload: submission.payload.clone(),
        attempt: 0,
    };
    let decision = match state.runtime.admit(&handler, &job).await {
        Ok(Ok(decision)) => decision,
        Ok(Err(reason)) => return Err(ApiError::invalid("rejected_by_handler", reason)),
        Err(failure) => {
            return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "handler_failed", format!("the priority rule failed: {failure}")));
        }
    };
    let score = decision.score.clamp(1, 10);
    let new_job = NewJob {
        id: &id,
        queue: &route.keys,
        class: decision.class,
        score,
        priority: submission.priority,
        user_id: &submission.user_id,
        user_tier: &submission.user_tier,
        payload: &submission.payload,
        handler: &handler.name,
        max_waiting: route.config.max_waiting,
    };
    match state.queue.submit(new_job).await {
        Ok(_) => {}
        Err(SubmitError::Full(queue)) => {
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", format!("queue `{queue}` is full; retry later")));
        }
        Err(SubmitError::Redis(error)) => return Err(error.into()),
    }
    let body = json!({
        "jobId": id,
        "queue": queue,
        "state": "waiting",
        "class": class_name(decision.class),
        "score": score,
        "statusUrl": format!("/api/job/{id}"),
        "streamUrl": format!("/stream/status/{id}"),
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

fn unknown_queue(state: &AppState, queue: &str) -> ApiError {
    let known: Vec<&str> = state.routes.keys().map(String::as_str).collect();
    ApiError::not_found("unknown_queue", format!("no queue named `{queue}`; known queues: {}", known.join(", ")))
}

pub async fn get_job(State(state): State<Arc<AppState>>, ApiPath(id): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    let record = state.queue.job(&id).await?.ok_or_else(|| job_not_found(&id))?;
    Ok(Json(record.to_json()))
}

pub fn job_not_found(id: &str) -> ApiError {
    ApiError::not_found("job_not_found", format!("no job `{id}` (it may have expired after its retention time)"))
}

pub async fn stats(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let mut queues = Map::new();
    let (mut waiting, mut active, mut delayed, mut completed, mut failed) = (0, 0, 0, 0, 0);
    for (name, route) in state.routes.iter() {
        let stats = state.queue.stats(&route.keys).await?;
        waiting += stats.waiting;
        active += stats.active;
        delayed += stats.delayed;
        completed += stats.completed;
        failed += stats.failed;
        queues.insert(name.clone(), serde_json::to_value(&stats).unwrap_or(Value::Null));
    }
    Ok(Json(json!({
        "waiting": waiting, "active": active, "delayed": delayed, "completed": completed, "failed": failed,
        "queues": queues,
    })))
}

pub async fn pause(State(state): State<Arc<AppState>>, ApiPath(queue): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &queue, true).await
}

pub async fn resume(State(state): State<Arc<AppState>>, ApiPath(queue): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    set_paused(&state, &queue, false).await
}

async fn set_paused(state: &AppState, queue: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    let route = state.routes.get(queue).ok_or_else(|| unknown_queue(state, queue))?;
    state.queue.set_paused(&route.keys, paused).await?;
    tracing::info!(queue, paused, "queue {}", if paused { "paused" } else { "resumed" });
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
    let route = state.routes.get(&queue).ok_or_else(|| unknown_queue(&state, &queue))?;
    let wanted = match JobState::parse(&query.state) {
        Some(s @ (JobState::Completed | JobState::Failed)) => s,
        _ => return Err(ApiError::invalid("invalid_query", "state must be `completed` or `failed`")),
    };
    let ids = state.queue.history(&route.keys, wanted, query.limit.clamp(1, 1000) as isize).await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        // Entries outlive their records by up to the retention time; skip those.
        if let Some(record) = state.queue.job(&id).await? {
            jobs.push(record.to_json());
        }
    }
    Ok(Json(json!({ "queue": queue, "state": wanted.as_str(), "jobs": jobs })))
}
