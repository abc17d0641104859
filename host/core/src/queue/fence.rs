//! Fencing of the writes a running attempt makes on behalf of its job: guest
//! state, events, progress, its session message, its follow-up jobs. An
//! attempt holds a [`Fence`] (the job's stream entry id when it claimed it);
//! each write checks it in the same Lua script that writes (`fence.lua`), so a
//! paused or cut-off worker whose job was recovered and claimed elsewhere
//! cannot write into the new attempt's job. Refused writes are counted per
//! queue (`spool:q:{queue}:count:fenced`). Once a cancel of the job was
//! accepted its owner's writes are refused as well: nothing of a job changes
//! after its cancel.
//!
//! Owns the fence token and the fenced job writes; message writes check the
//! same fence in the store's scripts, follow-up submissions in `submit.lua`.

use redis::RedisResult;

use super::{ClaimedJob, JobKeys, Queue, now_ms};
use spool_runtime::EventType;
use spool_runtime::event_type::MAX_STREAM_EVENTS;

/// The claim of one attempt on its job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub job_id: String,
    /// The job's keys.
    pub job: JobKeys,
    /// Where refused writes are counted (its queue's).
    counter: String,
    token: String,
}

impl Fence {
    pub fn of(job: &ClaimedJob) -> Self {
        Self {
            job_id: job.record.id.clone(),
            job: job.keys.clone(),
            counter: job.queue.counter("fenced"),
            token: job.entry_id.clone(),
        }
    }

    pub fn job_key(&self) -> &str {
        &self.job.record
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where refused writes are counted.
    pub fn counter_key(&self) -> &str {
        &self.counter
    }
}

/// Whether a fenced write happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Written {
    Yes,
    /// The attempt no longer owns its job: nothing was written.
    Fenced,
    /// The job's cancel was accepted: nothing was written, the attempt stops.
    Cancelled,
}

/// One job write of a running attempt (see `job_writes.lua`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobWrite {
    /// An event on the job's stream.
    Event {
        event_type: String,
        data: String,
    },
    /// The job's progress, and the matching `task_progress` event.
    Progress {
        percent: u8,
        step: String,
    },
    SetState {
        key: String,
        value: String,
    },
    DeleteState {
        key: String,
    },
}

impl Queue {
    /// Appends one event to the job's stream.
    pub async fn append_event(
        &self,
        fence: &Fence,
        event_type: &str,
        data: &str,
    ) -> RedisResult<Written> {
        let write = JobWrite::Event {
            event_type: event_type.to_owned(),
            data: data.to_owned(),
        };
        self.write_all(fence, std::slice::from_ref(&write)).await
    }

    /// Sets the job's progress and appends the matching `task_progress` event.
    pub async fn set_progress(
        &self,
        fence: &Fence,
        percent: u8,
        step: &str,
    ) -> RedisResult<Written> {
        let write = JobWrite::Progress {
            percent,
            step: step.to_owned(),
        };
        self.write_all(fence, std::slice::from_ref(&write)).await
    }

    /// Sets one key of the guest's state.
    pub async fn set_state(&self, fence: &Fence, key: &str, value: &str) -> RedisResult<Written> {
        let write = JobWrite::SetState {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        self.write_all(fence, std::slice::from_ref(&write)).await
    }

    /// Deletes one key of the guest's state.
    pub async fn delete_state(&self, fence: &Fence, key: &str) -> RedisResult<Written> {
        let write = JobWrite::DeleteState {
            key: key.to_owned(),
        };
        self.write_all(fence, std::slice::from_ref(&write)).await
    }

    /// Makes `writes` in order in one call: all of them, or, once the fence
    /// refuses, none.
    pub async fn write_all(&self, fence: &Fence, writes: &[JobWrite]) -> RedisResult<Written> {
        let mut invocation = self.fenced.prepare_invoke();
        invocation
            .key(fence.job_key())
            .key(fence.counter_key())
            .key(&fence.job.events)
            .key(&fence.job.state)
            .arg(fence.token())
            .arg(now_ms())
            .arg(MAX_STREAM_EVENTS)
            .arg(&fence.job_id)
            .arg(writes.len())
            .arg(write_args(writes));
        let written: i64 = invocation.invoke_async(&mut self.connection()).await?;
        Ok(match written {
            1 => Written::Yes,
            2 => Written::Cancelled,
            _ => Written::Fenced,
        })
    }
}

/// `writes` as `job_writes.lua` reads them: each an operation and its
/// arguments, in order.
pub(super) fn write_args(writes: &[JobWrite]) -> Vec<String> {
    let mut args = Vec::with_capacity(writes.len() * 3);
    for write in writes {
        match write {
            JobWrite::Event { event_type, data } => {
                args.extend(["event".to_owned(), event_type.clone(), data.clone()]);
            }
            JobWrite::Progress { percent, step } => {
                let data = serde_json::json!({ "progress": percent, "step": step }).to_string();
                args.extend([
                    "progress".to_owned(),
                    EventType::TaskProgress.as_str().to_owned(),
                    data,
                    percent.to_string(),
                    step.clone(),
                ]);
            }
            JobWrite::SetState { key, value } => {
                args.extend(["state_set".to_owned(), key.clone(), value.clone()]);
            }
            JobWrite::DeleteState { key } => {
                args.extend(["state_delete".to_owned(), key.clone()]);
            }
        }
    }
    args
}
