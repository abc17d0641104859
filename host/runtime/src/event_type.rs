//! The names the host owns on a job's event stream. One type, used by Rust and
//! handed to the queue's Lua scripts as arguments, so no script spells a name
//! of its own; the WIT doc of `events.emit` lists the same names.
//!
//! Owns the names and which of them end a job; it writes nothing anywhere.

use serde::{Deserialize, Serialize};

/// A lifecycle event the host writes on a job's stream (`job_events:{id}`).
/// Guests may not emit these, nor any other name starting with `task_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    TaskQueued,
    TaskStarted,
    TaskProgress,
    TextDelta,
    TaskRetrying,
    TaskRequeued,
    TaskCompleted,
    TaskFailed,
    TaskCancelled,
    FollowUpQueued,
}

/// Events a job's stream keeps; older ones are trimmed. Also the cap of a
/// session message's stream.
pub const MAX_STREAM_EVENTS: usize = 1000;

/// Longest name a guest may give a custom event, in bytes.
pub const MAX_CUSTOM_NAME_BYTES: usize = 64;

/// Prefix reserved for the host's lifecycle events, present and future.
const RESERVED_PREFIX: &str = "task_";

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::TaskQueued,
        EventType::TaskStarted,
        EventType::TaskProgress,
        EventType::TextDelta,
        EventType::TaskRetrying,
        EventType::TaskRequeued,
        EventType::TaskCompleted,
        EventType::TaskFailed,
        EventType::TaskCancelled,
        EventType::FollowUpQueued,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TaskQueued => "task_queued",
            EventType::TaskStarted => "task_started",
            EventType::TaskProgress => "task_progress",
            EventType::TextDelta => "text_delta",
            EventType::TaskRetrying => "task_retrying",
            EventType::TaskRequeued => "task_requeued",
            EventType::TaskCompleted => "task_completed",
            EventType::TaskFailed => "task_failed",
            EventType::TaskCancelled => "task_cancelled",
            EventType::FollowUpQueued => "follow_up_queued",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether the host owns `name`: a guest may not emit it.
    pub fn is_reserved(name: &str) -> bool {
        name.starts_with(RESERVED_PREFIX) || Self::parse(name).is_some()
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` is well formed for a custom event: lower_snake_case ASCII,
/// 1 to [`MAX_CUSTOM_NAME_BYTES`] bytes. Says nothing of reservation.
pub fn is_well_formed(name: &str) -> bool {
    (1..=MAX_CUSTOM_NAME_BYTES).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_is_reserved() {
        for event in EventType::ALL {
            assert_eq!(EventType::parse(event.as_str()), Some(event));
            assert!(EventType::is_reserved(event.as_str()));
            let json = serde_json::to_string(&event).unwrap();
            assert_eq!(json, format!("\"{event}\""));
        }
        assert!(EventType::is_reserved("task_anything"));
        assert!(!EventType::is_reserved("outline_generated"));
    }

    #[test]
    fn custom_names_are_lower_snake_case_and_bounded() {
        assert!(is_well_formed("outline_generated"));
        assert!(is_well_formed("v2_ready"));
        for bad in ["", "Outline", "with space", "dash-ed", "é"] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
        assert!(is_well_formed(&"a".repeat(MAX_CUSTOM_NAME_BYTES)));
        assert!(!is_well_formed(&"a".repeat(MAX_CUSTOM_NAME_BYTES + 1)));
    }
}
