//! Why an attempt failed, as one stable lower_snake_case name: stored as the
//! job's `error_kind`, sent in its `task_failed` events, and matched by
//! clients. Owns the names only; deciding retries is the worker's business.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    // The sandbox stopped the guest (see `GuestFailure`).
    Deadline,
    MemoryExhausted,
    Panic,
    StackOverflow,
    Trap,
    OutputTooLarge,
    CallCapExceeded,
    /// A write past one of the sandbox's size quotas (state, events, message).
    QuotaExceeded,
    Instantiate,
    // The guest returned an error.
    /// `job-error::reject`: no more attempts.
    Rejected,
    /// `job-error::retry`.
    RetryRequested,
    // The host could not finish the attempt.
    /// `handle` returned a result that is not JSON.
    InvalidResult,
    /// The job's handler is not installed on the instance that claimed it.
    HandlerMissing,
    /// Its workers kept vanishing mid-run, past the attempt limit.
    Abandoned,
    /// A follow-up job could not be queued.
    FollowUpFailed,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Deadline => "deadline",
            FailureKind::MemoryExhausted => "memory_exhausted",
            FailureKind::Panic => "panic",
            FailureKind::StackOverflow => "stack_overflow",
            FailureKind::Trap => "trap",
            FailureKind::OutputTooLarge => "output_too_large",
            FailureKind::CallCapExceeded => "call_cap_exceeded",
            FailureKind::QuotaExceeded => "quota_exceeded",
            FailureKind::Instantiate => "instantiate",
            FailureKind::Rejected => "rejected",
            FailureKind::RetryRequested => "retry_requested",
            FailureKind::InvalidResult => "invalid_result",
            FailureKind::HandlerMissing => "handler_missing",
            FailureKind::Abandoned => "abandoned",
            FailureKind::FollowUpFailed => "follow_up_failed",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for kind in [
            FailureKind::Deadline,
            FailureKind::MemoryExhausted,
            FailureKind::CallCapExceeded,
            FailureKind::QuotaExceeded,
            FailureKind::FollowUpFailed,
        ] {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
    }
}
