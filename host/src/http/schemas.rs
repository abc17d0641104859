//! Schemas of the JSON bodies that are built as values rather than typed
//! structs: the store's sessions, messages and content (shaped in
//! `spool_core::store`), a job's event-stream info and attempt history, and
//! the open body of `POST /api/chat`. They only describe (nothing here is
//! serialised); the schemathesis run checks them against live answers.

#![allow(dead_code)]

use serde_json::Value;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::{IntoParams, PartialSchema, ToSchema};

/// A conversation: a sorted set of messages (design D).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Session {
    pub id: String,
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
    /// Whatever JSON object the client stored with it (or null).
    pub metadata: Option<Value>,
    pub message_count: u64,
    /// Whose session it is, as created (design D's `user_id`).
    pub user_id: Option<String>,
    /// `open`, or `closed` once `DELETE`d (its messages stay readable).
    pub status: String,
    pub closed_at: Option<u64>,
}

/// A message snapshot: its text, content blocks and tasks.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Message {
    pub id: String,
    pub session_id: Option<String>,
    /// `user`, `assistant`, `system` or `tool`.
    pub role: Option<String>,
    /// `streaming`, `completed` or `error`.
    pub status: Option<String>,
    pub text: String,
    pub blocks: Vec<ContentBlock>,
    pub tasks: Vec<MessageTask>,
    /// The sequence number of its last event.
    pub seq: u64,
    /// What the client sent with it (design D's `metadata`), if anything.
    pub metadata: Option<Value>,
    /// The job driving it, if any.
    pub job_id: Option<String>,
    pub error: Option<String>,
    pub created_at: Option<u64>,
    pub updated_at: Option<u64>,
}

/// A content block: `type` names it (text, image, audio, video, file, code,
/// markdown, html, json, thinking, placeholder); the other fields are the
/// type's own. A block over 10 KB is a reference (`stored: "separate"`,
/// `contentId`) to load from `GET /api/v1/content/{id}`.
pub struct ContentBlock;

impl PartialSchema for ContentBlock {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .description(Some(
                "A content block: `type` names it; the other fields are the type's own.",
            ))
            .property("id", ObjectBuilder::new().schema_type(Type::String))
            .property("type", ObjectBuilder::new().schema_type(Type::String))
            .required("type")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl ToSchema for ContentBlock {}

/// A content block a client sends: one of the types below, each with its own
/// required fields (other fields are kept as they are). `placeholder` is not
/// among them: only a task creates one.
pub struct NewContentBlock;

impl PartialSchema for NewContentBlock {
    fn schema() -> RefOr<Schema> {
        let kinds = |kinds: &[&str]| ObjectBuilder::new().enum_values(Some(kinds.to_vec()));
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let optional_string =
            || ObjectBuilder::new().schema_type(SchemaType::from_iter([Type::String, Type::Null]));
        let pixels = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
                .minimum(Some(0))
                .maximum(Some(u32::MAX))
        };
        let text = |types: &[&str], field: &str| {
            ObjectBuilder::new()
                .property("type", kinds(types))
                .property(field, string())
                .required("type")
                .required(field)
        };
        let code = ObjectBuilder::new()
            .property("type", kinds(&["code"]))
            .property("code", string())
            .property("language", optional_string())
            .required("type")
            .required("code");
        let json = ObjectBuilder::new()
            .property("type", kinds(&["json"]))
            .property(
                "json",
                ObjectBuilder::new().schema_type(SchemaType::AnyValue),
            )
            .required("type")
            .required("json");
        let media_fields = ObjectBuilder::new()
            .property("type", kinds(&["image", "audio", "video", "file"]))
            .property("url", string())
            .property("base64", string())
            .property("mimeType", optional_string())
            .property("caption", optional_string())
            .property("name", optional_string())
            .property("width", pixels())
            .property("height", pixels())
            .required("type");
        // Exactly one source.
        let one_source = OneOfBuilder::new()
            .item(ObjectBuilder::new().required("url"))
            .item(ObjectBuilder::new().required("base64"));
        let media = AllOfBuilder::new().item(media_fields).item(one_source);
        OneOfBuilder::new()
            .description(Some(
                "A block to add: `type` and that type's fields (others are kept as they are)",
            ))
            .item(text(&["text", "markdown", "thinking"], "text"))
            .item(text(&["html"], "html"))
            .item(code)
            .item(json)
            .item(media)
            .into()
    }
}

impl ToSchema for NewContentBlock {}

/// An asynchronous task of a message and the placeholder it fills.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct MessageTask {
    pub task_id: String,
    pub description: Option<String>,
    /// `running`, `completed` or `failed`.
    pub status: Option<String>,
    /// 0 to 1.
    pub progress: Option<f64>,
    pub step: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
}

