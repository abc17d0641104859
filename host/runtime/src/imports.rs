//! The host side of the world's imports (`model`, `events`, `logging`, `state`,
//! `messages`, `jobs`): checks the sandbox's budgets, converts WIT types to the model client's types
//! and forwards to the call's [`JobHost`]. The pure hooks may only log: model
//! calls are denied, events dropped and state reads come back empty. Every
//! call counts against the job's caps; one past a cap is refused and marks
//! the whole call failed (`GuestFailure::CallCapExceeded`).

use super::bindings::spool::handler::{events, jobs, logging, messages, model, state, types};
use super::{
    CallCap, ContentBlock, GuestState, HostCallError, ModelError, ModelReply, ModelRequest, Role,
    TaskUpdate,
};
use crate::event_type::{self, EventType};
use crate::model as models;

/// Largest `data` of one custom event, in bytes.
pub const MAX_EVENT_DATA_BYTES: usize = 64 * 1024;

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
            self.cap_exceeded.get_or_insert(CallCap::Model);
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
            self.cap_exceeded.get_or_insert(CallCap::Host);
            return false;
        }
        self.host_calls_left -= 1;
        true
    }

    /// The host for a call that needs full access (events, state), if allowed.
    fn effect_host(&mut self) -> Option<std::sync::Arc<dyn super::JobHost>> {
        (self.take_host_call() && self.full_access).then(|| self.host.clone())
    }
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
            host.progress(percent.min(100), step).await;
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
        host.emit(event_type, data).await;
        Ok(())
    }
}

impl logging::Host for GuestState {
    async fn log(&mut self, level: logging::Level, message: String) {
        if !self.take_host_call() {
            return;
        }
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
            Some(host) => host.state_get(key).await,
            None => None,
        }
    }

    async fn set(&mut self, key: String, value: String) {
        if let Some(host) = self.effect_host() {
            host.state_set(key, value).await;
        }
    }

    async fn delete(&mut self, key: String) {
        if let Some(host) = self.effect_host() {
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
        Ok(self.job_host()?.message_append_text(text).await?)
    }

    async fn add_content(&mut self, block: ContentBlock) -> Result<String, String> {
        Ok(self.job_host()?.message_add_content(block).await?)
    }

    async fn start_task(&mut self, description: String) -> Result<String, String> {
        Ok(self.job_host()?.message_start_task(description).await?)
    }

    async fn update_task(&mut self, task_id: String, update: TaskUpdate) -> Result<(), String> {
        Ok(self
            .job_host()?
            .message_update_task(task_id, update)
            .await?)
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
