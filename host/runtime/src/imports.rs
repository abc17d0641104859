//! The host side of the world's imports (`model`, `events`, `logging`, `state`,
//! `messages`, `jobs`): checks the sandbox's budgets, converts WIT types to the model client's types
//! and forwards to the call's [`JobHost`]. The pure hooks may only log: model
//! calls are denied, events dropped and state reads come back empty. Every
//! call counts against the job's caps; one past a cap is refused and marks
//! the whole call failed (`GuestFailure::CallCapExceeded`).
//!
//! Every write is also size-checked against the sandbox's [`Quotas`](crate::Quotas),
//! because the memory cap alone would let one job push gigabytes into Redis
//! or the log. The rule, also written in the WIT docs: a write over a
//! per-call cap is refused with an error the guest sees where the call has
//! an error type; `state.set` has none, so it fails the job
//! (`GuestFailure::QuotaExceeded`); log lines and progress steps are cut with
//! a marker instead (they are diagnostics, not data). A write past a per-job
//! total is refused and fails the job, like a call past a call cap: a guest
//! ignoring the refusal must not be able to keep trying.

use std::borrow::Cow;

use super::bindings::spool::handler::{events, jobs, logging, messages, model, state, types};
use super::{
    Breach, CallCap, ContentBlock, GuestState, HostCallError, ModelError, ModelReply, ModelRequest,
    Quota, Role, TaskStart, TaskUpdate,
};
use crate::event_type::{self, EventType};
use crate::model as models;

/// Largest `data` of one custom event, in bytes.
pub const MAX_EVENT_DATA_BYTES: usize = 64 * 1024;
/// Longest state key, in bytes: keys name stages, not data.
pub const MAX_STATE_KEY_BYTES: usize = 1024;
/// Longest short text: a progress step, a task's description, step or error.
pub const MAX_LABEL_BYTES: usize = 4 * 1024;

/// `text` cut to at most `max` bytes (at a character boundary) followed by a
/// marker saying how many bytes went, or `text` itself when it fits.
pub fn cut_with_marker(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!(
        "{}… [cut: {} more bytes]",
        &text[..end],
        text.len() - end
    ))
}

impl types::Host for GuestState {}

impl GuestState {
    /// Takes one model call from the budget, or says why the guest may not
    /// call. Asking beyond the cap also marks the call failed.
    fn take_model_call(&mut self) -> Result<std::sync::Arc<dyn super::JobHost>, ModelError> {
        if !self.full_access {
            return Err(ModelError::Denied(
                "model calls are only available in `handle`".into(),
            ));
        }
        if self.model_calls_left == 0 {
            self.breach.get_or_insert(Breach::Cap(CallCap::Model));
            return Err(ModelError::Denied(format!(
                "this job used up its budget of {} model calls",
                self.limits.max_model_calls
            )));
        }
        self.model_calls_left -= 1;
        Ok(self.host.clone())
    }

    /// Takes one host call (events, logging, state) from the budget. False:
    /// over the cap; the call is ignored and the job will fail.
    fn take_host_call(&mut self) -> bool {
        if self.host_calls_left == 0 {
            self.breach.get_or_insert(Breach::Cap(CallCap::Host));
            return false;
        }
        self.host_calls_left -= 1;
        true
    }

    /// The host for a call that needs full access (events, state), if allowed.
    fn effect_host(&mut self) -> Option<std::sync::Arc<dyn super::JobHost>> {
        (self.take_host_call() && self.full_access).then(|| self.host.clone())
    }

    /// Marks the call failed for going past `quota` (the first breach wins).
    fn over_quota(&mut self, quota: Quota, bytes: usize, limit: usize) {
        tracing::warn!(handler = %self.handler, job = %self.job_id, %quota, bytes, limit, "guest write over its quota; the job fails");
        self.breach.get_or_insert(Breach::Quota {
            quota,
            bytes,
            limit,
        });
    }

    /// Takes `bytes` of event data from the job's quota; false (and the
    /// call fails) when they do not fit.
    fn take_event_bytes(&mut self, bytes: usize) -> bool {
        let limit = self.limits.quotas.max_event_bytes;
        let total = self.written.events.saturating_add(bytes);
        if total > limit {
            self.over_quota(Quota::Events, total, limit);
            return false;
        }
        self.written.events = total;
        true
    }

