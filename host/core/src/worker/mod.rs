//! Workers: claim a job, run its handler in a fresh instance, record the outcome.
//!
//! Owns the worker loop (what to do when idle, paused or when Redis is away), the
//! retry decision, the [`JobHost`](spool_runtime::JobHost) through which a
//! running guest reaches the outside (`host`), follow-up jobs (`follow_up`) and
//! settling the session message a job drives. Queue writes go through
//! [`Queue`](crate::queue::Queue); sandboxing is the runtime's.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::QueueConfig;
use crate::gateway::Gateway;
use crate::intake::{Intake, Route};
use crate::queue::{Claim, ClaimedJob, Finish, Heartbeat, Outcome, Retention, now_ms};
use crate::store::{self, BoundMessage, JobEnd, Store};
use spool_runtime::content::blocks_to_json;
use spool_runtime::{FailureKind, GuestFailure, HandlerComponent, Job, JobError, JobOutput};

mod follow_up;
mod running;
mod supervise;

pub use running::RunningJobs;
pub use supervise::WorkerRestarts;
mod host;

use host::WorkerHost;

/// What every worker of an instance shares.
pub struct Workers {
    /// The queues, their routes, the runtime and the loaded handler versions;
    /// also how follow-up jobs are queued.
    pub intake: Intake,
    /// Every model call goes through it: shared rate limit, retries, embedding cache.
    pub gateway: Arc<Gateway>,
    pub retention: Retention,
    pub idle_poll: Duration,
    /// A running job heart-beats three times per visibility timeout; an entry
    /// silent for longer is presumed abandoned and requeued.
    pub visibility: Duration,
    /// Woken when a submission anywhere announces work.
    pub wake: Arc<Notify>,
    /// Session messages that jobs of session tasks drive.
    pub sessions: Store,
    /// The jobs running here, for cancels announced on the cancel channel.
    pub running: Arc<RunningJobs>,
    /// Workers restarted after a panic (see `supervise`).
    pub restarts: Arc<WorkerRestarts>,
}

