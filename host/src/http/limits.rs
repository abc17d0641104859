//! The model backend's rate limiter over HTTP: `GET /api/limits` (as every
//! instance shares it: tokens available, effective and configured rate,
//! cool-down, waits, 429/403 counts, retries; and this instance's embedding
//! batching and cache figures), and design A's `SetRate` for operators:
//! `PUT /admin/limits/rate` sets the rate every instance paces the backend
//! at, `DELETE` returns to the configured one. The state is the limiter's.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiJson;
use super::{ApiError, AppState};
use spool_core::gateway::GatewaySnapshot;
use spool_core::limiter::LimiterSnapshot;
use spool_core::queue::now_ms;

/// The shared rate limiter and this instance's embedding batching and cache.
#[utoipa::path(get, path = "/api/limits", tag = "operations", responses((status = 200, body = GatewaySnapshot)))]
pub async fn limits(State(state): State<Arc<AppState>>) -> Result<Json<GatewaySnapshot>, ApiError> {
    Ok(Json(state.gateway.snapshot().await?))
}

/// The fastest rate or largest burst an operator may set: beyond any model API.
const MAX_RATE: f64 = 1_000_000.0;
/// The slowest: one call in about 17 minutes.
const MIN_RATE: f64 = 0.001;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetRate {
    /// Calls per second, summed over every instance.
    #[schema(minimum = 0.001, maximum = 1000000)]
    rate_per_sec: f64,
    /// Calls allowed in a burst (default: the configured capacity).
    #[schema(minimum = 1, maximum = 1000000)]
    capacity: Option<f64>,
    /// Who sets it, for the record (default `admin-api`).
    #[schema(max_length = 128)]
    by: Option<String>,
}

/// Sets the rate every instance paces the model backend at, at once and
/// until cleared (the adaptive slow-down after a 429/403 still applies).
#[utoipa::path(put, path = "/admin/limits/rate", tag = "operations", request_body = SetRate,
    responses((status = 200, description = "The limiter with the new rate", body = LimiterSnapshot),
        (status = 422, description = "A rate or capacity out of range", body = super::error::ErrorBody)))]
pub async fn set_rate(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<SetRate>,
) -> Result<Json<LimiterSnapshot>, ApiError> {
    if !(MIN_RATE..=MAX_RATE).contains(&request.rate_per_sec) {
        return Err(ApiError::invalid(
            "invalid_rate",
            format!("ratePerSec must be from {MIN_RATE} to {MAX_RATE}"),
        ));
    }
    if request
        .capacity
        .is_some_and(|capacity| !(1.0..=MAX_RATE).contains(&capacity))
    {
        return Err(ApiError::invalid(
            "invalid_capacity",
            format!("capacity must be from 1 to {MAX_RATE}"),
        ));
    }
    let by = request.by.unwrap_or_else(|| "admin-api".into());
    if by.chars().count() > 128 {
        return Err(ApiError::invalid(
            "invalid_field",
            "by is at most 128 characters",
        ));
    }
    let limiter = state.gateway.limiter();
    limiter
        .set_rate(request.rate_per_sec, request.capacity, &by, now_ms())
        .await?;
    Ok(Json(limiter.snapshot().await?))
}

/// Back to the configured rate.
#[utoipa::path(delete, path = "/admin/limits/rate", tag = "operations",
    responses((status = 200, description = "The limiter at its configured rate", body = LimiterSnapshot)))]
pub async fn clear_rate(
    State(state): State<Arc<AppState>>,
) -> Result<Json<LimiterSnapshot>, ApiError> {
    let limiter = state.gateway.limiter();
    limiter.clear_rate().await?;
    Ok(Json(limiter.snapshot().await?))
}
