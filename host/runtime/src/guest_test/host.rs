//! The scripted [`JobHost`] of a guest test: model calls are answered from a
//! list of replies (or errors) in order, events, logs and state changes are
//! recorded in memory. Nothing leaves the process.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use spool_fixture::{ScriptedError, ScriptedReply};

use crate::model::{ChatReply, ChatRequest, ModelError};
use crate::{HostCallError, JobHost, LogLevel};

/// The model error a scripted reply stands for, if it is one.
fn model_error(reply: &ScriptedReply) -> Option<ModelError> {
    let ScriptedReply::Error(error) = reply else {
        return None;
    };
    Some(match error {
        ScriptedError::RateLimited { retry_after_ms } => ModelError::RateLimited {
            status: 429,
            retry_after: retry_after_ms.map(Duration::from_millis),
            message: "rate limited (scripted)".into(),
        },
        ScriptedError::Unavailable { message } => ModelError::Unavailable(message.clone()),
        ScriptedError::Rejected { status, message } => ModelError::Rejected {
            status: *status,
            message: message.clone(),
        },
    })
}

/// What the guest did, collected by the host.
#[derive(Default)]
pub struct Record {
    pub events: Vec<Value>,
    pub model_requests: Vec<Value>,
    pub logs: Vec<Value>,
    pub output: String,
    pub state: BTreeMap<String, String>,
    /// `{"id", "queue", "payload"}` for each follow-up job asked for.
    pub follow_ups: Vec<Value>,
    pub unused_replies: usize,
}

pub struct ScriptedHost {
    job_id: String,
    replies: Mutex<VecDeque<ScriptedReply>>,
    record: Mutex<Record>,
}

/// The model name reported when a scripted reply names none.
const SCRIPTED_MODEL: &str = "scripted";

impl ScriptedHost {
    pub fn new(job_id: &str, replies: Vec<ScriptedReply>, state: BTreeMap<String, String>) -> Self {
        Self {
            job_id: job_id.to_owned(),
            replies: Mutex::new(replies.into()),
            record: Mutex::new(Record {
                state,
                ..Record::default()
            }),
        }
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_reply(&self) -> Option<ScriptedReply> {
        self.replies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front()
    }

    /// Everything recorded so far; the host is left empty.
    pub fn take_record(&self) -> Record {
        let mut record = std::mem::take(&mut *self.record());
        record.unused_replies = self
            .replies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len();
        record
    }
}

fn no_reply_left() -> ModelError {
    ModelError::Unavailable(
        "no scripted model reply left (add one to the fixture's `replies`)".into(),
    )
}

impl JobHost for ScriptedHost {
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatReply, ModelError>> {
        Box::pin(async move {
            let request = json!({"model": request.model, "messages": request.messages, "params": request.params});
            self.record()
                .model_requests
                .push(json!({"kind": "chat", "request": request}));
            let reply = self.next_reply().ok_or_else(no_reply_left)?;
            if let Some(error) = model_error(&reply) {
                return Err(error);
            }
            let ScriptedReply::Text(text) = reply else {
                return Err(ModelError::Unavailable(
                    "the next scripted reply is embeddings, not text".into(),
                ));
            };
            // The real host streams the answer as text_delta events.
            self.record()
                .events
                .push(json!({"type": "text_delta", "data": {"text": text.text}}));
            Ok(ChatReply {
                text: text.text,
                model: text.model.unwrap_or_else(|| SCRIPTED_MODEL.into()),
                prompt_tokens: text.prompt_tokens,
                completion_tokens: text.completion_tokens,
                finish_reason: text.finish_reason.or_else(|| Some("stop".into())),
            })
        })
    }

    fn embed(
        &self,
        model: Option<String>,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move {
            self.record()
                .model_requests
                .push(json!({"kind": "embed", "model": model, "texts": texts}));
            let reply = self.next_reply().ok_or_else(no_reply_left)?;
            if let Some(error) = model_error(&reply) {
                return Err(error);
            }
            match reply {
                ScriptedReply::Embeddings { embeddings } => Ok(embeddings),
                _ => Err(ModelError::Unavailable(
                    "the next scripted reply is text, not embeddings".into(),
                )),
            }
        })
    }

    fn progress(&self, percent: u8, step: String) -> BoxFuture<'_, ()> {
        self.record()
            .events
            .push(json!({"type": "task_progress", "data": {"progress": percent, "step": step}}));
        Box::pin(async {})
    }

    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()> {
        let data = serde_json::from_str(&data).unwrap_or(Value::String(data));
        self.record()
            .events
            .push(json!({"type": event_type, "data": data}));
        Box::pin(async {})
    }

    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>> {
        let value = self.record().state.get(&key).cloned();
        Box::pin(async move { value })
    }

    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()> {
        self.record().state.insert(key, value);
        Box::pin(async {})
    }

    fn state_delete(&self, key: String) -> BoxFuture<'_, ()> {
        self.record().state.remove(&key);
        Box::pin(async {})
    }

    fn state_sizes(&self) -> BoxFuture<'_, std::collections::HashMap<String, usize>> {
        let sizes = self
            .record()
            .state
            .iter()
            .map(|(key, value)| (key.clone(), key.len() + value.len()))
            .collect();
        Box::pin(async move { sizes })
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        };
        self.record()
            .logs
            .push(json!({"level": level, "message": message}));
    }

    fn guest_output(&self, text: &str) {
        self.record().output.push_str(text);
    }

    /// Recorded, never queued; ids as the worker would give them.
    fn follow_up(
        &self,
        queue: String,
        payload: String,
        take_message: bool,
    ) -> Result<String, HostCallError> {
        if take_message {
            return Err(HostCallError::NoMessage);
        }
        let mut record = self.record();
        let id = format!("{}.{}", self.job_id, record.follow_ups.len() + 1);
        let payload = serde_json::from_str(&payload).unwrap_or(Value::String(payload));
        record
            .follow_ups
            .push(json!({"id": id, "queue": queue, "payload": payload}));
        Ok(id)
    }
}
