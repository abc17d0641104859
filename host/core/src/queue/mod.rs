//! The job queue in Redis Streams: one stream per queue and priority class, read
//! through one consumer group so any number of instances share the work.
//!
//! Owns the Redis layout of queues and job records (keys below) and every write
//! that moves a job between states, each one atomic (a Lua script). It does not
//! run jobs (the worker does) nor decide priorities (the guest's `admit` does).
//!
//! Keys: `spool:q:{queue}:{high|normal|low}` streams, `spool:q:{queue}:paused`,
//! `spool:q:{queue}:delayed` (retries by due time), `spool:q:{queue}:completed` /
//! `:failed` (recent history), `spool:q:{queue}:dead` (dead letters, at most
//! `max_dead`) with `:dead:index` (job id -> letter), and `:count:*` totals
//! (also `:count:dropped`, and `:count:fenced`, see `fence`);
//! `spool:q:{queue}:monitor:{bucket}` (request figures by 10 s of Redis time,
//! for the designs' monitoring; see `monitor.lua` and [`Queue::monitoring`]);
//! `spool:job:{id}` (the job record, with each attempt that did not complete
//! as `attempt:N`), `spool:job:{id}:state` (the guest's state),
//! `job_events:{id}`; on a Redis Cluster a job's keys carry its queue's tag
//! instead ([`KeyLayout`]).
//! Every key of a finished job expires with its record.
//!
//! Delivery is at-least-once: an entry is acknowledged only by the script that
//! records its outcome; a worker heart-beats the entry of the job it runs, and
//! `recover` requeues entries whose worker stopped heart-beating.
//!
//! Consumer names carry the instance, so every start adds consumers to the
//! groups; `prune_consumers` deletes those that hold no pending entries and
//! are idle or belong to an instance that stops, so their number stays bounded.
//!
//! Scripts that touch dead letters share `dead_letters.lua`, prepended to them;
//! those that end a job share `monitor.lua`. Each script's round trip is
//! timed (`metrics::redis_timed`).

mod bulk;
mod claiming;
mod dead;
mod fence;
mod finishing;
mod listing;
mod monitoring;
mod promote;
mod record;
mod settlement;
mod settling;
mod submitting;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::connection::RedisConnection;
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;

pub use bulk::{BulkItem, BulkSubmitError};
pub use claiming::{Claim, Claimed, ClaimedJob};
pub use dead::{DEFAULT_MAX_DEAD, DeadLetter, Replay};
pub use fence::{Fence, JobWrite, Written};
pub use finishing::{Finish, PreparedOutcome};
pub use monitoring::{MONITOR_BUCKET_SECS, MONITOR_WINDOWS, QueueMonitoring, WindowTotals};
pub use promote::Promote;
pub use record::{BoundMessage, JobRecord, JobState};
pub use settlement::Outcome;
pub use settling::Settled;
pub use submitting::PreparedSubmit;

use crate::metrics;
use spool_runtime::event_type::MAX_STREAM_EVENTS;
use spool_runtime::{EventType, PriorityClass};

/// The consumer group every instance reads through.
pub const GROUP: &str = "spool-workers";
/// Pub/Sub channel announcing "queue X has work"; a hint, never the truth.
/// On a cluster each queue has its own shard channel instead
/// ([`QueueKeys::wake_channel`]).
const WAKE_CHANNEL: &str = "spool:wake";
/// Pub/Sub channel on which a cancel of an active job names the job, so the
/// instance running it stops it at once (on a cluster: the queue's own).
const CANCEL_CHANNEL: &str = "spool:cancel";
pub const CLASSES: [PriorityClass; 3] = [
    PriorityClass::High,
    PriorityClass::Normal,
    PriorityClass::Low,
];

/// Prefix of every per-queue key. The queue name is in braces, a Redis
/// Cluster hash tag: all of a queue's keys share one slot.
const QUEUE_PREFIX: &str = "spool:q:";

