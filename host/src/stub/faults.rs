//! The fault queue's entries and the error responses they produce, in each
//! protocol's own error format.

use std::collections::BTreeMap;

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use spool_core::models::BackendKind;

/// One entry of the fault queue; `POST /_stub/faults` takes a JSON array of these.
/// Exactly one of `status` and `midstream_error` must be set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Answer with this status (400..=599) and an error body in the protocol's format,
    /// or a redirect (300..=399; its `Location` goes in `headers`); 200 answers
    /// normally (a spacer: "the next call succeeds, the one after fails").
    pub status: Option<u16>,
    /// Sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
    /// Sent as `retry-after-ms`.
    pub retry_after_ms: Option<u64>,
    /// Extra response headers, e.g. `{"x-ratelimit-reset-requests": "6m0s"}`.
    pub headers: BTreeMap<String, String>,
    /// OpenAI error `code`, e.g. `insufficient_quota`.
    pub code: Option<String>,
    /// Replaces the error body: a JSON string is sent as plain text, other JSON as is.
    pub body: Option<Value>,
    /// Start a 200 stream, send one piece, then report this error in the protocol's
    /// stream format and close (no `done` / `[DONE]`). Non-streamed replies instead send
    /// half their body and drop the connection.
    pub midstream_error: Option<String>,
    /// How many calls this fault answers before it leaves the queue (default 1).
    pub times: u32,
    /// Model paths it applies to, e.g. `["/api/chat"]`; empty means all.
    pub paths: Vec<String>,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            status: None,
            retry_after_secs: None,
            retry_after_ms: None,
            headers: BTreeMap::new(),
            code: None,
            body: None,
            midstream_error: None,
            times: 1,
            paths: Vec::new(),
        }
    }
}

impl Fault {
    pub(super) fn check(&self) -> Result<(), String> {
        match (self.status, &self.midstream_error) {
            (Some(status), None) if status != 200 && !(300..=599).contains(&status) => {
                return Err(format!(
                    "status {status} is neither 200, a redirect (300..=399) nor an error status (400..=599)"
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("a fault needs exactly one of `status` and `midstream_error`".into()),
        }
        if self.times == 0 {
            return Err("`times` must be at least 1".into());
        }
        for (name, value) in &self.headers {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            HeaderValue::from_str(value)
                .map_err(|e| format!("header {name} value {value:?}: {e}"))?;
        }
        Ok(())
    }

    pub(super) fn applies_to(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|candidate| candidate == path)
    }
}

pub(super) fn fault_response(kind: BackendKind, fault: &Fault) -> Response {
    let status = fault
        .status
        .and_then(|status| StatusCode::from_u16(status).ok());
    let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let rate_limited_openai =
        kind == BackendKind::Openai && status == StatusCode::TOO_MANY_REQUESTS;
    let code = fault
        .code
        .as_deref()
        .or(rate_limited_openai.then_some("rate_limit_exceeded"));
    let mut response = match &fault.body {
        Some(Value::String(text)) => (status, text.clone()).into_response(),
        Some(body) => (status, Json(body.clone())).into_response(),
        None => error_response(
            kind,
            status,
            &format!("stub: injected HTTP {}", status.as_u16()),
            code,
        ),
    };
    let headers = response.headers_mut();
    if let Some(secs) = fault.retry_after_secs {
        headers.insert(RETRY_AFTER, secs.into());
    }
    if let Some(ms) = fault.retry_after_ms {
        headers.insert(HeaderName::from_static("retry-after-ms"), ms.into());
    }
    if rate_limited_openai {
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_static("0"),
        );
    }
    for (name, value) in &fault.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

pub(super) fn error_response(
    kind: BackendKind,
    status: StatusCode,
    message: &str,
    code: Option<&str>,
) -> Response {
    let body = match kind {
        BackendKind::Ollama => json!({ "error": message }),
        BackendKind::Openai => {
            let error_type = match code {
                Some("insufficient_quota") => "insufficient_quota",
                _ if status.is_server_error() => "server_error",
                _ if status == StatusCode::TOO_MANY_REQUESTS => "requests",
                _ => "invalid_request_error",
            };
            json!({ "error": { "message": message, "type": error_type, "code": code } })
        }
    };
    (status, Json(body)).into_response()
}
