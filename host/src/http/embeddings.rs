//! `POST /api/embeddings` (design A): texts in, vectors out, through the
//! `embeddings` queue, its handler's priority rule (Wasm), the shared rate
//! limiter, the batcher and the embedding cache. The request is held open
//! until the job ends, as a client of an embedding API expects.
//!
//! Owns the route's body and answer. It must not embed anything itself: the
//! job does, so the queue's durability, priorities and retries all apply.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiJson};
use super::job_wait;
use super::jobs::as_caller;
use spool_core::access::Identity;
use spool_core::intake::Submission;

/// The queue embedding requests go to (handler `embed` by default).
pub const EMBEDDINGS_QUEUE: &str = "embeddings";
pub const MAX_TEXTS: usize = 256;
pub const MAX_TEXT_CHARS: usize = 32_000;
pub const MAX_MODEL_CHARS: usize = 256;

/// One text to embed: 1 to 32,000 characters.
#[derive(Deserialize)]
pub struct EmbedText(pub String);

/// The texts of one request: 1 to 256.
#[derive(Deserialize)]
pub struct EmbedTexts(pub Vec<EmbedText>);

// By hand: utoipa's derive cannot bound a newtype's inner value.
impl PartialSchema for EmbedText {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_TEXT_CHARS))
            .into()
    }
}
impl ToSchema for EmbedText {}

impl PartialSchema for EmbedTexts {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(EmbedText::schema())
            .min_items(Some(1))
            .max_items(Some(MAX_TEXTS))
            .into()
    }
}
impl ToSchema for EmbedTexts {}

impl EmbedTexts {
    pub fn into_strings(self) -> Vec<String> {
        self.0.into_iter().map(|text| text.0).collect()
    }
}

/// Texts to embed, who asks and how urgently (design A's 0/1/2 scale).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddingsRequest {
    texts: EmbedTexts,
    /// The user the texts are from; a key bound to a tenant replaces it.
    #[serde(default)]
    #[schema(max_length = 128, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user: String,
    /// Design A's scale: 0 low, 1 normal, 2 high (spool's 2, 5 and 9).
    #[schema(value_type = Option<u8>, minimum = 0, maximum = 2, default = 1)]
    priority: Option<serde_json::Number>,
    /// The user's class for the handler's rule: `vip`/`paying` high,
    /// `new`/`inactive` low (or design A's `2`/`1`/`0`).
    #[schema(max_length = 32, pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*$")]
    user_tier: Option<String>,
    /// Absent: the backend's configured embedding model.
    #[schema(min_length = 1, max_length = 256)]
    model: Option<String>,
}

/// One vector per text, in order.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingsAnswer {
    pub job_id: String,
    /// The model asked for, or null for the configured default.
    pub model: Option<String>,
    pub embeddings: Vec<Vec<f32>>,
    /// The priority class the handler's rule chose.
    pub class: String,
    pub score: u8,
}

/// Embeds texts through the queue and answers with the vectors.
#[utoipa::path(post, path = "/api/embeddings", tag = "embeddings", request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "One vector per text, in order", body = EmbeddingsAnswer),
        (status = 422, description = "A field is invalid, or the handler refused the job", body = super::error::ErrorBody),
        (status = 429, description = "The queue is full", body = super::error::ErrorBody),
        (status = 502, description = "The job failed (its error is named)", body = super::error::ErrorBody),
        (status = 504, description = "The job did not finish in time; it goes on", body = super::error::ErrorBody)))]
pub async fn embed(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<EmbeddingsAnswer>, ApiError> {
    let request: EmbeddingsRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid("invalid_field", e.to_string()))?;
    let texts = checked_texts(request.texts.into_strings())?;
    let model = checked_model(request.model)?;
    let submission = Submission {
        user_id: request.user,
        user_tier: request.user_tier.unwrap_or_default(),
        priority: design_a_priority(request.priority)?,
        payload: json!({ "texts": texts, "model": model }).to_string(),
        ..Submission::default()
    };
    let (vectors, job) = run(&state, &caller, submission).await?;
    Ok(Json(EmbeddingsAnswer {
        job_id: job.id,
        model,
        embeddings: vectors,
        class: job.class,
        score: job.score,
    }))
}

/// Queues an embedding job and waits for its vectors.
pub async fn run(
    state: &AppState,
    caller: &Identity,
    submission: Submission,
) -> Result<(Vec<Vec<f32>>, spool_core::queue::JobRecord), ApiError> {
    let submission = as_caller(caller, submission)?;
    let accepted = state.intake.submit(EMBEDDINGS_QUEUE, &submission).await?;
    let record = job_wait::completed(state, caller, &accepted.id).await?;
    let vectors = record
        .result
        .as_deref()
        .and_then(|result| serde_json::from_str::<Value>(result).ok())
        .and_then(|result| serde_json::from_value(result["embeddings"].clone()).ok())
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                "bad_handler_result",
                format!(
                    "job {} completed without an `embeddings` list: is the `{EMBEDDINGS_QUEUE}` queue's handler an embedding handler?",
                    accepted.id
                ),
            )
        })?;
    Ok((vectors, record))
}

/// 1 to 256 texts of 1 to 32,000 characters.
pub fn checked_texts(texts: Vec<String>) -> Result<Vec<String>, ApiError> {
    if texts.is_empty() || texts.len() > MAX_TEXTS {
        return Err(ApiError::invalid(
            "invalid_texts",
            format!(
                "texts must hold 1 to {MAX_TEXTS} strings, not {}",
                texts.len()
            ),
        ));
    }
    if let Some(index) = texts
        .iter()
        .position(|text| text.is_empty() || text.chars().count() > MAX_TEXT_CHARS)
    {
        return Err(ApiError::invalid(
            "invalid_texts",
            format!("texts[{index}] must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(texts)
}

/// A model name of 1 to 256 characters, if given.
pub fn checked_model(model: Option<String>) -> Result<Option<String>, ApiError> {
    match model {
        Some(name) if name.is_empty() || name.chars().count() > MAX_MODEL_CHARS => {
            Err(ApiError::invalid(
                "invalid_model",
                format!("model must be 1 to {MAX_MODEL_CHARS} characters"),
            ))
        }
        model => Ok(model),
    }
}

/// Design A's 0 (low), 1 (normal, the default), 2 (high) on spool's 1..10
/// scale, mid-class, for the handler's rule to read. `2.0` is 2.
fn design_a_priority(priority: Option<serde_json::Number>) -> Result<u8, ApiError> {
    let Some(given) = priority else {
        return Ok(5);
    };
    match given.as_f64().filter(|p| p.fract() == 0.0) {
        Some(0.0) => Ok(2),
        Some(1.0) => Ok(5),
        Some(2.0) => Ok(9),
        _ => Err(ApiError::invalid(
            "invalid_priority",
            format!("priority is design A's 0 (low), 1 (normal) or 2 (high), got {given}"),
        )),
    }
}
