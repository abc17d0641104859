//! Message operations (design D): create, append text, add content, start and
//! update tasks, complete, fail; loading snapshots, separately stored content
//! and events. Each write is one atomic [`Change`]; reads never write.

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Serialize;
use serde_json::{Value, json};

use super::blocks::content_id;
use super::{BlockMode, Change, Requirement, Store, StoreError, new_id};
use crate::queue::now_ms;

/// A task's type when its starter names none.
pub const DEFAULT_TASK_TYPE: &str = "task";
/// The kind of block a placeholder stands for when its starter names none.
pub const DEFAULT_PLACEHOLDER_CONTENT: &str = "text";

/// What starts a task: its description and, optionally, the id, type
/// (e.g. `image_generation`) and content kind (e.g. `image`) its starter chose.
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskStart<'a> {
    pub id: Option<&'a str>,
    pub task_type: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub description: &'a str,
}

/// A message's status field: `streaming` until `message_end`.
pub const STREAMING: &str = "streaming";
pub const COMPLETED: &str = "completed";
pub const ERROR: &str = "error";

/// The kinds of event on a message's stream. (`ping` is sent on live
/// connections only, never stored.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageEventType {
    MessageStart,
    TextDelta,
    ContentAdded,
    ContentUpdated,
    TaskStarted,
    TaskProgress,
    TaskCompleted,
    TaskFailed,
    /// The message ended in an error (followed by `message_end`).
    Error,
    MessageEnd,
}

impl MessageEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageEventType::MessageStart => "message_start",
            MessageEventType::TextDelta => "text_delta",
            MessageEventType::ContentAdded => "content_added",
            MessageEventType::ContentUpdated => "content_updated",
            MessageEventType::TaskStarted => "task_started",
            MessageEventType::TaskProgress => "task_progress",
            MessageEventType::TaskCompleted => "task_completed",
            MessageEventType::TaskFailed => "task_failed",
            MessageEventType::Error => "error",
            MessageEventType::MessageEnd => "message_end",
        }
    }
}

/// One event of a message stream.
#[derive(Clone, Debug, Serialize)]
pub struct MessageEvent {
    /// The stream entry id; pass it back as `last_id` / `Last-Event-ID` to resume.
    pub id: String,
    /// The message's sequence number of this event, from 1 without gaps.
    pub seq: u64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: Value,
    pub timestamp: u64,
}

/// A change to a running task.
#[derive(Clone, Debug)]
pub enum TaskChange {
    Progress {
        progress: Option<f32>,
        step: Option<String>,
    },
    /// The result block replaces the placeholder; `None` removes it.
    Completed {
        result: Option<Value>,
    },
    Failed {
        error: String,
    },
}

impl Store {
    /// Creates a streaming message (publishes `message_start`); returns its id.
    pub async fn create_message(
        &self,
        session_id: &str,
        role: &str,
        job_id: Option<&str>,
    ) -> Result<String, StoreError> {
        let id = new_id();
        let mut change = creation(session_id, &id, role);
        if let Some(job_id) = job_id {
            change.field("job_id", job_id);
        }
        self.apply(session_id, &id, change).await?;
        Ok(id)
    }

    /// Creates a finished message with its text, blocks and the client's
    /// metadata (kept as given; `null` for none) in one write
    /// (message_start, text_delta, content_added..., message_end).
    pub async fn post_message(
        &self,
        session_id: &str,
        role: &str,
        text: &str,
        blocks: &[Value],
        metadata: &Value,
    ) -> Result<String, StoreError> {
        let id = new_id();
        let mut change = creation(session_id, &id, role);
        if !metadata.is_null() {
            change.field("metadata", metadata.to_string());
        }
        if !text.is_empty() {
            change.text = text.to_owned();
            change.event(MessageEventType::TextDelta, json!({ "text": text }));
        }
        for block in blocks {
            let block_id = new_id();
            let entry = change.block(
                BlockMode::Append,
                &block_id,
                block,
                self.config.inline_limit_bytes,
            );
            change.event(
                MessageEventType::ContentAdded,
                json!({ "blockId": block_id, "block": entry }),
            );
        }
        change
            .field("status", COMPLETED)
            .event(MessageEventType::MessageEnd, json!({ "status": COMPLETED }));
        self.apply(session_id, &id, change).await?;
        Ok(id)
    }

