//! Jobs bound to messages: a session task's job drives the assistant message
//! created for it, through the guest's `messages` imports (served here for the
//! worker's `JobHost`, through a store [fenced](Store::fenced) by the job's
//! attempt). When the job ends, the queue's scripts end its message in the
//! same step (`queue/message_end.lua`), so no placeholder is left behind.

use super::message::{COMPLETED, ERROR};
use super::{Store, StoreError, TaskChange, validate_block};
pub use crate::queue::BoundMessage;
use crate::queue::JobRecord;
use spool_runtime::content::block_to_json;
use spool_runtime::{ContentBlock, TaskStatus, TaskUpdate};

/// The message a job drives, as its record names it, confirmed by the
/// message, which names its job: a job whose message has since passed to a
/// follow-up (or to another attempt's job) does not drive it any more.
pub async fn bound_message(store: &Store, record: &JobRecord) -> Option<BoundMessage> {
    let bound = record.message.as_ref()?;
    let driver: Option<String> = redis::cmd("HGET")
        .arg(store.keys.message(&bound.message_id))
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

impl BoundMessage {
    pub async fn append_text(&self, store: &Store, text: String) -> Result<(), StoreError> {
        store
            .append_text(&self.session_id, &self.message_id, &text)
            .await
            .map(drop)
    }

    pub async fn add_content(
        &self,
        store: &Store,
        block: ContentBlock,
    ) -> Result<String, StoreError> {
        let block = block_to_json(&block);
        validate_block(&block).map_err(StoreError::Invalid)?;
        store
            .add_content(&self.session_id, &self.message_id, &block)
            .await
    }

    pub async fn start_task(
        &self,
        store: &Store,
        description: String,
    ) -> Result<String, StoreError> {
        store
            .start_task(&self.session_id, &self.message_id, &description)
            .await
    }

    pub async fn start_task_with(
        &self,
        store: &Store,
        start: &super::TaskStart<'_>,
    ) -> Result<String, StoreError> {
        store
            .start_task_with(&self.session_id, &self.message_id, start)
            .await
    }

    pub async fn update_task(
        &self,
        store: &Store,
        task_id: String,
        update: TaskUpdate,
    ) -> Result<(), StoreError> {
        let change = match update.status {
            TaskStatus::Running => TaskChange::Progress {
                progress: update.progress,
                step: update.step,
            },
            TaskStatus::Completed => {
                let result = update.result.as_ref().map(block_to_json);
                if let Some(block) = &result {
                    validate_block(block).map_err(StoreError::Invalid)?;
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
    }

    pub async fn complete(&self, store: &Store) -> Result<(), StoreError> {
        store
            .complete(&self.session_id, &self.message_id)
            .await
            .map(drop)
    }
}

/// The statuses a message ends in.
pub const FINAL_STATUSES: [&str; 2] = [COMPLETED, ERROR];
