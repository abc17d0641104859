//! `POST /v1/embeddings`: OpenAI's embeddings as a job of the `embeddings`
//! queue (the same path as `POST /api/embeddings`: limiter, batching, cache).

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::super::AppState;
use super::super::embeddings::{EmbedText, EmbedTexts, checked_texts, run};
use super::super::error::{ApiError, ApiJson, ErrorBody};
use super::super::jobs::checked_priority;
use super::{backend_model, checked_model, checked_user, words};
use spool_core::access::Identity;
use spool_core::intake::Submission;

/// One text or several (token arrays are not supported).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(EmbedText),
    Many(EmbedTexts),
}

#[derive(Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32s, base64-encoded (what OpenAI's SDKs ask for).
    Base64,
}

/// OpenAI's embeddings request (other fields are accepted and ignored),
/// plus spool's `priority` and `user_tier`.
#[derive(Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    input: EmbeddingInput,
    /// Passed to the backend; `default` (or `spool`) means its configured model.
    #[schema(min_length = 1, max_length = 256)]
    model: String,
    encoding_format: Option<EncodingFormat>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"
    )]
    user: Option<String>,
    /// spool's priority, 1..10 (default 5).
    #[schema(value_type = Option<u8>, minimum = 1, maximum = 10)]
    priority: Option<serde_json::Number>,
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_tier: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Words, not tokens: the backend's tokenizer is not known here.
    prompt_tokens: u64,
    total_tokens: u64,
}

/// OpenAI's `list` of `embedding`s, one per input, in order.
#[derive(Serialize, ToSchema)]
pub struct EmbeddingList {
    #[schema(example = "list")]
    object: &'static str,
    /// `{object: "embedding", index, embedding}`; `embedding` is a list of
    /// numbers, or a base64 string when `encoding_format` is `base64`.
    #[schema(value_type = Vec<Object>)]
    data: Vec<Value>,
    model: String,
    usage: EmbeddingUsage,
}

/// Embeddings through spool's queue, priorities, handler, limiter, batcher and cache.
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai", request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One embedding per input", body = EmbeddingList),
        (status = 422, description = "A field is invalid, or the handler refused the job", body = ErrorBody),
        (status = 429, description = "The queue is full", body = ErrorBody),
        (status = 502, description = "The job failed (its error is named)", body = ErrorBody),
        (status = 504, description = "The job did not finish in time; it goes on", body = ErrorBody)))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<EmbeddingList>, ApiError> {
    let request: EmbeddingRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    let texts = checked_texts(match request.input {
        EmbeddingInput::One(text) => vec![text.0],
        EmbeddingInput::Many(texts) => texts.into_strings(),
    })?;
    checked_model(&request.model)?;
    let model = backend_model(&request.model);
    let submission = Submission {
        user_id: checked_user(request.user)?,
        user_tier: request.user_tier.unwrap_or_default(),
        priority: checked_priority(request.priority.clone())?,
        payload: json!({ "texts": texts, "model": model }).to_string(),
        ..Submission::default()
    };
    let (vectors, _) = run(&state, &caller, submission).await?;
    let format = request.encoding_format.unwrap_or_default();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => json!(base64_f32(&vector)),
            };
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let prompt_tokens = words(&texts);
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: request.model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

fn base64_f32(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
