//! Conversations over HTTP (design B): `GET /ws/{conversation_id}`, the
//! conversation's WebSocket, and `GET /api/conversations/{conversation_id}/messages`,
//! its history. Any instance serves any conversation (`spool_core::chat`);
//! a key bound to a user gets in only as a member (`conversation_entry`).
//!
//! Client frames: plain text (design B's clients) is a message with that
//! text; a JSON object `{"type": "message", "text", "userId"?}` is the same
//! with a sender. Every message is stored and published; with a bot queue
//! configured it also queues a chat job whose events follow in the
//! conversation. Server frames are JSON: `{"type": "message", "id",
//! "conversationId", "userId", "text", "jobId"?, "timestamp"}`, `{"type":
//! "event", "id", "conversationId", "jobId", "event", "data", "timestamp"}`
//! and `{"type": "error", "code", "message", "lastId"?}`; with `?format=text`
//! only message texts and text-delta texts, as plain text. Connecting with
//! `?last_id=` (the `id` of the last frame received) sends exactly what came
//! after it, then live frames.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::conversation_entry::{self as entry, conversation_id};
use super::error::{ApiError, ApiPath, ApiQuery};
use super::jobs::{chat_submission, submit};
use super::stream::stream_position;
use spool_core::access::Identity;
use spool_core::chat::{ConversationId, Frame};
use spool_core::hub::Position;
use spool_core::queue::now_ms;

/// The longest message text, in characters.
const MAX_TEXT: usize = 16_000;

/// How often a user's socket checks the user is still a member: one taken
/// out stops receiving within this long.
const MEMBERSHIP_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// How a conversation socket starts.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SocketQuery {
    /// Resume after this frame id: exactly the frames after it, then live ones.
    #[param(
        pattern = "^[0-9]+(-[0-9]+)?$",
        example = "1700000000000-0",
        nullable = false
    )]
    last_id: Option<String>,
    /// `json` (default): every frame as JSON; `text`: message and answer texts only.
    #[param(pattern = "^(json|text)$", nullable = false)]
    format: Option<String>,
}

/// A conversation's WebSocket (see the module's frame list).
#[utoipa::path(get, path = "/ws/{conversation_id}", tag = "conversations",
    params(super::schemas::ConversationPath, SocketQuery, super::schemas::WebSocketHandshake),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket opening handshake", body = super::error::ErrorBody),
        (status = 404, description = "A conversation this key may not enter (see its members)", body = super::error::ErrorBody),
        (status = 422, description = "A bad conversation id, resume id or format", body = super::error::ErrorBody),
        (status = 503, description = "This instance serves its most conversation sockets", body = super::error::ErrorBody)))]
pub async fn conversation_socket(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(conversation): ApiPath<String>,
    ApiQuery(query): ApiQuery<SocketQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let conversation = conversation_id(&conversation)?;
    let after = resume_id(query.last_id.as_deref())?;
    let text_only = match query.format.as_deref() {
        None | Some("json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid_format",
                format!("format must be `json` or `text`, got `{other}`"),
            ));
        }
    };
    let upgrade = upgrade.map_err(|refusal| {
        ApiError::new(refusal.status(), "not_a_websocket", refusal.body_text())
    })?;
    entry::admit(&state, &caller, &conversation).await?;
    let seat = state.conversations.seat().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients",
            format!(
                "this instance serves {} conversation sockets (conversations.max_clients); retry on another",
                state.conversations.config().max_clients
            ),
        )
    })?;
    let limit = state.body_limit_bytes;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let _seat = seat;
            let client = Client {
                state,
                caller,
                conversation,
                text_only,
            };
            client.serve(socket, after).await;
        }))
}

struct Client {
    state: Arc<AppState>,
    caller: Identity,
    conversation: ConversationId,
    text_only: bool,
}

