//! The stateless session/message store (source design D): everything lives in
//! Redis, so any instance serves any request and any instance can stream any
//! message.
//!
//! Keys (exactly as design D names them, plus two of our own; on a Redis
//! Cluster after the task queue's prefix, see [`StoreKeys`]):
//! - `message:{mid}` hash: the message snapshot (expires `message_ttl_secs`
//!   after its last change, 24 h by default);
//! - `message:{mid}:text` string: the message's text, kept apart from the
//!   hash so that appending is one `APPEND` of the delta, not a rewrite of
//!   the whole text (same TTL as the hash, refreshed with it; a message
//!   written before this key existed keeps its text in the hash's `text`
//!   field until its next append moves it here);
//! - `stream:session:{sid}:message:{mid}`: its events, the last `max_events`
//!   (1,000) kept, each with a per-message sequence number;
//! - `session:{sid}:messages` zset: the session index, score = creation time (ms);
//! - `content:{id}` hash: a content block over `inline_limit_bytes` (10 KB),
//!   stored on its own (expires after 7 days) and referenced from the snapshot;
//! - ours: `session:{sid}` hash (the session's own fields) and `sessions:index`
//!   zset (every session by last activity, for the periodic cleanup).
//!
//! Every change to a message is one Lua script call (`apply.lua`, `end.lua`):
//! snapshot, content and events are written together or not at all. A store
//! handle [`Store::fenced`] by a job's attempt writes only while that attempt
//! owns its job and the job drives the message. This module owns these keys;
//! it does not touch job keys (the queue's) nor job event streams.

mod binding;
mod blocks;
mod keys;
mod message;
mod session;

use std::sync::Arc;

use crate::connection::RedisConnection;
use redis::{Script, Value as RedisValue};
use serde::{Deserialize, Serialize};

pub use binding::{BoundMessage, FINAL_STATUSES, bound_message};
pub use blocks::validate_block;
pub use keys::StoreKeys;
pub use message::{
    DEFAULT_PLACEHOLDER_CONTENT, DEFAULT_TASK_TYPE, MessageEvent, MessageEventType, MessageEvents,
    TaskChange, TaskStart,
};
pub use session::{CleanupReport, periodic_cleanup};

use crate::queue::{Fence, now_ms};
use message::{COMPLETED, ERROR};
use spool_runtime::event_type::MAX_STREAM_EVENTS;

/// Limits and lifetimes of the store, `[sessions]` in the config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// A message snapshot and its event stream expire this long after their last change.
    pub message_ttl_secs: u64,
    /// Separately stored content blocks expire this long after they were written.
    pub content_ttl_secs: u64,
    /// A session (its fields and index) expires this long after its last new message.
    pub session_ttl_secs: u64,
    /// Events kept per message stream; older ones are trimmed.
    pub max_events: u64,
    /// Content blocks whose JSON is larger than this are stored on their own.
    pub inline_limit_bytes: usize,
    /// The periodic cleanup deletes messages older than this; 0 turns it off.
    pub cleanup_after_days: u64,
    /// How often the periodic cleanup runs.
    pub cleanup_interval_secs: u64,
    /// A `ping` event is sent on a quiet message SSE stream this often.
    pub ping_interval_ms: u64,
    /// The queue that runs session tasks (POST /api/v1/sessions/{sid}/tasks);
    /// its handler drives the task's message through the `messages` imports.
    pub task_queue: String,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            message_ttl_secs: 24 * 3600,
            content_ttl_secs: 7 * 24 * 3600,
            session_ttl_secs: 7 * 24 * 3600,
            max_events: MAX_STREAM_EVENTS as u64,
            inline_limit_bytes: 10 * 1024,
            cleanup_after_days: 7,
            cleanup_interval_secs: 3600,
            ping_interval_ms: 15_000,
            task_queue: "documents".into(),
        }
    }
}

/// Ids chosen by clients end up in key names: keep them to a safe alphabet.
pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no message `{0}` (it may have expired)")]
    MessageNotFound(String),
    #[error("no session `{0}` (it may have expired or been deleted)")]
    SessionNotFound(String),
    #[error("message `{0}` already exists")]
    MessageExists(String),
    #[error("the message is already {0} and takes no more changes")]
    Finished(String),
    #[error("task `{0}` is {1}, not running")]
    TaskNotRunning(String, String),
    #[error("task `{0}` already exists in this message")]
    TaskExists(String),
    #[error("{0}")]
    Invalid(String),
    /// A job's attempt wrote after losing its job (or its job the message).
    #[error("this attempt no longer owns its job or the job's message")]
    Fenced,
    /// A job's attempt wrote after its job's cancel was accepted.
    #[error("the job was cancelled")]
    Cancelled,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Handle to the store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    redis: RedisConnection,
    config: Arc<SessionsConfig>,
    keys: Arc<StoreKeys>,
    apply: Arc<Script>,
    end: Arc<Script>,
    delete: Arc<Script>,
    /// Writes on behalf of a job's attempt carry its fence.
    fence: Option<Arc<Fence>>,
}

