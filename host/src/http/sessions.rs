//! The session/message API (design D): sessions create/get/close (or
//! delete), messages post/list/get, separately stored content on demand,
//! session tasks (a multi-step workflow run by a guest on the task queue) and
//! the cleanup of old messages, everywhere or per session. Design D's bodies
//! (`{user_id, metadata}`, `{content, type, metadata}`) are accepted beside
//! spool's. The message SSE stream is in `message_stream.rs`; the store
//! itself is `spool_core::store`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use super::schemas::{Content, Message, NewContentBlock, Session};
use spool_core::access::Identity;
use spool_core::intake::Submission;
use spool_core::queue::BoundMessage;
use spool_core::store::{
    CleanupReport, DEFAULT_TASK_TYPE, StoreError, TaskStart, valid_id, validate_block,
};

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
            StoreError::TaskExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "task_exists", error.to_string())
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

/// A new session's body (optional; `null` or none is a session without metadata).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSession {
    /// Any JSON object the client wants kept with the session.
    metadata: Option<Map<String, Value>>,
    /// Whose session it is (design D's field; a tenant key's user replaces it).
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    user_id: Option<String>,
}

/// The longest `user_id` of a session, in characters.
const MAX_USER_ID: usize = 128;

/// POST /api/v1/sessions, body optional: `{"metadata"?: object, "user_id"?}`.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "sessions", request_body(content = Option<NewSession>, content_type = "application/json"),
    responses((status = 201, body = Session), (status = 422, description = "Not a JSON object with only `metadata` and `user_id`, or a bad `user_id`", body = super::error::ErrorBody)))]
pub async fn create_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?
    };
    let body: Option<NewSession> = match body {
        Value::Null => None,
        Value::Object(_) => Some(
            serde_json::from_value(body)
                .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?,
        ),
        _ => {
            return Err(ApiError::invalid(
                "invalid_body",
                "the body must be a JSON object (or none)",
            ));
        }
    };
    let (metadata, user_id) = body.map_or((None, None), |body| (body.metadata, body.user_id));
    let metadata = metadata.map_or(Value::Null, Value::Object);
    if let Some(user_id) = &user_id
        && (!(1..=MAX_USER_ID).contains(&user_id.chars().count())
            || user_id.chars().any(char::is_control))
    {
        return Err(ApiError::invalid(
            "invalid_user_id",
            format!("user_id must be 1 to {MAX_USER_ID} characters of printable text"),
        ));
    }
    let owner = caller.user.as_ref().map(|tenant| tenant.user_id.as_str());
    let user_id = owner.or(user_id.as_deref());
    let id = state
        .sessions
        .create_session(&metadata, owner, user_id)
        .await?;
    let session = state
        .sessions
        .session(&id)
        .await?
        .unwrap_or_else(|| json!({ "id": id }));
    Ok((StatusCode::CREATED, Json(session)))
}

#[utoipa::path(get, path = "/api/v1/sessions/{sid}", tag = "sessions", params(super::schemas::SessionPath),
    responses((status = 200, body = Session), (status = 404, description = "No such session", body = super::error::ErrorBody)))]
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

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionDeleted {
    id: String,
    /// True: the session is closed (design D's `DELETE`), or gone with `purge`.
    closed: bool,
    /// Whether the session and its messages were deleted (`purge=true`).
    deleted: bool,
    messages_deleted: u64,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete the session and all its messages instead of closing it.
    #[serde(default)]
    purge: bool,
}

