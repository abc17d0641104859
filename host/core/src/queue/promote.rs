//! Promoting a delayed job (BullMQ's `job.promote()`): a job waiting for its
//! retry runs now instead of at its due time.
//!
//! Owns that one move (`promote.lua`, which shares `enter_stream.lua` with the
//! claim that promotes due retries). Deciding when a retry is due is
//! `finish`'s; running the job is the worker's.

use super::{EventType, JobState, MAX_STREAM_EVENTS, Queue, QueueKeys, now_ms};
use crate::metrics;

/// What [`Queue::promote`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Promote {
    /// Waiting in its class stream; its new entry.
    Promoted(String),
    /// No job of this queue has the id.
    NotFound,
    /// The job is not delayed; its state.
    NotDelayed(JobState),
}

impl Queue {
    /// Moves a delayed job of `queue` into its class stream at once.
    pub async fn promote(&self, queue: &QueueKeys, id: &str) -> redis::RedisResult<Promote> {
        let job = queue.job(id);
        let mut invocation = self.promote.prepare_invoke();
        invocation.key(&job.record).key(&queue.delayed);
        for stream in &queue.streams {
            invocation.key(stream);
        }
        invocation
            .key(&job.events)
            .arg(id)
            .arg(now_ms())
            .arg(&queue.wake_channel)
            .arg(EventType::TaskQueued.as_str())
            .arg(MAX_STREAM_EVENTS)
            .arg(&queue.name);
        let reply: Vec<String> =
            metrics::redis_timed("promote", invocation.invoke_async(&mut self.redis.clone()))
                .await?;
        let mut reply = reply.into_iter();
        match (reply.next().as_deref(), reply.next()) {
            (Some("promoted"), Some(entry)) => Ok(Promote::Promoted(entry)),
            (Some("not_found"), _) => Ok(Promote::NotFound),
            (Some("not_delayed"), Some(state)) => match JobState::parse(&state) {
                Some(state) => Ok(Promote::NotDelayed(state)),
                None => Err(unexpected()),
            },
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from the promote script",
    ))
}
