//! The job record: the `spool:job:{id}` hash as a typed value (its public JSON
//! shape is the API's).

use std::collections::HashMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Waiting,
    Active,
    /// Failed an attempt; waits for its retry time.
    Delayed,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "waiting" => Self::Waiting,
            "active" => Self::Active,
            "delayed" => Self::Delayed,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Active => "active",
            Self::Delayed => "delayed",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// The session message a job drives: set when the job is submitted (a session
/// task binds its first job) or when a parent passes it on (`take-message`).
/// The host never learns it from the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundMessage {
    pub session_id: String,
    pub message_id: String,
}

#[derive(Clone, Debug)]
pub struct JobRecord {
    pub id: String,
    pub queue: String,
    pub state: JobState,
    pub class: String,
    pub score: u8,
    pub priority: u8,
    pub user_id: String,
    pub user_tier: String,
    pub payload: String,
    pub message: Option<BoundMessage>,
    pub handler: String,
    pub handler_version: Option<String>,
    /// The consumer running (or that last ran) the job.
    pub worker: Option<String>,
    pub attempts: u32,
    pub progress: u8,
    pub step: Option<String>,
    pub result: Option<String>,
    pub blocks: Option<String>,
    pub error: Option<String>,
    /// Stable name of the last failure (`deadline`, `panic`, `rejected`, ...).
    pub error_kind: Option<String>,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub first_started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// When a cancel of the running job was accepted: nothing of the job
    /// changes after it.
    pub cancel_requested_at: Option<u64>,
}

impl JobRecord {
    /// `None` when the hash is absent (empty) or not a job record.
    pub fn from_fields(mut fields: HashMap<String, String>) -> Option<Self> {
        Self::from_lookup(|name| fields.remove(name))
    }

    /// The record from its fields' values, each asked for once by name;
    /// `None` when one it must have is missing or not a job record's.
    pub fn from_lookup(mut value: impl FnMut(&str) -> Option<String>) -> Option<Self> {
        let mut take = |name: &str| value(name).filter(|v| !v.is_empty());
        let number = |v: Option<String>| v.and_then(|s| s.parse::<u64>().ok());
        Some(Self {
            id: take("id")?,
            queue: take("queue")?,
            state: JobState::parse(&take("state")?)?,
            class: take("class").unwrap_or_default(),
            score: number(take("score")).unwrap_or(0) as u8,
            priority: number(take("priority")).unwrap_or(0) as u8,
            user_id: take("user_id").unwrap_or_default(),
            user_tier: take("user_tier").unwrap_or_default(),
            payload: take("payload").unwrap_or_else(|| "{}".into()),
            message: take("message_session").zip(take("message_id")).map(
                |(session_id, message_id)| BoundMessage {
                    session_id,
                    message_id,
                },
            ),
            handler: take("handler").unwrap_or_default(),
            handler_version: take("handler_version"),
            worker: take("worker"),
            attempts: number(take("attempts")).unwrap_or(0) as u32,
            progress: number(take("progress")).unwrap_or(0).min(100) as u8,
            step: take("step"),
            result: take("result"),
            blocks: take("blocks"),
            error: take("error"),
            error_kind: take("error_kind"),
            created_at: number(take("created_at")).unwrap_or(0),
            started_at: number(take("started_at")),
            first_started_at: number(take("first_started_at")),
            finished_at: number(take("finished_at")),
            cancel_requested_at: number(take("cancel_requested_at")),
        })
    }
}