/// Closes a session, as design D's `DELETE` does: its messages stay
/// readable, new messages and tasks are refused (409 `session_closed`).
/// With `purge=true` it deletes the session and all its messages.
#[utoipa::path(delete, path = "/api/v1/sessions/{sid}", tag = "sessions", params(super::schemas::SessionPath, DeleteQuery),
    responses((status = 200, body = SessionDeleted), (status = 404, description = "No such session", body = super::error::ErrorBody)))]
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<Json<SessionDeleted>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    if !query.purge {
        if !state.sessions.close_session(&sid).await? {
            return Err(session_not_found(&sid));
        }
        return Ok(Json(SessionDeleted {
            id: sid,
            closed: true,
            deleted: false,
            messages_deleted: 0,
        }));
    }
    let deleted = state
        .sessions
        .delete_session(&sid)
        .await?
        .ok_or_else(|| session_not_found(&sid))?;
    Ok(Json(SessionDeleted {
        id: sid,
        closed: true,
        deleted: true,
        messages_deleted: deleted,
    }))
}

/// New messages and tasks go to open sessions only.
async fn open_session(state: &AppState, sid: &str) -> Result<(), ApiError> {
    if state.sessions.is_closed(sid).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "session_closed",
            format!("session `{sid}` is closed: it takes no new messages or tasks"),
        ));
    }
    Ok(())
}

/// A finished message: text, blocks or both. Design D's body, `{content,
/// type, metadata}`, is one too: a user's message whose `content` is its text
/// (`type: text`) or one block of that type.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    /// `user` (the default), `assistant`, `system` or `tool`.
    #[schema(pattern = "^(user|assistant|system|tool)$")]
    role: Option<String>,
    #[serde(default)]
    content: String,
    /// What `content` is (design D's content type): `text` (the default) is
    /// the message's text; `markdown`, `thinking`, `html` or `code` make it
    /// one block of that type.
    #[serde(rename = "type")]
    #[schema(pattern = "^(text|markdown|thinking|html|code)$")]
    content_type: Option<String>,
    #[serde(default)]
    #[schema(value_type = Vec<NewContentBlock>)]
    blocks: Vec<Value>,
    /// Any JSON object kept with the message.
    metadata: Option<Map<String, Value>>,
}

/// The content types `content` may be, and the block field that holds it
/// (`None`: the message's own text).
const CONTENT_TYPES: &[(&str, Option<&str>)] = &[
    ("text", None),
    ("markdown", Some("text")),
    ("thinking", Some("text")),
    ("html", Some("html")),
    ("code", Some("code")),
];

/// POST /api/v1/sessions/{sid}/messages: a finished message with text and/or blocks.
#[utoipa::path(post, path = "/api/v1/sessions/{sid}/messages", tag = "sessions", params(super::schemas::SessionPath), request_body = NewMessage,
    responses((status = 201, body = Message), (status = 404, description = "No such session", body = super::error::ErrorBody),
        (status = 409, description = "The session is closed", body = super::error::ErrorBody),
        (status = 422, description = "Bad role or type, empty message or invalid block", body = super::error::ErrorBody)))]
