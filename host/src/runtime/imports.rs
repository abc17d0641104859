//! The host side of the world's imports (`model`, `events`, `logging`, `state`,
//! `messages`):
//! checks the sandbox's budgets, converts WIT types to the model client's types
//! and forwards to the call's [`JobHost`]. The pure hooks have no host: model
//! calls are denied and state reads come back empty.

use super::bindings::spool::handler::{events, logging, messages, model, state, types};
use super::{ContentBlock, GuestState, ModelError, ModelReply, ModelRequest, Role, TaskUpdate};
use crate::models;

/// Event names the host writes itself; a guest may not forge them.
const RESERVED_EVENTS: &[&str] = &["task_started", "task_progress", "task_completed", "task_failed", "text_delta"];
const MAX_EVENT_TYPE_LEN: usize = 64;

impl types::Host for GuestState {}

impl GuestState {
    /// Takes one model call from the budget, or says why the guest may not call.
    fn take_model_call(&mut self) -> Result<std::sync::Arc<dyn super::JobHost>, ModelError> {
        let Some(host) = self.host.clone() else {
            return Err(ModelError::Denied("model calls are only available in `handle`".into()));
        };
        if self.model_calls_left == 0 {
            return Err(ModelError::Denied("this job used up its model-call budget".into()));
        }
        self.model_calls_left -= 1;
        Ok(host)
    }
}

impl model::Host for GuestState {
    async fn chat(&mut self, request: ModelRequest) -> Result<ModelReply, ModelError> {
        let host = self.take_model_call()?;
        let reply = host.chat(chat_request(request)).await.map_err(model_error)?;
        Ok(ModelReply {
            text: reply.text,
            model: reply.model,
            prompt_tokens: reply.prompt_tokens,
            completion_tokens: reply.completion_tokens,
            finish_reason: reply.finish_reason,
        })
    }

    async fn embed(&mut self, model: Option<String>, texts: Vec<String>) -> Result<Vec<Vec<f32>>, ModelError> {
        let host = self.take_model_call()?;
        host.embed(model, texts).await.map_err(model_error)
    }
}

impl events::Host for GuestState {
    async fn progress(&mut self, percent: u8, step: String) {
        if let Some(host) = &self.host {
            host.progress(percent.min(100), step).await;
        }
    }

    async fn emit(&mut self, event_type: String, data: String) {
        let valid_name = !event_type.is_empty()
            && event_type.len() <= MAX_EVENT_TYPE_LEN
            && event_type.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name || RESERVED_EVENTS.contains(&event_type.as_str()) {
            tracing::warn!(handler = %self.handler, job = %self.job_id, %event_type, "guest event refused: reserved or not lower_snake_case");
            return;
        }
        if serde_json::from_str::<serde_json::Value>(&data).is_err() {
            tracing::warn!(handler = %self.handler, job = %self.job_id, %event_type, "guest event refused: data is not JSON");
            return;
        }
        if let Some(host) = &self.host {
            host.emit(event_type, data).await;
        }
    }
}

impl logging::Host for GuestState {
    async fn log(&mut self, level: logging::Level, message: String) {
        let (handler, job) = (&self.handler, &self.job_id);
        match level {
            logging::Level::Trace => tracing::trace!(%handler, %job, "guest: {message}"),
            logging::Level::Debug => tracing::debug!(%handler, %job, "guest: {message}"),
            logging::Level::Info => tracing::info!(%handler, %job, "guest: {message}"),
            logging::Level::Warn => tracing::warn!(%handler, %job, "guest: {message}"),
            logging::Level::Error => tracing::error!(%handler, %job, "guest: {message}"),
        }
    }
}

impl state::Host for GuestState {
    async fn get(&mut self, key: String) -> Option<String> {
        match &self.host {
            Some(host) => host.state_get(key).await,
            None => None,
        }
    }

    async fn set(&mut self, key: String, value: String) {
        if let Some(host) = &self.host {
            host.state_set(key, value).await;
        }
    }

    async fn delete(&mut self, key: String) {
        if let Some(host) = &self.host {
            host.state_delete(key).await;
        }
    }
}

/// The pure hooks have no host and so no message.
const NO_MESSAGE: &str = "this hook drives no message (only `handle` may)";

impl messages::Host for GuestState {
    async fn message_id(&mut self) -> Option<String> {
        self.host.as_ref().and_then(|host| host.message_id())
    }

    async fn append_text(&mut self, text: String) -> Result<(), String> {
        match self.host.clone() {
            Some(host) => host.message_append_text(text).await,
            None => Err(NO_MESSAGE.into()),
        }
    }

    async fn add_content(&mut self, block: ContentBlock) -> Result<String, String> {
        match self.host.clone() {
            Some(host) => host.message_add_content(block).await,
            None => Err(NO_MESSAGE.into()),
        }
    }

    async fn start_task(&mut self, description: String) -> Result<String, String> {
        match self.host.clone() {
            Some(host) => host.message_start_task(description).await,
            None => Err(NO_MESSAGE.into()),
        }
    }

    async fn update_task(&mut self, task_id: String, update: TaskUpdate) -> Result<(), String> {
        match self.host.clone() {
            Some(host) => host.message_update_task(task_id, update).await,
            None => Err(NO_MESSAGE.into()),
        }
    }

    async fn complete(&mut self) -> Result<(), String> {
        match self.host.clone() {
            Some(host) => host.message_complete().await,
            None => Err(NO_MESSAGE.into()),
        }
    }
}

pub fn chat_request(request: ModelRequest) -> models::ChatRequest {
    models::ChatRequest {
        model: request.model,
        messages: request.messages.into_iter().map(|m| models::ChatMessage { role: role(m.role), content: m.content }).collect(),
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
        models::ModelError::RateLimited { retry_after, .. } => {
            ModelError::RateLimited(retry_after.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
        }
        models::ModelError::Unavailable(message) => ModelError::Unavailable(message),
        models::ModelError::Rejected { status, message } => ModelError::Rejected(format!("{status}: {message}")),
    }
}
