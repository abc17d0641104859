//! Queuing single jobs with `submit.lua`: one job, or the single
//! submissions of one queue that arrive together (`intake::group`), each
//! answered on its own.
//!
//! Owns the call's arguments and the reading of its answers. What a job's
//! record holds is `job_fields`'; when to call, and with which jobs, is the
//! caller's.

use redis::Value;

use super::{Fence, NewJob, Queue, QueueKeys, SubmitError, job_fields, now_ms, queued_event};
use crate::metrics;
use spool_runtime::EventType;
use spool_runtime::event_type::MAX_STREAM_EVENTS;

/// One job's keys and arguments for `submit.lua`, made when it was
/// submitted (its `created_at`), sent with the others of its queue.
pub struct PreparedSubmit {
    keys: [String; 5],
    args: Vec<String>,
}

impl Queue {
    /// Queues one job.
    pub async fn submit(&self, job: NewJob<'_>) -> Result<String, SubmitError> {
        let prepared = Self::prepare_submit(&job);
        let answer = self.submit_many(job.queue, vec![prepared]).await?.pop();
        answer.unwrap_or_else(|| Err(malformed().into()))
    }

    /// What [`Queue::submit_many`] needs of `job`, read now.
    pub fn prepare_submit(job: &NewJob<'_>) -> PreparedSubmit {
        let fields = job_fields(job, now_ms());
        let keys = job.queue.job(job.id);
        let mut args = Vec::with_capacity(7 + 2 * fields.len());
        args.extend([
            job.max_waiting.to_string(),
            job.id.to_owned(),
            queued_event(job),
            job.parent.map_or("", Fence::token).to_owned(),
            job.parent
                .map_or("", |fence| fence.job_id.as_str())
                .to_owned(),
            match (job.parent, job.message) {
                (Some(_), Some(message)) => message.message_id.clone(),
                _ => String::new(),
            },
            fields.len().to_string(),
        ]);
        for (field, value) in fields {
            args.push(field.to_owned());
            args.push(value);
        }
        let parent_record = job
            .parent
            .map_or_else(|| keys.record.clone(), |fence| fence.job.record.clone());
        let fenced_counter = job.parent.map_or_else(
            || job.queue.counter("fenced"),
            |fence| fence.counter_key().to_owned(),
        );
        PreparedSubmit {
            keys: [
                job.queue.stream(job.class).to_owned(),
                keys.record,
                keys.events,
                parent_record,
                fenced_counter,
            ],
            args,
        }
    }

    /// Queues `jobs`, all of `queue`, in one call: one answer per job, in
    /// order, each as if it had been sent alone.
    pub async fn submit_many(
        &self,
        queue: &QueueKeys,
        jobs: Vec<PreparedSubmit>,
    ) -> redis::RedisResult<Vec<Result<String, SubmitError>>> {
        let mut invocation = self.submit.prepare_invoke();
        invocation
            .arg(now_ms())
            .arg(&queue.wake_channel)
            .arg(&queue.name)
            .arg(EventType::TaskQueued.as_str())
            .arg(MAX_STREAM_EVENTS)
            .arg(&queue.sessions_prefix);
        for job in &jobs {
            for key in &job.keys {
                invocation.key(key);
            }
            invocation.arg(&job.args);
        }
        let answers: Vec<Value> =
            metrics::redis_timed("submit", invocation.invoke_async(&mut self.redis.clone()))
                .await?;
        if answers.len() != jobs.len() {
            return Err(malformed());
        }
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                Value::BulkString(bytes) => match bytes.as_slice() {
                    b"full" => Err(SubmitError::Full(queue.name.clone())),
                    b"duplicate" => Err(SubmitError::Duplicate),
                    b"fenced" => Err(SubmitError::Fenced),
                    b"cancelled" => Err(SubmitError::ParentCancelled),
                    entry => Ok(String::from_utf8_lossy(entry).into_owned()),
                },
                _ => Err(malformed().into()),
            })
            .collect())
    }
}

fn malformed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "submit.lua answered something else than one reply per job",
    ))
}
