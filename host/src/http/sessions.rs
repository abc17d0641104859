//! The session/message API (design D): sessions create/get/delete, messages
//! post/list/get, separately stored content on demand, session tasks (a
//! multi-step workflow run by a guest on the task queue) and the cleanup of
//! old messages. The message SSE stream is in `message_stream.rs`; the store
//! itself is `spool_core::store`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use spool_core::access::Identity;
use spool_core::intake::Submission;
use spool_core::queue::BoundMessage;
use spool_core::store::{StoreError, valid_id, validate_block};

const ROLES: &[&str] = &["user", "assistant", "system", "tool"];

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::MessageNotFound(_) => {
                ApiError::not_found("message_not_found", error.to_string())
            }
            StoreError::SessionNotFound(_) => {
                ApiError::not_found("session_not_found", error.to_string())
            }
            StoreError::MessageExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "message_exists", error.to_string())
            }
            StoreError::Finished(_) => {
                ApiError::new(StatusCode::CONFLICT, "message_finished", error.to_string())
            }
            StoreError::TaskNotRunning(..) => {
                ApiError::new(StatusCode::CONFLICT, "task_finished", error.to_string())
            }
            StoreError::Invalid(message) => ApiError::invalid("invalid_field", message),
            // Only a store fenced by a job's attempt refuses so; the API's is not.
            StoreError::Fenced | StoreError::Cancelled => {
                ApiError::new(StatusCode::CONFLICT, "fenced", error.to_string())
            }
            StoreError::Redis(error) => error.into(),
        }
    }
}

/// Checks the session exists and the caller may see it: another tenant's
/// session is "not found", so that ids do not leak.
pub async fn visible_session(
    state: &AppState,
    caller: &Identity,
    sid: &str,
) -> Result<(), ApiError> {
    checked_id("session", sid)?;
    match state.sessions.session_owner(sid).await? {
        Some(owner) if caller.user.is_none() || caller.owns(&owner) => Ok(()),
        _ => Err(session_not_found(sid)),
    }
}

/// Checks the message exists and the caller may see its session.
pub async fn visible_message(
    state: &AppState,
    caller: &Identity,
    mid: &str,
) -> Result<String, ApiError> {
    checked_id("message", mid)?;
    let Some((session, _)) = state.sessions.message_status(mid).await? else {
        return Err(StoreError::MessageNotFound(mid.to_owned()).into());
    };
    if visible_session(state, caller, &session).await.is_err() {
        return Err(StoreError::MessageNotFound(mid.to_owned()).into());
    }
    Ok(session)
}

pub fn checked_id(kind: &'static str, id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_id",
            format!("`{id}` is not a valid {kind} id (1-64 characters of A-Z, a-z, 0-9, '-', '_')"),
        ))
    }
}

fn session_not_found(id: &str) -> ApiError {
    StoreError::SessionNotFound(id.to_owned()).into()
}

/// POST /api/v1/sessions, body optional: `{"metadata": any JSON}`.
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let metadata = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        let body: Value = serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
        let Value::Object(mut fields) = body else {
            return Err(ApiError::invalid(
                "invalid_body",
                "the body must be a JSON object",
            ));
        };
        let metadata = fields.remove("metadata").unwrap_or(Value::Null);
        if !(metadata.is_object() || metadata.is_null()) {
            return Err(ApiError::invalid(
                "invalid_field",
                "`metadata` must be a JSON object",
            ));
        }
        if let Some(unknown) = fields.keys().next() {
            return Err(ApiError::invalid(
                "invalid_field",
                format!("unknown field `{unknown}`; a session takes only `metadata`"),
            ));
        }
        metadata
    };
    let owner = caller.user.as_ref().map(|tenant| tenant.user_id.as_str());
    let id = state.sessions.create_session(&metadata, owner).await?;
    let session = state
        .sessions
        .session(&id)
        .await?
        .unwrap_or_else(|| json!({ "id": id }));
    Ok((StatusCode::CREATED, Json(session)))
}

pub async fn get_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    state
        .sessions
        .session(&sid)
        .await?
        .map(Json)
        .ok_or_else(|| session_not_found(&sid))
}

pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    let deleted = state
        .sessions
        .delete_session(&sid)
        .await?
        .ok_or_else(|| session_not_found(&sid))?;
    Ok(Json(
        json!({ "id": sid, "deleted": true, "messagesDeleted": deleted }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    blocks: Vec<Value>,
}

/// POST /api/v1/sessions/{sid}/messages: a finished message with text and/or blocks.
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    visible_session(&state, &caller, &sid).await?;
    if !ROLES.contains(&body.role.as_str()) {
        return Err(ApiError::invalid(
            "invalid_role",
            format!(
                "role must be one of {}, got `{}`",
                ROLES.join(", "),
                body.role
            ),
        ));
    }
    if body.content.is_empty() && body.blocks.is_empty() {
        return Err(ApiError::invalid(
            "empty_message",
            "a message needs `content` (text) or `blocks`",
        ));
    }
    for (index, block) in body.blocks.iter().enumerate() {
        validate_block(block).map_err(|reason| {
            ApiError::invalid("invalid_block", format!("blocks[{index}]: {reason}"))
        })?;
    }
    let id = state
        .sessions
        .post_message(&sid, &body.role, &body.content, &body.blocks)
        .await?;
    let message = state
        .sessions
        .load(&id, false)
        .await?
        .ok_or_else(|| StoreError::MessageNotFound(id.clone()))?;
    Ok((StatusCode::CREATED, Json(message)))
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    offset: usize,
}

fn default_limit() -> usize {
    50
}

pub async fn list_messages(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    if !(1..=1000).contains(&query.limit) {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("limit must be from 1 to 1000, got {}", query.limit),
        ));
    }
    if state.sessions.session(&sid).await?.is_none() {
        return Err(session_not_found(&sid));
    }
    let (messages, total) = state
        .sessions
        .list_messages(&sid, query.limit, query.offset)
        .await?;
    Ok(Json(
        json!({ "sessionId": sid, "total": total, "limit": query.limit, "offset": query.offset, "messages": messages }),
    ))
}

