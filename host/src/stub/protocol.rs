//! The model endpoints: Ollama's `/api/chat`, `/api/generate`, `/api/embed`,
//! `/api/tags` and OpenAI's `/v1/chat/completions`, `/v1/embeddings`,
//! `/v1/models`, each with its own request, reply and streaming format.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Json, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::answers::{answer, embedding, word_count, word_pieces};
use super::faults::error_response;
use super::{Stub, admit};
use spool_core::models::{BackendKind, ChatMessage, Role};

const CREATED_AT: &str = "1970-01-01T00:00:00Z";

// Handlers return `Result<Response, Response>`; boxing the error would only add noise.
#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned>(kind: BackendKind, body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error_response(
            kind,
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
            None,
        )
    })
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct EmbedBody {
    model: String,
    input: EmbedInput,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl EmbedInput {
    fn into_texts(self) -> Vec<String> {
        match self {
            EmbedInput::One(text) => vec![text],
            EmbedInput::Many(texts) => texts,
        }
    }
}

pub(super) async fn ollama_chat(
    State(stub): State<Stub>,
    body: Bytes,
) -> Result<Response, Response> {
    let request: ChatBody = parse(BackendKind::Ollama, &body)?;
    let completion = Completion::answering(request.model, &request.messages);
    chat_reply(
        &stub,
        Flavor::OllamaChat,
        &completion,
        request.stream.unwrap_or(true),
    )
    .await
}

pub(super) async fn ollama_generate(
    State(stub): State<Stub>,
    body: Bytes,
) -> Result<Response, Response> {
    let request: GenerateBody = parse(BackendKind::Ollama, &body)?;
    let system = request
        .system
        .map(|system| ChatMessage::new(Role::System, system));
    let messages: Vec<ChatMessage> = system
        .into_iter()
        .chain([ChatMessage::new(Role::User, request.prompt)])
        .collect();
    let completion = Completion::answering(request.model, &messages);
    chat_reply(
        &stub,
        Flavor::OllamaGenerate,
        &completion,
        request.stream.unwrap_or(true),
    )
    .await
}

pub(super) async fn openai_chat(
    State(stub): State<Stub>,
    body: Bytes,
) -> Result<Response, Response> {
    let request: ChatBody = parse(BackendKind::Openai, &body)?;
    let include_usage = request
        .stream_options
        .is_some_and(|options| options.include_usage);
    let completion = Completion::answering(request.model, &request.messages);
    chat_reply(
        &stub,
        Flavor::Openai { include_usage },
        &completion,
        request.stream.unwrap_or(false),
    )
    .await
}

pub(super) async fn ollama_embed(
    State(stub): State<Stub>,
    body: Bytes,
) -> Result<Response, Response> {
    let request: EmbedBody = parse(BackendKind::Ollama, &body)?;
    let texts = request.input.into_texts();
    let (failure, _) = admit(&stub, BackendKind::Ollama, "/api/embed", texts.len()).await?;
    let vectors: Vec<Vec<f32>> = texts.iter().map(|text| embedding(text)).collect();
    Ok(json_reply(
        &json!({ "model": request.model, "embeddings": vectors }),
        failure.is_some(),
    ))
}

pub(super) async fn openai_embed(
    State(stub): State<Stub>,
    body: Bytes,
) -> Result<Response, Response> {
    let request: EmbedBody = parse(BackendKind::Openai, &body)?;
    let texts = request.input.into_texts();
    let (failure, _) = admit(&stub, BackendKind::Openai, "/v1/embeddings", texts.len()).await?;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embedding(text) }))
        .collect();
    let tokens: usize = texts.iter().map(|text| word_count(text)).sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    });
    Ok(json_reply(&body, failure.is_some()))
}

pub(super) async fn ollama_tags() -> Json<Value> {
    Json(json!({ "models": [{
        "name": "stub", "model": "stub", "modified_at": CREATED_AT, "size": 0, "digest": "stub", "details": {}
    }] }))
}

pub(super) async fn openai_models() -> Json<Value> {
    Json(
        json!({ "object": "list", "data": [{ "id": "stub", "object": "model", "created": 0, "owned_by": "spool" }] }),
    )
}

