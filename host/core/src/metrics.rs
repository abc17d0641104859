//! The metrics spool emits, in one place: their names, label sets and
//! descriptions, and one function per thing that happens, called where it
//! happens (intake, worker, limiter, gateway, follower, queue scripts).
//!
//! Emission goes through the `metrics` facade only; which recorder collects it
//! is the service's business (`spool serve` installs a Prometheus one, other
//! commands none, and then every call is a no-op). Labels come from bounded
//! sets only: queue names, priority classes, handler names and versions,
//! failure kinds, backends, outcomes and statuses; never a job, user or
//! session id. Cluster-wide figures (queue lengths, the shared limiter) are not
//! emitted as things happen: the service reads them from Redis when scraped
//! and sets them with [`queue_state`] and [`limiter_state`].

use std::time::{Duration, Instant};

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::models::{BackendKind, ModelError};
use spool_runtime::{FailureKind, PriorityClass};

/// Metric names. Counters end in `_total`, durations are in `_seconds`.
pub mod names {
    // Jobs, counted by the instance where it happened.
    pub const JOBS_SUBMITTED: &str = "spool_jobs_submitted_total";
    pub const JOBS_COMPLETED: &str = "spool_jobs_completed_total";
    pub const JOBS_FAILED: &str = "spool_jobs_failed_total";
    pub const JOBS_RETRIED: &str = "spool_jobs_retried_total";
    pub const JOBS_CANCELLED: &str = "spool_jobs_cancelled_total";
    pub const JOB_DURATION: &str = "spool_job_duration_seconds";
    pub const JOB_QUEUE_WAIT: &str = "spool_job_queue_wait_seconds";
    // Handler (Wasm) calls.
    pub const HANDLER_CALLS: &str = "spool_handler_calls_total";
    pub const HANDLER_FAILURES: &str = "spool_handler_failures_total";
    pub const HANDLER_WASM: &str = "spool_handler_wasm_seconds";
    pub const ADMIT_REUSED: &str = "spool_admit_reused_total";
    // Model calls and this instance's waits for the limiter.
    pub const MODEL_CALLS: &str = "spool_model_calls_total";
    pub const MODEL_CALL_DURATION: &str = "spool_model_call_seconds";
    pub const MODEL_TOKENS: &str = "spool_model_tokens_total";
    pub const LIMITER_WAIT: &str = "spool_limiter_wait_seconds";
    // Streams and Redis.
    pub const WATCHERS: &str = "spool_watchers";
    pub const REDIS_ROUNDTRIP: &str = "spool_redis_roundtrip_seconds";
    // Cluster-wide, read from Redis at scrape time.
    pub const QUEUE_WAITING: &str = "spool_queue_waiting";
    pub const QUEUE_ACTIVE: &str = "spool_queue_active";
    pub const QUEUE_DELAYED: &str = "spool_queue_delayed";
    pub const QUEUE_DEAD: &str = "spool_queue_dead";
    pub const QUEUE_PAUSED: &str = "spool_queue_paused";
    pub const LIMITER_CONFIGURED_RATE: &str = "spool_limiter_configured_rate_per_second";
    pub const LIMITER_EFFECTIVE_RATE: &str = "spool_limiter_effective_rate_per_second";
    pub const LIMITER_TOKENS: &str = "spool_limiter_tokens";
    pub const LIMITER_COOLDOWN: &str = "spool_limiter_cooldown_remaining_seconds";
    pub const LIMITER_GRANTED: &str = "spool_limiter_granted_total";
    pub const LIMITER_WAITS: &str = "spool_limiter_waits_total";
    pub const LIMITER_RATE_LIMITED: &str = "spool_limiter_rate_limited_total";
    pub const LIMITER_RETRIES: &str = "spool_limiter_retries_total";
    pub const LIMITER_FAILURES: &str = "spool_limiter_failures_total";
}

/// Which handler export a call ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// The priority rule, run at intake.
    Admit,
    /// The job itself, run by a worker.
    Handle,
}

impl Hook {
    fn as_str(self) -> &'static str {
        match self {
            Hook::Admit => "admit",
            Hook::Handle => "handle",
        }
    }
}

/// What a model call was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelOperation {
    Chat,
    Embed,
}

impl ModelOperation {
    fn as_str(self) -> &'static str {
        match self {
            ModelOperation::Chat => "chat",
            ModelOperation::Embed => "embed",
        }
    }
}

pub fn job_submitted(queue: &str, class: PriorityClass) {
    counter!(names::JOBS_SUBMITTED, "queue" => queue.to_owned(), "class" => class.name())
        .increment(1);
}

