//! Claiming jobs: one `claim.lua` call starts the next jobs of a queue for
//! every worker of an instance that asked at that moment (strict priority
//! with the fairness turns, retries due moved back in line first).
//!
//! Owns the claim's arguments and the parsing of its reply; which worker gets
//! which job, and when to ask, is the worker's (`worker::dispatch`).

use std::sync::Arc;

use redis::Value;

use super::{CLASSES, GROUP, JobKeys, JobRecord, JobState, Queue, QueueKeys, now_ms};
use crate::metrics;
use spool_runtime::event_type::MAX_STREAM_EVENTS;
use spool_runtime::{EventType, PriorityClass};

/// What a worker got from [`Queue::claim`].
pub enum Claim {
    Job(Box<ClaimedJob>),
    Paused,
    /// An entry named a job whose record is gone (evicted or deleted by
    /// hand); the entry was dropped and counted in `:count:dropped`.
    Dropped {
        job_id: String,
    },
    /// Nothing to do; `next_retry_ms` is when the earliest delayed retry is due.
    Idle {
        next_retry_ms: Option<u64>,
    },
    Again,
}

/// A job started by a claim, for the worker it was claimed for.
#[derive(Clone)]
pub struct ClaimedJob {
    pub class: PriorityClass,
    pub entry_id: String,
    pub record: JobRecord,
    /// The keys of its queue, and its own.
    pub queue: Arc<QueueKeys>,
    pub keys: JobKeys,
}

/// What one claim for several workers got.
pub enum Claimed {
    /// The jobs, in the order of the consumers they were claimed for (fewer
    /// when the queue ran dry).
    Jobs {
        jobs: Vec<ClaimedJob>,
        /// Entries whose job record was gone: dropped and counted.
        dropped: Vec<String>,
        /// When the earliest delayed retry is due, if the queue ran dry.
        next_retry_ms: Option<u64>,
    },
    Paused,
    /// The consumer group was missing (Redis lost its data) and was made
    /// again: ask again.
    Again,
}

impl Queue {
    /// Claims the next job in strict priority order, recording now as its start.
    pub async fn claim(&self, queue: &QueueKeys, consumer: &str) -> redis::RedisResult<Claim> {
        let claimed = self.claim_many(queue, &[consumer], now_ms(), 0).await?;
        Ok(match claimed {
            Claimed::Paused => Claim::Paused,
            Claimed::Again => Claim::Again,
            Claimed::Jobs {
                mut jobs,
                mut dropped,
                next_retry_ms,
            } => match (jobs.pop(), dropped.pop()) {
                (Some(job), _) => Claim::Job(Box::new(job)),
                (None, Some(job_id)) => Claim::Dropped { job_id },
                (None, None) => Claim::Idle { next_retry_ms },
            },
        })
    }

    /// Claims up to one job per consumer; `started_at` (ms) is recorded as
    /// their start (workers pass the moment they resolved the handler version
    /// they will run). Every `fair_every`-th claim tries low first, and the
    /// one halfway between normal first (0: strict priority; see `claim.lua`).
    pub async fn claim_many(
        &self,
        queue: &QueueKeys,
        consumers: &[&str],
        started_at: u64,
        fair_every: u32,
    ) -> redis::RedisResult<Claimed> {
        let mut invocation = self.claim.prepare_invoke();
        claim_keys_and_args(&mut invocation, queue, started_at, fair_every);
        invocation.arg(consumers);
        let mut redis = self.redis.clone();
        let invoked = metrics::redis_timed("claim", invocation.invoke_async(&mut redis));
        match invoked.await {
            Err(e) if e.code() == Some("NOGROUP") => self.group_lost(queue).await,
            other => parse_claimed(other?, queue, started_at),
        }
    }

    /// Redis lost its data (restarted without persistence) and with it the
    /// queue's consumer group: it is made again, and the claim asks again.
    pub(super) async fn group_lost(&self, queue: &QueueKeys) -> redis::RedisResult<Claimed> {
        self.ensure_groups(queue).await?;
        Ok(Claimed::Again)
    }
}