    /// Checks `bytes` more of message data against the job's quota (taken
    /// only once the write succeeded, see [`Self::message_written`]).
    fn check_message_bytes(&mut self, bytes: usize) -> Result<(), HostCallError> {
        let limit = self.limits.quotas.max_message_bytes;
        let total = self.written.message.saturating_add(bytes);
        if total > limit {
            self.over_quota(Quota::Message, total, limit);
            return Err(HostCallError::Refused(format!(
                "this job's writes to its message would reach {total} bytes; the cap is {limit} (max_message_bytes), and the job fails"
            )));
        }
        Ok(())
    }

    fn message_written<T>(
        &mut self,
        bytes: usize,
        result: Result<T, HostCallError>,
    ) -> Result<T, HostCallError> {
        if result.is_ok() {
            self.written.message = self.written.message.saturating_add(bytes);
        }
        result
    }
}

/// One message write over its per-call cap: the guest is told, the job goes on.
fn too_large(what: &str, bytes: usize, limit: usize, setting: &str) -> HostCallError {
    HostCallError::Refused(format!(
        "{what} is {bytes} bytes; the cap is {limit} ({setting})"
    ))
}

/// A short text over [`MAX_LABEL_BYTES`].
fn check_label(what: &str, text: &str) -> Result<(), HostCallError> {
    if text.len() > MAX_LABEL_BYTES {
        return Err(too_large(
            what,
            text.len(),
            MAX_LABEL_BYTES,
            "a fixed limit",
        ));
    }
    Ok(())
}

impl model::Host for GuestState {
    async fn chat(&mut self, request: ModelRequest) -> Result<ModelReply, ModelError> {
        let host = self.take_model_call()?;
        let reply = host
            .chat(chat_request(request))
            .await
            .map_err(model_error)?;
        Ok(ModelReply {
            text: reply.text,
            model: reply.model,
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            finish_reason: reply.finish_reason,
        })
    }

    async fn embed(
        &mut self,
        model: Option<String>,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let host = self.take_model_call()?;
        host.embed(model, texts).await.map_err(model_error)
    }
}

impl events::Host for GuestState {
    async fn progress(&mut self, percent: u8, step: String) {
        if let Some(host) = self.effect_host() {
            let step = cut_with_marker(&step, MAX_LABEL_BYTES).into_owned();
            if self.take_event_bytes(step.len()) {
                host.progress(percent.min(100), step).await;
            }
        }
    }

    async fn emit(&mut self, event_type: String, data: String) -> Result<(), events::EmitError> {
        use events::EmitError;
        let host = self.effect_host().ok_or(EmitError::Denied)?;
        let refusal = if !event_type::is_well_formed(&event_type) {
            Some(EmitError::InvalidName)
        } else if EventType::is_reserved(&event_type) {
            Some(EmitError::ReservedName)
        } else if data.len() > MAX_EVENT_DATA_BYTES {
            Some(EmitError::TooLarge)
        } else if serde_json::from_str::<serde::de::IgnoredAny>(&data).is_err() {
            Some(EmitError::InvalidData)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            tracing::warn!(handler = %self.handler, job = %self.job_id, %event_type, ?refusal, "guest event refused");
            return Err(refusal);
        }
        if !self.take_event_bytes(data.len()) {
            return Err(EmitError::Denied);
        }
        host.emit(event_type, data).await;
        Ok(())
    }
}

impl logging::Host for GuestState {
    async fn log(&mut self, level: logging::Level, message: String) {
        if !self.take_host_call() {
            return;
        }
        let quotas = self.limits.quotas;
        if self.written.log >= quotas.max_log_bytes {
            // Logs are diagnostics: past the quota they are dropped, said once.
            if !std::mem::replace(&mut self.written.log_dropped, true) {
                let note = format!(
                    "guest log output reached {} bytes (max_log_bytes); later lines of this call are dropped",
                    quotas.max_log_bytes
                );
                tracing::warn!(handler = %self.handler, job = %self.job_id, "{note}");
                self.host.log(logging::Level::Warn, &note);
            }
            return;
        }
        let message = cut_with_marker(&message, quotas.max_log_line_bytes);
        self.written.log = self.written.log.saturating_add(message.len());
        let (handler, job) = (&self.handler, &self.job_id);
        match level {
            logging::Level::Trace => tracing::trace!(%handler, %job, "guest: {message}"),
            logging::Level::Debug => tracing::debug!(%handler, %job, "guest: {message}"),
            logging::Level::Info => tracing::info!(%handler, %job, "guest: {message}"),
            logging::Level::Warn => tracing::warn!(%handler, %job, "guest: {message}"),
            logging::Level::Error => tracing::error!(%handler, %job, "guest: {message}"),
        }
        self.host.log(level, &message);
    }
}

