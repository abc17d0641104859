//! Bulk submission: a batch of admitted jobs of one queue enqueued in one
//! script call (`submit_bulk.lua`), all or nothing. Owns only that write; the
//! admission of each job and the batch cap are intake's and the API's.

use redis::Value;

use super::{NewJob, Queue, job_fields, now_ms, queued_event};
use crate::metrics;
use spool_runtime::EventType;
use spool_runtime::event_type::MAX_STREAM_EVENTS;

/// What became of one item of a batch that was queued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BulkItem {
    /// Queued under this stream entry.
    Queued(String),
    /// Its id already named a job of this queue (or an earlier item): nothing new.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum BulkSubmitError {
    #[error("queue `{0}` has no room for the whole batch; retry later")]
    Full(String),
    /// The id of the item at this index (from 0) names another queue's or owner's job.
    #[error("item {0}'s job id is taken by another job")]
    Taken(usize),
    #[error("the batch mixes queues or carries follow-up fields")]
    Mixed,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

impl Queue {
    /// Enqueues `jobs` (all of one queue, none a follow-up or bound to a
    /// session message) in one round trip. `owner`: the user every repeated id
    /// must belong to (a tenant), or `None` for any.
    pub async fn submit_bulk(
        &self,
        jobs: &[NewJob<'_>],
        owner: Option<&str>,
    ) -> Result<Vec<BulkItem>, BulkSubmitError> {
        let Some(first) = jobs.first() else {
            return Ok(Vec::new());
        };
        if jobs.iter().any(|job| {
            job.queue.name != first.queue.name || job.parent.is_some() || job.message.is_some()
        }) {
            return Err(BulkSubmitError::Mixed);
        }
        let now = now_ms();
        let mut invocation = self.submit_bulk.prepare_invoke();
        for job in jobs {
            let keys = job.queue.job(job.id);
            invocation
                .key(job.queue.stream(job.class))
                .key(keys.record)
                .key(keys.events);
        }
        let names: Vec<&'static str> = job_fields(first, now).iter().map(|(n, _)| *n).collect();
        invocation
            .arg(first.max_waiting)
            .arg(now)
            .arg(&first.queue.wake_channel)
            .arg(&first.queue.name)
            .arg(EventType::TaskQueued.as_str())
            .arg(MAX_STREAM_EVENTS)
            .arg(owner.unwrap_or(""))
            .arg(names.len())
            .arg(&names);
        for job in jobs {
            invocation.arg(queued_event(job));
            for (_, value) in job_fields(job, now) {
                invocation.arg(value);
            }
        }
        let reply: Vec<Value> = metrics::redis_timed(
            "submit_bulk",
            invocation.invoke_async(&mut self.redis.clone()),
        )
        .await?;
        parse_reply(reply, jobs.len(), &first.queue.name)
    }
}

fn parse_reply(
    reply: Vec<Value>,
    items: usize,
    queue: &str,
) -> Result<Vec<BulkItem>, BulkSubmitError> {
    let unexpected = || {
        BulkSubmitError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply from submit_bulk.lua",
        )))
    };
    let text = |value: &Value| match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    };
    match reply.as_slice() {
        [verdict, Value::Int(index)] if text(verdict).as_deref() == Some("taken") => {
            Err(BulkSubmitError::Taken((*index as usize).saturating_sub(1)))
        }
        [verdict, _] if text(verdict).as_deref() == Some("full") => {
            Err(BulkSubmitError::Full(queue.to_owned()))
        }
        [verdict, Value::Array(entries)]
            if text(verdict).as_deref() == Some("queued") && entries.len() == items =>
        {
            entries
                .iter()
                .map(|entry| match text(entry) {
                    Some(entry) if entry == "duplicate" => Ok(BulkItem::Duplicate),
                    Some(entry) => Ok(BulkItem::Queued(entry)),
                    None => Err(unexpected()),
                })
                .collect()
        }
        _ => Err(unexpected()),
    }
}
