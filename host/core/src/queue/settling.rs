//! Recording outcomes and claiming the next jobs in one `settle.lua` call:
//! the workers whose jobs just ended ask for their next ones with their
//! outcomes, so a loaded queue pays one call per batch for both.
//!
//! Owns the call's arguments and the split of its reply; what an outcome
//! writes is `finishing`'s and `settlement`'s, what a claim does is
//! `claiming`'s. When to call is the worker's (`worker::dispatch`).

use redis::Value;

use super::claiming::{claim_keys_and_args, parse_claimed, text};
use super::finishing::{finishes_of, outcome_keys_and_args};
use super::{Claimed, Finish, PreparedOutcome, Queue, QueueKeys};
use crate::metrics;

/// What one [`Queue::settle`] call did.
pub struct Settled {
    /// One [`Finish`] per outcome, in order.
    pub finished: Vec<redis::RedisResult<Finish>>,
    /// The jobs claimed, in order for the consumers that asked alone, then
    /// for each outcome's that wants its next job, if the outcome
    /// [frees its worker](Finish::frees_worker); `None` when no one asked.
    pub claimed: Option<redis::RedisResult<Claimed>>,
}

impl Queue {
    /// Records `outcomes`, then claims one job for each consumer in `alone`
    /// and for each outcome's consumer in `next` (one per outcome, `None`
    /// for none) whose outcome [frees it](Finish::frees_worker), as
    /// settle.lua orders them. A claim that fails leaves the outcomes
    /// recorded.
    pub async fn settle(
        &self,
        queue: &QueueKeys,
        alone: &[&str],
        outcomes: &[PreparedOutcome],
        next: &[Option<&str>],
        started_at: u64,
        fair_every: u32,
    ) -> redis::RedisResult<Settled> {
        let mut invocation = self.settle.prepare_invoke();
        claim_keys_and_args(&mut invocation, queue, started_at, fair_every);
        invocation.arg(alone.len()).arg(alone);
        outcome_keys_and_args(&mut invocation, outcomes);
        for consumer in next {
            invocation.arg(consumer.unwrap_or(""));
        }
        let reply: Vec<Value> =
            metrics::redis_timed("settle", invocation.invoke_async(&mut self.redis.clone()))
                .await?;
        let [Value::Array(recorded), Value::Array(claim)] =
            <[Value; 2]>::try_from(reply).map_err(|_| malformed())?
        else {
            return Err(malformed());
        };
        let finished = finishes_of(recorded, outcomes.len())?;
        let claimed = match claim.first().map(text).as_deref() {
            Some("none") => None,
            Some("failed") => {
                let error = claim.get(1).map(text).unwrap_or_default();
                Some(if error.starts_with("NOGROUP") {
                    self.group_lost(queue).await
                } else {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::Extension,
                        "the claim after the outcomes failed",
                        error,
                    )))
                })
            }
            _ => Some(parse_claimed(claim, queue, started_at)),
        };
        Ok(Settled { finished, claimed })
    }
}

fn malformed() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from the settle script",
    ))
}
