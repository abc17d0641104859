//! API errors: every failure is an HTTP status plus a JSON body
//! `{"error": {"code": "...", "message": "..."}}` that names the problem.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::ToSchema;

use spool_core::intake::IntakeError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
}

/// The body of every error answer, whatever its status.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable name to branch on (`job_not_found`, `invalid_priority`, `queue_full`, ...).
    #[schema(example = "job_not_found")]
    pub code: &'static str,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The class of error in OpenAI's terms (`invalid_request_error`,
    /// `authentication_error`, `rate_limit_error`, ...), so any OpenAI client
    /// reads spool's errors as its own.
    #[serde(rename = "type")]
    #[schema(example = "not_found_error")]
    pub kind: &'static str,
}

impl ErrorDetail {
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            kind: error_kind(status),
        }
    }
}

/// OpenAI's error `type` for a status.
fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail::new(self.status, self.code, self.message),
        };
        let mut response = (self.status, Json(body)).into_response();
        // The rest of a refused oversized body may still be on its way (its
        // reading is bounded): the connection is not reused, and says so, so
        // a client does not send its next request into a closing connection.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl From<IntakeError> for ApiError {
    fn from(error: IntakeError) -> Self {
        let message = error.to_string();
        match error {
            IntakeError::UnknownQueue { .. } => Self::not_found("unknown_queue", message),
            IntakeError::HandlerUnavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "handler_unavailable",
                message,
            ),
            IntakeError::Rejected(reason) => Self::invalid("rejected_by_handler", reason),
            IntakeError::HandlerFailed(_) => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "handler_failed", message)
            }
            IntakeError::Full(_) => Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message),
            IntakeError::Duplicate(_) => Self::new(StatusCode::CONFLICT, "duplicate_job", message),
            // Only follow-ups carry a fence; a client submission never gets here.
            IntakeError::Fenced | IntakeError::ParentCancelled => {
                Self::new(StatusCode::CONFLICT, "fenced", message)
            }
            IntakeError::Redis(error) => error.into(),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(error: redis::RedisError) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "redis_unavailable",
            format!("the job store is unavailable: {error}"),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::BAD_REQUEST => "malformed_json",
            _ => "invalid_body",
        };
        Self::new(rejection.status(), code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), "invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), "invalid_query", rejection.body_text())
    }
}

/// `axum::Json`, but rejections come out as [`ApiError`] JSON, and a body
/// must be a JSON object: serde would read a struct from an array too
/// (`["user", "hi"]` as a message), which no client means.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(body) = axum::Json::<Value>::from_request(request, state).await?;
        if !body.is_object() {
            return Err(ApiError::invalid(
                "invalid_body",
                "the body must be a JSON object",
            ));
        }
        T::deserialize(body)
            .map(ApiJson)
            .map_err(|error| ApiError::invalid("invalid_body", error.to_string()))
    }
}

/// `axum::extract::Path` with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Query` with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);