pub async fn post_message(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(mut body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    visible_session(&state, &caller, &sid).await?;
    let role = body.role.as_deref().unwrap_or("user");
    if !ROLES.contains(&role) {
        return Err(ApiError::invalid(
            "invalid_role",
            format!("role must be one of {}, got `{role}`", ROLES.join(", ")),
        ));
    }
    let content_type = body.content_type.as_deref().unwrap_or("text");
    let Some((_, field)) = CONTENT_TYPES.iter().find(|(name, _)| *name == content_type) else {
        return Err(ApiError::invalid(
            "invalid_type",
            format!(
                "type `{content_type}` cannot carry `content`; it is one of text, markdown, thinking, html, code (other blocks go in `blocks`)"
            ),
        ));
    };
    if let Some(field) = field
        && !body.content.is_empty()
    {
        let text = std::mem::take(&mut body.content);
        let mut block = Map::new();
        block.insert("type".into(), content_type.into());
        block.insert((*field).into(), text.into());
        body.blocks.insert(0, Value::Object(block));
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
    open_session(&state, &sid).await?;
    let metadata = body.metadata.map_or(Value::Null, Value::Object);
    let id = state
        .sessions
        .post_message(&sid, role, &body.content, &body.blocks, &metadata)
        .await?;
    let message = state
        .sessions
        .load(&id, false)
        .await?
        .ok_or_else(|| StoreError::MessageNotFound(id.clone()))?;
    Ok((StatusCode::CREATED, Json(message)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// 1 to 1000.
    #[serde(default = "default_limit")]
    #[param(default = 50, minimum = 1, maximum = 1000)]
    limit: usize,
    #[serde(default)]
    #[param(default = 0, minimum = 0, maximum = 1_000_000_000)]
    offset: usize,
}

/// A page of a session's messages, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessagePage {
    session_id: String,
    total: u64,
    limit: usize,
    offset: usize,
    #[schema(value_type = Vec<Message>)]
    messages: Vec<Value>,
}

fn default_limit() -> usize {
    50
}

/// Far past any session's length; bounds what a query may say.
const MAX_OFFSET: usize = 1_000_000_000;

#[utoipa::path(get, path = "/api/v1/sessions/{sid}/messages", tag = "sessions", params(super::schemas::SessionPath, ListQuery),
    responses((status = 200, body = MessagePage), (status = 404, description = "No such session", body = super::error::ErrorBody)))]
pub async fn list_messages(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    super::bounds::checked_limit(query.limit)?;
    if query.offset > MAX_OFFSET {
        return Err(ApiError::invalid(
            "invalid_query",
            format!("offset must be at most {MAX_OFFSET}"),
        ));
    }
    if state.sessions.session(&sid).await?.is_none() {
        return Err(session_not_found(&sid));
    }
    let (messages, total) = state
        .sessions
        .list_messages(&sid, query.limit, query.offset)
        .await?;
    Ok(Json(MessagePage {
        session_id: sid,
        total,
        limit: query.limit,
        offset: query.offset,
        messages,
    }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LoadQuery {
    /// Also load blocks stored on their own (otherwise they stay references).
    #[serde(default)]
    include_content: bool,
}

#[utoipa::path(get, path = "/api/v1/messages/{mid}", tag = "sessions",
    params(super::schemas::MessagePath, LoadQuery),
    responses((status = 200, body = Message), (status = 404, description = "No such message", body = super::error::ErrorBody)))]
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
#[utoipa::path(get, path = "/api/v1/content/{id}", tag = "sessions",
    params(super::schemas::ContentPath),
    responses((status = 200, body = Content), (status = 404, description = "No such content (or it expired)", body = super::error::ErrorBody)))]
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

/// Design D's task. The task queue's handler reads it (and refuses with a
/// 422 naming the field); these are the fields the built-in pipeline reads.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NewTask {
    /// The topic: not blank.
    #[schema(
        example = "Write a short brief on Redis Streams",
        max_length = 10000,
        pattern = "[^\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    task_description: String,
    /// `simple`, `planner` (the default) or `critic`.
    #[schema(pattern = "^(simple|planner|critic)$")]
    workflow: Option<String>,
    /// Critique/revise rounds of `critic`.
    #[schema(minimum = 1, maximum = 10)]
    max_iterations: Option<u8>,
    /// Sections of the planner's outline.
    #[schema(minimum = 1, maximum = 10)]
    sections: Option<u8>,
    /// Design D's task id, chosen by the caller: a placeholder with this id
    /// (and `task_started`) opens the message, and the workflow's answer
    /// completes it. Taken by another task of the session: 409 `task_exists`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$", example = "task_001")]
    task_id: Option<String>,
    /// Design D's task type (e.g. `image_generation`); `task` by default.
    /// Naming a type without an id starts the task under a generated id.
    #[schema(pattern = "^[a-z][a-z0-9_]{0,63}$", example = "image_generation")]
    task_type: Option<String>,
}

/// The caller's own task (design D's `start_task(task_id, type)`), read from
/// the body's `task_id` and `task_type`; the rest of the body stays the
/// guest's.
struct CallerTask {
    id: Option<String>,
    task_type: Option<String>,
}

