//! Bounds on a request before any route reads it: headers over 16 KiB are a
//! JSON 431; a body larger than the API's limit is refused by its
//! `Content-Length` with a JSON 413. Every
//! refusal first reads what the client is still sending (up to a bound and a
//! time), because answering mid-upload resets the connection and the client
//! never sees why.
//!
//! Owns those checks, the draining, and the one page size every listing
//! accepts; the sizes of fields are the routes'.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::ApiError;

/// Read and thrown away before a refusal, at most.
const DRAINED_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Headers a request may carry in all (hyper's own cap, ~400 KB, is far larger).
const MAX_HEADER_BYTES: usize = 16 * 1024;

pub async fn limit_headers(request: Request, next: Next) -> Response {
    let bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        let refusal = ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the headers are {bytes} bytes; at most {MAX_HEADER_BYTES} are read"),
        );
        return refuse(request, refusal).await;
    }
    next.run(request).await
}

/// Refuses a body over `limit` bytes by its declared length. (A body sent
/// without a length is cut at the limit by the routes' extractors.)
pub async fn limit_body(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => {
            let refusal = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is {length} bytes; this API takes at most {limit}"),
            );
            refuse(request, refusal).await
        }
        _ => next.run(request).await,
    }
}

/// Answers with `error` once the request's body is read (bounded).
pub async fn refuse(request: Request, error: ApiError) -> Response {
    drain(request.into_body()).await;
    error.into_response()
}

/// Reads a body to its end, or to the bounds, keeping nothing.
pub async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut read = 0;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAINED_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Pages of 1 to 1000: a larger one is refused rather than quietly cut.
pub fn checked_limit(limit: usize) -> Result<usize, ApiError> {
    if (1..=1000).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::invalid(
            "invalid_query",
            format!("limit must be from 1 to 1000, got {limit}"),
        ))
    }
}