    pub async fn append_text(
        &self,
        session_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<u64, StoreError> {
        if text.is_empty() {
            return Err(StoreError::Invalid(
                "nothing to append: the text is empty".into(),
            ));
        }
        let mut change = Change {
            text: text.to_owned(),
            ..Change::default()
        };
        change.event(MessageEventType::TextDelta, json!({ "text": text }));
        self.apply(session_id, message_id, change).await
    }

    /// Appends a block (already checked); returns its id.
    pub async fn add_content(
        &self,
        session_id: &str,
        message_id: &str,
        block: &Value,
    ) -> Result<String, StoreError> {
        let block_id = new_id();
        let mut change = Change::default();
        let entry = change.block(
            BlockMode::Append,
            &block_id,
            block,
            self.config.inline_limit_bytes,
        );
        change.event(
            MessageEventType::ContentAdded,
            json!({ "blockId": block_id, "block": entry }),
        );
        self.apply(session_id, message_id, change).await?;
        Ok(block_id)
    }

    /// Starts a task: a placeholder block whose id is the task id; returns it.
    pub async fn start_task(
        &self,
        session_id: &str,
        message_id: &str,
        description: &str,
    ) -> Result<String, StoreError> {
        let start = TaskStart {
            description,
            ..TaskStart::default()
        };
        self.start_task_with(session_id, message_id, &start).await
    }

    /// Whether a message of the session has a task `task_id` (a caller
    /// choosing an id checks it is free session-wide; one read per message).
    pub async fn task_in_session(
        &self,
        session_id: &str,
        task_id: &str,
    ) -> Result<bool, StoreError> {
        let mut connection = self.connection();
        let messages: Vec<String> = connection
            .zrange(self.keys.session_index(session_id), 0, -1)
            .await?;
        if messages.is_empty() {
            return Ok(false);
        }
        let mut pipe = redis::pipe();
        for message in &messages {
            pipe.hexists(self.keys.message(message), task_field(task_id, "status"));
        }
        let found: Vec<bool> = pipe.query_async(&mut connection).await?;
        Ok(found.into_iter().any(|taken| taken))
    }

    /// Starts a task as [`TaskStart`] says: a caller-chosen id must be a
    /// [`valid_id`](super::valid_id) not yet used by a task of the message
    /// ([`StoreError::TaskExists`]); the type and the placeholder's content
    /// kind default to [`DEFAULT_TASK_TYPE`] and `text`.
    pub async fn start_task_with(
        &self,
        session_id: &str,
        message_id: &str,
        start: &TaskStart<'_>,
    ) -> Result<String, StoreError> {
        let (task_id, guards) = match start.id {
            Some(id) if !super::valid_id(id) => {
                return Err(StoreError::Invalid(format!(
                    "task id `{id}` must be 1-64 letters, digits, `-` or `_`"
                )));
            }
            Some(id) => (id.to_owned(), vec![format!("!{id}")]),
            None => (new_id(), Vec::new()),
        };
        let task_type = start.task_type.unwrap_or(DEFAULT_TASK_TYPE);
        let content_type = start.content_type.unwrap_or(DEFAULT_PLACEHOLDER_CONTENT);
        let description = start.description;
        // camelCase as spool's other blocks, plus design D's own spelling.
        let placeholder = json!({
            "type": "placeholder", "taskId": task_id, "taskType": task_type,
            "contentType": content_type, "description": description,
            "task_id": task_id, "task_type": task_type, "content_type": content_type,
        });
        let mut change = Change {
            guards,
            ..Change::default()
        };
        let entry = change.block(
            BlockMode::Append,
            &task_id,
            &placeholder,
            self.config.inline_limit_bytes,
        );
        change
            .field(task_field(&task_id, "status"), "running")
            .field(task_field(&task_id, "description"), description)
            .field(task_field(&task_id, "type"), task_type)
            .field(task_field(&task_id, "progress"), "0")
            .field(task_field(&task_id, "started_at"), now_ms().to_string())
            .event(
                MessageEventType::TaskStarted,
                json!({
                    "taskId": task_id, "description": description,
                    "task_id": task_id, "task_type": task_type, "content_type": content_type,
                }),
            )
            .event(
                MessageEventType::ContentAdded,
                json!({ "blockId": task_id, "block": entry }),
            );
        self.apply(session_id, message_id, change).await?;
        Ok(task_id)
    }

    pub async fn update_task(
        &self,
        session_id: &str,
        message_id: &str,
        task_id: &str,
        update: TaskChange,
    ) -> Result<u64, StoreError> {
        // Only to name the type in the events; the guard below decides.
        let task_type: Option<String> = self
            .connection()
            .hget(self.keys.message(message_id), task_field(task_id, "type"))
            .await?;
        let task_type = task_type.as_deref().unwrap_or(DEFAULT_TASK_TYPE);
        let mut change = Change {
            guards: vec![task_id.to_owned()],
            ..Change::default()
        };
        match update {
            TaskChange::Progress { progress, step } => {
                let progress = progress.map(|p| if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) });
                if let Some(progress) = progress {
                    change.field(task_field(task_id, "progress"), progress.to_string());
                }
                if let Some(step) = &step {
                    change.field(task_field(task_id, "step"), step.clone());
                }
                change.event(
                    MessageEventType::TaskProgress,
                    json!({
                        "taskId": task_id, "progress": progress, "step": step,
                        "task_id": task_id, "task_type": task_type,
                    }),
                );
            }
            TaskChange::Completed { result } => {
                change
                    .field(task_field(task_id, "status"), COMPLETED)
                    .field(task_field(task_id, "progress"), "1");
                change.field(task_field(task_id, "finished_at"), now_ms().to_string());
                let entry = match &result {
                    Some(block) => Some(change.block(
                        BlockMode::Replace,
                        task_id,
                        block,
                        self.config.inline_limit_bytes,
                    )),
                    None => {
                        change.remove_block(task_id);
                        None
                    }
                };
                change
                    .event(
                        MessageEventType::TaskCompleted,
                        json!({
                            "taskId": task_id, "result": entry,
                            "task_id": task_id, "task_type": task_type,
                        }),
                    )
                    .event(
                        MessageEventType::ContentUpdated,
                        json!({ "blockId": task_id, "block": entry, "removed": entry.is_none() }),
                    );
            }
            TaskChange::Failed { error } => fail_task(&mut change, task_id, task_type, &error),
        }
        self.apply(session_id, message_id, change).await
    }

    /// Marks the message completed (`message_end`); running tasks fail first.
    pub async fn complete(&self, session_id: &str, message_id: &str) -> Result<u64, StoreError> {
        self.end(session_id, message_id, None).await
    }

    /// Ends the message in an error: running tasks fail, then `error` and `message_end`.
    pub async fn fail(
        &self,
        session_id: &str,
        message_id: &str,
        error: &str,
    ) -> Result<u64, StoreError> {
        self.end(session_id, message_id, Some(error)).await
    }

    /// The message snapshot as JSON; `include_content` also loads blocks that
    /// are stored on their own (otherwise they stay references).
    pub async fn load(
        &self,
        message_id: &str,
        include_content: bool,
    ) -> Result<Option<Value>, StoreError> {
        // One MULTI: the text and the fields (`seq` among them) of one moment.
        let (mut fields, text): (HashMap<String, String>, Option<String>) = redis::pipe()
            .atomic()
            .hgetall(self.keys.message(message_id))
            .get(self.keys.message_text(message_id))
            .query_async(&mut self.connection())
            .await?;
        // A message written before the text key keeps its text in the hash.
        if let Some(text) = text {
            fields.insert("text".to_owned(), text);
        }
        let Some(mut snapshot) = snapshot(&fields) else {
            return Ok(None);
        };
        if include_content && let Some(Value::Array(blocks)) = snapshot.get_mut("blocks") {
            let ids: Vec<String> = blocks
                .iter()
                .filter_map(content_id)
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.hget(self.keys.content(id), "block");
                }
                let loaded: Vec<Option<String>> = pipe.query_async(&mut self.connection()).await?;
                let loaded: HashMap<&String, Option<String>> = ids.iter().zip(loaded).collect();
                for block in blocks.iter_mut() {
                    let Some(id) = content_id(block).map(str::to_owned) else {
                        continue;
                    };
                    // Content that expired before its message stays a reference, marked missing.
                    match loaded
                        .get(&id)
                        .cloned()
                        .flatten()
                        .and_then(|json| serde_json::from_str::<Value>(&json).ok())
                    {
                        Some(full) => *block = with_storage(&id, full),
                        None => block["missing"] = true.into(),
                    }
                }
            }
        }
        Ok(Some(snapshot))
    }

    /// One separately stored block, loaded on demand.
    pub async fn content(&self, content_id: &str) -> Result<Option<Value>, StoreError> {
        let fields: HashMap<String, String> = self
            .connection()
            .hgetall(self.keys.content(content_id))
            .await?;
        let Some(block) = fields
            .get("block")
            .and_then(|json| serde_json::from_str::<Value>(json).ok())
        else {
            return Ok(None);
        };
        Ok(Some(json!({
            "id": content_id,
            "messageId": fields.get("message_id"),
            "type": fields.get("type"),
            "bytes": fields.get("bytes").and_then(|b| b.parse::<u64>().ok()),
            "createdAt": fields.get("created_at").and_then(|t| t.parse::<u64>().ok()),
            "block": block,
        })))
    }

    /// Which session a message belongs to, and its status (`None`: no such message).
    pub async fn message_status(
        &self,
        message_id: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let (session, status): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.message(message_id))
            .arg("session_id")
            .arg("status")
            .query_async(&mut self.connection())
            .await?;
        Ok(session.zip(status))
    }
}

