//! A job as the API shows it: the public, camelCase shape of a job record
//! (`GET /api/job/{id}`, queue history, the SSE `state` snapshot). The record
//! itself is `spool_core::queue::JobRecord`'s; the payload never leaves it.
//!
//! Design E's client reads `jobId` and a result `{success, response,
//! timestamp}`: `jobId` repeats `id`, and a completed job of design E's queue
//! (`chat`, where `POST /api/chat` submits) whose result is an object gets the
//! host's own two facts, `success` (it completed) and `timestamp` (when, in
//! ms), unless the handler set them. Nothing of the result is read, and other
//! queues' results are shown exactly as their handlers returned them.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use spool_core::queue::{JobRecord, JobState};

/// Design E's queue: the one POST /api/chat submits to.
pub const CHAT_QUEUE: &str = "chat";

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    /// The same as `id` (design E's name).
    pub job_id: String,
    pub queue: String,
    pub state: JobState,
    /// 0 to 100.
    pub progress: u8,
    /// The step the handler last reported.
    pub step: Option<String>,
    pub priority: u8,
    /// The priority class the queue's rule gave it (`high`, `normal`, `low`).
    pub class: String,
    pub score: u8,
    pub user_id: String,
    /// Attempts started so far.
    pub attempts: u32,
    pub handler: String,
    pub handler_version: Option<String>,
    /// The consumer running (or that last ran) the job.
    pub worker: Option<String>,
    /// The handler's result, once completed; a `chat` job's object result
    /// also carries `success: true` and `timestamp` (ms, when it completed).
    pub result: Option<Value>,
    /// Content blocks the handler produced.
    pub blocks: Option<Value>,
    pub error: Option<String>,
    /// Stable name of the last failure (`deadline`, `panic`, `rejected`, ...).
    pub error_kind: Option<String>,
    /// Milliseconds since the epoch, like every time below.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// When a cancel of the running job was accepted.
    pub cancel_requested_at: Option<u64>,
}

impl From<&JobRecord> for JobView {
    fn from(record: &JobRecord) -> Self {
        let parsed = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        };
        let mut result = parsed(&record.result);
        let design_e = record.queue == CHAT_QUEUE && record.state == JobState::Completed;
        if let (Some(Value::Object(fields)), true) = (&mut result, design_e) {
            fields.entry("success").or_insert(Value::Bool(true));
            if let Some(finished) = record.finished_at {
                fields.entry("timestamp").or_insert(finished.into());
            }
        }
        Self {
            id: record.id.clone(),
            job_id: record.id.clone(),
            queue: record.queue.clone(),
            state: record.state,
            progress: record.progress,
            step: record.step.clone(),
            priority: record.priority,
            class: record.class.clone(),
            score: record.score,
            user_id: record.user_id.clone(),
            attempts: record.attempts,
            handler: record.handler.clone(),
            handler_version: record.handler_version.clone(),
            worker: record.worker.clone(),
            result,
            blocks: parsed(&record.blocks),
            error: record.error.clone(),
            error_kind: record.error_kind.clone(),
            created_at: record.created_at,
            started_at: record.started_at,
            finished_at: record.finished_at,
            cancel_requested_at: record.cancel_requested_at,
        }
    }
}