/// A job's first claim: how long it waited in line since it was submitted.
pub fn job_first_claimed(queue: &str, class: PriorityClass, waited: Duration) {
    histogram!(names::JOB_QUEUE_WAIT, "queue" => queue.to_owned(), "class" => class.name())
        .record(waited);
}

/// How an attempt ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    Completed,
    Failed(FailureKind),
    /// It failed and runs again.
    Retried(FailureKind),
    Cancelled,
}

/// An attempt's outcome, once the queue recorded it; `ran_for` is the attempt's
/// run time. A retry is counted as a retry, not as a failure.
pub fn attempt_recorded(queue: &str, class: PriorityClass, end: AttemptEnd, ran_for: Duration) {
    let (queue, class) = (queue.to_owned(), class.name());
    let label = match end {
        AttemptEnd::Completed => {
            counter!(names::JOBS_COMPLETED, "queue" => queue.clone(), "class" => class)
                .increment(1);
            "completed"
        }
        AttemptEnd::Failed(kind) => {
            counter!(names::JOBS_FAILED, "queue" => queue.clone(), "class" => class, "kind" => kind.as_str())
                .increment(1);
            "failed"
        }
        AttemptEnd::Retried(kind) => {
            counter!(names::JOBS_RETRIED, "queue" => queue.clone(), "class" => class, "kind" => kind.as_str())
                .increment(1);
            "retry"
        }
        AttemptEnd::Cancelled => {
            job_cancelled(&queue, class);
            "cancelled"
        }
    };
    histogram!(names::JOB_DURATION, "queue" => queue, "class" => class, "outcome" => label)
        .record(ran_for);
}

/// A job that ended cancelled: taken out of line, or stopped while it ran.
/// `class` is the class's name as the job record stores it.
pub fn job_cancelled(queue: &str, class: &str) {
    let class = [
        PriorityClass::High,
        PriorityClass::Normal,
        PriorityClass::Low,
    ]
    .iter()
    .map(|known| known.name())
    .find(|known| *known == class)
    .unwrap_or("unknown");
    counter!(names::JOBS_CANCELLED, "queue" => queue.to_owned(), "class" => class).increment(1);
}

/// One call into a handler's Wasm: its wall time (host calls such as model
/// calls included) and, if it did not succeed, how it failed.
pub fn handler_called(
    hook: Hook,
    handler: &str,
    version: &str,
    took: Duration,
    failure: Option<FailureKind>,
) {
    let (handler, version, hook) = (handler.to_owned(), version.to_owned(), hook.as_str());
    counter!(names::HANDLER_CALLS, "handler" => handler.clone(), "version" => version.clone(), "hook" => hook)
        .increment(1);
    histogram!(names::HANDLER_WASM, "handler" => handler.clone(), "version" => version.clone(), "hook" => hook)
        .record(took);
    if let Some(kind) = failure {
        counter!(names::HANDLER_FAILURES, "handler" => handler, "version" => version, "hook" => hook, "kind" => kind.as_str())
            .increment(1);
    }
}

/// A submission decided from a kept decision of `admit` (no Wasm call).
pub fn admit_reused(handler: &str, version: &str) {
    counter!(names::ADMIT_REUSED, "handler" => handler.to_owned(), "version" => version.to_owned())
        .increment(1);
}

/// A call slot granted by the shared limiter, after `waited`.
pub fn limiter_granted(backend: BackendKind, waited: Duration) {
    histogram!(names::LIMITER_WAIT, "backend" => backend.to_string()).record(waited);
}

/// One try of a model call: its outcome, the HTTP status when one is known,
/// and how long it took; a chat's token usage when the backend reported it.
pub fn model_called(
    backend: BackendKind,
    operation: ModelOperation,
    result: Result<(), &ModelError>,
    took: Duration,
) {
    let (outcome, status) = match result {
        Ok(()) => ("ok", "200".to_owned()),
        Err(ModelError::RateLimited { status, .. }) => ("rate_limited", status.to_string()),
        Err(ModelError::Rejected { status, .. }) => ("rejected", status.to_string()),
        // 5xx, connection errors and cut streams carry no status here.
        Err(ModelError::Unavailable(_)) => ("unavailable", "none".to_owned()),
    };
    let (backend, operation) = (backend.to_string(), operation.as_str());
    counter!(names::MODEL_CALLS, "backend" => backend.clone(), "operation" => operation, "outcome" => outcome, "status" => status)
        .increment(1);
    histogram!(names::MODEL_CALL_DURATION, "backend" => backend, "operation" => operation, "outcome" => outcome)
        .record(took);
}

pub fn model_tokens(backend: BackendKind, prompt: Option<u32>, completion: Option<u32>) {
    for (kind, tokens) in [("prompt", prompt), ("completion", completion)] {
        if let Some(tokens) = tokens {
            counter!(names::MODEL_TOKENS, "backend" => backend.to_string(), "kind" => kind)
                .increment(u64::from(tokens));
        }
    }
}

