//! Job event streams (`job_events:{job_id}`, source design C; on a cluster
//! the stream carries its queue's hash tag, see `queue::KeyLayout`): every state change,
//! progress step and streamed model delta of a job is one entry with the fields
//! `event_type`, `data` (JSON, non-ASCII kept as is) and `timestamp` (ms).
//! Clients replay them from any id, so a dropped SSE connection loses nothing.
//!
//! Owns reading those streams. Every event is written by the queue's scripts:
//! state changes append their own events atomically, and a running attempt's
//! events go through its fence (`crate::queue::Fence`).

use std::collections::HashSet;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, RedisResult};
use serde::Serialize;
use serde_json::Value;

use spool_runtime::EventType;
use spool_runtime::event_type::MAX_STREAM_EVENTS;

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

/// Whether a job's task is over, from its stream's events in order: which
/// of its jobs ended and which later stages were announced. A stage may end
/// before its parent's completion is recorded (follow-ups are queued first,
/// so that a crash cannot lose them), so a root's stream may hold a stage's
/// end before the root's own: the task is over once the root and every
/// stage announced on its stream have ended, whatever the order. Stages'
/// events are copied to the root's stream only, so on a later stage's own
/// stream its own end is the end.
#[derive(Debug)]
struct TaskEnd {
    job_id: String,
    is_root: bool,
    ended: HashSet<String>,
    announced: HashSet<String>,
}

impl TaskEnd {
    fn new(job_id: &str) -> Self {
        Self {
            job_id: job_id.to_owned(),
            // Follow-up ids are `{root}.{n}[.{m}...]` (worker::follow_up).
            is_root: !job_id.contains('.'),
            ended: HashSet::new(),
            announced: HashSet::new(),
        }
    }

    /// Takes in the stream's next `event`; true once the task is over.
    fn see(&mut self, event: &Event) -> bool {
        let job = event.job_id.as_deref().unwrap_or(&self.job_id);
        match EventType::parse(&event.event_type) {
            Some(EventType::TaskCompleted) => {
                if self.is_root {
                    let follow_ups = event.data.get("followUps").and_then(Value::as_array);
                    let ids = follow_ups.into_iter().flatten().filter_map(Value::as_str);
                    self.announced.extend(ids.map(str::to_owned));
                }
                self.ended.insert(job.to_owned());
            }
            Some(EventType::TaskCancelled) => {
                self.ended.insert(job.to_owned());
            }
            Some(EventType::TaskFailed) if event.is_terminal() => {
                self.ended.insert(job.to_owned());
            }
            _ => {}
        }
        self.is_over()
    }

    fn is_over(&self) -> bool {
        self.ended.contains(&self.job_id)
            && self
                .announced
                .iter()
                .all(|stage| self.ended.contains(stage))
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
    /// What the events delivered so far say of the task.
    task: TaskEnd,
}

impl JobEvents {
    /// The events of the job whose record this is.
    pub fn of(queue: &crate::queue::Queue, record: &crate::queue::JobRecord) -> Self {
        Self {
            queue: queue.clone(),
            job_id: record.id.clone(),
            key: queue.keys(&record.queue).job(&record.id).events,
            task: TaskEnd::new(&record.id),
        }
    }

    /// The events of the job `job_id`; `None` when a cluster has no such job
    /// (on one server the stream's name follows from the id).
    pub async fn find(queue: &crate::queue::Queue, job_id: &str) -> RedisResult<Option<Self>> {
        Ok(queue.job_keys(job_id).await?.map(|keys| Self {
            queue: queue.clone(),
            job_id: job_id.to_owned(),
            key: keys.events,
            task: TaskEnd::new(job_id),
        }))
    }

    /// Whether the whole stream leaves the task open (a stage still to
    /// come). Read whole: a follower that resumed mid-stream did not see
    /// its start.
    async fn stream_leaves_task_open(&self) -> bool {
        let mut redis = self.queue.connection();
        // Trimmed to about this many: the newest are the ones that matter.
        let newest: RedisResult<redis::streams::StreamRangeReply> = redis
            .xrevrange_count(&self.key, "+", "-", 2 * MAX_STREAM_EVENTS)
            .await;
        let Ok(newest) = newest else {
            return false;
        };
        let mut task = TaskEnd::new(&self.job_id);
        let mut over = false;
        for entry in newest.ids.iter().rev() {
            over = task.see(&Event::from_entry(entry));
        }
        !over
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

    fn is_last(&mut self, entry: &Event) -> bool {
        self.task.see(entry)
    }

    const JUDGES_BY_HISTORY: bool = true;

    fn is_open(&self) -> futures_util::future::BoxFuture<'_, bool> {
        Box::pin(async {
            match self.queue.job(&self.job_id).await {
                Ok(Some(record)) if !record.state.is_terminal() => true,
                // A finished root job's later stages may still be running.
                Ok(Some(_)) => self.stream_leaves_task_open().await,
                _ => false,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(job_id: Option<&str>, event_type: &str, data: Value) -> Event {
        Event {
            id: "1-0".into(),
            job_id: job_id.map(str::to_owned),
            event_type: event_type.into(),
            data,
            timestamp: 0,
        }
    }

    fn over_after(task: &mut TaskEnd, events: &[Event]) -> Vec<bool> {
        events.iter().map(|event| task.see(event)).collect()
    }

    #[test]
    fn a_job_without_stages_is_over_at_its_own_end() {
        let mut task = TaskEnd::new("a");
        let events = [
            event(None, "task_started", json!({})),
            event(None, "task_failed", json!({"final": false})),
            event(None, "task_completed", json!({})),
        ];
        assert_eq!(over_after(&mut task, &events), [false, false, true]);
    }

    #[test]
    fn a_root_is_over_when_its_stages_have_ended_in_either_order() {
        let stage_end = event(Some("a.1"), "task_completed", json!({}));
        let root_end = event(None, "task_completed", json!({"followUps": ["a.1"]}));
        let mut task = TaskEnd::new("a");
        assert_eq!(
            over_after(&mut task, &[root_end.clone(), stage_end.clone()]),
            [false, true]
        );
        // The stage ended before its parent's completion was recorded.
        let mut task = TaskEnd::new("a");
        assert_eq!(over_after(&mut task, &[stage_end, root_end]), [false, true]);
    }

    #[test]
    fn a_stage_that_queues_another_keeps_the_root_open_until_that_one_ends() {
        let mut task = TaskEnd::new("a");
        let events = [
            event(None, "task_completed", json!({"followUps": ["a.1"]})),
            event(
                Some("a.1"),
                "task_completed",
                json!({"followUps": ["a.1.1"]}),
            ),
            event(Some("a.1.1"), "task_failed", json!({"final": false})),
            event(Some("a.1.1"), "task_cancelled", json!({})),
        ];
        assert_eq!(over_after(&mut task, &events), [false, false, false, true]);
    }

    #[test]
    fn a_stage_read_on_its_own_stream_is_over_at_its_own_end() {
        let mut task = TaskEnd::new("a.1");
        let end = event(None, "task_completed", json!({"followUps": ["a.1.1"]}));
        assert!(
            task.see(&end),
            "its follow-up's events go to the root's stream"
        );
    }
}