impl Workers {
    /// Runs worker `index` until `shutdown`; a job in hand is finished first.
    pub async fn run(self: Arc<Self>, consumer: String, index: usize, shutdown: CancellationToken) {
        let routes: Vec<&Route> = self.intake.routes.values().collect();
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
                match self.intake.queue.claim(&route.keys, &consumer).await {
                    Ok(Claim::Job(job)) => {
                        redis_down_since = None;
                        self.run_job(*job, route, &consumer).await;
                        worked = true;
                        break;
                    }
                    Ok(Claim::Again) => {
                        worked = true;
                        break;
                    }
                    Ok(Claim::Dropped { job_id }) => {
                        tracing::error!(queue = %route.keys.name, job = %job_id, "a queued job's record is gone (evicted or deleted outside spool); its entry was dropped and counted");
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
        let message = store::bound_message(&self.sessions, record).await;
        let (attempt, ran_on) = if record.attempts > route.config.max_attempts {
            // Only a job whose workers kept vanishing mid-run gets here.
            let error = format!("abandoned by its worker {} times", record.attempts - 1);
            (
                Some(Attempt::ended(Outcome::Failed {
                    error,
                    kind: FailureKind::Abandoned,
                })),
                None,
            )
        } else {
            // Resolved once, at claim time: a version switch while the job runs
            // does not affect it.
            let handler = self
                .intake
                .registry
                .resolve(&record.handler, route.config.handler_version.as_deref());
            let ran_on = handler.as_ref().map(|h| h.version.clone());
            let attempt = self
                .run_handler(&claimed, handler, route, consumer, message.as_ref())
                .await;
            (attempt, ran_on)
        };
        let Some(Attempt {
            outcome,
            message_passed_on,
        }) = attempt
        else {
            tracing::info!(job = %record.id, "job was requeued by recovery while it ran; this attempt stops");
            return;
        };
        if let Outcome::Failed { error, kind } | Outcome::Retry { error, kind, .. } = &outcome {
            tracing::warn!(job = %record.id, attempt = record.attempts, %error, error_kind = %kind, "job attempt failed");
        }
        let mut claimed = claimed;
        if ran_on.is_some() {
            claimed.record.handler_version = ran_on;
        }
        let Some(outcome) = self.record(&claimed, outcome).await else {
            return;
        };
        if let (Some(message), false) = (&message, message_passed_on) {
            let end = match &outcome {
                Outcome::Completed { .. } => JobEnd::Completed,
                Outcome::Retry { error, .. } => JobEnd::Retrying(error),
                Outcome::Failed { error, .. } => JobEnd::Failed(error),
                Outcome::Cancelled => JobEnd::Failed("the job was cancelled"),
            };
            store::settle(&self.sessions, message, end).await;
        }
    }

    /// Runs the job's handler while heart-beating its entry, then queues the
    /// follow-ups of a completed job. `None`: the job was given to another
    /// attempt meanwhile and this one must record nothing.
    async fn run_handler(
        &self,
        claimed: &ClaimedJob,
        handler: Option<HandlerComponent>,
        route: &Route,
        consumer: &str,
        message: Option<&BoundMessage>,
    ) -> Option<Attempt> {
        let record = &claimed.record;
        supervise::injected_panic(&record.id, record.attempts);
        let Some(handler) = handler else {
            return Some(Attempt::ended(Outcome::Failed {
                error: format!(
                    "handler `{}` is not installed on this instance",
                    record.handler
                ),
                kind: FailureKind::HandlerMissing,
            }));
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
            deadline: std::time::Instant::now() + self.intake.runtime.limits().deadline,
            redis: self.intake.queue.connection(),
            gateway: self.gateway.clone(),
            routes: self.intake.routes.clone(),
            sessions: self.sessions.clone(),
            message: message.cloned(),
            follow_ups: Default::default(),
        });
        let outcome = match self
            .run_heart_beating(claimed, consumer, &handler, &job, host.clone())
            .await
        {
            Ran::Returned(result) => outcome_of(result, &handler, &route.config, record.attempts),
            Ran::Cancelled => return Some(Attempt::ended(Outcome::Cancelled)),
            Ran::Lost => return None,
        };
        let follow_ups = host.take_follow_ups();
        if !matches!(outcome, Outcome::Completed { .. }) || follow_ups.is_empty() {
            return Some(Attempt::ended(outcome));
        }
        // A cancelled job queues nothing after it. (Should the check fail,
        // recording the outcome still sees the cancel.)
        if let Ok(true) = self.intake.queue.cancel_requested(&record.id).await {
            return Some(Attempt::ended(Outcome::Cancelled));
        }
        let queued =
            follow_up::queue_all(&self.intake, &self.sessions, record, message, follow_ups).await;
        Some(match queued {
            Ok(queued) => Attempt {
                outcome,
                message_passed_on: queued.handed_over,
            },
            Err(error) => Attempt::ended(retry_or_fail(
                &route.config,
                record.attempts,
                error,
                FailureKind::FollowUpFailed,
                None,
            )),
        })
    }

    /// Runs `handle` while heart-beating the job's entry.
    async fn run_heart_beating(
        &self,
        claimed: &ClaimedJob,
        consumer: &str,
        handler: &HandlerComponent,
        job: &Job,
        host: Arc<WorkerHost>,
    ) -> Ran {
        let watch = self.running.watch(&job.id);
        let run = self.intake.runtime.handle(handler, job, host);
        tokio::pin!(run);
        let mut heartbeat = tokio::time::interval(self.visibility / 3);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                result = &mut run => return Ran::Returned(result),
                // Dropping the call stops the guest where it is.
                _ = watch.stop.cancelled() => return Ran::Cancelled,
                _ = heartbeat.tick() => match self.intake.queue.heartbeat(claimed, consumer).await {
                    Ok(Heartbeat::Run) => {}
                    Ok(Heartbeat::Cancel) => return Ran::Cancelled,
                    Ok(Heartbeat::Lost) => return Ran::Lost,
                    // Redis away: keep working; recording the outcome retries.
                    Err(error) => tracing::warn!(job = %job.id, %error, "heartbeat failed"),
                },
            }
        }
    }

    /// Writes the outcome, retrying while Redis is briefly away. If it never
    /// comes back the entry stays pending, and recovery hands it out again.
    /// Returns the outcome recorded: this attempt's, or `Cancelled` when a
    /// cancel was accepted meanwhile; `None` when another attempt owns the job.
    async fn record(&self, claimed: &ClaimedJob, outcome: Outcome) -> Option<Outcome> {
        let mut outcome = outcome;
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            match self
                .intake
                .queue
                .finish(claimed, &outcome, self.retention)
                .await
            {
                Ok(Finish::Recorded) => return Some(outcome),
                Ok(Finish::CancelRequested) => {
                    tracing::info!(job = %claimed.record.id, "cancelled while it ran; its outcome is discarded");
                    outcome = Outcome::Cancelled;
                }
                Ok(Finish::Lost) => {
                    tracing::info!(job = %claimed.record.id, "attempt lost its job to another run; result discarded");
                    return None;
                }
                Err(error) => {
                    tracing::warn!(job = %claimed.record.id, %error, "cannot record job outcome yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(job = %claimed.record.id, "gave up recording job outcome; it stays pending for recovery");
        None
    }
}

/// How a finished `handle` call ends the attempt.
fn outcome_of(
    result: HandleResult,
    handler: &HandlerComponent,
    config: &QueueConfig,
    attempts: u32,
) -> Outcome {
    match result {
        Ok(Ok(output)) => match serde_json::from_str::<serde_json::Value>(&output.result) {
            Ok(_) => Outcome::Completed {
                result: output.result,
                blocks: blocks_to_json(&output.blocks).to_string(),
                handler_version: handler.version.clone(),
            },
            Err(e) => Outcome::Failed {
                error: format!("handler returned a result that is not JSON: {e}"),
                kind: FailureKind::InvalidResult,
            },
        },
        Ok(Err(JobError::Reject(reason))) => Outcome::Failed {
            error: reason,
            kind: FailureKind::Rejected,
        },
        Ok(Err(JobError::Retry(hint))) => retry_or_fail(
            config,
            attempts,
            hint.reason,
            FailureKind::RetryRequested,
            hint.after_ms,
        ),
        // A sandbox failure counts as an attempt like any other.
        Err(failure) => retry_or_fail(config, attempts, failure.to_string(), failure.kind(), None),
    }
}

/// Exponential backoff from the queue's base delay, +-20 % jitter, unless the
/// handler asked for a specific wait.
fn retry_or_fail(
    config: &QueueConfig,
    attempts: u32,
    error: String,
    kind: FailureKind,
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
    // The guest's (or the model server's) wait is honoured up to a day: a
    // job parked for ages is as good as lost.
    let delay = after_ms.unwrap_or(jittered as u64).min(MAX_RETRY_DELAY_MS);
    Outcome::Retry {
        error,
        kind,
        retry_at_ms: now_ms().saturating_add(delay),
    }
}

/// The longest wait before a retry, whoever asks for more.
pub const MAX_RETRY_DELAY_MS: u64 = 24 * 60 * 60 * 1000;

/// What a `handle` call returned, or how the sandbox stopped it.
type HandleResult = Result<Result<JobOutput, JobError>, GuestFailure>;

/// How a `handle` call under heartbeat ended.
enum Ran {
    Returned(HandleResult),
    /// A client cancelled the job; the call was dropped.
    Cancelled,
    /// Recovery gave the job to another attempt; this one records nothing.
    Lost,
}

/// How one attempt at a job ended.
struct Attempt {
    outcome: Outcome,
    /// The job's message went to a follow-up job, which completes it.
    message_passed_on: bool,
}

impl Attempt {
    fn ended(outcome: Outcome) -> Self {
        Self {
            outcome,
            message_passed_on: false,
        }
    }
}