impl Store {
    pub fn new(redis: RedisConnection, config: SessionsConfig, keys: StoreKeys) -> Self {
        Self {
            redis,
            config: Arc::new(config),
            keys: Arc::new(keys),
            apply: Arc::new(Script::new(concat!(
                include_str!("../queue/fence.lua"),
                include_str!("apply.lua")
            ))),
            end: Arc::new(Script::new(concat!(
                include_str!("../queue/fence.lua"),
                include_str!("../queue/message_end.lua"),
                include_str!("end.lua")
            ))),
            delete: Arc::new(Script::new(include_str!("delete.lua"))),
            fence: None,
        }
    }

    /// This store, writing on behalf of a job's attempt: every message write
    /// is refused ([`StoreError::Fenced`]) once the attempt lost its job or
    /// the job no longer drives the message.
    pub fn fenced(&self, fence: Fence) -> Self {
        Self {
            fence: Some(Arc::new(fence)),
            ..self.clone()
        }
    }

    /// The job hash, counter key, token and job id the scripts check a
    /// fence with; placeholders (never read) when writing for a client.
    fn fence_parts(&self, message_key: &str) -> [String; 4] {
        match &self.fence {
            Some(fence) => [
                fence.job_key().to_owned(),
                fence.counter_key().to_owned(),
                fence.token().to_owned(),
                fence.job_id.clone(),
            ],
            None => [
                message_key.to_owned(),
                message_key.to_owned(),
                String::new(),
                String::new(),
            ],
        }
    }

    /// Ends the message: `completed` or, with `error`, `error` (see `end.lua`).
    async fn end(
        &self,
        session_id: &str,
        message_id: &str,
        error: Option<&str>,
    ) -> Result<u64, StoreError> {
        let key = self.keys.message(message_id);
        let [job, counter, token, job_id] = self.fence_parts(&key);
        let reply: Vec<RedisValue> = self
            .end
            .key(&key)
            .key(self.keys.message_stream(session_id, message_id))
            .key(job)
            .key(counter)
            .arg(if error.is_some() { ERROR } else { COMPLETED })
            .arg(error.unwrap_or_default())
            .arg(now_ms())
            .arg(self.config.message_ttl_secs.max(1))
            .arg(self.config.max_events.max(1))
            .arg(token)
            .arg(job_id)
            .invoke_async(&mut self.connection())
            .await?;
        self.reply(session_id, message_id, &reply)
    }

    pub fn config(&self) -> &SessionsConfig {
        &self.config
    }

    pub fn keys(&self) -> &StoreKeys {
        &self.keys
    }

    fn connection(&self) -> RedisConnection {
        self.redis.clone()
    }

    /// Runs one [`Change`] of message `message_id` in session `session_id`.
    /// Returns the message's last sequence number.
    async fn apply(
        &self,
        session_id: &str,
        message_id: &str,
        change: Change,
    ) -> Result<u64, StoreError> {
        let config = &self.config;
        let key = self.keys.message(message_id);
        let [job, counter, token, job_id] = self.fence_parts(&key);
        let mut invocation = self.apply.prepare_invoke();
        invocation
            .key(&key)
            .key(self.keys.message_stream(session_id, message_id))
            .key(self.keys.session(session_id))
            .key(self.keys.session_index(session_id))
            .key(self.keys.sessions_index())
            .key(job)
            .key(counter)
            .key(self.keys.message_text(message_id))
            .arg(now_ms())
            .arg(config.message_ttl_secs.max(1))
            .arg(config.max_events.max(1))
            .arg(config.content_ttl_secs.max(1))
            .arg(config.session_ttl_secs.max(1))
            .arg(change.requirement.as_str())
            .arg(&change.text)
            .arg(token)
            .arg(job_id);
        invocation.arg(change.guards.len());
        for task in &change.guards {
            invocation.arg(task);
        }
        invocation.arg(change.fields.len());
        for (field, value) in &change.fields {
            invocation.arg(field).arg(value);
        }
        invocation.arg(change.blocks.len());
        for (mode, block, json) in &change.blocks {
            invocation.arg(mode.as_str()).arg(block).arg(json);
        }
        invocation.arg(change.contents.len());
        for content in &change.contents {
            invocation.key(self.keys.content(&content.id));
            invocation
                .arg(&content.id)
                .arg(&content.json)
                .arg(message_id)
                .arg(&content.kind)
                .arg(content.json.len());
        }
        invocation.arg(change.events.len());
        for (event_type, data) in &change.events {
            invocation.arg(event_type.as_str()).arg(data);
        }
        let reply: Vec<RedisValue> = invocation.invoke_async(&mut self.connection()).await?;
        self.reply(session_id, message_id, &reply)
    }

