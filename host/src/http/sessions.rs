//! The session/message API (design D): sessions create/get/close (or
//! delete), messages post/list/get, separately stored content on demand.
//! Session tasks are in `tasks.rs`, the cleanup of old messages in
//! `session_cleanup.rs`. Design D's bodies
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
pub async fn open_session(state: &AppState, sid: &str) -> Result<(), ApiError> {
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