/// Where a queue's job keys live. On one server they keep the names the
/// designs' clients read: `spool:job:{id}` and `job_events:{id}`. A Redis
/// Cluster runs a script only over keys of one hash slot, and a claim or an
/// outcome touches the queue's streams and the job's keys together, so there
/// a job's keys carry its queue's hash tag: `spool:q:{queue}:job:{id}` and
/// `spool:q:{queue}:events:{id}`. A job id is then found through its queue.
/// For the same reason the session store (whose messages the task queue's
/// jobs drive) lives under its task queue's tag there
/// ([`QueueKeys::sessions_prefix`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyLayout {
    #[default]
    SingleNode,
    Cluster,
}

/// Prefixes of job hashes and event streams on one server (see [`KeyLayout`]).
const SINGLE_NODE_JOB_PREFIX: &str = "spool:job:";
const SINGLE_NODE_EVENTS_PREFIX: &str = "job_events:";

/// The keys of one job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobKeys {
    /// The job's hash (its record).
    pub record: String,
    /// Its event stream.
    pub events: String,
    /// The guest's state hash.
    pub state: String,
}

impl JobKeys {
    fn new(job_prefix: &str, events_prefix: &str, id: &str) -> Self {
        let record = format!("{job_prefix}{id}");
        Self {
            events: format!("{events_prefix}{id}"),
            state: format!("{record}:state"),
            record,
        }
    }
}

pub fn class_name(class: PriorityClass) -> &'static str {
    class.name()
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueKeys {
    pub name: String,
    streams: [String; 3],
    paused: String,
    delayed: String,
    completed: String,
    failed: String,
    dead: String,
    dead_index: String,
    /// Prefix of the queue's monitoring buckets.
    monitor: String,
    /// Prefixes of its jobs' hashes and event streams (see [`KeyLayout`]).
    job_prefix: String,
    events_prefix: String,
    /// Where its work and its jobs' cancels are announced: one server's
    /// classic channels, or on a cluster the queue's own shard channels.
    pub wake_channel: String,
    pub cancel_channel: String,
    /// What the session store's key names (design D's) start with when this
    /// queue runs session tasks: nothing on one server; on a cluster the
    /// queue's own prefix, so that a job and the message it drives share a
    /// slot.
    pub sessions_prefix: String,
}

impl QueueKeys {
    pub fn new(name: &str, layout: KeyLayout) -> Self {
        let key = |suffix: &str| format!("{QUEUE_PREFIX}{{{name}}}:{suffix}");
        let (job_prefix, events_prefix, wake_channel, cancel_channel, sessions_prefix) =
            match layout {
                KeyLayout::SingleNode => (
                    SINGLE_NODE_JOB_PREFIX.to_owned(),
                    SINGLE_NODE_EVENTS_PREFIX.to_owned(),
                    WAKE_CHANNEL.to_owned(),
                    CANCEL_CHANNEL.to_owned(),
                    String::new(),
                ),
                KeyLayout::Cluster => (
                    key("job:"),
                    key("events:"),
                    key("wake"),
                    key("cancel"),
                    key(""),
                ),
            };
        Self {
            sessions_prefix,
            wake_channel,
            cancel_channel,
            job_prefix,
            events_prefix,
            name: name.to_owned(),
            streams: CLASSES.map(|c| key(class_name(c))),
            paused: key("paused"),
            delayed: key("delayed"),
            completed: key("completed"),
            failed: key("failed"),
            dead: key("dead"),
            dead_index: key("dead:index"),
            monitor: key("monitor:"),
        }
    }

    pub fn stream(&self, class: PriorityClass) -> &str {
        &self.streams[class as usize]
    }

    /// The keys of the job `id` of this queue.
    pub fn job(&self, id: &str) -> JobKeys {
        JobKeys::new(&self.job_prefix, &self.events_prefix, id)
    }

