//! Probes for orchestrators: `/health/live` (the process answers) and
//! `/health/ready` (this instance should get traffic), and `/health`, the
//! human-readable summary.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use spool_core::hub::HubStats;

/// A probe must answer within its own timeout even when Redis hangs rather
/// than refuses; a PING slower than this counts as Redis being unreachable.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `ok`, or `degraded` when Redis is unreachable or a worker was restarted.
    #[schema(example = "ok")]
    status: &'static str,
    worker_restarts: u64,
    /// `ok` or `unavailable`.
    redis: &'static str,
    instance: String,
    uptime_secs: u64,
    model: String,
    /// Live delivery: watchers, the streams they watch, the Redis readers serving them.
    hub: HubStats,
    /// Conversation sockets on this instance and the conversations they are in.
    conversations: spool_core::chat::ConversationStats,
    /// Handler name -> the version this instance runs.
    handlers: std::collections::BTreeMap<String, String>,
    queues: Vec<String>,
}

/// The instance at a glance: 200, or 503 while Redis is unreachable.
#[utoipa::path(get, path = "/health", tag = "operations", security(()), responses(
    (status = 200, body = Health), (status = 503, description = "Redis is unreachable", body = Health)))]
pub async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Health>) {
    let redis_ok = state.queue.ping().await.is_ok();
    let worker_restarts = state.restarts.count();
    let body = Health {
        status: if redis_ok && worker_restarts == 0 {
            "ok"
        } else {
            "degraded"
        },
        worker_restarts,
        redis: if redis_ok { "ok" } else { "unavailable" },
        instance: state.instance.clone(),
        uptime_secs: state.started.elapsed().as_secs(),
        model: state.model.clone(),
        hub: state.hub.stats(),
        conversations: state.conversations.stats(),
        handlers: state.intake.registry.versions().into_iter().collect(),
        queues: state.intake.routes.keys().cloned().collect(),
    };
    let status = if redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

#[derive(Serialize, ToSchema)]
pub struct Live {
    #[schema(example = "live")]
    status: &'static str,
}

/// 200 while the process can answer HTTP at all: nothing else is checked, so
/// an orchestrator restarts the process only when it is truly stuck.
#[utoipa::path(get, path = "/health/live", tag = "operations", security(()), responses((status = 200, body = Live)))]
pub async fn live() -> Json<Live> {
    Json(Live { status: "live" })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// `ready` or `not_ready`.
    status: &'static str,
    /// What is not ready: `redis`, `handlers`, `draining`.
    not_ready: Vec<&'static str>,
    redis: &'static str,
    /// `queue: handler` for each queue whose handler is not loaded.
    missing_handlers: Vec<String>,
    draining: bool,
    instance: String,
}

/// 200 only when Redis answers, every queue's handler is loaded and the
/// instance is not draining; otherwise 503 naming each thing that is not ready.
#[utoipa::path(get, path = "/health/ready", tag = "operations", security(()), responses(
    (status = 200, body = Readiness), (status = 503, description = "Not ready; the body says why", body = Readiness)))]
pub async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, Json<Readiness>) {
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
    let body = Readiness {
        status: if not_ready.is_empty() {
            "ready"
        } else {
            "not_ready"
        },
        not_ready,
        redis: if redis_ok { "ok" } else { "unavailable" },
        missing_handlers,
        draining,
        instance: state.instance.clone(),
    };
    (status, Json(body))
}