impl state::Host for GuestState {
    async fn get(&mut self, key: String) -> Option<String> {
        match self.effect_host() {
            // No key that long can have been stored.
            Some(_) if key.len() > MAX_STATE_KEY_BYTES => None,
            Some(host) => host.state_get(key).await,
            None => None,
        }
    }

    /// `set` returns nothing, so a write over a cap cannot be refused with
    /// an error: it is not made, and the job fails (`quota_exceeded`).
    async fn set(&mut self, key: String, value: String) {
        let Some(host) = self.effect_host() else {
            return;
        };
        let quotas = self.limits.quotas;
        if key.len() > MAX_STATE_KEY_BYTES {
            return self.over_quota(Quota::StateKey, key.len(), MAX_STATE_KEY_BYTES);
        }
        if value.len() > quotas.max_state_value_bytes {
            return self.over_quota(Quota::StateValue, value.len(), quotas.max_state_value_bytes);
        }
        // What the state holds counts, earlier attempts' writes included: it
        // is kept across retries.
        let mut sizes = match self.written.state.take() {
            Some(sizes) => sizes,
            None => StateSizes::new(host.state_sizes().await),
        };
        let entry = key.len() + value.len();
        let total = sizes.total - sizes.of(&key) + entry;
        if total > quotas.max_state_bytes {
            self.written.state = Some(sizes);
            return self.over_quota(Quota::State, total, quotas.max_state_bytes);
        }
        sizes.set(key.clone(), entry);
        self.written.state = Some(sizes);
        host.state_set(key, value).await;
    }

    async fn delete(&mut self, key: String) {
        if let Some(host) = self.effect_host() {
            if key.len() > MAX_STATE_KEY_BYTES {
                return;
            }
            if let Some(sizes) = self.written.state.as_mut() {
                sizes.remove(&key);
            }
            host.state_delete(key).await;
        }
    }
}

impl GuestState {
    /// The host for a `messages`/`jobs` call, or why there is none: a pure
    /// hook, or a job over its host-call cap.
    fn job_host(&mut self) -> Result<std::sync::Arc<dyn super::JobHost>, HostCallError> {
        if !self.take_host_call() {
            return Err(HostCallError::OverBudget);
        }
        if !self.full_access {
            return Err(HostCallError::HandleOnly);
        }
        Ok(self.host.clone())
    }
}

impl messages::Host for GuestState {
    async fn message_id(&mut self) -> Option<String> {
        self.job_host().ok()?.message_id()
    }

    async fn append_text(&mut self, text: String) -> Result<(), String> {
        let host = self.job_host()?;
        let bytes = text.len();
        let limit = self.limits.quotas.max_message_write_bytes;
        if bytes > limit {
            return Err(too_large("the text", bytes, limit, "max_message_write_bytes").into());
        }
        self.check_message_bytes(bytes)?;
        let result = host.message_append_text(text).await;
        Ok(self.message_written(bytes, result)?)
    }

    async fn add_content(&mut self, block: ContentBlock) -> Result<String, String> {
        let host = self.job_host()?;
        let bytes = block_bytes(&block);
        let limit = self.limits.quotas.max_message_write_bytes;
        if bytes > limit {
            return Err(too_large(
                "the block (as JSON)",
                bytes,
                limit,
                "max_message_write_bytes",
            )
            .into());
        }
        self.check_message_bytes(bytes)?;
        let result = host.message_add_content(block).await;
        Ok(self.message_written(bytes, result)?)
    }

    async fn start_task(&mut self, description: String) -> Result<String, String> {
        let host = self.job_host()?;
        check_label("the description", &description)?;
        let bytes = description.len();
        self.check_message_bytes(bytes)?;
        let result = host.message_start_task(description).await;
        Ok(self.message_written(bytes, result)?)
    }