    /// The key of the queue's `state` total (`completed`, `failed`, ...).
    pub fn counter(&self, state: &str) -> String {
        format!("{QUEUE_PREFIX}{{{}}}:count:{state}", self.name)
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
    pub message: Option<&'a BoundMessage>,
    pub handler: &'a str,
    pub max_waiting: u64,
    /// A follow-up job: the fence of the attempt that asked for it.
    pub parent: Option<&'a Fence>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("queue `{0}` is full; retry later")]
    Full(String),
    #[error("a job with this id exists")]
    Duplicate,
    #[error("the attempt asking for this follow-up no longer owns its job")]
    Fenced,
    #[error("the job asking for this follow-up was cancelled")]
    ParentCancelled,
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// What a heartbeat learned about the job it keeps alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heartbeat {
    Run,
    Cancel,
    /// Recovery gave the job to another attempt: stop, record nothing.
    Lost,
}

/// What a cancel request found.
#[derive(Debug, PartialEq, Eq)]
pub enum CancelOutcome {
    Cancelled,
    /// The job runs; its worker stops it at its next heartbeat.
    Requested,
    AlreadyFinished(JobState),
    NotFound,
}

/// Retention applied when a job finishes.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub completed_secs: u64,
    pub failed_secs: u64,
    pub history: u32,
    /// The expiry and event cap of a session message the job's end ends
    /// (the store's `message_ttl_secs` and `max_events`).
    pub message_secs: u64,
    pub message_events: u64,
}

#[derive(Debug, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassStats {
    pub waiting: u64,
    pub active: u64,
}

#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueStats {
    pub waiting: u64,
    pub active: u64,
    pub delayed: u64,
    pub completed: u64,
    pub failed: u64,
    /// Jobs in the dead-letter stream.
    pub dead: u64,
    pub paused: bool,
    pub by_priority: HashMap<&'static str, ClassStats>,
}

/// Handle to the queues in one Redis. Cheap to clone (the scripts are
/// shared: every watcher of a job holds one).
#[derive(Clone)]
pub struct Queue {
    redis: RedisConnection,
    layout: KeyLayout,
    /// The queues a job id is looked for in (on a cluster, see [`KeyLayout`]).
    queues: Arc<Vec<String>>,
    /// Dead letters kept per queue name (absent: [`DEFAULT_MAX_DEAD`]).
    max_dead: Arc<HashMap<String, u64>>,
    submit: Arc<Script>,
    submit_bulk: Arc<Script>,
    claim: Arc<Script>,
    finish: Arc<Script>,
    settle: Arc<Script>,
    recover: Arc<Script>,
    heartbeat: Arc<Script>,
    cancel: Arc<Script>,
    replay: Arc<Script>,
    promote: Arc<Script>,
    fenced: Arc<Script>,
    purge: Arc<Script>,
    tidy_dead: Arc<Script>,
    prune: Arc<Script>,
    monitor_read: Arc<Script>,
}

