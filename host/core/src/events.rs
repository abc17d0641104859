//! Job event streams (`job_events:{job_id}`, source design C; on a cluster
//! the stream carries its queue's hash tag, see `queue::KeyLayout`): every state change,
//! progress step and streamed model delta of a job is one entry with the fields
//! `event_type`, `data` (JSON, non-ASCII kept as is) and `timestamp` (ms).
//! Clients replay them from any id, so a dropped SSE connection loses nothing.
//!
//! Owns reading those streams. Every event is written by the queue's scripts:
//! state changes append their own events atomically, and a running attempt's
//! events go through its fence (`crate::queue::Fence`).

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult};
use serde::Serialize;
use serde_json::Value;

use spool_runtime::EventType;

#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// The stream entry id; pass it back as `last_id` / `Last-Event-ID` to resume.
    pub id: String,
    /// On a root job's stream, the later stage (follow-up job) whose event
    /// this is a copy of (design C: every stage on the root's stream).
    #[serde(rename = "jobId", skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    pub event_type: String,
    pub data: Value,
    pub timestamp: u64,
}

impl Event {
    /// The last event a job's stream will ever have: its end, unless it
    /// queued later stages, whose events follow on the same stream.
    pub fn is_terminal(&self) -> bool {
        match EventType::parse(&self.event_type) {
            Some(EventType::TaskCompleted) => self
                .data
                .get("followUps")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty),
            Some(EventType::TaskCancelled) => true,
            Some(EventType::TaskFailed) => self
                .data
                .get("final")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            _ => false,
        }
    }
}

/// Events after `after` ("0" for all), waiting up to `block` for the first one.
/// Blocking reads need a connection of their own whose response timeout is
/// longer than `block`.
pub async fn read(
    redis: &mut (impl ConnectionLike + Send + Sync),
    events_key: &str,
    after: &str,
    block: Option<Duration>,
) -> RedisResult<Vec<Event>> {
    let mut options = StreamReadOptions::default().count(100);
    if let Some(block) = block {
        options = options.block(block.as_millis() as usize);
    }
    let reply: Option<StreamReadReply> = redis
        .xread_options(&[events_key], &[after], &options)
        .await?;
    let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
    Ok(entries.map(|entry| Event::from_entry(&entry)).collect())
}

impl Event {
    /// An event as stored in its job's stream.
    pub fn from_entry(entry: &redis::streams::StreamId) -> Self {
        let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
        Event {
            data: serde_json::from_str(&field("data")).unwrap_or(Value::Null),
            event_type: field("event_type"),
            timestamp: field("timestamp").parse().unwrap_or(0),
            job_id: entry.get::<String>("job"),
            id: entry.id.clone(),
        }
    }
}

/// How many events a job's stream holds and its first/last ids (design C's info query).
pub async fn info(
    redis: &mut (impl ConnectionLike + Send + Sync),
    key: &str,
) -> RedisResult<Value> {
    let length: u64 = redis.xlen(key).await?;
    let first: redis::streams::StreamRangeReply = redis.xrange_count(key, "-", "+", 1).await?;
    let last: redis::streams::StreamRangeReply = redis.xrevrange_count(key, "+", "-", 1).await?;
    Ok(serde_json::json!({
        "stream": key,
        "length": length,
        "firstId": first.ids.first().map(|e| e.id.clone()),
        "lastId": last.ids.first().map(|e| e.id.clone()),
    }))
}

/// A job's event stream as a [`Source`](crate::follow::Source): it ends at the
/// job's terminal event (a root job's: its last stage's), or when the job
/// finished and that event is gone.
pub struct JobEvents {
    queue: crate::queue::Queue,
    job_id: String,
    key: String,
}

impl JobEvents {
    /// The events of the job whose record this is.
    pub fn of(queue: &crate::queue::Queue, record: &crate::queue::JobRecord) -> Self {
        Self {
            queue: queue.clone(),
            job_id: record.id.clone(),
            key: queue.keys(&record.queue).job(&record.id).events,
        }
    }

    /// The events of the job `job_id`; `None` when a cluster has no such job
    /// (on one server the stream's name follows from the id).
    pub async fn find(queue: &crate::queue::Queue, job_id: &str) -> RedisResult<Option<Self>> {
        Ok(queue.job_keys(job_id).await?.map(|keys| Self {
            queue: queue.clone(),
            job_id: job_id.to_owned(),
            key: keys.events,
        }))
    }

    /// Whether the stream's last event leaves it open (a stage still to come).
    async fn last_event_is_open(&self) -> bool {
        let mut redis = self.queue.connection();
        let last: RedisResult<redis::streams::StreamRangeReply> =
            redis.xrevrange_count(&self.key, "+", "-", 1).await;
        last.ok()
            .and_then(|reply| reply.ids.first().map(Event::from_entry))
            .is_some_and(|event| !event.is_terminal())
    }
}

impl crate::follow::Source for JobEvents {
    type Entry = Event;

    fn key(&self) -> String {
        self.key.clone()
    }

    fn parse(entry: &redis::streams::StreamId) -> Event {
        Event::from_entry(entry)
    }

    fn is_last(entry: &Event) -> bool {
        entry.is_terminal()
    }

    fn is_open(&self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(async {
            match self.queue.job(&self.job_id).await {
                Ok(Some(record)) if !record.state.is_terminal() => true,
                // A finished root job's later stages may still be running.
                Ok(Some(_)) => self.last_event_is_open().await,
                _ => false,
            }
        })
    }
}
