//! Workers: claim a job, run its handler in a fresh instance, record the outcome.
//!
//! Owns the worker loop (what to do when idle, paused or when Redis is away), the
//! retry decision, and the [`JobHost`] through which a running guest reaches the
//! model backend, its event stream and its state. Queue writes go through
//! [`Queue`]; sandboxing is the runtime's.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::QueueConfig;
use crate::content::blocks_to_json;
use crate::events;
use crate::models::{ChatReply, ChatRequest, ModelClient, ModelError};
use crate::queue::{Claim, ClaimedJob, Outcome, Queue, QueueKeys, Retention, job_state_key, now_ms};
use crate::registry::Registry;
use crate::runtime::{ContentBlock, Job, JobError, JobHost, Runtime, TaskUpdate};
use crate::store::{self, BoundMessage, JobEnd, Store};

/// A queue as the workers serve it.
#[derive(Clone, Debug)]
pub struct Route {
    pub keys: QueueKeys,
    pub config: QueueConfig,
}

/// What every worker of an instance shares.
pub struct Workers {
    pub queue: Queue,
    pub runtime: Arc<Runtime>,
    pub registry: Arc<Registry>,
    pub models: ModelClient,
    pub routes: Arc<BTreeMap<String, Route>>,
    pub retention: Retention,
    pub idle_poll: Duration,
    /// Woken when a submission anywhere announces work.
    pub wake: Arc<Notify>,
    /// Session messages that jobs of session tasks drive.
    pub sessions: Store,
}