impl CallerTask {
    fn from_body(body: &Map<String, Value>) -> Result<Option<Self>, ApiError> {
        let text = |name: &str, valid: fn(&str) -> bool, rule: &str| match body.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if valid(text) => Ok(Some(text.clone())),
            Some(other) => Err(ApiError::invalid(
                "invalid_field",
                format!("{name} must be {rule}, not {other}"),
            )),
        };
        let id = text("task_id", valid_id, "1-64 letters, digits, `-` or `_`")?;
        let task_type = text(
            "task_type",
            valid_task_type,
            "a lowercase name of 1-64 letters, digits or `_` starting with a letter",
        )?;
        Ok((id.is_some() || task_type.is_some()).then_some(Self { id, task_type }))
    }

    /// The kind of block the task will fill (design D's `ContentType`).
    fn content_type(&self) -> &'static str {
        let task_type = self.task_type.as_deref().unwrap_or_default();
        if task_type.contains("image") {
            "image"
        } else if task_type.contains("audio") || task_type.contains("speech") {
            "audio"
        } else {
            "text"
        }
    }
}

fn valid_task_type(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Where to follow a task just started.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskStarted {
    session_id: String,
    /// The assistant message the task fills.
    message_id: String,
    job_id: String,
    queue: String,
    message_url: String,
    stream_url: String,
    job_stream_url: String,
    /// The caller's task (when the body named `task_id` or `task_type`),
    /// also under design D's names `task_id` and `task_type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "task_id")]
    #[schema(rename = "task_id")]
    design_task_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", rename = "task_type")]
    #[schema(rename = "task_type")]
    task_type: Option<String>,
}

/// POST /api/v1/sessions/{sid}/tasks: creates the assistant message the task
/// will fill and queues the job whose guest runs the workflow and drives it.
#[utoipa::path(post, path = "/api/v1/sessions/{sid}/tasks", tag = "sessions", params(super::schemas::SessionPath), request_body = NewTask,
    responses((status = 202, body = TaskStarted), (status = 404, description = "No such session", body = super::error::ErrorBody),
        (status = 409, description = "The session is closed, or `task_id` is taken in it", body = super::error::ErrorBody),
        (status = 422, description = "A bad `task_id`/`task_type`, or the handler refused the task", body = super::error::ErrorBody)))]
pub async fn start_task(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<Map<String, Value>>,
) -> Result<(StatusCode, Json<TaskStarted>), ApiError> {
    visible_session(&state, &caller, &sid).await?;
    open_session(&state, &sid).await?;
    let queue = state.sessions.config().task_queue.clone();
    if !state.intake.routes.contains_key(&queue) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "task_queue_missing",
            format!("the task queue `{queue}` is not configured"),
        ));
    }
    let caller_task = CallerTask::from_body(&body)?;
    if let Some(id) = caller_task.as_ref().and_then(|task| task.id.as_deref())
        && state.sessions.task_in_session(&sid, id).await?
    {
        return Err(StoreError::TaskExists(id.to_owned()).into());
    }
    // The message names its job before the job exists, so whichever instance
    // claims the job finds the binding in place.
    let job_id = uuid::Uuid::now_v7().to_string();
    let message_id = state
        .sessions
        .create_message(&sid, "assistant", Some(&job_id))
        .await?;
    let mut body = body;
    let task = match &caller_task {
        Some(task) => {
            let start = TaskStart {
                id: task.id.as_deref(),
                task_type: task.task_type.as_deref(),
                content_type: Some(task.content_type()),
                description: task.task_type.as_deref().unwrap_or(DEFAULT_TASK_TYPE),
            };
            let task_id = state
                .sessions
                .start_task_with(&sid, &message_id, &start)
                .await?;
            // The guest completes the task with its answer: it learns the
            // (possibly generated) id from its payload.
            body.insert("task_id".into(), Value::String(task_id.clone()));
            Some((
                task_id,
                start.task_type.unwrap_or(DEFAULT_TASK_TYPE).to_owned(),
            ))
        }
        None => None,
    };
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
        Json(TaskStarted {
            message_url: format!("/api/v1/messages/{message_id}"),
            stream_url: format!("/api/v1/sessions/{sid}/messages/{message_id}/stream"),
            job_stream_url: format!("/api/v1/jobs/{job_id}/stream"),
            session_id: sid,
            message_id,
            job_id,
            queue,
            task_id: task.as_ref().map(|(id, _)| id.clone()),
            design_task_id: task.as_ref().map(|(id, _)| id.clone()),
            task_type: task.map(|(_, task_type)| task_type),
        }),
    ))
}