    async fn start_task_with(&mut self, start: TaskStart) -> Result<String, String> {
        let host = self.job_host()?;
        check_label("the description", &start.description)?;
        check_label(
            "the task type",
            start.task_type.as_deref().unwrap_or_default(),
        )?;
        let bytes = start.description.len()
            + start.task_type.as_ref().map_or(0, String::len)
            + start.id.as_ref().map_or(0, String::len);
        self.check_message_bytes(bytes)?;
        let result = host.message_start_task_with(start).await;
        Ok(self.message_written(bytes, result)?)
    }

    async fn update_task(&mut self, task_id: String, update: TaskUpdate) -> Result<(), String> {
        let host = self.job_host()?;
        check_label("the step", update.step.as_deref().unwrap_or_default())?;
        check_label("the error", update.error.as_deref().unwrap_or_default())?;
        let block = update.result.as_ref().map(block_bytes).unwrap_or(0);
        let limit = self.limits.quotas.max_message_write_bytes;
        if block > limit {
            return Err(too_large(
                "the result block (as JSON)",
                block,
                limit,
                "max_message_write_bytes",
            )
            .into());
        }
        let bytes = block
            + update.step.as_ref().map_or(0, String::len)
            + update.error.as_ref().map_or(0, String::len);
        self.check_message_bytes(bytes)?;
        let result = host.message_update_task(task_id, update).await;
        Ok(self.message_written(bytes, result)?)
    }

    async fn complete(&mut self) -> Result<(), String> {
        Ok(self.job_host()?.message_complete().await?)
    }
}

impl jobs::Host for GuestState {
    async fn follow_up(
        &mut self,
        queue: String,
        payload: String,
        take_message: bool,
    ) -> Result<String, String> {
        let host = self.job_host()?;
        // A follow-up is output too: it may not be larger than a job's output.
        if payload.len() > self.limits.max_output_bytes {
            return Err(format!(
                "the follow-up's payload is over {} bytes",
                self.limits.max_output_bytes
            ));
        }
        if serde_json::from_str::<serde_json::Value>(&payload).is_err() {
            return Err("the follow-up's payload is not JSON".into());
        }
        Ok(host.follow_up(queue, payload, take_message)?)
    }
}

/// Bytes (key + value) of each entry of a job's state, and their sum.
#[derive(Debug, Default)]
pub(crate) struct StateSizes {
    entries: std::collections::HashMap<String, usize>,
    total: usize,
}

impl StateSizes {
    fn new(entries: std::collections::HashMap<String, usize>) -> Self {
        let total = entries.values().sum();
        Self { entries, total }
    }

    fn of(&self, key: &str) -> usize {
        self.entries.get(key).copied().unwrap_or(0)
    }

    fn set(&mut self, key: String, bytes: usize) {
        self.total = self.total - self.of(&key) + bytes;
        self.entries.insert(key, bytes);
    }

    fn remove(&mut self, key: &str) {
        self.total -= self.entries.remove(key).unwrap_or(0);
    }
}

/// Bytes of a block as the message store keeps it (JSON).
fn block_bytes(block: &ContentBlock) -> usize {
    crate::content::block_to_json(block).to_string().len()
}

pub fn chat_request(request: ModelRequest) -> models::ChatRequest {
    models::ChatRequest {
        model: request.model,
        messages: request
            .messages
            .into_iter()
            .map(|m| models::ChatMessage {
                role: role(m.role),
                content: m.content,
            })
            .collect(),
        params: models::Params {
            temperature: request.params.temperature,
            top_p: request.params.top_p,
            max_tokens: request.params.max_tokens,
            stop: request.params.stop,
            json_output: request.params.json_output,
        },
    }
}

fn role(role: Role) -> models::Role {
    match role {
        Role::System => models::Role::System,
        Role::User => models::Role::User,
        Role::Assistant => models::Role::Assistant,
        Role::Tool => models::Role::Tool,
    }
}

pub fn model_error(error: models::ModelError) -> ModelError {
    match error {
        models::ModelError::RateLimited { retry_after, .. } => ModelError::RateLimited(
            retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ),
        models::ModelError::Unavailable(message) => ModelError::Unavailable(message),
        models::ModelError::Rejected { status, message } => {
            ModelError::Rejected(format!("{status}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_with_marker;

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_a_marker() {
        assert_eq!(cut_with_marker("short", 16), "short");
        assert_eq!(cut_with_marker("abcdefgh", 4), "abcd… [cut: 4 more bytes]");
        // `é` is two bytes: the cut falls before it, never inside it.
        assert_eq!(cut_with_marker("abcé", 4), "abc… [cut: 2 more bytes]");
    }
}