    /// What a message script's reply means.
    fn reply(
        &self,
        session_id: &str,
        message_id: &str,
        reply: &[RedisValue],
    ) -> Result<u64, StoreError> {
        let text = |index: usize| reply.get(index).map(redis_text).unwrap_or_default();
        match text(0).as_str() {
            "ok" => Ok(text(1).parse().unwrap_or(0)),
            "missing" => Err(StoreError::MessageNotFound(message_id.to_owned())),
            "exists" => Err(StoreError::MessageExists(message_id.to_owned())),
            "no_session" => Err(StoreError::SessionNotFound(session_id.to_owned())),
            "finished" => Err(StoreError::Finished(text(1))),
            "task" => Err(StoreError::TaskNotRunning(text(1), text(2))),
            "task_exists" => Err(StoreError::TaskExists(text(1))),
            "fenced" => Err(StoreError::Fenced),
            "cancelled" => Err(StoreError::Cancelled),
            other => Err(StoreError::Redis(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply from the message script",
                other.to_owned(),
            )))),
        }
    }
}

fn redis_text(value: &RedisValue) -> String {
    match value {
        RedisValue::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        RedisValue::SimpleString(text) => text.clone(),
        RedisValue::Int(number) => number.to_string(),
        _ => String::new(),
    }
}

/// What a change requires of the message before it applies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Requirement {
    /// Creating: the id must be free and the session must exist.
    Absent,
    /// The message must exist and still be streaming.
    #[default]
    Streaming,
}

impl Requirement {
    fn as_str(self) -> &'static str {
        match self {
            Self::Absent => "absent",
            Self::Streaming => "streaming",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockMode {
    Append,
    Replace,
    Remove,
}

impl BlockMode {
    fn as_str(self) -> &'static str {
        match self {
            Self::Append => "append",
            Self::Replace => "replace",
            Self::Remove => "remove",
        }
    }
}

struct ContentWrite {
    id: String,
    json: String,
    kind: String,
}

/// Everything one `apply.lua` call writes. Built by the message operations.
#[derive(Default)]
struct Change {
    requirement: Requirement,
    text: String,
    /// Tasks that must still be running for the change to apply.
    guards: Vec<String>,
    fields: Vec<(String, String)>,
    blocks: Vec<(BlockMode, String, String)>,
    contents: Vec<ContentWrite>,
    events: Vec<(MessageEventType, String)>,
}

impl Change {
    fn field(&mut self, name: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.fields.push((name.into(), value.into()));
        self
    }

    fn event(&mut self, event_type: MessageEventType, data: serde_json::Value) -> &mut Self {
        self.events.push((event_type, data.to_string()));
        self
    }

    /// Adds (or replaces) block `id`: inline in the snapshot when small, else in
    /// `content:{id}` with a reference in the snapshot. Returns what the
    /// snapshot holds for it (also what events carry: never the large body).
    fn block(
        &mut self,
        mode: BlockMode,
        id: &str,
        block: &serde_json::Value,
        inline_limit: usize,
    ) -> serde_json::Value {
        let json = block.to_string();
        let entry = if json.len() > inline_limit {
            let kind = block
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("unknown")
                .to_owned();
            let reference = blocks::reference(id, block, json.len());
            self.contents.push(ContentWrite {
                id: id.to_owned(),
                json,
                kind,
            });
            reference
        } else {
            blocks::with_id(id, block)
        };
        self.blocks.push((mode, id.to_owned(), entry.to_string()));
        entry
    }

    fn remove_block(&mut self, id: &str) -> &mut Self {
        self.blocks
            .push((BlockMode::Remove, id.to_owned(), String::new()));
        self
    }
}
