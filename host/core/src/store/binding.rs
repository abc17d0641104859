//! Jobs bound to messages: a session task's job drives the assistant message
//! created for it, through the guest's `messages` imports (served here for the
//! worker's `JobHost`) and, when the job ends, through [`settle`], which makes
//! sure the message ends too and no placeholder is left behind.

use super::message::{COMPLETED, ERROR};
use super::{Store, StoreError, TaskChange, validate_block};
pub use crate::queue::BoundMessage;
use crate::queue::JobRecord;
use spool_runtime::content::block_to_json;
use spool_runtime::{ContentBlock, HostCallError, TaskStatus, TaskUpdate};

/// How a bound job's attempt ended, as far as its message is concerned.
pub enum JobEnd<'a> {
    Completed,
    /// This attempt failed; the job runs again later.
    Retrying(&'a str),
    Failed(&'a str),
}

/// The message a job drives, as its record names it, confirmed by the
/// message, which names its job: a job whose message has since passed to a
/// follow-up (or to another attempt's job) does not drive it any more.
pub async fn bound_message(store: &Store, record: &JobRecord) -> Option<BoundMessage> {
    let bound = record.message.as_ref()?;
    let driver: Option<String> = redis::cmd("HGET")
        .arg(super::message_key(&bound.message_id))
        .arg("job_id")
        .query_async(&mut store.connection())
        .await
        .ok()?;
    if driver.as_deref() == Some(record.id.as_str()) {
        Some(bound.clone())
    } else {
        tracing::warn!(
            job = %record.id,
            message = %bound.message_id,
            "the job's message is driven by another job; ignoring the binding"
        );
        None
    }
}

/// Brings the message in line with how its job's attempt ended: completed
/// (if the handler did not complete it), ended in an error, or (on a retry)
/// with its open tasks failed. Never fails: problems are logged.
pub async fn settle(store: &Store, bound: &BoundMessage, end: JobEnd<'_>) {
    let (sid, mid) = (bound.session_id.as_str(), bound.message_id.as_str());
    let result = match end {
        JobEnd::Completed => store.complete(sid, mid).await.map(drop),
        JobEnd::Failed(error) => store.fail(sid, mid, error).await.map(drop),
        JobEnd::Retrying(error) => store
            .abandon_tasks(sid, mid, &format!("attempt failed, will retry: {error}"))
            .await
            .map(drop),
    };
    match result {
        Ok(()) | Err(StoreError::Finished(_)) => {}
        Err(error) => tracing::warn!(message = mid, %error, "could not settle the job's message"),
    }
}

/// Rebinds a message from one job to another, if the first still drives it.
static HAND_OVER: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('HGET', KEYS[1], 'job_id') == ARGV[1] then \
           redis.call('HSET', KEYS[1], 'job_id', ARGV[2]) return 1 end return 0",
    )
});

impl BoundMessage {
    /// Passes the message from job `from` to job `to` (a follow-up job, see
    /// `crate::worker::follow_up`). False: `from` no longer drove it.
    pub async fn hand_over(&self, store: &Store, from: &str, to: &str) -> redis::RedisResult<bool> {
        HAND_OVER
            .key(super::message_key(&self.message_id))
            .arg(from)
            .arg(to)
            .invoke_async(&mut store.connection())
            .await
    }

    pub async fn append_text(&self, store: &Store, text: String) -> Result<(), HostCallError> {
        store
            .append_text(&self.session_id, &self.message_id, &text)
            .await
            .map(drop)
            .map_err(guest_error)
    }

    pub async fn add_content(
        &self,
        store: &Store,
        block: ContentBlock,
    ) -> Result<String, HostCallError> {
        let block = block_to_json(&block);
        validate_block(&block).map_err(HostCallError::Refused)?;
        store
            .add_content(&self.session_id, &self.message_id, &block)
            .await
            .map_err(guest_error)
    }

    pub async fn start_task(
        &self,
        store: &Store,
        description: String,
    ) -> Result<String, HostCallError> {
        store
            .start_task(&self.session_id, &self.message_id, &description)
            .await
            .map_err(guest_error)
    }

    pub async fn update_task(
        &self,
        store: &Store,
        task_id: String,
        update: TaskUpdate,
    ) -> Result<(), HostCallError> {
        let change = match update.status {
            TaskStatus::Running => TaskChange::Progress {
                progress: update.progress,
                step: update.step,
            },
            TaskStatus::Completed => {
                let result = update.result.as_ref().map(block_to_json);
                if let Some(block) = &result {
                    validate_block(block).map_err(HostCallError::Refused)?;
                }
                TaskChange::Completed { result }
            }
            TaskStatus::Failed => TaskChange::Failed {
                error: update.error.unwrap_or_else(|| "the task failed".into()),
            },
        };
        store
            .update_task(&self.session_id, &self.message_id, &task_id, change)
            .await
            .map(drop)
            .map_err(guest_error)
    }

    pub async fn complete(&self, store: &Store) -> Result<(), HostCallError> {
        store
            .complete(&self.session_id, &self.message_id)
            .await
            .map(drop)
            .map_err(guest_error)
    }
}

fn guest_error(error: StoreError) -> HostCallError {
    match error {
        StoreError::Redis(error) => HostCallError::Unavailable(error.to_string()),
        other => HostCallError::Refused(other.to_string()),
    }
}

/// The statuses a message ends in.
pub const FINAL_STATUSES: [&str; 2] = [COMPLETED, ERROR];
