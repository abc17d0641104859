//! `POST /v1/chat/completions`: an OpenAI chat completion as a job of the
//! `chat` queue. The messages become the chat handler's payload (system
//! messages its `system`, the last user message its `prompt`, the rest its
//! `conversationHistory`); the job's `text_delta` events become stream
//! chunks and its result the completion.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::super::AppState;
use super::super::error::{ApiError, ApiJson, ErrorBody, ErrorDetail};
use super::super::job_view::CHAT_QUEUE;
use super::super::job_wait;
use super::super::jobs::{as_caller, checked_priority};
use super::{backend_model, checked_model, checked_user, created_now};
use spool_core::access::Identity;
use spool_core::events::JobEvents;
use spool_core::follow::Follower;
use spool_core::intake::Submission;
use spool_core::queue::{JobRecord, JobState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// A message's content: text, or text parts.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ChatContent {
    Text(String),
    Parts(Vec<ChatTextPart>),
}

#[derive(Deserialize, ToSchema)]
pub struct ChatTextPart {
    /// Read only to refuse other part types (images, audio).
    #[serde(rename = "type")]
    #[allow(dead_code)]
    kind: ChatTextPartKind,
    #[schema(max_length = 32000)]
    text: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatTextPartKind {
    Text,
}

impl ChatContent {
    fn text(&self) -> String {
        match self {
            ChatContent::Text(text) => text.clone(),
            ChatContent::Parts(parts) => parts.iter().map(|part| part.text.as_str()).collect(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
pub struct ChatMessageIn {
    role: ChatRole,
    content: Option<ChatContent>,
}

#[derive(Deserialize, ToSchema)]
pub struct ChatStreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// OpenAI's chat completion request (other OpenAI fields are accepted and
/// ignored), plus spool's `priority` and `user_tier`.
#[derive(Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// Passed to the backend; `default` (or `spool`) means its configured model.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    /// The last one must be a non-empty `user` message.
    #[schema(min_items = 1, max_items = 1000)]
    messages: Vec<ChatMessageIn>,
    #[serde(default)]
    stream: Option<bool>,
    stream_options: Option<ChatStreamOptions>,
    temperature: Option<f32>,
    #[schema(minimum = 0)]
    max_tokens: Option<u32>,
    #[schema(minimum = 0)]
    max_completion_tokens: Option<u32>,
    /// The end user; a key bound to a tenant replaces it.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    user: Option<String>,
    /// spool's priority, 1..10 (default 5).
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 10)]
    priority: Option<serde_json::Number>,
    /// The user's class for the queue's rule (`vip`, `paying`, `new`, ...).
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_tier: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChatUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ChatAnswerMessage {
    role: &'static str,
    content: String,
}

#[derive(Serialize, ToSchema)]
pub struct ChatChoice {
    index: u32,
    message: ChatAnswerMessage,
    finish_reason: &'static str,
}

/// OpenAI's `chat.completion`; `id` is `chatcmpl-` + the spool job id.
#[derive(Serialize, ToSchema)]
pub struct ChatCompletion {
    id: String,
    #[schema(example = "chat.completion")]
    object: &'static str,
    created: u64,
    model: String,
    choices: Vec<ChatChoice>,
    usage: ChatUsage,
}

/// A chat completion through spool's queue, priorities, handler and limiter.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The completion, or with `stream: true` SSE `data:` chunks (`chat.completion.chunk`) ending `data: [DONE]`",
            content((ChatCompletion = "application/json"), (String = "text/event-stream"))),
        (status = 422, description = "A field is invalid, or the handler refused the job", body = ErrorBody),
        (status = 429, description = "The queue is full", body = ErrorBody),
        (status = 502, description = "The job failed (its error is named)", body = ErrorBody),
        (status = 504, description = "The job did not finish in time; it goes on", body = ErrorBody)))]
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: ChatCompletionRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    let streaming = request.stream.unwrap_or(false);
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|options| options.include_usage);
    let requested_model = request.model.clone();
    let submission = as_caller(&caller, submission(request)?)?;
    let accepted = state.intake.submit(CHAT_QUEUE, &submission).await?;
    let id = format!("chatcmpl-{}", accepted.id);
    if streaming {
        let follower = job_wait::follow(&state, &caller, &accepted.id).await?;
        let chunks = Chunks {
            state,
            caller,
            follower,
            job_id: accepted.id,
            id,
            model: requested_model,
            created: created_now(),
            include_usage,
            phase: Phase::Start,
            streamed: StreamedAnswer::default(),
        };
        return Ok(Sse::new(chunks.into_stream())
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let record = job_wait::completed(&state, &caller, &accepted.id).await?;
    let answer = Answer::of(&record, &requested_model);
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created: created_now(),
        model: answer.model,
        choices: vec![ChatChoice {
            index: 0,
            message: ChatAnswerMessage {
                role: "assistant",
                content: answer.text,
            },
            finish_reason: "stop",
        }],
        usage: answer.usage,
    })
    .into_response())
}

