//! `GET /api/limits`: the model backend's rate limiter as every instance shares
//! it (tokens available, effective and configured rate, cool-down, waits, 429/403
//! counts, retries) and this instance's embedding batching and cache figures.
//! Read-only; it owns no state of its own.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::ApiError;
use spool_core::gateway::{Gateway, GatewaySnapshot};

/// A router of its own, merged into the API by `app`, so the shared `AppState`
/// needs no field for the gateway.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/api/limits", get(limits))
        .with_state(gateway)
}

async fn limits(State(gateway): State<Arc<Gateway>>) -> Result<Json<GatewaySnapshot>, ApiError> {
    Ok(Json(gateway.snapshot().await?))
}