#[derive(Deserialize)]
pub struct LoadQuery {
    /// Also load blocks stored on their own (otherwise they stay references).
    #[serde(default)]
    include_content: bool,
}

pub async fn get_message(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(mid): ApiPath<String>,
    ApiQuery(query): ApiQuery<LoadQuery>,
) -> Result<Json<Value>, ApiError> {
    visible_message(&state, &caller, &mid).await?;
    let message = state.sessions.load(&mid, query.include_content).await?;
    message
        .map(Json)
        .ok_or_else(|| StoreError::MessageNotFound(mid).into())
}

/// GET /api/v1/content/{id}: one separately stored block, loaded on demand.
pub async fn get_content(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    checked_id("content", &id)?;
    let content = state.sessions.content(&id).await?;
    if let Some(message) = content.as_ref().and_then(|c| c["messageId"].as_str())
        && caller.user.is_some()
        && visible_message(&state, &caller, message).await.is_err()
    {
        return Err(ApiError::not_found(
            "content_not_found",
            format!("no stored content `{id}`"),
        ));
    }
    content.map(Json).ok_or_else(|| ApiError::not_found("content_not_found", format!("no stored content `{id}` (blocks of 10 KB or less live in their message; stored content expires after 7 days)")))
}

/// POST /api/v1/sessions/{sid}/tasks: creates the assistant message the task
/// will fill and queues the job whose guest runs the workflow and drives it.
pub async fn start_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    visible_session(&state, &caller, &sid).await?;
    let queue = state.sessions.config().task_queue.clone();
    if !state.intake.routes.contains_key(&queue) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "task_queue_missing",
            format!("the task queue `{queue}` is not configured"),
        ));
    }
    // The message names its job before the job exists, so whichever instance
    // claims the job finds the binding in place.
    let job_id = uuid::Uuid::now_v7().to_string();
    let message_id = state
        .sessions
        .create_message(&sid, "assistant", Some(&job_id))
        .await?;
    // The body is the task's payload: the task queue's handler checks it in
    // `admit` (a refusal is a 422 naming the field) and the host never reads it.
    let submission = Submission {
        priority: 5,
        payload: Value::Object(body).to_string(),
        message: Some(BoundMessage {
            session_id: sid.clone(),
            message_id: message_id.clone(),
        }),
        ..Submission::default()
    };
    let submission = super::jobs::as_caller(&caller, submission)?;
    if let Err(error) = state
        .intake
        .submit_with_id(&queue, job_id.clone(), &submission)
        .await
    {
        let error = ApiError::from(error);
        // The message must not wait forever for a job that was never queued.
        if let Err(fail_error) = state
            .sessions
            .fail(
                &sid,
                &message_id,
                &format!("the task was not queued: {}", error.message),
            )
            .await
        {
            tracing::warn!(message = %message_id, error = %fail_error, "could not end the message of an unqueued task");
        }
        return Err(error);
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "sessionId": sid,
            "messageId": message_id,
            "jobId": job_id,
            "queue": queue,
            "messageUrl": format!("/api/v1/messages/{message_id}"),
            "streamUrl": format!("/api/v1/sessions/{sid}/messages/{message_id}/stream"),
            "jobStreamUrl": format!("/api/v1/jobs/{job_id}/stream"),
        })),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CleanupRequest {
    older_than_days: Option<f64>,
    older_than_secs: Option<f64>,
}

/// POST /api/v1/cleanup {"olderThanDays": N} (or `olderThanSecs`): deletes
/// messages created longer ago than that, in every session.
pub async fn cleanup(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<CleanupRequest>,
) -> Result<Json<Value>, ApiError> {
    let secs = match (body.older_than_days, body.older_than_secs) {
        (Some(days), None) => days * 86_400.0,
        (None, Some(secs)) => secs,
        _ => {
            return Err(ApiError::invalid(
                "invalid_body",
                "give exactly one of `olderThanDays` and `olderThanSecs`",
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(ApiError::invalid(
            "invalid_field",
            "the age must be a non-negative number",
        ));
    }
    let report = state.sessions.cleanup((secs * 1000.0) as u64).await?;
    Ok(Json(json!({ "olderThanSecs": secs, "report": report })))
}
