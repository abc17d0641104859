//! An OpenAI-compatible front door: `POST /v1/chat/completions` (streamed as
//! SSE `data:` chunks ending `data: [DONE]`, or whole) and `POST
//! /v1/embeddings`, so any OpenAI SDK can use spool as a shared, prioritized,
//! rate-limited gateway. Each request is a job: queued, ordered by the
//! queue's priority rule (Wasm), run by its handler, paced by the shared
//! limiter and retried like any other; the answer is rewritten into OpenAI's
//! shapes (`id`, `object`, `choices`, `usage`; errors `{error: {message,
//! type, code}}`). Auth is spool's: `Authorization: Bearer <spool key>`.
//!
//! Owns the translation between OpenAI's wire format and spool's jobs. It
//! must not call the model itself nor read more of a job's result than the
//! built-in handlers document.

pub mod chat;
pub mod embeddings;

use super::error::ApiError;

/// Model names that mean "the backend's configured model" rather than a
/// name to pass on.
const DEFAULT_MODEL_NAMES: &[&str] = &["default", "spool"];

/// The model to ask the backend for: `None` for the configured one.
fn backend_model(model: &str) -> Option<String> {
    (!DEFAULT_MODEL_NAMES.contains(&model)).then(|| model.to_owned())
}

/// OpenAI's `model`: 1 to 256 characters.
fn checked_model(model: &str) -> Result<(), ApiError> {
    if model.is_empty() || model.chars().count() > 256 {
        return Err(ApiError::invalid(
            "invalid_model",
            "model must be 1 to 256 characters",
        ));
    }
    Ok(())
}

/// OpenAI's `user`: when given, a user id like spool's (1 to 128 printable characters).
fn checked_user(user: Option<String>) -> Result<String, ApiError> {
    match user {
        Some(user) => {
            super::jobs::checked_user_id(&user)?;
            Ok(user)
        }
        None => Ok(String::new()),
    }
}

/// Seconds since the epoch, OpenAI's `created`.
fn created_now() -> u64 {
    spool_core::queue::now_ms() / 1000
}

/// Whitespace-separated words: the usage figure spool can give without the
/// backend's tokenizer (embedding backends do not report tokens).
fn words(texts: &[String]) -> u64 {
    texts
        .iter()
        .map(|text| text.split_whitespace().count() as u64)
        .sum()
}