impl Queue {
    pub fn new(redis: RedisConnection) -> Self {
        Self {
            layout: if redis.is_cluster() {
                KeyLayout::Cluster
            } else {
                KeyLayout::SingleNode
            },
            redis,
            queues: Default::default(),
            max_dead: Default::default(),
            submit: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("fence.lua"),
                include_str!("stage_event.lua"),
                include_str!("submit.lua")
            ))),
            submit_bulk: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("submit_bulk.lua")
            ))),
            claim: Arc::new(Script::new(concat!(
                include_str!("enter_stream.lua"),
                include_str!("stage_event.lua"),
                include_str!("claim.lua"),
                "return claim_jobs(KEYS, ARGV, {unpack(ARGV, 8)})\n"
            ))),
            finish: Arc::new(Script::new(concat!(
                include_str!("message_end.lua"),
                include_str!("dead_letters.lua"),
                include_str!("monitor.lua"),
                include_str!("stage_event.lua"),
                include_str!("job_writes.lua"),
                include_str!("finish.lua"),
                "return (finish_outcomes(KEYS, 0, ARGV, 1))\n"
            ))),
            settle: Arc::new(Script::new(concat!(
                include_str!("enter_stream.lua"),
                include_str!("message_end.lua"),
                include_str!("dead_letters.lua"),
                include_str!("monitor.lua"),
                include_str!("stage_event.lua"),
                include_str!("job_writes.lua"),
                include_str!("claim.lua"),
                include_str!("finish.lua"),
                include_str!("settle.lua")
            ))),
            recover: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("message_end.lua"),
                include_str!("monitor.lua"),
                include_str!("recover.lua")
            ))),
            heartbeat: Arc::new(Script::new(include_str!("heartbeat.lua"))),
            cancel: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("message_end.lua"),
                include_str!("monitor.lua"),
                include_str!("stage_event.lua"),
                include_str!("cancel.lua")
            ))),
            fenced: Arc::new(Script::new(concat!(
                include_str!("fence.lua"),
                include_str!("stage_event.lua"),
                include_str!("job_writes.lua"),
                include_str!("fenced.lua")
            ))),
            promote: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("enter_stream.lua"),
                include_str!("stage_event.lua"),
                include_str!("promote.lua")
            ))),
            replay: Arc::new(Script::new(concat!(
                include_str!("publish.lua"),
                include_str!("dead_letters.lua"),
                include_str!("replay.lua")
            ))),
            purge: Arc::new(Script::new(concat!(
                include_str!("dead_letters.lua"),
                include_str!("purge.lua")
            ))),
            tidy_dead: Arc::new(Script::new(concat!(
                include_str!("dead_letters.lua"),
                include_str!("tidy_dead.lua")
            ))),
            prune: Arc::new(Script::new(include_str!("prune.lua"))),
            monitor_read: Arc::new(Script::new(concat!(
                include_str!("monitor.lua"),
                include_str!("monitor_read.lua")
            ))),
        }
    }

    /// Sets how many dead letters each queue keeps (queue name -> cap).
    pub fn with_max_dead(mut self, caps: impl IntoIterator<Item = (String, u64)>) -> Self {
        self.max_dead = Arc::new(caps.into_iter().collect());
        self
    }

    /// Names the queues whose jobs this handle looks up by id alone.
    pub fn with_queues(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.queues = Arc::new(names.into_iter().collect());
        self
    }

    pub fn layout(&self) -> KeyLayout {
        self.layout
    }

    /// The keys of the queue `name` in this Redis's layout.
    pub fn keys(&self, name: &str) -> QueueKeys {
        QueueKeys::new(name, self.layout)
    }

    /// The keys of the job `id`, wherever it is: on one server they follow
    /// from the id; on a cluster the job is looked for in every known queue
    /// (`None`: in none of them).
    pub async fn job_keys(&self, id: &str) -> redis::RedisResult<Option<JobKeys>> {
        if self.layout == KeyLayout::SingleNode {
            let keys = JobKeys::new(SINGLE_NODE_JOB_PREFIX, SINGLE_NODE_EVENTS_PREFIX, id);
            return Ok(Some(keys));
        }
        let lookups = self.queues.iter().map(|name| {
            let keys = self.keys(name).job(id);
            let mut redis = self.redis.clone();
            async move {
                let found: bool = redis.exists(&keys.record).await?;
                redis::RedisResult::Ok(found.then_some(keys))
            }
        });
        let found = futures_util::future::try_join_all(lookups).await?;
        Ok(found.into_iter().flatten().next())
    }

    fn max_dead(&self, queue: &str) -> u64 {
        self.max_dead
            .get(queue)
            .copied()
            .unwrap_or(DEFAULT_MAX_DEAD)
            .max(1)
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

    /// Keeps the entry of a running job alive; says whether to go on.
    pub async fn heartbeat(
        &self,
        job: &ClaimedJob,
        consumer: &str,
    ) -> redis::RedisResult<Heartbeat> {
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(job.queue.stream(job.class))
            .key(&job.keys.record)
            .arg(GROUP)
            .arg(consumer)
            .arg(&job.entry_id);
        let verdict: String = metrics::redis_timed(
            "heartbeat",
            invocation.invoke_async(&mut self.redis.clone()),
        )
        .await?;
        Ok(match verdict.as_str() {
            "cancel" => Heartbeat::Cancel,
            "lost" => Heartbeat::Lost,
            _ => Heartbeat::Run,
        })
    }

    /// Requeues the jobs of workers silent for longer than `visibility`. Walks
    /// each stream's whole pending list; returns how many jobs were requeued.
    pub async fn recover(
        &self,
        queue: &QueueKeys,
        consumer: &str,
        visibility: std::time::Duration,
        retention: Retention,
    ) -> redis::RedisResult<u64> {
        let mut cursors = [
            String::from("0-0"),
            String::from("0-0"),
            String::from("0-0"),
        ];
        let mut requeued = 0;
        // XAUTOCLAIM scans a bounded slice per call: go on until every cursor is back at 0-0.
        for _ in 0..1000 {
            let mut invocation = self.recover.prepare_invoke();
            for stream in &queue.streams {
                invocation.key(stream);
            }
            invocation
                .arg(GROUP)
                .arg(consumer)
                .arg(visibility.as_millis() as u64)
                .arg(now_ms())
                .arg(&queue.job_prefix)
                .arg(&queue.events_prefix)
                .arg(&queue.wake_channel)
                .arg(&queue.name);
            for cursor in &cursors {
                invocation.arg(cursor);
            }
            invocation
                .arg(EventType::TaskRequeued.as_str())
                .arg(MAX_STREAM_EVENTS)
                .arg(EventType::TaskCancelled.as_str())
                .arg(retention.failed_secs.max(1))
                .arg(retention.message_secs.max(1))
                .arg(retention.message_events.max(1))
                .arg(&queue.monitor)
                .arg(&queue.sessions_prefix);
            let (high, normal, low, count): (String, String, String, u64) =
                invocation.invoke_async(&mut self.redis.clone()).await?;
            requeued += count;
            cursors = [high, normal, low];
            if cursors.iter().all(|c| c == "0-0") {
                break;
            }
        }
        Ok(requeued)
    }

    pub async fn cancel(
        &self,
        id: &str,
        retention: Retention,
    ) -> redis::RedisResult<CancelOutcome> {
        // Taking a job out of line touches its queue's keys, declared to the
        // script: the queue is read first (on a cluster, found with the job).
        let Some(job) = self.job_keys(id).await? else {
            return Ok(CancelOutcome::NotFound);
        };
        let queue: Option<String> = self.redis.clone().hget(&job.record, "queue").await?;
        let Some(queue) = queue.map(|name| self.keys(&name)) else {
            return Ok(CancelOutcome::NotFound);
        };
        let mut invocation = self.cancel.prepare_invoke();
        invocation.key(&job.record).key(&job.events).key(&job.state);
        for stream in &queue.streams {
            invocation.key(stream);
        }
        invocation
            .key(&queue.delayed)
            .arg(now_ms())
            .arg(retention.failed_secs.max(1))
            .arg(&queue.name)
            .arg(EventType::TaskCancelled.as_str())
            .arg(MAX_STREAM_EVENTS)
            .arg(&queue.cancel_channel)
            .arg(retention.message_secs.max(1))
            .arg(retention.message_events.max(1))
            .arg(&queue.monitor)
            .arg(&queue.sessions_prefix);
        // {state before, queue, class}
        let previous: Option<Vec<String>> =
            metrics::redis_timed("cancel", invocation.invoke_async(&mut self.redis.clone()))
                .await?;
        let previous = previous.unwrap_or_default();
        let field = |i: usize| previous.get(i).map_or("", String::as_str);
        Ok(match JobState::parse(field(0)) {
            None => CancelOutcome::NotFound,
            Some(JobState::Waiting | JobState::Delayed) => {
                metrics::job_cancelled(field(1), field(2));
                CancelOutcome::Cancelled
            }
            Some(JobState::Active) => CancelOutcome::Requested,
            Some(finished) => CancelOutcome::AlreadyFinished(finished),
        })
    }

    /// Deletes the consumers of the queue's groups that hold no pending
    /// entries and have been idle for `min_idle`, or, with `instance`, whose
    /// names start with it (that instance is stopping). Returns how many.
    pub async fn prune_consumers(
        &self,
        queue: &QueueKeys,
        min_idle: std::time::Duration,
        instance: Option<&str>,
    ) -> redis::RedisResult<u64> {
        let mut invocation = self.prune.prepare_invoke();
        for stream in &queue.streams {
            invocation.key(stream);
        }
        invocation
            .arg(GROUP)
            .arg(u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX))
            .arg(instance.map(|i| format!("{i}-")).unwrap_or_default());
        invocation.invoke_async(&mut self.redis.clone()).await
    }

    /// Each attempt's outcome, oldest first: those that did not complete
    /// as finish.lua recorded them (`attempt:N` in the job's hash), then the
    /// completing one, which is the record itself.
    pub async fn attempt_history(&self, id: &str) -> redis::RedisResult<Vec<serde_json::Value>> {
        let Some(job) = self.job_keys(id).await? else {
            return Ok(Vec::new());
        };
        let mut fields: HashMap<String, String> = self.redis.clone().hgetall(&job.record).await?;
        let mut recorded: Vec<(u32, serde_json::Value)> = Vec::new();
        fields.retain(|name, value| {
            let Some(n) = name.strip_prefix("attempt:") else {
                return true;
            };
            if let (Ok(n), Ok(attempt)) = (n.parse(), serde_json::from_str(value)) {
                recorded.push((n, attempt));
            }
            false
        });
        recorded.sort_by_key(|(n, _)| *n);
        let mut history: Vec<_> = recorded.into_iter().map(|(_, attempt)| attempt).collect();
        if let Some(record) = JobRecord::from_fields(fields)
            && record.state == JobState::Completed
        {
            let finished_at = record.finished_at.unwrap_or(0);
            history.push(finishing::attempt_record(
                &record,
                finished_at,
                JobState::Completed,
                None,
                None,
            ));
        }
        Ok(history)
    }

    pub async fn job(&self, id: &str) -> redis::RedisResult<Option<JobRecord>> {
        let Some(job) = self.job_keys(id).await? else {
            return Ok(None);
        };
        let fields: HashMap<String, String> = self.redis.clone().hgetall(&job.record).await?;
        Ok(JobRecord::from_fields(fields))
    }

    pub async fn set_paused(&self, queue: &QueueKeys, paused: bool) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        if paused {
            redis.set::<_, _, ()>(&queue.paused, now_ms()).await
        } else {
            redis.del::<_, ()>(&queue.paused).await?;
            let publish = match self.layout {
                KeyLayout::SingleNode => "PUBLISH",
                KeyLayout::Cluster => "SPUBLISH",
            };
            redis::cmd(publish)
                .arg(&queue.wake_channel)
                .arg(&queue.name)
                .query_async(&mut redis)
                .await
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
            .exists(&queue.paused)
            .xlen(&queue.dead);
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
            dead: number(&values[10]),
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

    pub fn connection(&self) -> RedisConnection {
        self.redis.clone()
    }
}

/// The `task_queued` event's data: where the job went.
fn queued_event(job: &NewJob<'_>) -> String {
    serde_json::json!({ "queue": job.queue.name, "class": class_name(job.class), "score": job.score })
        .to_string()
}

/// A new job's record, as field/value pairs (the id first: the bulk script reads it there).
fn job_fields<'a>(job: &NewJob<'a>, now: u64) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = vec![
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
    if let Some(message) = job.message {
        fields.push(("message_session", message.session_id.clone()));
        fields.push(("message_id", message.message_id.clone()));
    }
    fields
}