impl MessageEvent {
    /// An event as stored in its message's stream.
    pub fn from_entry(entry: &redis::streams::StreamId) -> Self {
        let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
        MessageEvent {
            seq: field("seq").parse().unwrap_or(0),
            event_type: field("event_type"),
            data: serde_json::from_str(&field("data")).unwrap_or(Value::Null),
            timestamp: field("timestamp").parse().unwrap_or(0),
            id: entry.id.clone(),
        }
    }
}

fn creation(session_id: &str, message_id: &str, role: &str) -> Change {
    let now = now_ms().to_string();
    let mut change = Change {
        requirement: Requirement::Absent,
        ..Change::default()
    };
    change
        .field("id", message_id)
        .field("session_id", session_id)
        .field("role", role)
        .field("status", STREAMING)
        .field("created_at", now)
        .event(
            MessageEventType::MessageStart,
            json!({ "messageId": message_id, "sessionId": session_id, "role": role }),
        );
    change
}

fn fail_task(change: &mut Change, task_id: &str, task_type: &str, error: &str) {
    change
        .field(task_field(task_id, "status"), "failed")
        .field(task_field(task_id, "error"), error)
        .field(task_field(task_id, "finished_at"), now_ms().to_string())
        .remove_block(task_id)
        .event(
            MessageEventType::TaskFailed,
            json!({
                "taskId": task_id, "error": error,
                "task_id": task_id, "task_type": task_type,
            }),
        )
        .event(
            MessageEventType::ContentUpdated,
            json!({ "blockId": task_id, "block": null, "removed": true }),
        );
}

