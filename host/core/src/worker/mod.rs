//! Workers: claim a job, run its handler in a fresh instance, record the outcome.
//!
//! Owns the worker loop (what to do when idle, paused or when Redis is away), the
//! retry decision, the [`JobHost`](spool_runtime::JobHost) through which a
//! running guest reaches the outside (`host`) and follow-up jobs (`follow_up`).
//! An attempt heart-beats from claim to recorded outcome, and writes only
//! under its [`Fence`]. Queue writes go through [`Queue`](crate::queue::Queue)
//! (which also ends a job's session message with it); sandboxing is the runtime's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::QueueConfig;
use crate::gateway::Gateway;
use crate::intake::{Intake, Route};
use crate::metrics::{self, Hook};
use crate::queue::{ClaimedJob, Fence, Finish, Heartbeat, JobWrite, Outcome, Retention, now_ms};
use crate::store::{self, Store};
use spool_runtime::content::blocks_to_json;
use spool_runtime::{FailureKind, GuestFailure, HandlerComponent, Job, JobError, JobOutput};

mod dispatch;
mod dry;
mod faults;
mod follow_up;
mod running;

use follow_up::NotQueued;
mod supervise;
mod wake;
mod write_behind;

use dispatch::Assigned;
pub use dispatch::Dispatch;
pub use dry::DryQueues;
pub use running::RunningJobs;
pub use supervise::WorkerRestarts;
pub use wake::Wake;
mod host;

use host::WorkerHost;
use write_behind::WriteBehind;

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
    /// Claims and outcomes of workers asking at the same moment share one
    /// Redis call ([`Dispatch::start`] with the same intake).
    pub dispatch: Dispatch,
}

/// Which queue a worker asks first. It stays with the queue that gave it
/// its last job, for at most [`QueueTurns::STREAK`] jobs in a row, then moves
/// on to the next: a worker busy on one queue does not pay an empty claim on
/// every other queue before each job, and every queue with work still gets a
/// worker's turn within `STREAK` jobs. A turn at a queue found empty since
/// costs no claim at all (`dry`).
struct QueueTurns {
    start: usize,
    streak: usize,
    queues: usize,
}

impl QueueTurns {
    const STREAK: usize = 16;

    fn new(worker: usize, queues: usize) -> Self {
        Self {
            start: worker % queues.max(1),
            streak: 0,
            queues: queues.max(1),
        }
    }

    /// The queue to ask at this `offset` of a round.
    fn position(&self, offset: usize) -> usize {
        (self.start + offset) % self.queues
    }

    fn served(&mut self, position: usize) {
        if position == self.start {
            self.streak += 1;
        } else {
            self.start = position;
            self.streak = 1;
        }
        if self.streak >= Self::STREAK {
            self.start = (position + 1) % self.queues;
            self.streak = 0;
        }
    }
}