/// A deterministic reply, with the usage numbers both protocols report.
struct Completion {
    model: String,
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Completion {
    fn answering(model: String, messages: &[ChatMessage]) -> Self {
        let text = answer(&model, messages);
        Self {
            prompt_tokens: messages
                .iter()
                .map(|message| word_count(&message.content))
                .sum(),
            completion_tokens: word_count(&text),
            text,
            model,
        }
    }
}

/// The three chat endpoints differ only in how they frame the same completion.
#[derive(Clone, Copy)]
enum Flavor {
    OllamaChat,
    OllamaGenerate,
    Openai { include_usage: bool },
}

impl Flavor {
    fn kind(self) -> BackendKind {
        match self {
            Flavor::Openai { .. } => BackendKind::Openai,
            _ => BackendKind::Ollama,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Flavor::OllamaChat => "/api/chat",
            Flavor::OllamaGenerate => "/api/generate",
            Flavor::Openai { .. } => "/v1/chat/completions",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Flavor::Openai { .. } => "text/event-stream",
            _ => "application/x-ndjson",
        }
    }

    /// The single-object reply to `stream: false`.
    fn whole(self, completion: &Completion) -> Value {
        match self {
            Flavor::Openai { .. } => json!({
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": completion.model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": completion.text },
                    "finish_reason": "stop",
                }],
                "usage": openai_usage(completion),
            }),
            _ => self.ollama_line(completion, &completion.text, true),
        }
    }

    fn piece(self, completion: &Completion, piece: &str) -> Bytes {
        match self {
            Flavor::Openai { .. } => {
                sse(&openai_chunk(completion, json!({ "content": piece }), None))
            }
            _ => ndjson(&self.ollama_line(completion, piece, false)),
        }
    }

    /// What follows the last piece of a complete stream.
    fn ending(self, completion: &Completion) -> Vec<Bytes> {
        match self {
            Flavor::Openai { include_usage } => {
                let mut frames = vec![sse(&openai_chunk(completion, json!({}), Some("stop")))];
                if include_usage {
                    let mut usage = openai_chunk(completion, json!({}), None);
                    usage["choices"] = json!([]);
                    usage["usage"] = openai_usage(completion);
                    frames.push(sse(&usage));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                frames
            }
            _ => vec![ndjson(&self.ollama_line(completion, "", true))],
        }
    }

    /// An error reported inside a 200 stream.
    fn failure(self, message: &str) -> Bytes {
        match self {
            Flavor::Openai { .. } => sse(
                &json!({ "error": { "message": message, "type": "server_error", "code": null } }),
            ),
            _ => ndjson(&json!({ "error": message })),
        }
    }

    fn ollama_line(self, completion: &Completion, content: &str, done: bool) -> Value {
        let mut line = json!({ "model": completion.model, "created_at": CREATED_AT, "done": done });
        match self {
            Flavor::OllamaChat => {
                line["message"] = json!({ "role": "assistant", "content": content })
            }
            _ => line["response"] = json!(content),
        }
        if done {
            line["done_reason"] = json!("stop");
            line["prompt_eval_count"] = json!(completion.prompt_tokens);
            line["eval_count"] = json!(completion.completion_tokens);
        }
        line
    }
}

fn openai_chunk(completion: &Completion, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": completion.model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
    })
}

fn openai_usage(completion: &Completion) -> Value {
    json!({
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    })
}

fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn chat_reply(
    stub: &Stub,
    flavor: Flavor,
    completion: &Completion,
    stream: bool,
) -> Result<Response, Response> {
    let (failure, chunk_delay) = admit(stub, flavor.kind(), flavor.path(), 1).await?;
    if !stream {
        return Ok(json_reply(&flavor.whole(completion), failure.is_some()));
    }
    let pieces = word_pieces(&completion.text);
    let frames: Vec<Bytes> = match failure {
        None => pieces
            .iter()
            .map(|piece| flavor.piece(completion, piece))
            .chain(flavor.ending(completion))
            .collect(),
        Some(message) => pieces
            .iter()
            .take(1)
            .map(|piece| flavor.piece(completion, piece))
            .chain([flavor.failure(&message)])
            .collect(),
    };
    Ok(streamed(flavor.content_type(), frames, chunk_delay))
}

/// A whole JSON reply. When `cut`, only its first half is sent before the connection
/// drops: the non-streamed form of a mid-stream failure.
fn json_reply(body: &Value, cut: bool) -> Response {
    let bytes = Bytes::from(body.to_string());
    let json = [(CONTENT_TYPE, "application/json")];
    if !cut {
        return (json, bytes).into_response();
    }
    let half = bytes.slice(..bytes.len() / 2);
    let broken = futures_util::stream::iter([
        Ok(half),
        Err(std::io::Error::other("stub: injected mid-stream failure")),
    ]);
    (json, Body::from_stream(broken)).into_response()
}

fn streamed(content_type: &'static str, frames: Vec<Bytes>, delay: Duration) -> Response {
    let body = futures_util::stream::iter(frames.into_iter().enumerate()).then(
        move |(index, frame)| async move {
            if index > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(frame)
        },
    );
    ([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response()
}