/// Deletes messages older than this, in days or in seconds (at most 100 years).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CleanupRequest {
    Days(OlderThanDays),
    Secs(OlderThanSecs),
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OlderThanDays {
    #[schema(minimum = 0, maximum = 36500)]
    older_than_days: f64,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OlderThanSecs {
    #[schema(minimum = 0, maximum = 3153600000u64)]
    older_than_secs: f64,
}

/// The oldest age a cleanup takes: older than that is everything anyway.
const MAX_CLEANUP_SECS: f64 = 100.0 * 365.0 * 86_400.0;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupDone {
    older_than_secs: f64,
    report: CleanupReport,
}

/// POST /api/v1/cleanup {"olderThanDays": N} (or `olderThanSecs`): deletes
/// messages created longer ago than that, in every session.
#[utoipa::path(post, path = "/api/v1/cleanup", tag = "sessions", request_body = CleanupRequest,
    responses((status = 200, body = CleanupDone), (status = 422, description = "Not exactly one non-negative age", body = super::error::ErrorBody)))]
pub async fn cleanup(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<CleanupDone>, ApiError> {
    let secs = match serde_json::from_value(body) {
        Ok(CleanupRequest::Days(age)) => age.older_than_days * 86_400.0,
        Ok(CleanupRequest::Secs(age)) => age.older_than_secs,
        Err(_) => {
            return Err(ApiError::invalid(
                "invalid_body",
                "give exactly one of `olderThanDays` and `olderThanSecs`, a number",
            ));
        }
    };
    if !(0.0..=MAX_CLEANUP_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "invalid_field",
            "the age must be a number of days from 0 to 36500 (or its seconds)",
        ));
    }
    let report = state.sessions.cleanup((secs * 1000.0) as u64).await?;
    Ok(Json(CleanupDone {
        older_than_secs: secs,
        report,
    }))
}

/// Design D's `cleanup_old_messages(session_id, keep_days)`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCleanup {
    /// Messages created longer ago than this many days go (0: all of them).
    #[schema(minimum = 0, maximum = 36500)]
    keep_days: f64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCleaned {
    session_id: String,
    keep_days: f64,
    messages_deleted: u64,
}

/// POST /api/v1/sessions/{sid}/cleanup {"keep_days": N}: deletes this
/// session's messages older than N days, as the global cleanup does.
#[utoipa::path(post, path = "/api/v1/sessions/{sid}/cleanup", tag = "sessions", params(super::schemas::SessionPath), request_body = SessionCleanup,
    responses((status = 200, body = SessionCleaned), (status = 404, description = "No such session", body = super::error::ErrorBody),
        (status = 422, description = "`keep_days` is not a number from 0 to 36500", body = super::error::ErrorBody)))]
pub async fn cleanup_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<SessionCleanup>,
) -> Result<Json<SessionCleaned>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    let secs = body.keep_days * 86_400.0;
    if !(0.0..=MAX_CLEANUP_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "invalid_field",
            "keep_days must be a number from 0 to 36500",
        ));
    }
    let deleted = state
        .sessions
        .cleanup_session(&sid, (secs * 1000.0) as u64)
        .await?;
    Ok(Json(SessionCleaned {
        session_id: sid,
        keep_days: body.keep_days,
        messages_deleted: deleted,
    }))
}