impl Workers {
    /// Runs worker `index` until `shutdown`; a job in hand is finished first.
    pub async fn run(self: Arc<Self>, consumer: String, index: usize, shutdown: CancellationToken) {
        let routes: Vec<&Route> = self.intake.routes.values().collect();
        let mut redis_down_since: Option<std::time::Instant> = None;
        let mut turns = QueueTurns::new(index, routes.len());
        // The job claimed with the last outcome (see `run_job`).
        let mut handed: Option<Assigned> = None;
        // A job handed over is started for this worker already: it runs even
        // during a shutdown, like a job in hand.
        while !shutdown.is_cancelled() || handed.is_some() {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let mut worked = false;
            let mut wait = self.idle_poll;
            // Each worker starts at a queue of its own, then stays with the
            // queue that last had work (see `QueueTurns`).
            for offset in 0..routes.len() {
                let position = turns.position(offset);
                let route = routes[position];
                let assigned = match handed.take() {
                    // Claimed from this very queue: `run_job` asks only when
                    // the turns keep the worker on it.
                    Some(job) => job,
                    None => {
                        let assigned = self.dispatch.claim(&route.keys.name, &consumer).await;
                        if matches!(assigned, Assigned::Job(..)) {
                            // There may be more: an announcement wakes one
                            // worker (a bulk of a thousand jobs is one), so
                            // each that finds work wakes the next, until
                            // one finds the queue empty.
                            self.wake.notify_one();
                        }
                        assigned
                    }
                };
                match assigned {
                    Assigned::Job(job, handler) => {
                        redis_down_since = None;
                        turns.served(position);
                        let asks_next = turns.position(0) == position;
                        // Only a job is kept: were it told the queue is
                        // dry, the worker would wait on a wake-up that was
                        // not listening while that claim ran, and sleep
                        // through a job queued meanwhile. It asks again.
                        handed = self
                            .run_job(
                                *job,
                                route,
                                &consumer,
                                handler,
                                asks_next.then_some(&shutdown),
                            )
                            .await
                            .filter(|next| matches!(next, Assigned::Job(..)));
                        worked = true;
                        break;
                    }
                    Assigned::Again => {
                        worked = true;
                        break;
                    }
                    Assigned::Idle {
                        next_retry_ms: Some(due),
                    } => {
                        redis_down_since = None;
                        wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms())));
                    }
                    Assigned::Idle { .. } | Assigned::Paused => redis_down_since = None,
                    Assigned::Unreachable(error) => {
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

    /// Runs one attempt at a claimed job and records its outcome, heart-beating
    /// its entry the whole time (also while follow-ups are queued and the
    /// outcome is recorded, which may wait for Redis). `handler`: the route's
    /// handler as resolved when the claim was made. With `next_unless`, the
    /// outcome's call also claims the worker's next job of the queue, unless
    /// that token (the shutdown) fired by then: what that claim got is
    /// returned.
    async fn run_job(
        &self,
        claimed: ClaimedJob,
        route: &Route,
        consumer: &str,
        handler: Option<HandlerComponent>,
        next_unless: Option<&CancellationToken>,
    ) -> Option<Assigned> {
        // Every line logged while this attempt runs (the worker's, the
        // guest's captured output, model calls) carries these fields, so an
        // operator can follow one job through an instance's log.
        let span = tracing::info_span!(
            "job",
            job = %claimed.record.id,
            queue = %route.keys.name,
            attempt = claimed.record.attempts,
            handler = %claimed.record.handler,
            handler_version = handler
                .as_ref()
                .map(|h| h.version.as_str())
                .or(claimed.record.handler_version.as_deref())
                .unwrap_or(""),
        );
        self.run_job_attempt(claimed, route, consumer, handler, next_unless)
            .instrument(span)
            .await
    }

    async fn run_job_attempt(
        &self,
        claimed: ClaimedJob,
        route: &Route,
        consumer: &str,
        handler: Option<HandlerComponent>,
        next_unless: Option<&CancellationToken>,
    ) -> Option<Assigned> {
        if claimed.record.attempts == 1
            && let Some(started_at) = claimed.record.started_at
        {
            let waited = started_at.saturating_sub(claimed.record.created_at);
            metrics::job_first_claimed(
                &route.keys.name,
                claimed.class,
                Duration::from_millis(waited),
            );
        }
        let watch = self.running.watch(&claimed.record.id);
        let lost = CancellationToken::new();
        let attempt = async {
            let Some(mut ended) = self
                .attempt(&claimed, route, handler, &watch.stop, &lost)
                .await
            else {
                tracing::info!(job = %claimed.record.id, "job was given to another attempt while this one ran; it stops here");
                return None;
            };
            if let Outcome::Failed { error, kind } | Outcome::Retry { error, kind, .. } =
                &ended.outcome
            {
                tracing::warn!(job = %claimed.record.id, attempt = claimed.record.attempts, %error, error_kind = %kind, "job attempt failed");
            }
            // A failed attempt records the version that ran it too.
            let mut ran = claimed.clone();
            ran.record.handler_version = ended.ran_on.take().or(ran.record.handler_version);
            let next = next_unless.map(|shutdown| (consumer, shutdown));
            self.record(&ran, ended, next).await
        };
        tokio::select! {
            next = attempt => next,
            () = self.keep_alive(&claimed, consumer, &watch.stop, &lost) => None,
        }
    }

    /// Heart-beats the job's entry until dropped; a cancel fires `stop`, a
    /// lost job `lost`.
    async fn keep_alive(
        &self,
        claimed: &ClaimedJob,
        consumer: &str,
        stop: &CancellationToken,
        lost: &CancellationToken,
    ) {
        let mut heartbeat = tokio::time::interval(self.visibility / 3);
        heartbeat.tick().await;
        loop {
            heartbeat.tick().await;
            match self.intake.queue.heartbeat(claimed, consumer).await {
                Ok(Heartbeat::Run) => {}
                Ok(Heartbeat::Cancel) => stop.cancel(),
                Ok(Heartbeat::Lost) => lost.cancel(),
                // Redis away: keep working; recording the outcome retries.
                Err(error) => {
                    tracing::warn!(job = %claimed.record.id, %error, "heartbeat failed")
                }
            }
        }
    }

    /// Runs the job's handler, then queues the follow-ups of a completed job.
    /// `None`: the job was given to another attempt meanwhile and this one
    /// must record nothing.
    async fn attempt(
        &self,
        claimed: &ClaimedJob,
        route: &Route,
        handler: Option<HandlerComponent>,
        stop: &CancellationToken,
        lost: &CancellationToken,
    ) -> Option<Attempt> {
        let record = &claimed.record;
        faults::hold_after_claim(&record.id).await;
        if record.attempts > route.config.max_attempts {
            // Only a job whose workers kept vanishing mid-run gets here.
            return Some(Attempt::ended(Outcome::Failed {
                error: format!("abandoned by its worker {} times", record.attempts - 1),
                kind: FailureKind::Abandoned,
            }));
        }
        supervise::injected_panic(&record.id, record.attempts);
        // Resolved once, at claim time: a version switch while the job runs
        // does not affect it. A job queued under another handler name (the
        // queue's configuration changed since) resolves its own now.
        let resolved = if record.handler == route.config.handler {
            handler
        } else {
            self.intake
                .registry
                .resolve(&record.handler, route.config.handler_version.as_deref())
        };
        let Some(handler) = resolved else {
            return Some(Attempt::ended(Outcome::Failed {
                error: format!(
                    "handler `{}` is not installed on this instance",
                    record.handler
                ),
                kind: FailureKind::HandlerMissing,
            }));
        };
        let fence = Fence::of(claimed);
        let message = store::bound_message(&self.sessions, record).await;
        let host = Arc::new(WorkerHost {
            job_id: record.id.clone(),
            user_id: record.user_id.clone(),
            // Model-call waits and retries must fit in the handler's own
            // deadline (`[sandbox.handlers.<name>]`), not the default: a wait
            // planned past it would be cut off by the sandbox, holding a token.
            deadline: std::time::Instant::now()
                + self
                    .intake
                    .runtime
                    .limits()
                    .for_handler(&handler.name)
                    .deadline,
            queue: self.intake.queue.clone(),
            fence: fence.clone(),
            lost: lost.clone(),
            stop: stop.clone(),
            gateway: self.gateway.clone(),
            routes: self.intake.routes.clone(),
            sessions: self.sessions.fenced(fence.clone()),
            message: message.clone(),
            follow_ups: Default::default(),
            events: WriteBehind::default(),
            wrote_state: AtomicBool::new(false),
        });
        let ran = |outcome| {
            Some(Attempt {
                outcome,
                ran_on: Some(handler.version.clone()),
                pending_writes: Vec::new(),
                wrote_state: host.wrote_state.load(Ordering::Relaxed),
            })
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
        let called = std::time::Instant::now();
        let handler_called = |failure| {
            metrics::handler_called(
                Hook::Handle,
                &handler.name,
                &handler.version,
                called.elapsed(),
                failure,
            )
        };
        let result = tokio::select! {
            result = self.intake.runtime.handle(&handler, &job, host.clone()) => result,
            // Dropping the call stops the guest where it is.
            _ = stop.cancelled() => {
                handler_called(None);
                return ran(Outcome::Cancelled);
            }
            _ = lost.cancelled() => {
                handler_called(None);
                return None;
            }
        };
        // Every write of the attempt lands before its outcome, and a write
        // refused meanwhile decides it. Those still pending go with the
        // outcome, in its call, unless follow-up jobs are queued first: those
        // must come after them.
        let pending_writes = if host.has_follow_ups() {
            host.events.flush().await;
            Vec::new()
        } else {
            host.events.hand_over().await
        };
        if lost.is_cancelled() {
            handler_called(None);
            return None;
        }
        let outcome = outcome_of(result, &handler, &route.config, record.attempts);
        handler_called(match &outcome {
            Outcome::Failed { kind, .. } | Outcome::Retry { kind, .. } => Some(*kind),
            Outcome::Completed { .. } | Outcome::Cancelled => None,
        });
        let follow_ups = host.take_follow_ups();
        if !matches!(outcome, Outcome::Completed { .. }) || follow_ups.is_empty() {
            return Some(Attempt {
                outcome,
                ran_on: Some(handler.version.clone()),
                pending_writes,
                wrote_state: host.wrote_state.load(Ordering::Relaxed),
            });
        }
        let ids: Vec<String> = follow_ups.iter().map(|f| f.id.clone()).collect();
        match follow_up::queue_all(&self.intake, &fence, record, message.as_ref(), follow_ups).await
        {
            Ok(()) => ran(match outcome {
                Outcome::Completed {
                    result,
                    blocks,
                    handler_version,
                    ..
                } => Outcome::Completed {
                    result,
                    blocks,
                    handler_version,
                    follow_ups: ids,
                },
                other => other,
            }),
            Err(NotQueued::Lost) => None,
            Err(NotQueued::Cancelled) => ran(Outcome::Cancelled),
            Err(NotQueued::Failed(error)) => ran(retry_or_fail(
                &route.config,
                record.attempts,
                error,
                FailureKind::FollowUpFailed,
                None,
            )),
        }
    }

    /// Writes the outcome, retrying while Redis is briefly away. If it never
    /// comes back the entry stays pending, and recovery hands it out again.
    /// A cancel accepted meanwhile turns the outcome into `Cancelled`; an
    /// attempt that lost the job records nothing. With `next` (the worker,
    /// and the shutdown that stops it asking), the call that records the
    /// outcome also claims the worker's next job: what it got is returned.
    /// The attempt's writes still unsent land first, under its fence.
    async fn record(
        &self,
        claimed: &ClaimedJob,
        ended: Attempt,
        next: Option<(&str, &CancellationToken)>,
    ) -> Option<Assigned> {
        let Attempt {
            mut outcome,
            pending_writes: mut writes,
            wrote_state,
            ..
        } = ended;
        // Only an attempt may have written the job's state (see `WorkerHost`).
        let stateless = claimed.record.attempts <= 1 && !wrote_state;
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            let mut prepared = self
                .intake
                .queue
                .prepare_outcome(claimed, &outcome, self.retention)
                .with_writes(&writes);
            if stateless {
                prepared = prepared.without_state();
            }
            let queue = &claimed.record.queue;
            let asking = next
                .filter(|(_, shutdown)| !shutdown.is_cancelled())
                .map(|(consumer, _)| consumer);
            let recorded = self
                .dispatch
                .finish(&self.intake, queue, prepared, asking)
                .await;
            match recorded.finish {
                Ok(Finish::Recorded) => {
                    let started_at = claimed.record.started_at.unwrap_or_else(now_ms);
                    let ran_for = Duration::from_millis(now_ms().saturating_sub(started_at));
                    metrics::attempt_recorded(
                        &claimed.record.queue,
                        claimed.class,
                        outcome.end(),
                        ran_for,
                    );
                    return recorded.next;
                }
                Ok(Finish::CancelRequested) => {
                    tracing::info!(job = %claimed.record.id, "cancelled while it ran; its outcome is discarded");
                    outcome = Outcome::Cancelled;
                    // Refused, as every write after a cancel is.
                    writes.clear();
                }
                Ok(Finish::Lost) => {
                    tracing::info!(job = %claimed.record.id, "attempt lost its job to another run; result discarded");
                    return recorded.next;
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
                follow_ups: Vec::new(),
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

/// How one attempt at a job ended.
struct Attempt {
    outcome: Outcome,
    /// The handler version that ran, if one did.
    ran_on: Option<String>,
    /// The attempt's job writes still unsent when it ended: the outcome's
    /// call applies them first.
    pending_writes: Vec<JobWrite>,
    /// The attempt set a state key of the job's.
    wrote_state: bool,
}

impl Attempt {
    fn ended(outcome: Outcome) -> Self {
        Self {
            outcome,
            ran_on: None,
            pending_writes: Vec::new(),
            wrote_state: false,
        }
    }
}

#[cfg(test)]
mod queue_turns {
    use super::QueueTurns;

    #[test]
    fn a_worker_stays_with_a_busy_queue_then_gives_the_next_its_turn() {
        let mut turns = QueueTurns::new(4, 3);
        assert_eq!(
            turns.position(0),
            1,
            "worker 4 of 3 queues starts at queue 1"
        );
        turns.served(2);
        assert_eq!(
            turns.position(0),
            2,
            "it asks the queue that had work first"
        );
        for _ in 1..QueueTurns::STREAK - 1 {
            turns.served(2);
            assert_eq!(turns.position(0), 2);
        }
        turns.served(2);
        assert_eq!(
            turns.position(0),
            0,
            "after a streak the next queue goes first"
        );
        assert_eq!(
            turns.position(2),
            2,
            "and the busy one is still asked in the round"
        );
    }
}
