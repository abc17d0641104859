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
use crate::gateway::{CallContext, Gateway};
use crate::models::{ChatReply, ChatRequest, ModelError};
use crate::queue::{
    Claim, ClaimedJob, Heartbeat, Outcome, Queue, QueueKeys, Retention, job_state_key, now_ms,
};
use crate::registry::Registry;
use crate::runtime::{HandlerComponent, Job, JobError, JobHost, Runtime};

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
    /// Every model call goes through it: shared rate limit, retries, embedding cache.
    pub gateway: Arc<Gateway>,
    pub routes: Arc<BTreeMap<String, Route>>,
    pub retention: Retention,
    pub idle_poll: Duration,
    /// A running job heart-beats three times per visibility timeout; an entry
    /// silent for longer is presumed abandoned and requeued.
    pub visibility: Duration,
    /// Woken when a submission anywhere announces work.
    pub wake: Arc<Notify>,
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
                        self.run_job(job, route, &consumer).await;
                        worked = true;
                        break;
                    }
                    Ok(Claim::Again) => {
                        worked = true;
                        break;
                    }
                    Ok(Claim::Idle {
                        next_retry_ms: Some(due),
                    }) => {
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

    async fn run_job(&self, claimed: ClaimedJob, route: &Route, consumer: &str) {
        let record = &claimed.record;
        let (outcome, ran_on) = if record.attempts > route.config.max_attempts {
            // Only a job whose workers kept vanishing mid-run gets here.
            let error = format!("abandoned by its worker {} times", record.attempts - 1);
            (
                Some(Outcome::Failed {
                    error,
                    kind: "abandoned",
                }),
                None,
            )
        } else {
            // Resolved once, at claim time: a version switch while the job runs
            // does not affect it.
            let handler = self
                .registry
                .resolve(&record.handler, route.config.handler_version.as_deref());
            let ran_on = handler.as_ref().map(|h| h.version.clone());
            (
                self.run_handler(&claimed, handler, route, consumer).await,
                ran_on,
            )
        };
        match outcome {
            Some(outcome) => {
                if let Outcome::Failed { error, kind } | Outcome::Retry { error, kind, .. } =
                    &outcome
                {
                    tracing::warn!(job = %record.id, attempt = record.attempts, %error, error_kind = kind, "job attempt failed");
                }
                let mut claimed = claimed;
                if ran_on.is_some() {
                    claimed.record.handler_version = ran_on;
                }
                self.record(claimed, outcome).await;
            }
            None => {
                tracing::info!(job = %record.id, "job was requeued by recovery while it ran; this attempt stops")
            }
        }
    }

    /// Runs the job's handler while heart-beating its entry. `None`: the job was
    /// given to another attempt meanwhile and this one must record nothing.
    async fn run_handler(
        &self,
        claimed: &ClaimedJob,
        handler: Option<HandlerComponent>,
        route: &Route,
        consumer: &str,
    ) -> Option<Outcome> {
        let record = &claimed.record;
        let Some(handler) = handler else {
            return Some(Outcome::Failed {
                error: format!(
                    "handler `{}` is not installed on this instance",
                    record.handler
                ),
                kind: "handler_missing",
            });
        };
        let job = Job {
            id: record.id.clone(),
            queue: record.queue.clone(),
            user_id: record.user_id.clone(),
            user_tier: record.user_tier.clone(),
            priority: record.priority,
            payload: record.payload.clone(),
            attempt: record.attempts,
        };
        let host = Arc::new(WorkerHost {
            job_id: job.id.clone(),
            user_id: job.user_id.clone(),
            // Model-call waits and retries must fit in the handler's deadline.
            deadline: std::time::Instant::now() + self.runtime.limits().deadline,
            redis: self.queue.connection(),
            gateway: self.gateway.clone(),
        });
        let run = self.runtime.handle(&handler, &job, host);
        tokio::pin!(run);
        let mut heartbeat = tokio::time::interval(self.visibility / 3);
        heartbeat.tick().await;
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                _ = heartbeat.tick() => match self.queue.heartbeat(claimed, consumer).await {
                    Ok(Heartbeat::Run) => {}
                    Ok(Heartbeat::Cancel) => return Some(Outcome::Cancelled),
                    Ok(Heartbeat::Lost) => return None,
                    // Redis away: keep working; recording the outcome retries.
                    Err(error) => tracing::warn!(job = %record.id, %error, "heartbeat failed"),
                },
            }
        };
        Some(match result {
            Ok(Ok(output)) => match serde_json::from_str::<serde_json::Value>(&output.result) {
                Ok(_) => Outcome::Completed {
                    result: output.result,
                    blocks: blocks_to_json(&output.blocks).to_string(),
                    handler_version: handler.version.clone(),
                },
                Err(e) => Outcome::Failed {
                    error: format!("handler returned a result that is not JSON: {e}"),
                    kind: "invalid_result",
                },
            },
            Ok(Err(JobError::Reject(reason))) => Outcome::Failed {
                error: reason,
                kind: "rejected",
            },
            Ok(Err(JobError::Retry(hint))) => retry_or_fail(
                &route.config,
                record.attempts,
                hint.reason,
                "retry_requested",
                hint.after_ms,
            ),
            // A sandbox failure counts as an attempt like any other.
            Err(failure) => retry_or_fail(
                &route.config,
                record.attempts,
                failure.to_string(),
                failure.kind(),
                None,
            ),
        })
    }

    /// Writes the outcome, retrying while Redis is briefly away. If it never
    /// comes back the entry stays pending, and recovery hands it out again.
    async fn record(&self, claimed: ClaimedJob, outcome: Outcome) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            match self.queue.finish(&claimed, &outcome, self.retention).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::info!(job = %claimed.record.id, "attempt lost its job to another run; result discarded");
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = %claimed.record.id, %error, "cannot record job outcome yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(job = %claimed.record.id, "gave up recording job outcome; it stays pending for recovery");
    }
}