fn task_field(task_id: &str, name: &str) -> String {
    format!("task:{task_id}:{name}")
}

fn with_storage(id: &str, block: Value) -> Value {
    let mut block = super::blocks::with_id(id, &block);
    block["stored"] = "separate".into();
    block
}

/// The public JSON of a message hash; `None` when the hash is empty (no such message).
fn snapshot(fields: &HashMap<String, String>) -> Option<Value> {
    let id = fields.get("id")?;
    let number = |name: &str| fields.get(name).and_then(|v| v.parse::<u64>().ok());
    let order = fields.get("block_order").map(String::as_str).unwrap_or("");
    let blocks: Vec<Value> = order
        .split(',')
        .filter(|id| !id.is_empty())
        .filter_map(|id| {
            fields
                .get(&format!("block:{id}"))
                .and_then(|json| serde_json::from_str(json).ok())
        })
        .collect();
    let mut tasks: Vec<Value> = fields
        .keys()
        .filter_map(|field| field.strip_prefix("task:")?.strip_suffix(":status"))
        .map(|task| {
            let get = |name: &str| fields.get(&task_field(task, name));
            let time = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
            json!({
                "taskId": task,
                "taskType": get("type").map_or(DEFAULT_TASK_TYPE, String::as_str),
                "description": get("description"),
                "status": get("status"),
                "progress": get("progress").and_then(|v| v.parse::<f64>().ok()),
                "step": get("step"),
                "error": get("error"),
                "startedAt": time("started_at"),
                "finishedAt": time("finished_at"),
            })
        })
        .collect();
    tasks.sort_by_key(|task| {
        (
            task["startedAt"].as_u64(),
            task["taskId"].as_str().map(str::to_owned),
        )
    });
    Some(json!({
        "id": id,
        "sessionId": fields.get("session_id"),
        "role": fields.get("role"),
        "status": fields.get("status"),
        "text": fields.get("text").map(String::as_str).unwrap_or(""),
        "blocks": blocks,
        "tasks": tasks,
        "seq": number("seq").unwrap_or(0),
        "metadata": fields.get("metadata").and_then(|m| serde_json::from_str::<Value>(m).ok()),
        "jobId": fields.get("job_id"),
        "error": fields.get("error"),
        "createdAt": number("created_at"),
        "updatedAt": number("updated_at"),
    }))
}

