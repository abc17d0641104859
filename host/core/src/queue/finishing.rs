//! Recording how attempts ended: one `finish.lua` call records a batch of
//! outcomes (those ready together on one instance), each exactly as if it
//! were alone, with the queue's monitoring counted once for the batch.
//!
//! Owns the script's arguments, prepared apart from the call so that the
//! worker that ran the job builds them and a batch only concatenates; what an
//! outcome writes is `settlement`'s. When to call is the worker's
//! (`worker::dispatch`).

use super::fence::write_args;
use super::settlement::Settlement;
use super::{ClaimedJob, GROUP, JobRecord, JobState, JobWrite, Outcome, Queue, Retention, now_ms};
use crate::metrics;
use spool_runtime::event_type::MAX_STREAM_EVENTS;

/// What [`Queue::finish`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Recorded,
    /// Another attempt owns the job; nothing was written.
    Lost,
    /// A cancel was accepted: nothing was written, record the cancellation.
    CancelRequested,
}

impl Finish {
    /// The attempt is over for its worker, which may take its next job
    /// (`settle.lua` claims one for it in the same call).
    pub fn frees_worker(self) -> bool {
        matches!(self, Self::Recorded | Self::Lost)
    }
}

/// One outcome's keys and arguments for `finish.lua`.
pub struct PreparedOutcome {
    keys: [String; 9],
    /// Its arguments before the writes (1..19).
    args: Vec<String>,
    /// The job's state hash may exist, and must expire with the job.
    state_may_exist: bool,
    /// The attempt's unsent writes (see `job_writes.lua`): how many, and
    /// their arguments.
    writes: (usize, Vec<String>),
    /// The job hash field/value pairs.
    fields: Vec<String>,
}

impl PreparedOutcome {
    /// The outcome with the attempt's writes still unsent when it ended:
    /// they land first, in the same call, under the attempt's fence.
    pub fn with_writes(mut self, writes: &[JobWrite]) -> Self {
        self.writes = (writes.len(), write_args(writes));
        self
    }

    /// The job has no state hash to expire: its one attempt wrote no state.
    /// Spares a loaded queue an EXPIRE per job; the default assumes one.
    pub fn without_state(mut self) -> Self {
        self.state_may_exist = false;
        self
    }
}

impl Queue {
    /// Records how an attempt ended and acknowledges its entry, unless the
    /// attempt lost the job or a cancel was accepted meanwhile (then only
    /// [`Outcome::Cancelled`] may be recorded).
    pub async fn finish(
        &self,
        job: &ClaimedJob,
        outcome: &Outcome,
        retention: Retention,
    ) -> redis::RedisResult<Finish> {
        let prepared = self.prepare_outcome(job, outcome, retention);
        let mut finished = self.finish_many(std::slice::from_ref(&prepared)).await?;
        finished
            .pop()
            .unwrap_or_else(|| Err(unexpected("the finish script answered for no outcome")))
    }

    /// What [`Queue::finish_many`] writes for one attempt's outcome, as of now.
    pub fn prepare_outcome(
        &self,
        job: &ClaimedJob,
        outcome: &Outcome,
        retention: Retention,
    ) -> PreparedOutcome {
        let keys = &job.queue;
        let id = job.record.id.as_str();
        let now = now_ms();
        let settlement = Settlement::of(&job.record, outcome, retention, now);
        // A completing attempt's account is the record itself (finish.lua).
        let attempt_record = match settlement.state {
            JobState::Completed => String::new(),
            state => attempt_record(
                &job.record,
                now,
                state,
                settlement.event.get("error"),
                settlement.event.get("error_kind"),
            )
            .to_string(),
        };
        let state = settlement.state.as_str();
        let zset = settlement.zset(keys).to_owned();
        let args = vec![
            GROUP.to_owned(),
            job.entry_id.clone(),
            id.to_owned(),
            now.to_string(),
            state.to_owned(),
            settlement.score.to_string(),
            settlement.history.to_string(),
            settlement.ttl_secs.to_string(),
            settlement.event_type.as_str().to_owned(),
            settlement.event.to_string(),
            attempt_record,
            MAX_STREAM_EVENTS.to_string(),
            settlement.message.as_str().to_owned(),
            settlement.message.error().to_owned(),
            retention.message_secs.max(1).to_string(),
            retention.message_events.max(1).to_string(),
            self.max_dead(&keys.name).to_string(),
            keys.monitor.clone(),
            keys.sessions_prefix.clone(),
        ];
        let fields = settlement
            .fields
            .into_iter()
            .flat_map(|(field, value)| [field.to_owned(), value])
            .collect();
        PreparedOutcome {
            keys: [
                job.keys.record.clone(),
                keys.stream(job.class).to_owned(),
                job.keys.events.clone(),
                job.keys.state.clone(),
                zset,
                keys.counter(state),
                keys.dead.clone(),
                keys.dead_index.clone(),
                keys.counter("fenced"),
            ],
            args,
            state_may_exist: true,
            writes: (0, Vec::new()),
            fields,
        }
    }

