//! The [`JobHost`] of a running job: what its guest reaches outside the
//! sandbox. Model calls go through the shared [`Gateway`]; events and state go
//! to the job's own keys; `messages` calls go to the session message the job
//! drives (if any); follow-ups are only collected here and queued by the
//! worker once the job completes. Every write is fenced by the attempt's
//! [`Fence`]: the first one refused marks the attempt lost (`lost`), or
//! cancelled (`stop`) once the job's cancel was accepted; either stops the guest.
//! Events and progress are written behind the guest (`write_behind`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::follow_up::{FollowUp, follow_up_id};
use super::write_behind::{Refusals, WriteBehind, Writer};
use crate::gateway::{CallContext, Gateway};
use crate::intake::Route;
use crate::models::{ChatReply, ChatRequest, ModelError};
use crate::queue::{Fence, JobWrite, Queue};
use crate::store;
use crate::store::{BoundMessage, Store, StoreError};
use spool_runtime::{ContentBlock, ContentKind, HostCallError, JobHost, TaskStart, TaskUpdate};

/// What a running `handle` reaches outside its sandbox.
pub(super) struct WorkerHost {
    pub job_id: String,
    pub user_id: String,
    pub deadline: std::time::Instant,
    pub queue: Queue,
    /// The attempt's claim on its job; every write carries it.
    pub fence: Fence,
    /// Cancelled when a write is refused: the attempt lost its job.
    pub lost: CancellationToken,
    /// Cancelled when a write is refused because the job's cancel was accepted.
    pub stop: CancellationToken,
    pub gateway: Arc<Gateway>,
    /// The queues a follow-up may go to.
    pub routes: Arc<BTreeMap<String, Route>>,
    /// Fenced by the attempt.
    pub sessions: Store,
    /// The session message this job drives, if any.
    pub message: Option<BoundMessage>,
    /// Follow-up jobs to queue if the job completes (the `jobs` interface).
    pub follow_ups: Mutex<Vec<FollowUp>>,
    /// The attempt's events and progress, written behind the guest.
    pub events: WriteBehind,
    /// The guest set a state key: the job's state hash must expire with it.
    pub wrote_state: AtomicBool,
}