/// A client following a stream (a job's or a message's events, over SSE or
/// WebSocket) for as long as this lives.
pub struct Watching(());

impl Watching {
    pub fn start() -> Self {
        gauge!(names::WATCHERS).increment(1.0);
        Self(())
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        gauge!(names::WATCHERS).decrement(1.0);
    }
}

/// Runs one Redis round trip (a queue script) and records how long it took.
pub async fn redis_timed<F: Future>(operation: &'static str, round_trip: F) -> F::Output {
    let started = Instant::now();
    let output = round_trip.await;
    histogram!(names::REDIS_ROUNDTRIP, "operation" => operation).record(started.elapsed());
    output
}

/// Prepares the process's recorder: every description, and a watcher count
/// of 0 before the first client follows a stream.
pub fn install() {
    describe();
    gauge!(names::WATCHERS).set(0.0);
}

/// Registers every metric's description and unit with the current recorder.
pub fn describe() {
    use names::*;
    let counters: [(&'static str, &'static str); 15] = [
        (
            JOBS_SUBMITTED,
            "Jobs accepted into a queue by this instance",
        ),
        (JOBS_COMPLETED, "Jobs completed by this instance's workers"),
        (
            JOBS_FAILED,
            "Jobs failed for good (dead-lettered) by this instance's workers, by failure kind",
        ),
        (
            JOBS_RETRIED,
            "Attempts that failed and were scheduled to run again, by failure kind",
        ),
        (
            JOBS_CANCELLED,
            "Jobs that ended cancelled on this instance (taken out of line, or stopped while running)",
        ),
        (
            HANDLER_CALLS,
            "Calls into a handler's Wasm, per handler version and hook",
        ),
        (
            HANDLER_FAILURES,
            "Handler calls that did not succeed, by failure kind",
        ),
        (
            ADMIT_REUSED,
            "Submissions decided by a decision the handler version's priority rule made before for the same declared inputs, without a Wasm call",
        ),
        (
            MODEL_CALLS,
            "Model calls (each try) by backend, operation, outcome and HTTP status",
        ),
        (
            MODEL_TOKENS,
            "Tokens the backend reported for chat calls, by kind (prompt, completion)",
        ),
        (
            LIMITER_GRANTED,
            "Call slots granted by the shared limiter, all instances together",
        ),
        (
            LIMITER_WAITS,
            "Granted slots that had to wait, all instances together",
        ),
        (
            LIMITER_RATE_LIMITED,
            "Rate-limit answers (429, 403) the backend gave, all instances together",
        ),
        (
            LIMITER_RETRIES,
            "Model calls retried by the retry loop, all instances together",
        ),
        (
            LIMITER_FAILURES,
            "Model calls failed for good, by reason, all instances together",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, Unit::Count, help);
    }
    let histograms: [(&'static str, &'static str); 6] = [
        (
            JOB_DURATION,
            "Run time of an attempt (claim to recorded outcome), by outcome",
        ),
        (
            JOB_QUEUE_WAIT,
            "Time from submission to a job's first claim",
        ),
        (
            HANDLER_WASM,
            "Wall time of a handler call, host calls included",
        ),
        (MODEL_CALL_DURATION, "Latency of one model call try"),
        (
            LIMITER_WAIT,
            "Time a model call waited for its slot from the shared limiter",
        ),
        (REDIS_ROUNDTRIP, "Round trip of one queue script to Redis"),
    ];
    for (name, help) in histograms {
        describe_histogram!(name, Unit::Seconds, help);
    }
    let gauges: [(&'static str, &'static str); 10] = [
        (
            WATCHERS,
            "Clients following a job's or a message's event stream on this instance",
        ),
        (
            QUEUE_WAITING,
            "Jobs waiting in line, all instances together",
        ),
        (
            QUEUE_ACTIVE,
            "Jobs claimed and running, all instances together",
        ),
        (
            QUEUE_DELAYED,
            "Jobs scheduled to retry, all instances together",
        ),
        (QUEUE_DEAD, "Dead letters kept, all instances together"),
        (QUEUE_PAUSED, "1 when the queue is paused"),
        (
            LIMITER_CONFIGURED_RATE,
            "The limiter's configured calls per second",
        ),
        (
            LIMITER_EFFECTIVE_RATE,
            "The limiter's current calls per second, lowered after rate limits",
        ),
        (
            LIMITER_TOKENS,
            "Call slots available now in the shared bucket",
        ),
        (
            LIMITER_COOLDOWN,
            "Time left before any instance may call the backend again",
        ),
    ];
    for (name, help) in gauges {
        describe_gauge!(name, help);
    }
}
