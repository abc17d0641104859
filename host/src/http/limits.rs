//! `GET /api/limits`: the model backend's rate limiter as every instance shares
//! it (tokens available, effective and configured rate, cool-down, waits, 429/403
//! counts, retries) and this instance's embedding batching and cache figures.
//! Read-only; it owns no state of its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;

use super::{ApiError, AppState};
use spool_core::gateway::GatewaySnapshot;

/// The shared rate limiter and this instance's embedding batching and cache.
#[utoipa::path(get, path = "/api/limits", tag = "operations", responses((status = 200, body = GatewaySnapshot)))]
pub async fn limits(State(state): State<Arc<AppState>>) -> Result<Json<GatewaySnapshot>, ApiError> {
    Ok(Json(state.gateway.snapshot().await?))
}