/// A separately stored content block.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Content {
    pub id: String,
    pub message_id: Option<String>,
    #[schema(rename = "type")]
    pub kind: Option<String>,
    pub bytes: Option<u64>,
    pub created_at: Option<u64>,
    pub block: ContentBlock,
}

/// A job's event stream (design C's info query).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct StreamInfo {
    /// The Redis key: `job_events:{id}`.
    pub stream: String,
    pub length: u64,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// One finished attempt of a job.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub worker: Option<String>,
    pub started_at: Option<u64>,
    pub finished_at: u64,
    /// The state the attempt left the job in (`completed`, `delayed`, `failed`, `cancelled`).
    pub outcome: String,
    pub error: Option<Value>,
    pub error_kind: Option<Value>,
}

/// Design E's chat submission. The host reads `userId`, `priority`,
/// `userTier` and `jobId`; every other field is the `chat` queue's handler's
/// payload, checked by its `admit` (a refusal is a 422 `rejected_by_handler`).
/// The fields below are the built-in chat handler's.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ChatRequest {
    #[schema(
        example = "user-123",
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub user_id: String,
    /// The user's message (not blank).
    #[schema(
        example = "Hello, who are you?",
        min_length = 1,
        max_length = 32000,
        pattern = "[^\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
    )]
    pub prompt: String,
    /// Earlier turns, oldest first.
    pub conversation_history: Option<Vec<Turn>>,
    /// 1-3 low, 4-7 normal, 8-10 high.
    #[schema(minimum = 1, maximum = 10, default = 5)]
    pub priority: Option<u8>,
    /// Names the job (and makes the submission idempotent), like `Idempotency-Key`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub job_id: Option<String>,
    /// The user's tier, for the priority rule (e.g. `vip`).
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    pub user_tier: Option<String>,
}

/// One turn of a conversation.
#[derive(ToSchema)]
pub struct Turn {
    #[schema(pattern = "^(system|user|assistant|tool)$")]
    pub role: String,
    pub content: String,
}

/// One server-sent event as a client's parser sees it: `data` is a JSON text
/// (`{"type", "data", "timestamp"}` for a job event, the job itself for the
/// first `state` event, `{"seq", "type", "data", "timestamp"}` for a message
/// event); `id` is the stream entry id to resume after.
#[derive(ToSchema)]
pub struct ServerSentEvent {
    /// The event type: `state`, `task_started`, `text_delta`, `ping`, `stream_error`, ...
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

// Path parameters, with the shapes the routes check before touching Redis.

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct JobPath {
    /// The job id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,256}$")]
    pub id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueuePath {
    /// A configured queue.
    pub queue: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueueJobPath {
    /// A configured queue.
    pub queue: String,
    /// A job of that queue.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,256}$")]
    pub job: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DeadJobPath {
    /// A configured queue.
    pub queue: String,
    /// The dead job's id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,256}$")]
    pub job: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConversationPath {
    /// The conversation: 1 to 128 of A-Z a-z 0-9 _ - . :
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub conversation_id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConversationMemberPath {
    /// The conversation: 1 to 128 of A-Z a-z 0-9 _ - . :
    #[param(pattern = "^[A-Za-z0-9_.:-]{1,128}$")]
    pub conversation_id: String,
    /// The user: 1 to 128 characters of printable text.
    #[param(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub user_id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionPath {
    /// The session id.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub sid: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MessagePath {
    /// The message id.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub mid: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SessionMessagePath {
    /// The session id.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub sid: String,
    /// The message id.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub mid: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ContentPath {
    /// The content id a block reference names.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub id: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct HandlerPath {
    /// The handler name.
    #[param(pattern = "^[a-z0-9_-]{1,64}$")]
    pub name: String,
}

#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyPath {
    /// The key id (`spool keys list`).
    pub id: String,
}

/// Where a stream resumes after a reconnect (an empty value means the start).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct ResumeHeader {
    #[param(
        rename = "Last-Event-ID",
        pattern = "^([0-9]+(-[0-9]+)?)?$",
        nullable = false
    )]
    pub last_event_id: Option<String>,
}

/// A handler component, as uploaded.
pub struct ComponentBytes;

impl PartialSchema for ComponentBytes {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/wasm")
            .into()
    }
}

impl ToSchema for ComponentBytes {}

/// The headers of a WebSocket opening handshake (RFC 6455).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct WebSocketHandshake {
    #[param(rename = "Upgrade", pattern = "^websocket$")]
    pub upgrade: String,
    #[param(rename = "Connection", pattern = "^[Uu]pgrade$")]
    pub connection: String,
    #[param(rename = "Sec-WebSocket-Version", pattern = "^13$")]
    pub version: String,
    /// 16 random bytes in base64.
    #[param(rename = "Sec-WebSocket-Key")]
    pub key: String,
}
