//! The HTTP API (axum on hyper). Owns routing, request validation and response
//! shapes; the work itself is the queue's, the runtime's and the events module's.

mod admin;
pub mod auth;
mod bounds;
mod dead;
mod error;
mod health;
mod jobs;
mod limits;
mod message_stream;
mod sessions;
mod stream;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};

pub use error::ApiError;

use spool_core::access::Role;
use spool_core::gateway::Gateway;
use spool_core::handlers::Handlers;
use spool_core::intake::Intake;
use spool_core::queue::{Queue, Retention};
use spool_core::store::Store;
use spool_core::worker::WorkerRestarts;

/// What every request handler can reach.
pub struct AppState {
    pub queue: Queue,
    /// Sessions and messages (design D).
    pub sessions: Store,
    /// Queues, routes, runtime and loaded handler versions; how jobs enter.
    pub intake: Intake,
    pub handlers: Arc<Handlers>,
    /// Live delivery: every SSE stream and WebSocket watch of this instance.
    pub hub: spool_core::hub::Hub,
    /// Largest request body, and so largest WebSocket message, in bytes.
    pub body_limit_bytes: usize,
    pub instance: String,
    pub model: String,
    pub started: Instant,
    pub retention: Retention,
    /// Workers restarted after a panic: any makes the instance `degraded`.
    pub restarts: Arc<WorkerRestarts>,
    /// Model calls: the shared limiter's figures for `/api/limits`.
    pub gateway: Arc<Gateway>,
    /// Who may call what (see `auth`).
    pub gate: auth::Gate,
    /// Cancelled when the instance starts draining (SIGTERM): `/health/ready` turns 503.
    pub draining: tokio_util::sync::CancellationToken,
}

impl AppState {
    /// How long a followed stream may be quiet before its client gets a ping
    /// (`[sessions] ping_interval_ms`, for job and message streams alike).
    pub fn quiet_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.sessions.config().ping_interval_ms.clamp(50, 60_000))
    }
}

/// Which routes a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    All,
    /// Everything but the admin routes (they have a listener of their own).
    Public,
    /// The admin routes (and `/health`).
    Admin,
}

/// The API. Routes are grouped by the role they need (see `auth`); every
/// request passes the header, host, origin and key checks first.
pub fn router(state: Arc<AppState>, body_limit: usize, routes: Routes) -> Router {
    let open = Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout));
    let reader = Router::new()
        .route("/api/queue/stats", get(jobs::stats))
        .route("/api/limits", get(limits::limits))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Reader, request, next)
        }));
    let submitter = Router::new()
        .route("/api/chat", post(jobs::submit_chat))
        .route("/api/queues/{queue}/jobs", post(jobs::submit_generic))
        .route("/api/job/{id}", get(jobs::get_job).delete(jobs::cancel))
        .route("/api/job/{id}/events", get(stream::job_events))
        .route("/stream/status/{id}", get(stream::status_stream))
        .route("/ws", get(ws::upgrade))
        .merge(sessions_router())
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Submitter, request, next)
        }));
    let admin = Router::new()
        .route("/api/queues/{queue}/pause", post(jobs::pause))
        .route("/api/queues/{queue}/resume", post(jobs::resume))
        .route("/api/queues/{queue}/history", get(jobs::history))
        .route(
            "/api/queues/{queue}/dead",
            get(dead::list).delete(dead::purge_all),
        )
        .route("/api/queues/{queue}/dead/{job}", delete(dead::purge_one))
        .route("/api/queues/{queue}/dead/{job}/replay", post(dead::replay))
        .route("/api/v1/cleanup", post(sessions::cleanup))
        .merge(admin::routes())
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Admin, request, next)
        }));
    let uploads = admin::upload_routes().route_layer(from_fn(|request, next| {
        auth::require(Role::Admin, request, next)
    }));
    let (served, uploads) = match routes {
        Routes::All => (open.merge(reader).merge(submitter).merge(admin), uploads),
        Routes::Public => (open.merge(reader).merge(submitter), Router::new()),
        Routes::Admin => (
            Router::new()
                .route("/health", get(health))
                .route("/health/live", get(health::live))
                .route("/health/ready", get(health::ready))
                .merge(admin),
            uploads,
        ),
    };
    // Every route but the component upload (which has its own limit) refuses
    // an oversized body by its declared length, readably.
    served
        .route_layer(from_fn_with_state(body_limit, bounds::limit_body))
        .merge(uploads)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), auth::guard))
        .layer(from_fn(bounds::limit_headers))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Design D's session/message API, and job event streams under /api/v1.
fn sessions_router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/sessions", post(sessions::create_session))
        .route(
            "/api/v1/sessions/{sid}",
            get(sessions::get_session).delete(sessions::delete_session),
        )
        .route(
            "/api/v1/sessions/{sid}/messages",
            post(sessions::post_message).get(sessions::list_messages),
        )
        .route(
            "/api/v1/sessions/{sid}/messages/{mid}/stream",
            get(message_stream::message_stream),
        )
        .route("/api/v1/sessions/{sid}/tasks", post(sessions::start_task))
        .route("/api/v1/messages/{mid}", get(sessions::get_message))
        .route("/api/v1/content/{id}", get(sessions::get_content))
        .route("/api/v1/jobs/{id}/stream", get(stream::status_stream))
        .route("/api/v1/jobs/{id}/events", get(stream::job_events))
}

async fn health(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let redis_ok = state.queue.ping().await.is_ok();
    let worker_restarts = state.restarts.count();
    let body = serde_json::json!({
        "status": if redis_ok && worker_restarts == 0 { "ok" } else { "degraded" },
        "workerRestarts": worker_restarts,
        "redis": if redis_ok { "ok" } else { "unavailable" },
        "instance": state.instance,
        "uptimeSecs": state.started.elapsed().as_secs(),
        "model": state.model,
        "hub": state.hub.stats(),
        "handlers": state.intake.registry.versions(),
        "queues": state.intake.routes.keys().collect::<Vec<_>>(),
    });
    let status = if redis_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// A chat page with live job progress and queue stats, over the public API only.
async fn page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("page.html"))
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the README for the API")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}
