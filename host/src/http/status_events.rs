//! Design E's status line on `/stream/status/{id}`: beside each named event
//! of a job's stream that changes its state or progress, an unnamed SSE event
//! (no `event:` line, so `EventSource.onmessage` receives it) carrying
//! `{"type": "status", "jobId", "state", "progress"}`, as design E's page
//! expects. Built from the host's lifecycle events only: custom events and
//! their data (the guest's) are never read.

use axum::response::sse::Event as SseEvent;
use serde::Serialize;
use serde_json::Value;

use spool_core::events::Event;
use spool_core::queue::JobState;
use spool_runtime::EventType;

/// Design E's status event, as its page reads it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    r#type: &'static str,
    job_id: &'a str,
    state: JobState,
    /// 0 to 100.
    progress: u8,
}

/// Follows one job's stream, remembering its progress between events.
pub struct StatusLine {
    job_id: String,
    progress: u8,
}

impl StatusLine {
    /// `progress`: the job's progress before the first event to be rendered
    /// (0 when its stream is replayed from the start).
    pub fn new(job_id: String, progress: u8) -> Self {
        Self { job_id, progress }
    }

    /// The unnamed status event for `event`, if it changes the job's state or progress.
    pub fn status(&mut self, event: &Event) -> Option<SseEvent> {
        if event.job_id.is_some() {
            // A later stage's: the job's own state is not its.
            return None;
        }
        let state = match EventType::parse(&event.event_type)? {
            EventType::TaskQueued | EventType::TaskRequeued => JobState::Waiting,
            EventType::TaskStarted => JobState::Active,
            EventType::TaskProgress => {
                if let Some(progress) = event.data.get("progress").and_then(Value::as_u64) {
                    self.progress = progress.min(100) as u8;
                }
                JobState::Active
            }
            EventType::TaskRetrying => JobState::Delayed,
            EventType::TaskCompleted => {
                self.progress = 100;
                JobState::Completed
            }
            EventType::TaskFailed if event.is_terminal() => JobState::Failed,
            EventType::TaskFailed => JobState::Delayed,
            EventType::TaskCancelled => JobState::Cancelled,
            EventType::TextDelta | EventType::FollowUpQueued => return None,
        };
        let status = Status {
            r#type: "status",
            job_id: &self.job_id,
            state,
            progress: self.progress,
        };
        Some(SseEvent::default().data(serde_json::to_string(&status).unwrap_or_default()))
    }
}