/// Exponential backoff from the queue's base delay, +-20 % jitter, unless the
/// handler asked for a specific wait.
fn retry_or_fail(
    config: &QueueConfig,
    attempts: u32,
    error: String,
    kind: &'static str,
    after_ms: Option<u64>,
) -> Outcome {
    if attempts >= config.max_attempts {
        return Outcome::Failed {
            error: format!("{error} (after {attempts} attempts)"),
            kind,
        };
    }
    let backoff = config
        .backoff_ms
        .saturating_mul(1 << attempts.saturating_sub(1).min(20));
    let jittered = backoff as f64 * (0.8 + 0.4 * fastrand::f64());
    let delay = after_ms
        .unwrap_or(jittered as u64)
        .max(after_ms.unwrap_or(0));
    Outcome::Retry {
        error,
        kind,
        retry_at_ms: now_ms() + delay,
    }
}

/// What a running `handle` reaches outside its sandbox.
struct WorkerHost {
    job_id: String,
    user_id: String,
    deadline: std::time::Instant,
    redis: ConnectionManager,
    gateway: Arc<Gateway>,
}

impl WorkerHost {
    fn call_context(&self) -> CallContext<'_> {
        CallContext {
            job_id: &self.job_id,
            user_id: Some(&self.user_id),
            deadline: self.deadline,
        }
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
                    if let Err(error) =
                        events::append(&mut redis, &job_id, "text_delta", &data).await
                    {
                        tracing::warn!(job = %job_id, %error, "could not publish text_delta");
                    }
                }
            });
            let mut on_delta = |piece: &str| {
                let _ = sender.send(piece.to_owned());
            };
            let reply = self
                .gateway
                .chat(&self.call_context(), &request, &mut on_delta)
                .await;
            drop(sender);
            let _ = writer.await;
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
        Box::pin(async move {
            let result =
                events::progress(&mut self.redis.clone(), &self.job_id, percent, &step).await;
            self.log_redis_error("progress", result);
        })
    }

    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result =
                events::append(&mut self.redis.clone(), &self.job_id, &event_type, &data).await;
            self.log_redis_error("event", result);
        })
    }

    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async move {
            self.redis
                .clone()
                .hget(job_state_key(&self.job_id), key)
                .await
                .ok()
                .flatten()
        })
    }

    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = self
                .redis
                .clone()
                .hset(job_state_key(&self.job_id), key, value)
                .await;
            self.log_redis_error("state", result);
        })
    }

    fn state_delete(&self, key: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let result = self
                .redis
                .clone()
                .hdel(job_state_key(&self.job_id), key)
                .await;
            self.log_redis_error("state", result);
        })
    }
}
