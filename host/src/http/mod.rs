//! The HTTP API (axum on hyper). Owns routing, request validation and response
//! shapes; the work itself is the queue's, the runtime's and the events module's.

mod admin;
pub mod auth;
mod bounds;
mod bulk;
mod chat;
mod console;
mod conversation_entry;
mod dead;
mod embeddings;
mod error;
mod health;
mod job_admin;
mod job_view;
mod job_wait;
mod jobs;
mod limits;
mod listing;
mod members;
mod message_stream;
pub mod metrics;
mod openai;
mod openapi;
mod schemas;
mod session_cleanup;
mod sessions;
mod status_events;
mod stream;
mod tasks;
mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::get;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Conversations (design B) and the bot answers relayed into them.
    pub conversations: spool_core::chat::Conversations,
    pub relays: Arc<spool_core::chat::relay::Relays>,
    /// Largest request body, and so largest WebSocket message, in bytes.
    pub body_limit_bytes: usize,
    /// Most jobs one bulk submission carries.
    pub bulk_max_jobs: usize,
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
    /// The admin routes (and the health probes).
    Admin,
}

/// The API. Routes are grouped by the role they need (see `auth`); every
/// request passes the header, host, origin and key checks first. Every route
/// is registered with its `#[utoipa::path]`, so none is served undescribed.
pub fn router(state: Arc<AppState>, body_limit: usize, routes: Routes) -> Router {
    let (served, uploads) = match routes {
        Routes::All => (
            probes()
                .merge(open())
                .merge(reader())
                .merge(submitter())
                .merge(sessions())
                .merge(admin())
                .merge(session_admin()),
            uploads(),
        ),
        Routes::Public => (
            probes()
                .merge(open())
                .merge(reader())
                .merge(submitter())
                .merge(sessions()),
            OpenApiRouter::new(),
        ),
        Routes::Admin => (probes().merge(admin()).merge(session_admin()), uploads()),
    };
    let description = openapi::Description::of(all_routes());
    let (served, _) = served.split_for_parts();
    let (uploads, _) = uploads.split_for_parts();
    // Every route but the component upload (which has its own limit) refuses
    // an oversized body by its declared length, readably.
    served
        .route("/openapi.json", get(move || description.serve()))
        .route_layer(from_fn_with_state(body_limit, bounds::limit_body))
        .merge(uploads)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), auth::guard))
        .layer(from_fn(bounds::limit_headers))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Every route of the API, for its description.
fn all_routes() -> OpenApiRouter<Arc<AppState>> {
    probes()
        .merge(open())
        .merge(reader())
        .merge(submitter())
        .merge(sessions())
        .merge(admin())
        .merge(session_admin())
        .merge(uploads())
}

/// For orchestrators: every listener answers these.
fn probes() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(health::ready))
}

fn open() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(console::index))
        .routes(routes!(console::asset))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
}

fn reader() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(jobs::stats))
        .routes(routes!(limits::limits))
        .routes(routes!(metrics::monitoring))
        .routes(routes!(metrics::prometheus))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Reader, request, next)
        }))
}

fn submitter() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(jobs::submit_chat))
        .routes(routes!(jobs::submit_generic))
        .routes(routes!(bulk::submit_generic_bulk))
        .routes(routes!(bulk::submit_chat_bulk))
        .routes(routes!(jobs::get_job, jobs::cancel))
        .routes(routes!(stream::job_events))
        .routes(routes!(stream::status_stream))
        .routes(routes!(ws::upgrade))
        .routes(routes!(stream::v1_status_stream))
        .routes(routes!(stream::v1_job_events))
        .routes(routes!(embeddings::embed))
        .routes(routes!(openai::chat::completions))
        .routes(routes!(openai::embeddings::embeddings))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Submitter, request, next)
        }))
}

/// Sessions and conversations.
fn sessions() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(chat::conversation_socket))
        .routes(routes!(chat::conversation_history))
        .routes(routes!(members::list_members))
        .routes(routes!(members::add_member, members::remove_member))
        .routes(routes!(sessions::create_session))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::post_message, sessions::list_messages))
        .routes(routes!(session_cleanup::cleanup_session))
        .routes(routes!(message_stream::message_stream))
        .routes(routes!(tasks::start_task))
        .routes(routes!(sessions::get_message))
        .routes(routes!(sessions::get_content))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Submitter, request, next)
        }))
}

fn admin() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(jobs::pause))
        .routes(routes!(jobs::resume))
        .routes(routes!(jobs::history))
        .routes(routes!(listing::list))
        .routes(routes!(dead::list, dead::purge_all))
        .routes(routes!(dead::purge_one))
        .routes(routes!(dead::replay))
        .routes(routes!(job_admin::promote))
        .routes(routes!(job_admin::payload))
        .routes(routes!(limits::set_rate, limits::clear_rate))
        .merge(admin::routes())
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Admin, request, next)
        }))
}

/// The sessions' admin routes.
fn session_admin() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(session_cleanup::cleanup))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Admin, request, next)
        }))
}

/// The component upload: its limit is the registry's (checked while
/// reading), not the API's body limit.
fn uploads() -> OpenApiRouter<Arc<AppState>> {
    admin::upload_routes().route_layer(from_fn(|request, next| {
        auth::require(Role::Admin, request, next)
    }))
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
