//! How an attempt's outcome is recorded: the job's new state, where it is
//! indexed, how long it is kept, its event, and how its session message ends
//! with it. Pure data for `finish.lua`; writes nothing itself.

use super::{JobRecord, JobState, QueueKeys, Retention};
use spool_runtime::{EventType, FailureKind};

/// How an attempt ended, as the queue records it.
pub enum Outcome {
    Completed {
        result: String,
        blocks: String,
        handler_version: String,
        /// Ids of the follow-up jobs it queued (later stages of its task):
        /// its `task_completed` names them, and then ends no stream.
        follow_ups: Vec<String>,
    },
    /// The job will run again at `retry_at_ms`.
    Retry {
        error: String,
        /// Stored as `error_kind`.
        kind: FailureKind,
        retry_at_ms: u64,
    },
    Failed {
        error: String,
        kind: FailureKind,
    },
    /// A client cancelled the job while it ran.
    Cancelled,
}

impl Outcome {
    /// How the metrics count this end.
    pub fn end(&self) -> crate::metrics::AttemptEnd {
        use crate::metrics::AttemptEnd;
        match self {
            Self::Completed { .. } => AttemptEnd::Completed,
            Self::Retry { kind, .. } => AttemptEnd::Retried(*kind),
            Self::Failed { kind, .. } => AttemptEnd::Failed(*kind),
            Self::Cancelled => AttemptEnd::Cancelled,
        }
    }
}

/// What recording an outcome writes: the job's new state, where it is
/// indexed, how long it is kept, and its event.
pub(super) struct Settlement {
    pub(super) state: JobState,
    /// Score in the state's sorted set: when it finished, or when it retries.
    pub(super) score: u64,
    /// History length to keep (0: the set is not a history).
    pub(super) history: u32,
    /// Expiry of the job's keys (0: keep).
    pub(super) ttl_secs: u64,
    pub(super) event_type: EventType,
    pub(super) event: serde_json::Value,
    pub(super) fields: Vec<(&'static str, String)>,
    /// How the session message the job drives ends with it.
    pub(super) message: MessageEnding,
}

/// How a job's outcome ends its session message (see `message_end.lua`).
pub(super) enum MessageEnding {
    Completed,
    /// The job runs again: the attempt's open tasks fail, the message streams on.
    Retrying(String),
    Error(String),
}

impl MessageEnding {
    pub(super) fn as_str(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Retrying(_) => "retrying",
            Self::Error(_) => "error",
        }
    }

    pub(super) fn error(&self) -> &str {
        match self {
            Self::Completed => "",
            Self::Retrying(error) | Self::Error(error) => error,
        }
    }
}

/// The error a cancelled job's message ends in.
const CANCELLED_MESSAGE: &str = "the job was cancelled";

impl Settlement {
    pub(super) fn of(
        record: &JobRecord,
        outcome: &Outcome,
        retention: Retention,
        now: u64,
    ) -> Self {
        let attempt = record.attempts;
        let mut settlement = match outcome {
            Outcome::Completed {
                result,
                blocks,
                handler_version,
                follow_ups,
            } => {
                let result_json: serde_json::Value =
                    serde_json::from_str(result).unwrap_or(serde_json::Value::Null);
                let duration_ms = now.saturating_sub(record.started_at.unwrap_or(now));
                Settlement {
                    state: JobState::Completed,
                    score: now,
                    history: retention.history,
                    ttl_secs: retention.completed_secs,
                    event_type: EventType::TaskCompleted,
                    event: if follow_ups.is_empty() {
                        serde_json::json!({ "result": result_json, "duration_ms": duration_ms, "attempt": attempt })
                    } else {
                        serde_json::json!({ "result": result_json, "duration_ms": duration_ms, "attempt": attempt, "followUps": follow_ups })
                    },
                    fields: vec![
                        ("result", result.clone()),
                        ("blocks", blocks.clone()),
                        ("handler_version", handler_version.clone()),
                        ("progress", "100".into()),
                    ],
                    message: MessageEnding::Completed,
                }
            }
            Outcome::Retry {
                error,
                kind,
                retry_at_ms,
            } => Settlement {
                state: JobState::Delayed,
                score: *retry_at_ms,
                history: 0,
                ttl_secs: 0,
                event_type: EventType::TaskFailed,
                event: serde_json::json!({ "error": error, "error_kind": kind, "attempt": attempt, "final": false, "retry_at_ms": retry_at_ms }),
                fields: vec![("error", error.clone()), ("error_kind", kind.to_string())],
                message: MessageEnding::Retrying(format!("attempt failed, will retry: {error}")),
            },
            Outcome::Failed { error, kind } => Settlement {
                state: JobState::Failed,
                score: now,
                history: retention.history,
                ttl_secs: retention.failed_secs,
                event_type: EventType::TaskFailed,
                event: serde_json::json!({ "error": error, "error_kind": kind, "attempt": attempt, "final": true }),
                fields: vec![("error", error.clone()), ("error_kind", kind.to_string())],
                message: MessageEnding::Error(error.clone()),
            },
            Outcome::Cancelled => Settlement {
                state: JobState::Cancelled,
                score: now,
                history: retention.history,
                ttl_secs: retention.failed_secs,
                event_type: EventType::TaskCancelled,
                event: serde_json::json!({ "previous_state": "active", "attempt": attempt }),
                fields: vec![("error", "cancelled by request".to_owned())],
                message: MessageEnding::Error(CANCELLED_MESSAGE.to_owned()),
            },
        };
        // A failed attempt records the version that ran it too (the worker sets it).
        if let (false, Some(version)) = (
            matches!(outcome, Outcome::Completed { .. }),
            &record.handler_version,
        ) {
            settlement.fields.push(("handler_version", version.clone()));
        }
        settlement
    }

    /// The sorted set the job is indexed in: its history, or the retry schedule.
    pub(super) fn zset<'a>(&self, keys: &'a QueueKeys) -> &'a str {
        match self.state {
            JobState::Completed => &keys.completed,
            JobState::Delayed => &keys.delayed,
            _ => &keys.failed,
        }
    }
}
