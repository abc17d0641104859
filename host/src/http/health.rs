//! Probes for orchestrators: `/health/live` (the process answers) and
//! `/health/ready` (this instance should get traffic). `/health` itself stays
//! the human-readable summary.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use super::AppState;

/// A probe must answer within its own timeout even when Redis hangs rather
/// than refuses; a PING slower than this counts as Redis being unreachable.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// 200 while the process can answer HTTP at all: nothing else is checked, so
/// an orchestrator restarts the process only when it is truly stuck.
pub async fn live() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "live"}))
}

/// 200 only when Redis answers, every queue's handler is loaded and the
/// instance is not draining; otherwise 503 naming each thing that is not ready.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let redis_ok = matches!(
        tokio::time::timeout(REDIS_PROBE_TIMEOUT, state.queue.ping()).await,
        Ok(Ok(()))
    );
    let missing_handlers: Vec<String> = state
        .intake
        .routes
        .iter()
        .filter(|(_, route)| {
            state
                .intake
                .registry
                .resolve(
                    &route.config.handler,
                    route.config.handler_version.as_deref(),
                )
                .is_none()
        })
        .map(|(queue, route)| format!("{queue}: {}", route.config.handler))
        .collect();
    let draining = state.draining.is_cancelled();
    let mut not_ready = Vec::new();
    if !redis_ok {
        not_ready.push("redis");
    }
    if !missing_handlers.is_empty() {
        not_ready.push("handlers");
    }
    if draining {
        not_ready.push("draining");
    }
    let status = if not_ready.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if not_ready.is_empty() { "ready" } else { "not_ready" },
        "notReady": not_ready,
        "redis": if redis_ok { "ok" } else { "unavailable" },
        "missingHandlers": missing_handlers,
        "draining": draining,
        "instance": state.instance,
    });
    (status, axum::Json(body))
}
