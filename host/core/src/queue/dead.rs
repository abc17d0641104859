//! Dead letters: a job that fails for good is appended (by `finish.lua`) to
//! its queue's dead-letter stream `spool:q:{queue}:dead`, at most `max_dead`
//! of them, indexed by job id in `spool:q:{queue}:dead:index` so that one
//! letter is found, replayed or purged without reading the stream.
//!
//! Owns listing, replaying, purging and tidying those letters; the scripts
//! share `dead_letters.lua`. Recording the failure itself is `finish`'s.

use redis::AsyncCommands;
use serde::Serialize;

use super::{EventType, MAX_STREAM_EVENTS, Queue, QueueKeys, now_ms};

/// One job in a queue's dead-letter stream.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub dead_id: String,
    pub job_id: String,
    pub failed_at: u64,
    pub error: Option<String>,
    pub attempts: Option<u32>,
}

/// Dead letters a queue keeps unless its config says otherwise.
pub const DEFAULT_MAX_DEAD: u64 = 10_000;

/// What [`Queue::replay`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// Queued again; its new stream entry.
    Replayed(String),
    /// The queue holds no dead letter of this job.
    NotDead,
    /// The id now names another job (of the queue given): its record is live,
    /// so the dead letter is not replayed over it.
    Taken(String),
}

impl Queue {
    /// The newest dead letters of a queue first.
    pub async fn dead_letters(
        &self,
        queue: &QueueKeys,
        limit: usize,
    ) -> redis::RedisResult<Vec<DeadLetter>> {
        let reply: redis::streams::StreamRangeReply = self
            .redis
            .clone()
            .xrevrange_count(&queue.dead, "+", "-", limit)
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|entry| {
                let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
                let record: Vec<String> =
                    serde_json::from_str(&field("record")).unwrap_or_default();
                let recorded = |name: &str| {
                    record
                        .chunks(2)
                        .find(|p| p.len() == 2 && p[0] == name)
                        .map(|p| p[1].clone())
                };
                DeadLetter {
                    job_id: field("job"),
                    failed_at: field("failed_at").parse().unwrap_or(0),
                    error: recorded("error"),
                    attempts: recorded("attempts").and_then(|a| a.parse().ok()),
                    dead_id: entry.id,
                }
            })
            .collect())
    }

    /// Re-queues a dead job with a fresh set of attempts.
    pub async fn replay(&self, queue: &QueueKeys, id: &str) -> redis::RedisResult<Replay> {
        let job = queue.job(id);
        let reply: Vec<String> = self
            .replay
            .key(&queue.dead)
            .key(&queue.dead_index)
            .key(&job.record)
            .key(&job.events)
            .key(&queue.streams)
            .arg(id)
            .arg(now_ms())
            .arg(&queue.wake_channel)
            .arg(EventType::TaskQueued.as_str())
            .arg(MAX_STREAM_EVENTS)
            .arg(&queue.name)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let mut reply = reply.into_iter();
        Ok(match (reply.next().as_deref(), reply.next()) {
            (Some("replayed"), Some(entry)) => Replay::Replayed(entry),
            (Some("taken"), other) => Replay::Taken(other.unwrap_or_default()),
            (Some("not_dead"), _) => Replay::NotDead,
            _ => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply from the replay script",
                )));
            }
        })
    }

    /// Removes one dead letter (`Some(job id)`) or all of them; returns how many.
    pub async fn purge_dead(
        &self,
        queue: &QueueKeys,
        job: Option<&str>,
    ) -> redis::RedisResult<u64> {
        let mut redis = self.redis.clone();
        match job {
            None => {
                // The letters and their index go together.
                let (length,): (u64,) = redis::pipe()
                    .atomic()
                    .xlen(&queue.dead)
                    .del(&queue.dead)
                    .ignore()
                    .del(&queue.dead_index)
                    .ignore()
                    .query_async(&mut redis)
                    .await?;
                Ok(length)
            }
            Some(id) => {
                self.purge
                    .key(&queue.dead)
                    .key(&queue.dead_index)
                    .arg(id)
                    .invoke_async(&mut redis)
                    .await
            }
        }
    }

    /// Brings a queue's dead letters in line with this version (at start):
    /// indexes those that older versions wrote without an index, so replay
    /// and purge find them, and drops the oldest over the queue's cap (lowered
    /// since). Cheap when there is nothing to do: only a stream longer than
    /// its index or its cap is read, one page per call.
    pub async fn tidy_dead_letters(&self, queue: &QueueKeys) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        let cap = self.max_dead(&queue.name);
        let (letters, indexed): (u64, u64) = redis::pipe()
            .xlen(&queue.dead)
            .hlen(&queue.dead_index)
            .query_async(&mut redis)
            .await?;
        if letters <= indexed && letters <= cap {
            return Ok(());
        }
        let mut after = String::from("-");
        // A page per call; the bound only guards against a cursor that never ends.
        for _ in 0..100_000 {
            let next: String = self
                .tidy_dead
                .key(&queue.dead)
                .key(&queue.dead_index)
                .arg(&after)
                .arg(500)
                .arg(cap)
                .invoke_async(&mut redis)
                .await?;
            if next.is_empty() {
                break;
            }
            after = next;
        }
        Ok(())
    }
}