/// The chat handler's payload from OpenAI's messages.
fn submission(request: ChatCompletionRequest) -> Result<Submission, ApiError> {
    checked_model(&request.model)?;
    let mut system = Vec::new();
    let mut turns = Vec::new();
    for message in &request.messages {
        let text = message
            .content
            .as_ref()
            .map(ChatContent::text)
            .unwrap_or_default();
        match message.role {
            ChatRole::System | ChatRole::Developer => system.push(text),
            ChatRole::User => turns.push(json!({"role": "user", "content": text})),
            ChatRole::Assistant => turns.push(json!({"role": "assistant", "content": text})),
            ChatRole::Tool => turns.push(json!({"role": "tool", "content": text})),
        }
    }
    let last_is_user = request
        .messages
        .last()
        .is_some_and(|message| message.role == ChatRole::User);
    let prompt = match turns.pop() {
        Some(turn) if last_is_user => turn["content"].as_str().unwrap_or_default().to_owned(),
        _ => {
            return Err(ApiError::invalid(
                "invalid_messages",
                "the last message must be the user's (role `user`): it is what the model answers",
            ));
        }
    };
    let mut payload = json!({ "prompt": prompt, "conversationHistory": turns });
    if !system.is_empty() {
        payload["system"] = json!(system.join("\n\n"));
    }
    if let Some(model) = backend_model(&request.model) {
        payload["model"] = json!(model);
    }
    if let Some(temperature) = request.temperature {
        payload["temperature"] = json!(temperature);
    }
    if let Some(max) = request.max_completion_tokens.or(request.max_tokens) {
        payload["maxTokens"] = json!(max);
    }
    Ok(Submission {
        user_id: checked_user(request.user)?,
        user_tier: request.user_tier.unwrap_or_default(),
        priority: checked_priority(request.priority.clone())?,
        payload: payload.to_string(),
        ..Submission::default()
    })
}

/// What the chat handler's result (`{response, model, usage: {promptTokens,
/// completionTokens}}`) says, in OpenAI's terms.
struct Answer {
    text: String,
    model: String,
    usage: ChatUsage,
}

impl Answer {
    fn of(record: &JobRecord, requested_model: &str) -> Self {
        let result: Value = record
            .result
            .as_deref()
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or(Value::Null);
        let count = |name: &str| result["usage"][name].as_u64().unwrap_or(0);
        let (prompt_tokens, completion_tokens) = (count("promptTokens"), count("completionTokens"));
        Self {
            text: result["response"].as_str().unwrap_or_default().to_owned(),
            model: result["model"]
                .as_str()
                .unwrap_or(requested_model)
                .to_owned(),
            usage: ChatUsage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens + completion_tokens,
            },
        }
    }
}

enum Phase {
    /// The first chunk (the assistant's role) is still to send.
    Start,
    Streaming,
    /// The last chunk went out; `[DONE]` follows.
    Finishing,
    Done,
}

/// A streamed completion: the job's deltas as `chat.completion.chunk`s.
struct Chunks {
    state: Arc<AppState>,
    caller: Identity,
    follower: Follower<JobEvents>,
    job_id: String,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    phase: Phase,
    streamed: StreamedAnswer,
}

/// What a stream has sent of the answer, across the job's attempts: a job
/// retried after streaming part of its answer starts again, and the client
/// must not get that part twice.
#[derive(Default)]
struct StreamedAnswer {
    /// Every character sent to the client.
    sent: String,
    /// What the current attempt has produced.
    attempt: String,
}

/// A retried attempt produced a different answer than the one partly sent.
struct Diverged;

impl StreamedAnswer {
    fn attempt_started(&mut self) {
        self.attempt.clear();
    }