    /// Records a batch of outcomes in one call; one [`Finish`] per outcome,
    /// in order, or the error that stopped that one alone.
    pub async fn finish_many(
        &self,
        outcomes: &[PreparedOutcome],
    ) -> redis::RedisResult<Vec<redis::RedisResult<Finish>>> {
        let mut invocation = self.finish.prepare_invoke();
        outcome_keys_and_args(&mut invocation, outcomes);
        let recorded: Vec<redis::Value> =
            metrics::redis_timed("finish", invocation.invoke_async(&mut self.redis.clone()))
                .await?;
        finishes_of(recorded, outcomes.len())
    }
}

/// The outcomes' keys and arguments, as `finish_outcomes` takes them.
pub(super) fn outcome_keys_and_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    outcomes: &[PreparedOutcome],
) {
    invocation.arg(outcomes.len());
    for outcome in outcomes {
        for key in &outcome.keys {
            invocation.key(key);
        }
        let (writes, write_args) = &outcome.writes;
        let count = outcome.args.len() + 3 + write_args.len() + outcome.fields.len();
        invocation
            .arg(count)
            .arg(&outcome.args)
            .arg(if outcome.state_may_exist { "1" } else { "0" })
            .arg(writes)
            .arg(write_args.len())
            .arg(write_args)
            .arg(&outcome.fields);
    }
}

/// One [`Finish`] per outcome from `finish_outcomes`' results.
pub(super) fn finishes_of(
    recorded: Vec<redis::Value>,
    outcomes: usize,
) -> redis::RedisResult<Vec<redis::RedisResult<Finish>>> {
    if recorded.len() != outcomes {
        return Err(unexpected(
            "the finish script answered for a different number of outcomes",
        ));
    }
    Ok(recorded.into_iter().map(finish_of).collect())
}

/// How one attempt ended, as the job's attempt history shows it.
pub(super) fn attempt_record(
    job: &JobRecord,
    finished_at: u64,
    outcome: JobState,
    error: Option<&serde_json::Value>,
    error_kind: Option<&serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "attempt": job.attempts,
        "worker": job.worker,
        "startedAt": job.started_at,
        "finishedAt": finished_at,
        "outcome": outcome.as_str(),
        "error": error,
        "errorKind": error_kind,
    })
}

fn finish_of(recorded: redis::Value) -> redis::RedisResult<Finish> {
    match recorded {
        redis::Value::Int(1) => Ok(Finish::Recorded),
        redis::Value::Int(2) => Ok(Finish::CancelRequested),
        redis::Value::Int(_) => Ok(Finish::Lost),
        redis::Value::BulkString(error) => Err(redis::RedisError::from((
            redis::ErrorKind::Extension,
            "the finish script could not record this outcome",
            String::from_utf8_lossy(&error).into_owned(),
        ))),
        _ => Err(unexpected("unexpected reply from the finish script")),
    }
}

fn unexpected(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::UnexpectedReturnType, what))
}