impl Client {
    /// One task per socket: reads the client's frames and writes the
    /// conversation's, so nothing outlives the socket.
    async fn serve(self, mut socket: WebSocket, after: Position) {
        let mut follower = self
            .state
            .conversations
            .follow(self.conversation.clone(), after);
        let mut membership = tokio::time::interval(MEMBERSHIP_CHECK);
        membership.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        membership.tick().await;
        loop {
            let outgoing = tokio::select! {
                _ = membership.tick(), if self.caller.user.is_some() => {
                    match entry::check_member(&self.state, &self.caller, &self.conversation).await {
                        Err(error) if error.code == "conversation_not_found" => {
                            let frame = json!({"type": "error", "code": error.code, "message": error.message});
                            let _ = socket.send(Message::Text(frame.to_string().into())).await;
                            return;
                        }
                        _ => continue,
                    }
                }
                incoming = socket.recv() => match incoming {
                    Some(Ok(Message::Text(text))) => match self.message(text.as_str()).await {
                        Ok(()) => continue,
                        Err(error) => json!({"type": "error", "code": error.code, "message": error.message}).to_string(),
                    },
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => continue,
                },
                next = follower.next() => match next {
                    Ok(frame) => match self.render(&frame) {
                        Some(text) => text,
                        None => continue,
                    },
                    Err(error) => {
                        tracing::debug!(%error, "a conversation socket lost the store; the client resumes");
                        let frame = json!({"type": "error", "code": "store_unavailable",
                            "message": "the conversation could not be read; reconnect with last_id",
                            "lastId": follower.last_id().to_string()});
                        let _ = socket.send(Message::Text(frame.to_string().into())).await;
                        return;
                    }
                },
            };
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(30),
                socket.send(Message::Text(outgoing.into())),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    }

    fn render(&self, frame: &Frame) -> Option<String> {
        if !self.text_only {
            return Some(frame.json.to_string());
        }
        let value = frame.value();
        match (value["type"].as_str(), value["event"].as_str()) {
            (Some("message"), _) => value["text"].as_str().map(str::to_owned),
            (Some("event"), Some("text_delta")) => {
                value["data"]["text"].as_str().map(str::to_owned)
            }
            _ => None,
        }
    }

    /// Stores and publishes a client's message, and queues its bot job.
    async fn message(&self, text: &str) -> Result<(), ApiError> {
        let (text, user) = client_message(text)?;
        // A member taken out since the socket opened may not speak.
        entry::check_member(&self.state, &self.caller, &self.conversation).await?;
        let user = match &self.caller.user {
            Some(tenant) => tenant.user_id.clone(),
            None => user.unwrap_or_else(|| "anonymous".into()),
        };
        super::jobs::checked_user_id(&user)?;
        let bot_queue = &self.state.conversations.config().bot_queue;
        let has_bot = self.state.intake.routes.contains_key(bot_queue);
        let job = has_bot.then(|| format!("chat-{}", uuid::Uuid::now_v7().simple()));
        let mut body = json!({
            "type": "message", "conversationId": self.conversation.as_str(),
            "userId": user, "text": text, "timestamp": now_ms(),
        });
        if let Some(job) = &job {
            body["jobId"] = json!(job);
        }
        self.state
            .conversations
            .append(&self.conversation, &body)
            .await?;
        let Some(job) = job else { return Ok(()) };
        let submission = chat_submission(json!({ "userId": user, "prompt": text, "jobId": job }))?;
        // The relay is recorded before the job exists, so an instance dying
        // in between loses no answer; a relay whose job never came ends
        // itself (the job is not open).
        self.state.relays.schedule(&job, &self.conversation).await?;
        if let Err(refused) = submit(&self.state, &self.caller, bot_queue, submission).await {
            let _ = self.state.relays.cancel(&job).await;
            return Err(refused);
        }
        Ok(())
    }
}

/// A client frame as `(text, userId)`: plain text, or a JSON message frame.
fn client_message(frame: &str) -> Result<(String, Option<String>), ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct JsonMessage {
        r#type: String,
        text: String,
        user_id: Option<String>,
    }
    let looks_json = frame.trim_start().starts_with('{');
    let (text, user) = if looks_json {
        let message: JsonMessage = serde_json::from_str(frame).map_err(|e| {
            ApiError::invalid(
                "invalid_frame",
                format!("a JSON frame is {{\"type\": \"message\", \"text\", \"userId\"?}}: {e}"),
            )
        })?;
        if message.r#type != "message" {
            return Err(ApiError::invalid(
                "invalid_frame",
                "`type` must be `message`",
            ));
        }
        (message.text, message.user_id)
    } else {
        (frame.to_owned(), None)
    };
    if !(1..=MAX_TEXT).contains(&text.chars().count()) {
        return Err(ApiError::invalid(
            "invalid_text",
            format!("a message has 1 to {MAX_TEXT} characters"),
        ));
    }
    Ok((text, user))
}

fn resume_id(id: Option<&str>) -> Result<Position, ApiError> {
    let id = stream_position(id.unwrap_or("0"))?;
    Position::parse(&id).ok_or_else(|| ApiError::invalid("invalid_last_id", "not a stream id"))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Frames after this id (default: from the start of what is kept).
    #[param(
        pattern = "^[0-9]+(-[0-9]+)?$",
        example = "1700000000000-0",
        nullable = false
    )]
    last_id: Option<String>,
    /// 1 to 1000.
    #[serde(default = "default_limit")]
    #[param(default = 100, minimum = 1, maximum = 1000)]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// A page of a conversation, oldest first.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationPage {
    conversation_id: String,
    /// Frames as the WebSocket sends them (`message` and `event`).
    frames: Vec<Value>,
    /// The last frame's id: pass it as `last_id` for the next page or to
    /// resume the WebSocket; absent when the page is empty.
    last_id: Option<String>,
}

/// A conversation's stored frames after `last_id` (design B's history).
#[utoipa::path(get, path = "/api/conversations/{conversation_id}/messages", tag = "conversations",
    params(super::schemas::ConversationPath, HistoryQuery),
    responses((status = 200, body = ConversationPage),
        (status = 404, description = "A conversation this key may not see", body = super::error::ErrorBody),
        (status = 422, description = "A bad conversation id, id or limit", body = super::error::ErrorBody)))]
pub async fn conversation_history(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(conversation): ApiPath<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<ConversationPage>, ApiError> {
    let conversation = conversation_id(&conversation)?;
    let after = resume_id(query.last_id.as_deref())?;
    let limit = super::bounds::checked_limit(query.limit)?;
    entry::check_member(&state, &caller, &conversation).await?;
    let frames = state
        .conversations
        .history(&conversation, after, limit)
        .await?;
    Ok(Json(ConversationPage {
        conversation_id: conversation.as_str().to_owned(),
        last_id: frames.last().map(|frame| frame.id.to_string()),
        frames: frames.iter().map(Frame::value).collect(),
    }))
}
