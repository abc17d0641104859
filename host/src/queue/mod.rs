//! The job queue in Redis Streams: one stream per queue and priority class, read
//! through one consumer group so any number of instances share the work.
//!
//! Owns the Redis layout of queues and job records (keys below) and every write
//! that moves a job between states, each one atomic (a Lua script). It does not
//! run jobs (the worker does) nor decide priorities (the guest's `admit` does).
//!
//! Keys: `spool:q:{queue}:{high|normal|low}` streams, `spool:q:{queue}:paused`,
//! `spool:q:{queue}:delayed` (retries by due time), `spool:q:{queue}:completed` /
//! `:failed` (recent history) and `:count:*` totals; `spool:job:{id}` (the job
//! record), `spool:job:{id}:state` (the guest's state), `job_events:{id}`.

mod record;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;

pub use record::{JobRecord, JobState};

use crate::runtime::PriorityClass;

/// The consumer group every instance reads through.
pub const GROUP: &str = "spool-workers";
/// Pub/Sub channel announcing "queue X has work"; a hint, never the truth.
pub const WAKE_CHANNEL: &str = "spool:wake";
pub const JOB_PREFIX: &str = "spool:job:";
pub const EVENTS_PREFIX: &str = "job_events:";
pub const CLASSES: [PriorityClass; 3] = [
    PriorityClass::High,
    PriorityClass::Normal,
    PriorityClass::Low,
];

pub fn job_key(id: &str) -> String {
    format!("{JOB_PREFIX}{id}")
}
pub fn job_state_key(id: &str) -> String {
    format!("{JOB_PREFIX}{id}:state")
}
pub fn events_key(id: &str) -> String {
    format!("{EVENTS_PREFIX}{id}")
}

pub fn class_name(class: PriorityClass) -> &'static str {
    match class {
        PriorityClass::High => "high",
        PriorityClass::Normal => "normal",
        PriorityClass::Low => "low",
    }
}

pub fn valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The keys of one queue.
#[derive(Clone, Debug)]
pub struct QueueKeys {
    pub name: String,
    streams: [String; 3],
    paused: String,
    delayed: String,
    completed: String,
    failed: String,
}

impl QueueKeys {
    pub fn new(name: &str) -> Self {
        let key = |suffix: &str| format!("spool:q:{{{name}}}:{suffix}");
        Self {
            name: name.to_owned(),
            streams: CLASSES.map(|c| key(class_name(c))),
            paused: key("paused"),
            delayed: key("delayed"),
            completed: key("completed"),
            failed: key("failed"),
        }
    }

    pub fn stream(&self, class: PriorityClass) -> &str {
        &self.streams[class as usize]
    }

    fn counter(&self, state: &str) -> String {
        format!("spool:q:{{{}}}:count:{state}", self.name)
    }
}

/// A job about to be queued: what the client sent and what `admit` decided.
pub struct NewJob<'a> {
    pub id: &'a str,
    pub queue: &'a QueueKeys,
    pub class: PriorityClass,
    pub score: u8,
    pub priority: u8,
    pub user_id: &'a str,
    pub user_tier: &'a str,
    pub payload: &'a str,
    pub handler: &'a str,
    pub max_waiting: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("queue `{0}` is full; retry later")]
    Full(String),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What a worker got from [`Queue::claim`].
pub enum Claim {
    Job(ClaimedJob),
    Paused,
    /// Nothing to do; `next_retry_ms` is when the earliest delayed retry is due.
    Idle {
        next_retry_ms: Option<u64>,
    },
    Again,
}

pub struct ClaimedJob {
    pub class: PriorityClass,
    pub entry_id: String,
    pub record: JobRecord,
}

/// How an attempt ended, as the queue records it.
pub enum Outcome {
    Completed {
        result: String,
        blocks: String,
        handler_version: String,
    },
    /// The job will run again at `retry_at_ms`.
    Retry {
        error: String,
        retry_at_ms: u64,
    },
    Failed {
        error: String,
    },
}

/// Retention applied when a job finishes.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub completed_secs: u64,
    pub failed_secs: u64,
    pub history: u32,
}

#[derive(Debug, Default, Serialize)]
pub struct ClassStats {
    pub waiting: u64,
    pub active: u64,
}

#[derive(Debug, Serialize)]
pub struct QueueStats {
    pub waiting: u64,
    pub active: u64,
    pub delayed: u64,
    pub completed: u64,
    pub failed: u64,
    pub paused: bool,
    pub by_priority: HashMap<&'static str, ClassStats>,
}

/// Handle to the queues in one Redis. Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    redis: ConnectionManager,
    submit: Script,
    claim: Script,
    finish: Script,
}

impl Queue {
    pub fn new(redis: ConnectionManager) -> Self {
        Self {
            redis,
            submit: Script::new(include_str!("submit.lua")),
            claim: Script::new(include_str!("claim.lua")),
            finish: Script::new(include_str!("finish.lua")),
        }
    }