impl Workers {
    /// Runs worker `index` until `shutdown`; a job in hand is finished first.
    pub async fn run(self: Arc<Self>, consumer: String, index: usize, shutdown: CancellationToken) {
        let routes: Vec<&Route> = self.routes.values().collect();
        let mut redis_down_since: Option<std::time::Instant> = None;
        while !shutdown.is_cancelled() {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let mut worked = false;
            let mut wait = self.idle_poll;
            // Start at a different queue per worker so no queue starves.
            for offset in 0..routes.len() {
                let route = routes[(index + offset) % routes.len()];
                match self.queue.claim(&route.keys, &consumer).await {
                    Ok(Claim::Job(job)) => {
                        redis_down_since = None;
                        self.run_job(job, route).await;
                        worked = true;
                        break;
                    }
                    Ok(Claim::Again) => {
                        worked = true;
                        break;
                    }
                    Ok(Claim::Idle { next_retry_ms: Some(due) }) => {
                        wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
                    }
                    Ok(Claim::Idle { .. } | Claim::Paused) => redis_down_since = None,
                    Err(error) => {
                        if redis_down_since.is_none() {
                            tracing::warn!(%consumer, %error, "cannot reach Redis; will keep trying");
                            redis_down_since = Some(std::time::Instant::now());
                        }
                        wait = Duration::from_millis(500);
                        break;
                    }
                }
            }
            if worked {
                continue;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn run_job(&self, claimed: ClaimedJob, route: &Route) {
        let record = &claimed.record;
        let job = Job {
            id: record.id.clone(),
            queue: record.queue.clone(),
            user_id: record.user_id.clone(),
            user_tier: record.user_tier.clone(),
            priority: record.priority,
            payload: record.payload.clone(),
            attempt: record.attempts,
        };
        let message = store::bound_message(&self.sessions, &job.id, &job.payload).await;
        let outcome = match self.registry.get(&record.handler) {
            None => Outcome::Failed { error: format!("handler `{}` is not installed on this instance", record.handler) },
            Some(handler) => {
                let host = Arc::new(WorkerHost {
                    job_id: job.id.clone(),
                    redis: self.queue.connection(),
                    models: self.models.clone(),
                    sessions: self.sessions.clone(),
                    message: message.clone(),
                });
                match self.runtime.handle(&handler, &job, host).await {
                    Ok(Ok(output)) => match serde_json::from_str::<serde_json::Value>(&output.result) {
                        Ok(_) => Outcome::Completed {
                            result: output.result,
                            blocks: blocks_to_json(&output.blocks).to_string(),
                            handler_version: handler.version.clone(),
                        },
                        Err(e) => Outcome::Failed { error: format!("handler returned a result that is not JSON: {e}") },
                    },
                    Ok(Err(JobError::Reject(reason))) => Outcome::Failed { error: reason },
                    Ok(Err(JobError::Retry(hint))) => retry_or_fail(&route.config, record.attempts, hint.reason, hint.after_ms),
                    Err(failure) => retry_or_fail(&route.config, record.attempts, failure.to_string(), None),
                }
            }
        };
        if let Outcome::Failed { error } | Outcome::Retry { error, .. } = &outcome {
            tracing::warn!(job = %record.id, attempt = record.attempts, %error, "job attempt failed");
        }
        let recorded = self.record(claimed, &outcome).await;
        if let (true, Some(message)) = (recorded, &message) {
            let end = match &outcome {
                Outcome::Completed { .. } => JobEnd::Completed,
                Outcome::Retry { error, .. } => JobEnd::Retrying(error),
                Outcome::Failed { error } => JobEnd::Failed(error),
            };
            store::settle(&self.sessions, message, end).await;
        }
    }

    /// Writes the outcome, retrying while Redis is briefly away. If it never
    /// comes back the entry stays pending, and recovery hands it out again.
    /// Returns whether this attempt's outcome is the one recorded.
    async fn record(&self, claimed: ClaimedJob, outcome: &Outcome) -> bool {
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            match self.queue.finish(&claimed, outcome, self.retention).await {
                Ok(true) => return true,
                Ok(false) => {
                    tracing::info!(job = %claimed.record.id, "attempt lost its job to another run; result discarded");
                    return false;
                }
                Err(error) => {
                    tracing::warn!(job = %claimed.record.id, %error, "cannot record job outcome yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(job = %claimed.record.id, "gave up recording job outcome; it stays pending for recovery");
        false
    }
}

/// Exponential backoff from the queue's base delay, +-20 % jitter, unless the
/// handler asked for a specific wait.
fn retry_or_fail(config: &QueueConfig, attempts: u32, error: String, after_ms: Option<u64>) -> Outcome {
    if attempts >= config.max_attempts {
        return Outcome::Failed { error: format!("{error} (after {attempts} attempts)") };
    }
    let backoff = config.backoff_ms.saturating_mul(1 << attempts.saturating_sub(1).min(20));
    let jittered = backoff as f64 * (0.8 + 0.4 * fastrand::f64());
    let delay = after_ms.unwrap_or(jittered as u64).max(after_ms.unwrap_or(0));
    Outcome::Retry { error, retry_at_ms: now_ms() + delay }
}

/// What a running `handle` reaches outside its sandbox.
struct WorkerHost {
    job_id: String,
    redis: ConnectionManager,
    models: ModelClient,
    sessions: Store,
    /// The session message this job drives, if any.
    message: Option<BoundMessage>,
}

impl WorkerHost {
    fn bound(&self) -> Result<&BoundMessage, String> {
        self.message.as_ref().ok_or_else(|| "this job drives no message".to_owned())
    }

    fn log_redis_error(&self, what: &str, result: redis::RedisResult<()>) {
        if let Err(error) = result {
            tracing::warn!(job = %self.job_id, %error, "could not write {what}");
        }
    }
}

impl JobHost for WorkerHost {
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatReply, ModelError>> {
        Box::pin(async move {
            // Deltas are published by a writer task so the model stream is never
            // slowed by Redis; pieces that pile up are sent as one event.
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
            let mut redis = self.redis.clone();
            let job_id = self.job_id.clone();
            let writer = tokio::spawn(async move {
                while let Some(mut text) = receiver.recv().await {
                    while let Ok(more) = receiver.try_recv() {
                        text.push_str(&more);
                    }
                    let data = serde_json::json!({ "text": text }).to_string();
                    if let Err(error) = events::append(&mut redis, &job_id, "text_delta", &data).await {
                        tracing::warn!(job = %job_id, %error, "could not publish text_delta");
                    }
                }
            });
            let mut on_delta = |piece: &str| {
                let _ = sender.send(piece.to_owned());
            };
            let reply = self.models.chat(&request, &mut on_delta).await;
            drop(sender);
            let _ = writer.await;
            reply
        })
    }

    fn embed(&self, model: Option<String>, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move { self.models.embed(model.as_deref(), &texts).await })
    }

    fn progress(&self, percent: u8, step: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = events::progress(&mut self.redis.clone(), &self.job_id, percent, &step).await;
            self.log_redis_error("progress", result);
        })
    }

    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = events::append(&mut self.redis.clone(), &self.job_id, &event_type, &data).await;
            self.log_redis_error("event", result);
        })
    }

    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move { self.redis.clone().hget(job_state_key(&self.job_id), key).await.ok().flatten() })
    }

    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = self.redis.clone().hset(job_state_key(&self.job_id), key, value).await;
            self.log_redis_error("state", result);
        })
    }

    fn state_delete(&self, key: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = self.redis.clone().hdel(job_state_key(&self.job_id), key).await;
            self.log_redis_error("state", result);
        })
    }

    fn message_id(&self) -> Option<String> {
        self.message.as_ref().map(|bound| bound.message_id.clone())
    }

    fn message_append_text(&self, text: String) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.bound()?.append_text(&self.sessions, text).await })
    }

    fn message_add_content(&self, block: ContentBlock) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.bound()?.add_content(&self.sessions, block).await })
    }

    fn message_start_task(&self, description: String) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.bound()?.start_task(&self.sessions, description).await })
    }

    fn message_update_task(&self, task_id: String, update: TaskUpdate) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.bound()?.update_task(&self.sessions, task_id, update).await })
    }

    fn message_complete(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.bound()?.complete(&self.sessions).await })
    }
}
