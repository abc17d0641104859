//! The model-call types a handler's `model` imports speak, independent of any
//! server protocol: a chat request and reply, and how a call failed. The
//! runtime converts the WIT types to these; the model clients of `spool-core`
//! send them over HTTP. Nothing here talks to a network.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub json_output: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    /// `None` uses the configured chat model.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub params: Params,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatReply {
    pub text: String,
    pub model: String,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub finish_reason: Option<String>,
}

impl ChatReply {
    pub fn empty(model: &str) -> Self {
        Self {
            text: String::new(),
            model: model.to_owned(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ModelError {
    /// 429, or a 403 that says it is a rate limit (some APIs answer bursts with
    /// 403; any other 403 is `Rejected`). `retry_after` comes from
    /// `retry-after-ms`, `retry-after` (seconds or HTTP date), or OpenAI's
    /// `x-ratelimit-reset-requests` / `x-ratelimit-reset-tokens` ("1s", "6m0s", "20ms").
    #[error("rate limited (HTTP {status}, retry after {retry_after:?}): {message}")]
    RateLimited {
        status: u16,
        retry_after: Option<Duration>,
        message: String,
    },
    /// Transient: 5xx, connect or timeout errors, a stream cut short or failing mid-way.
    #[error("model server unavailable: {0}")]
    Unavailable(String),
    /// Permanent: other 4xx, an unreadable response, or an exhausted quota.
    #[error("model server rejected the call (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
}

impl ModelError {
    /// The wait the server asked for, if it was a rate limit and said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ModelError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying the same call again later can succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ModelError::Rejected { .. })
    }
}