impl WorkerHost {
    fn call_context(&self) -> CallContext<'_> {
        CallContext {
            job_id: &self.job_id,
            user_id: Some(&self.user_id),
            deadline: self.deadline,
        }
    }

    pub fn has_follow_ups(&self) -> bool {
        !self
            .follow_ups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    pub fn take_follow_ups(&self) -> Vec<FollowUp> {
        std::mem::take(&mut *self.follow_ups.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn bound(&self) -> Result<&BoundMessage, HostCallError> {
        self.message.as_ref().ok_or(HostCallError::NoMessage)
    }

    /// What the writer of the attempt's job writes needs, when it starts.
    fn writer(&self) -> Writer {
        Writer {
            queue: self.queue.clone(),
            fence: self.fence.clone(),
            refusals: Refusals {
                job_id: self.job_id.clone(),
                lost: self.lost.clone(),
                stop: self.stop.clone(),
            },
        }
    }

    fn fenced(&self) {
        tracing::warn!(job = %self.job_id, "a write of this attempt was refused: its job was given to another attempt");
        self.lost.cancel();
    }

    /// What the guest learns of a message write; a refusal by the fence
    /// also marks the attempt lost.
    fn message_written<T>(&self, result: Result<T, StoreError>) -> Result<T, HostCallError> {
        result.map_err(|error| match error {
            StoreError::Redis(error) => HostCallError::Unavailable(error.to_string()),
            StoreError::Fenced => {
                self.fenced();
                HostCallError::Refused(StoreError::Fenced.to_string())
            }
            StoreError::Cancelled => {
                self.stop.cancel();
                HostCallError::Refused(StoreError::Cancelled.to_string())
            }
            other => HostCallError::Refused(other.to_string()),
        })
    }
}

impl JobHost for WorkerHost {
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatReply, ModelError>> {
        Box::pin(async move {
            // Deltas are queued by a task running beside the call, so the
            // model stream never waits for room in the write-behind queue;
            // the write-behind makes events of them (see `write_behind`).
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
            let writer = async {
                // Pieces that came together are queued as one write.
                let mut pieces = Vec::new();
                while receiver.recv_many(&mut pieces, 64).await > 0 {
                    let together = std::mem::take(&mut pieces);
                    self.events.push_delta(together, || self.writer()).await;
                }
            };
            let call = async move {
                let mut on_delta = |piece: &str| {
                    let _ = sender.send(piece.to_owned());
                };
                self.gateway
                    .chat(&self.call_context(), &request, &mut on_delta)
                    .await
            };
            let (reply, ()) = tokio::join!(call, writer);
            reply
        })
    }

    fn embed(
        &self,
        model: Option<String>,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move {
            self.gateway
                .embed(&self.call_context(), model.as_deref(), &texts)
                .await
        })
    }

    fn progress(&self, percent: u8, step: String) -> BoxFuture<'_, ()> {
        Box::pin(
            self.events
                .push(JobWrite::Progress { percent, step }, || self.writer()),
        )
    }

    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()> {
        Box::pin(
            self.events
                .push(JobWrite::Event { event_type, data }, || self.writer()),
        )
    }

    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            self.queue
                .connection()
                .hget(&self.fence.job.state, key)
                .await
                .ok()
                .flatten()
        })
    }

    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()> {
        self.wrote_state.store(true, Ordering::Relaxed);
        Box::pin(
            self.events
                .write(JobWrite::SetState { key, value }, || self.writer()),
        )
    }

    fn state_delete(&self, key: String) -> BoxFuture<'_, ()> {
        Box::pin(
            self.events
                .write(JobWrite::DeleteState { key }, || self.writer()),
        )
    }

    fn state_sizes(&self) -> BoxFuture<'_, HashMap<String, usize>> {
        Box::pin(async move {
            // Two reads, not atomic: only this attempt writes the state.
            let key = &self.fence.job.state;
            let mut redis = self.queue.connection();
            let keys: Vec<String> = match redis.hkeys(key).await {
                Ok(keys) => keys,
                Err(error) => {
                    // The quota then counts this attempt's writes only.
                    tracing::warn!(job = %self.job_id, %error, "could not read the size of the job's state");
                    return HashMap::new();
                }
            };
            if keys.is_empty() {
                return HashMap::new();
            }
            let mut pipe = redis::pipe();
            for field in &keys {
                pipe.cmd("HSTRLEN").arg(key).arg(field);
            }
            let lengths: Vec<usize> = pipe.query_async(&mut redis).await.unwrap_or_default();
            keys.into_iter()
                .zip(lengths)
                .map(|(field, value)| {
                    let bytes = field.len() + value;
                    (field, bytes)
                })
                .collect()
        })
    }

    fn message_id(&self) -> Option<String> {
        self.message.as_ref().map(|bound| bound.message_id.clone())
    }

    fn message_append_text(&self, text: String) -> BoxFuture<'_, Result<(), HostCallError>> {
        Box::pin(async move {
            self.message_written(self.bound()?.append_text(&self.sessions, text).await)
        })
    }

    fn message_add_content(
        &self,
        block: ContentBlock,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        Box::pin(async move {
            self.message_written(self.bound()?.add_content(&self.sessions, block).await)
        })
    }

    fn message_start_task(
        &self,
        description: String,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        Box::pin(async move {
            self.message_written(self.bound()?.start_task(&self.sessions, description).await)
        })
    }

    fn message_start_task_with(
        &self,
        start: TaskStart,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        Box::pin(async move {
            let content_type = start.content_type.map(content_kind_name);
            let start = store::TaskStart {
                id: start.id.as_deref(),
                task_type: start.task_type.as_deref(),
                content_type,
                description: &start.description,
            };
            self.message_written(self.bound()?.start_task_with(&self.sessions, &start).await)
        })
    }

    fn message_update_task(
        &self,
        task_id: String,
        update: TaskUpdate,
    ) -> BoxFuture<'_, Result<(), HostCallError>> {
        Box::pin(async move {
            self.message_written(
                self.bound()?
                    .update_task(&self.sessions, task_id, update)
                    .await,
            )
        })
    }

    fn message_complete(&self) -> BoxFuture<'_, Result<(), HostCallError>> {
        Box::pin(async move { self.message_written(self.bound()?.complete(&self.sessions).await) })
    }

    fn follow_up(
        &self,
        queue: String,
        payload: String,
        take_message: bool,
    ) -> Result<String, HostCallError> {
        if !self.routes.contains_key(&queue) {
            return Err(HostCallError::Refused(format!("no queue named `{queue}`")));
        }
        let mut follow_ups = self.follow_ups.lock().unwrap_or_else(|e| e.into_inner());
        if take_message {
            self.bound()?;
            if follow_ups.iter().any(|f| f.takes_message) {
                return Err(HostCallError::Refused(
                    "an earlier follow-up already took this job's message".to_owned(),
                ));
            }
        }
        let id = follow_up_id(&self.job_id, follow_ups.len()).map_err(HostCallError::Refused)?;
        follow_ups.push(FollowUp {
            id: id.clone(),
            queue,
            payload,
            takes_message: take_message,
        });
        Ok(id)
    }
}

/// A placeholder's `content_type`: the name of the block case it stands for.
fn content_kind_name(kind: ContentKind) -> &'static str {
    match kind {
        ContentKind::Text => "text",
        ContentKind::Markdown => "markdown",
        ContentKind::Html => "html",
        ContentKind::Code => "code",
        ContentKind::Json => "json",
        ContentKind::Thinking => "thinking",
        ContentKind::Image => "image",
        ContentKind::Audio => "audio",
        ContentKind::Video => "video",
        ContentKind::File => "file",
    }
}