    /// The part of `delta` the client has not had yet (empty while a retry
    /// repeats what was sent), or `Diverged` when the retry says otherwise.
    fn next(&mut self, delta: &str) -> Result<String, Diverged> {
        self.attempt.push_str(delta);
        if self.attempt.len() <= self.sent.len() {
            return if self.sent.starts_with(&self.attempt) {
                Ok(String::new())
            } else {
                Err(Diverged)
            };
        }
        match self.attempt.strip_prefix(&self.sent) {
            Some(new) => {
                let new = new.to_owned();
                self.sent.push_str(&new);
                Ok(new)
            }
            None => Err(Diverged),
        }
    }
}

impl Chunks {
    fn into_stream(self) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
        futures_util::stream::unfold(self, |mut chunks| async move {
            let event = chunks.next().await?;
            Some((Ok(event), chunks))
        })
    }

    fn chunk(
        &self,
        delta: Value,
        finish_reason: Option<&str>,
        usage: Option<ChatUsage>,
    ) -> SseEvent {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        });
        if let Some(usage) = usage {
            chunk["usage"] = json!(usage);
        }
        SseEvent::default().data(chunk.to_string())
    }

    async fn next(&mut self) -> Option<SseEvent> {
        match self.phase {
            Phase::Start => {
                self.phase = Phase::Streaming;
                Some(self.chunk(json!({"role": "assistant", "content": ""}), None, None))
            }
            Phase::Finishing => {
                self.phase = Phase::Done;
                Some(SseEvent::default().data("[DONE]"))
            }
            Phase::Done => None,
            Phase::Streaming => Some(self.next_delta().await),
        }
    }

    /// The next piece of the answer, the last chunk, or an error (after which
    /// the stream ends without `[DONE]`, as OpenAI's does).
    async fn next_delta(&mut self) -> SseEvent {
        loop {
            let event = match job_wait::next_event(
                &self.state,
                &self.caller,
                &mut self.follower,
                &self.job_id,
            )
            .await
            {
                Ok(Some(event)) => event,
                Ok(None) => break,
                Err(error) => return self.fail(error),
            };
            if event.event_type == "task_started" {
                self.streamed.attempt_started();
            } else if event.event_type == "text_delta" {
                let Some(text) = event.data["text"].as_str() else {
                    continue;
                };
                match self.streamed.next(text) {
                    Ok(new) if new.is_empty() => continue,
                    Ok(new) => return self.chunk(json!({"content": new}), None, None),
                    Err(Diverged) => {
                        return self.fail(ApiError::new(
                            axum::http::StatusCode::BAD_GATEWAY,
                            "answer_changed_on_retry",
                            format!(
                                "job {} was retried after part of its answer was streamed, and the retry answered differently; GET /api/job/{} has the whole new answer",
                                self.job_id, self.job_id
                            ),
                        ));
                    }
                }
            } else if event.is_terminal() {
                break;
            }
        }
        match self.state.queue.job(&self.job_id).await {
            Ok(Some(record)) if record.state == JobState::Completed => {
                self.phase = Phase::Finishing;
                let usage = self
                    .include_usage
                    .then(|| Answer::of(&record, &self.model).usage);
                self.chunk(json!({}), Some("stop"), usage)
            }
            Ok(Some(record)) => self.fail(job_wait::not_completed(&record)),
            Ok(None) => self.fail(ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "job_expired",
                format!("job {} ended but its record is gone", self.job_id),
            )),
            Err(error) => self.fail(error.into()),
        }
    }

    fn fail(&mut self, error: ApiError) -> SseEvent {
        self.phase = Phase::Done;
        let body = ErrorBody {
            error: ErrorDetail::new(error.status, error.code, error.message),
        };
        SseEvent::default().data(serde_json::to_string(&body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(answer: &mut StreamedAnswer, deltas: &[&str]) -> Vec<String> {
        deltas
            .iter()
            .map(|delta| answer.next(delta).unwrap_or_else(|_| "<diverged>".into()))
            .collect()
    }

    #[test]
    fn a_retry_that_repeats_the_answer_sends_only_what_is_new() {
        let mut answer = StreamedAnswer::default();
        assert_eq!(sent(&mut answer, &["Hel", "lo "]), ["Hel", "lo "]);
        answer.attempt_started();
        assert_eq!(
            sent(&mut answer, &["He", "llo", " wor", "ld"]),
            ["", "", "wor", "ld"]
        );
    }

    #[test]
    fn a_retry_that_answers_differently_is_diverged() {
        let mut answer = StreamedAnswer::default();
        sent(&mut answer, &["Hello"]);
        answer.attempt_started();
        assert!(answer.next("Bye").is_err());
    }
}