    /// Creates the consumer group of each class stream (idempotent).
    pub async fn ensure_groups(&self, queue: &QueueKeys) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        for stream in &queue.streams {
            let created: redis::RedisResult<()> =
                redis.xgroup_create_mkstream(stream, GROUP, "0").await;
            match created {
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    pub async fn submit(&self, job: NewJob<'_>) -> Result<String, SubmitError> {
        let now = now_ms();
        let event = serde_json::json!({ "queue": job.queue.name, "class": class_name(job.class), "score": job.score });
        let fields: [(&str, String); 13] = [
            ("id", job.id.into()),
            ("queue", job.queue.name.clone()),
            ("state", "waiting".into()),
            ("class", class_name(job.class).into()),
            ("score", job.score.to_string()),
            ("priority", job.priority.to_string()),
            ("user_id", job.user_id.into()),
            ("user_tier", job.user_tier.into()),
            ("payload", job.payload.into()),
            ("handler", job.handler.into()),
            ("attempts", "0".into()),
            ("progress", "0".into()),
            ("created_at", now.to_string()),
        ];
        let mut invocation = self.submit.prepare_invoke();
        invocation
            .key(job.queue.stream(job.class))
            .key(job_key(job.id))
            .key(events_key(job.id))
            .arg(job.max_waiting)
            .arg(job.id)
            .arg(now)
            .arg(event.to_string())
            .arg(WAKE_CHANNEL)
            .arg(&job.queue.name);
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        let entry: Option<String> = invocation.invoke_async(&mut self.redis.clone()).await?;
        entry.ok_or_else(|| SubmitError::Full(job.queue.name.clone()))
    }

    pub async fn claim(&self, queue: &QueueKeys, consumer: &str) -> redis::RedisResult<Claim> {
        let mut invocation = self.claim.prepare_invoke();
        invocation.key(&queue.paused).key(&queue.delayed);
        for stream in &queue.streams {
            invocation.key(stream);
        }
        invocation
            .arg(GROUP)
            .arg(consumer)
            .arg(now_ms())
            .arg(JOB_PREFIX)
            .arg(EVENTS_PREFIX);
        let reply: Vec<Value> = match invocation.invoke_async(&mut self.redis.clone()).await {
            Err(e) if e.code() == Some("NOGROUP") => {
                // Redis lost its data (restarted without persistence): recreate.
                self.ensure_groups(queue).await?;
                return Ok(Claim::Again);
            }
            other => other?,
        };
        parse_claim(reply)
    }

    /// Records how an attempt ended and acknowledges its entry. Returns false
    /// when the attempt had already lost the job (another run finished it).
    pub async fn finish(
        &self,
        job: &ClaimedJob,
        outcome: &Outcome,
        retention: Retention,
    ) -> redis::RedisResult<bool> {
        let keys = QueueKeys::new(&job.record.queue);
        let id = job.record.id.as_str();
        let now = now_ms();
        let duration_ms = now.saturating_sub(job.record.started_at.unwrap_or(now));
        let attempt = job.record.attempts;
        let (state, zset, score, history, ttl, event_type, event, mut fields) = match outcome {
            Outcome::Completed {
                result,
                blocks,
                handler_version,
            } => {
                let result_json: serde_json::Value =
                    serde_json::from_str(result).unwrap_or(serde_json::Value::Null);
                let event = serde_json::json!({ "result": result_json, "duration_ms": duration_ms, "attempt": attempt });
                let fields = vec![
                    ("result", result.clone()),
                    ("blocks", blocks.clone()),
                    ("handler_version", handler_version.clone()),
                    ("progress", "100".into()),
                ];
                (
                    "completed",
                    &keys.completed,
                    now,
                    retention.history,
                    retention.completed_secs,
                    "task_completed",
                    event,
                    fields,
                )
            }
            Outcome::Retry { error, retry_at_ms } => {
                let event = serde_json::json!({ "error": error, "attempt": attempt, "final": false, "retry_at_ms": retry_at_ms });
                (
                    "delayed",
                    &keys.delayed,
                    *retry_at_ms,
                    0,
                    0,
                    "task_failed",
                    event,
                    vec![("error", error.clone())],
                )
            }
            Outcome::Failed { error } => {
                let event =
                    serde_json::json!({ "error": error, "attempt": attempt, "final": true });
                (
                    "failed",
                    &keys.failed,
                    now,
                    retention.history,
                    retention.failed_secs,
                    "task_failed",
                    event,
                    vec![("error", error.clone())],
                )
            }
        };
        // A failed attempt records the version that ran it too (the worker sets it).
        if let (false, Some(version)) = (
            matches!(outcome, Outcome::Completed { .. }),
            &job.record.handler_version,
        ) {
            fields.push(("handler_version", version.clone()));
        }
        let mut invocation = self.finish.prepare_invoke();
        invocation
            .key(job_key(id))
            .key(keys.stream(job.class))
            .key(events_key(id))
            .key(job_state_key(id))
            .key(zset)
            .key(keys.counter(state))
            .arg(GROUP)
            .arg(&job.entry_id)
            .arg(id)
            .arg(now)
            .arg(state)
            .arg(score)
            .arg(history)
            .arg(ttl)
            .arg(event_type)
            .arg(event.to_string());
        for (field, value) in fields {
            invocation.arg(field).arg(value);
        }
        let recorded: i64 = invocation.invoke_async(&mut self.redis.clone()).await?;
        Ok(recorded == 1)
    }

    pub async fn job(&self, id: &str) -> redis::RedisResult<Option<JobRecord>> {
        let fields: HashMap<String, String> = self.redis.clone().hgetall(job_key(id)).await?;
        Ok(JobRecord::from_fields(fields))
    }

    pub async fn set_paused(&self, queue: &QueueKeys, paused: bool) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        if paused {
            redis.set::<_, _, ()>(&queue.paused, now_ms()).await
        } else {
            let mut pipe = redis::pipe();
            pipe.del(&queue.paused)
                .ignore()
                .publish(WAKE_CHANNEL, &queue.name)
                .ignore();
            pipe.query_async(&mut redis).await
        }
    }

    pub async fn stats(&self, queue: &QueueKeys) -> redis::RedisResult<QueueStats> {
        let mut pipe = redis::pipe();
        for stream in &queue.streams {
            pipe.xlen(stream).cmd("XPENDING").arg(stream).arg(GROUP);
        }
        pipe.zcard(&queue.delayed)
            .get(queue.counter("completed"))
            .get(queue.counter("failed"))
            .exists(&queue.paused);
        let values: Vec<Value> = pipe.query_async(&mut self.redis.clone()).await?;
        let number = |v: &Value| -> u64 {
            match v {
                Value::Int(n) => (*n).max(0) as u64,
                Value::BulkString(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                // XPENDING's summary starts with the pending count.
                Value::Array(items) => items
                    .first()
                    .map(|first| match first {
                        Value::Int(n) => (*n).max(0) as u64,
                        _ => 0,
                    })
                    .unwrap_or(0),
                _ => 0,
            }
        };
        let mut stats = QueueStats {
            waiting: 0,
            active: 0,
            delayed: number(&values[6]),
            completed: number(&values[7]),
            failed: number(&values[8]),
            paused: number(&values[9]) == 1,
            by_priority: HashMap::new(),
        };
        for (i, class) in CLASSES.iter().enumerate() {
            let length = number(&values[2 * i]);
            let active = number(&values[2 * i + 1]);
            let class_stats = ClassStats {
                waiting: length.saturating_sub(active),
                active,
            };
            stats.waiting += class_stats.waiting;
            stats.active += class_stats.active;
            stats.by_priority.insert(class_name(*class), class_stats);
        }
        Ok(stats)
    }

    /// The most recent finished job ids of a queue, newest first.
    pub async fn history(
        &self,
        queue: &QueueKeys,
        state: JobState,
        limit: isize,
    ) -> redis::RedisResult<Vec<String>> {
        let key = if state == JobState::Failed {
            &queue.failed
        } else {
            &queue.completed
        };
        self.redis.clone().zrevrange(key, 0, limit - 1).await
    }

    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.redis.clone())
            .await
    }