/// The claim's keys and first arguments, as `claim_jobs` takes them (its
/// `K` and `A`): the consumers follow.
pub(super) fn claim_keys_and_args(
    invocation: &mut redis::ScriptInvocation<'_>,
    queue: &QueueKeys,
    started_at: u64,
    fair_every: u32,
) {
    invocation.key(&queue.paused).key(&queue.delayed);
    for stream in &queue.streams {
        invocation.key(stream);
    }
    invocation
        .key(queue.counter("dropped"))
        .key(queue.counter("claims"));
    invocation
        .arg(GROUP)
        .arg(started_at)
        .arg(&queue.job_prefix)
        .arg(&queue.events_prefix)
        .arg(EventType::TaskStarted.as_str())
        .arg(MAX_STREAM_EVENTS)
        .arg(fair_every);
}

pub(super) fn text(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(n) => n.to_string(),
        _ => String::new(),
    }
}

fn malformed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from the claim script",
    ))
}

/// The claim's reply; `started_at` is the start time the claim was given.
pub(super) fn parse_claimed(
    reply: Vec<Value>,
    queue: &QueueKeys,
    started_at: u64,
) -> redis::RedisResult<Claimed> {
    let mut items = reply.into_iter();
    let tag = items.next().map(|v| text(&v)).ok_or_else(malformed)?;
    match tag.as_str() {
        "paused" => Ok(Claimed::Paused),
        "claimed" => {
            let next_retry_ms = items
                .next()
                .and_then(|v| text(&v).parse::<f64>().ok())
                .map(|ms| ms as u64);
            let dropped = match items.next() {
                Some(Value::Array(ids)) => ids.iter().map(text).collect(),
                _ => return Err(malformed()),
            };
            let queue = Arc::new(queue.clone());
            let jobs = items
                .map(|item| parse_job(item, &queue, started_at))
                .collect::<redis::RedisResult<_>>()?;
            Ok(Claimed::Jobs {
                jobs,
                dropped,
                next_retry_ms,
            })
        }
        _ => Err(malformed()),
    }
}

/// The fields of a job's record a claim returns, in `claim.lua`'s order
/// (its `CLAIMED_FIELDS`): what a worker runs the job with.
const CLAIMED_FIELDS: [&str; 15] = [
    "id",
    "queue",
    "class",
    "score",
    "priority",
    "user_id",
    "user_tier",
    "payload",
    "message_session",
    "message_id",
    "handler",
    "handler_version",
    "created_at",
    "attempts",
    "first_started_at",
];

/// One `{stream index (1..3), entry id, consumer, values}` of the reply; the
/// claim made the job active, started at `started_at`, by that consumer.
fn parse_job(
    value: Value,
    queue: &Arc<QueueKeys>,
    started_at: u64,
) -> redis::RedisResult<ClaimedJob> {
    let Value::Array(parts) = value else {
        return Err(malformed());
    };
    let [index, entry_id, consumer, Value::Array(values)] =
        <[Value; 4]>::try_from(parts).map_err(|_| malformed())?
    else {
        return Err(malformed());
    };
    let index: usize = text(&index).parse().map_err(|_| malformed())?;
    let class = *CLASSES.get(index.wrapping_sub(1)).ok_or_else(malformed)?;
    if values.len() != CLAIMED_FIELDS.len() {
        return Err(malformed());
    }
    let mut values: Vec<Option<String>> = values
        .iter()
        .map(|value| (*value != Value::Nil).then(|| text(value)))
        .collect();
    let mut consumer = Some(text(&consumer));
    let record = JobRecord::from_lookup(|name| match name {
        "state" => Some(JobState::Active.as_str().to_owned()),
        "started_at" => Some(started_at.to_string()),
        "worker" => consumer.take(),
        _ => CLAIMED_FIELDS
            .iter()
            .position(|field| *field == name)
            .and_then(|i| values[i].take()),
    })
    .ok_or_else(malformed)?;
    Ok(ClaimedJob {
        class,
        entry_id: text(&entry_id),
        keys: queue.job(&record.id),
        queue: queue.clone(),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::CLAIMED_FIELDS;

    #[test]
    fn the_claimed_fields_are_claim_lua_s_in_its_order() {
        let script = include_str!("claim.lua");
        let start = script
            .find("local CLAIMED_FIELDS = {")
            .expect("claim.lua names its fields");
        let list = &script[start..];
        let list = &list[list.find('{').unwrap_or(0) + 1..list.find('}').unwrap_or(0)];
        let names: Vec<&str> = list
            .split(',')
            .map(|name| name.trim().trim_matches('\''))
            .collect();
        assert_eq!(names, CLAIMED_FIELDS);
    }
}