/// A message's event stream as a [`Source`](crate::follow::Source): it ends at
/// `message_end`, or when the message is gone or ended and that event is gone.
pub struct MessageEvents {
    pub store: super::Store,
    pub session_id: String,
    pub message_id: String,
}

impl crate::follow::Source for MessageEvents {
    type Entry = MessageEvent;

    fn key(&self) -> String {
        self.store
            .keys
            .message_stream(&self.session_id, &self.message_id)
    }

    fn parse(entry: &redis::streams::StreamId) -> MessageEvent {
        MessageEvent::from_entry(entry)
    }

    fn is_last(&mut self, entry: &MessageEvent) -> bool {
        entry.event_type == MessageEventType::MessageEnd.as_str()
    }

    fn is_open(&self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(async {
            matches!(
                self.store.message_status(&self.message_id).await,
                Ok(Some((_, status))) if !super::FINAL_STATUSES.contains(&status.as_str())
            )
        })
    }
}

impl Store {
    /// Where a message stream resumes after the event numbered `seq`: that
    /// event's stream id. Before the first kept event (trimmed, or `0`) it is
    /// the start; past the last it is the last, so nothing already sent
    /// repeats. Reads the whole stream, which `max_events` bounds.
    pub async fn position_after_seq(
        &self,
        session_id: &str,
        message_id: &str,
        seq: u64,
    ) -> Result<String, StoreError> {
        let entries: redis::streams::StreamRangeReply = self
            .connection()
            .xrange(self.keys.message_stream(session_id, message_id), "-", "+")
            .await?;
        let mut position = "0-0".to_owned();
        for entry in &entries.ids {
            if MessageEvent::from_entry(entry).seq > seq {
                break;
            }
            position = entry.id.clone();
        }
        Ok(position)
    }
}