    pub fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }
}

fn parse_claim(reply: Vec<Value>) -> redis::RedisResult<Claim> {
    let text = |v: &Value| -> String {
        match v {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            _ => String::new(),
        }
    };
    let malformed = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply from the claim script",
        ))
    };
    let mut items = reply.into_iter();
    let tag = items.next().map(|v| text(&v)).ok_or_else(malformed)?;
    match tag.as_str() {
        "paused" => Ok(Claim::Paused),
        "again" => Ok(Claim::Again),
        "idle" => Ok(Claim::Idle {
            next_retry_ms: items
                .next()
                .and_then(|v| text(&v).parse::<f64>().ok())
                .map(|ms| ms as u64),
        }),
        "job" => {
            let index: usize = items
                .next()
                .map(|v| text(&v))
                .and_then(|s| s.parse().ok())
                .ok_or_else(malformed)?;
            let class = *CLASSES.get(index.wrapping_sub(1)).ok_or_else(malformed)?;
            let entry_id = items.next().map(|v| text(&v)).ok_or_else(malformed)?;
            let Some(Value::Array(flat)) = items.next() else {
                return Err(malformed());
            };
            let fields: HashMap<String, String> = flat
                .chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| (text(&p[0]), text(&p[1])))
                .collect();
            let record = JobRecord::from_fields(fields).ok_or_else(malformed)?;
            Ok(Claim::Job(ClaimedJob {
                class,
                entry_id,
                record,
            }))
        }
        _ => Err(malformed()),
    }
}
