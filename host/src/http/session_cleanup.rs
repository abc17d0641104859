//! Deleting old messages (design D's cleanup): everywhere
//! (`POST /api/v1/cleanup`, admin) or in one session
//! (`POST /api/v1/sessions/{sid}/cleanup`). The deletion itself is the
//! store's.

use std::sync::Arc;

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiPath};
use super::sessions::visible_session;
use spool_core::access::Identity;
use spool_core::store::CleanupReport;

/// Deletes messages older than this, in days or in seconds (at most 100 years).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum CleanupRequest {
    Days(OlderThanDays),
    Secs(OlderThanSecs),
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OlderThanDays {
    #[schema(minimum = 0, maximum = 36500)]
    older_than_days: f64,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OlderThanSecs {
    #[schema(minimum = 0, maximum = 3153600000u64)]
    older_than_secs: f64,
}

/// The oldest age a cleanup takes: older than that is everything anyway.
const MAX_CLEANUP_SECS: f64 = 100.0 * 365.0 * 86_400.0;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupDone {
    older_than_secs: f64,
    report: CleanupReport,
}

/// POST /api/v1/cleanup {"olderThanDays": N} (or `olderThanSecs`): deletes
/// messages created longer ago than that, in every session.
#[utoipa::path(post, path = "/api/v1/cleanup", tag = "sessions", request_body = CleanupRequest,
    responses((status = 200, body = CleanupDone), (status = 422, description = "Not exactly one non-negative age", body = super::error::ErrorBody)))]
pub async fn cleanup(
    State(state): State<Arc<AppState>>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<CleanupDone>, ApiError> {
    let secs = match serde_json::from_value(body) {
        Ok(CleanupRequest::Days(age)) => age.older_than_days * 86_400.0,
        Ok(CleanupRequest::Secs(age)) => age.older_than_secs,
        Err(_) => {
            return Err(ApiError::invalid(
                "invalid_body",
                "give exactly one of `olderThanDays` and `olderThanSecs`, a number",
            ));
        }
    };
    if !(0.0..=MAX_CLEANUP_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "invalid_field",
            "the age must be a number of days from 0 to 36500 (or its seconds)",
        ));
    }
    let report = state.sessions.cleanup((secs * 1000.0) as u64).await?;
    Ok(Json(CleanupDone {
        older_than_secs: secs,
        report,
    }))
}

/// Design D's `cleanup_old_messages(session_id, keep_days)`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCleanup {
    /// Messages created longer ago than this many days go (0: all of them).
    #[schema(minimum = 0, maximum = 36500)]
    keep_days: f64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionCleaned {
    session_id: String,
    keep_days: f64,
    messages_deleted: u64,
}

/// POST /api/v1/sessions/{sid}/cleanup {"keep_days": N}: deletes this
/// session's messages older than N days, as the global cleanup does.
#[utoipa::path(post, path = "/api/v1/sessions/{sid}/cleanup", tag = "sessions", params(super::schemas::SessionPath), request_body = SessionCleanup,
    responses((status = 200, body = SessionCleaned), (status = 404, description = "No such session", body = super::error::ErrorBody),
        (status = 422, description = "`keep_days` is not a number from 0 to 36500", body = super::error::ErrorBody)))]
pub async fn cleanup_session(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(sid): ApiPath<String>,
    ApiJson(body): ApiJson<SessionCleanup>,
) -> Result<Json<SessionCleaned>, ApiError> {
    visible_session(&state, &caller, &sid).await?;
    let secs = body.keep_days * 86_400.0;
    if !(0.0..=MAX_CLEANUP_SECS).contains(&secs) {
        return Err(ApiError::invalid(
            "invalid_field",
            "keep_days must be a number from 0 to 36500",
        ));
    }
    let deleted = state
        .sessions
        .cleanup_session(&sid, (secs * 1000.0) as u64)
        .await?;
    Ok(Json(SessionCleaned {
        session_id: sid,
        keep_days: body.keep_days,
        messages_deleted: deleted,
    }))
}
