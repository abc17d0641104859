//! Job event streams over HTTP: GET /stream/status/{id} (SSE, live until the job
//! ends, resumable with `Last-Event-ID` or `?last_id=`; each state change also
//! as design E's unnamed status event, see `status_events.rs`) and GET
//! /api/job/{id}/events (a JSON page of the same events, plus stream info).
//! Also the SSE rendering every followed stream shares ([`sse_steps`]), and
//! how a refused watcher is answered ([`refused`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::{Extension, Json};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::job_view::JobView;
use super::jobs::{job_not_found, visible_job};
use super::schemas::StreamInfo;
use super::status_events::StatusLine;
use spool_core::access::Identity;
use spool_core::events::{self, Event, JobEvents};
use spool_core::follow::{Follower, Source, Step};
use spool_core::hub::{Position, Refusal};
use spool_core::queue::now_ms;

/// Where a stream resumes: after this entry id (the `Last-Event-ID` header wins).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    #[param(
        pattern = "^[0-9]+(-[0-9]+)?$",
        example = "1700000000000-0",
        nullable = false
    )]
    last_id: Option<String>,
}

/// The SSE stream of a job: a `state` snapshot, then every event (`task_started`,
/// `task_progress`, ..., custom types) with its stream id, `ping` when quiet,
/// until the job's terminal event. A job that queued later stages (follow-up
/// jobs) goes on with their events, each naming its stage in `jobId`, until
/// the last stage's end. Resumable with `Last-Event-ID` or `last_id`.
/// Before each event that changes the job's state or progress comes an
/// unnamed one (what `EventSource.onmessage` receives; design E's page):
/// `{"type": "status", "jobId", "state", "progress"}`.
#[utoipa::path(get, path = "/stream/status/{id}", tag = "jobs",
    params(super::schemas::JobPath, StreamQuery,
        super::schemas::ResumeHeader),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = super::schemas::ServerSentEvent),
        (status = 404, description = "No such job", body = super::error::ErrorBody)))]
pub async fn status_stream(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let record = visible_job(&state, &caller, &id).await?;
    let after = resume_point(&headers, query)?;
    // Replayed from the start, the status line starts where the job did.
    let progress = if after == START { 0 } else { record.progress };
    let mut status_line = StatusLine::new(id.clone(), progress);
    let source = JobEvents::of(&state.queue, &record);
    let follower = Follower::open(
        &state.hub,
        source,
        &after,
        state.quiet_interval(),
        &caller.key_id,
    )
    .await
    .map_err(refused)?;
    let snapshot = SseEvent::default()
        .event("state")
        .data(serde_json::to_string(&JobView::from(&record)).unwrap_or_default());
    let events = sse_steps(follower, move |event: Event| {
        // The status first: should the connection drop between the two, the
        // resumed stream repeats it (harmless) rather than missing it.
        let status = status_line.status(&event);
        let mut data =
            json!({ "type": event.event_type, "data": event.data, "timestamp": event.timestamp });
        if let Some(stage) = &event.job_id {
            data["jobId"] = json!(stage);
        }
        let named = SseEvent::default()
            .id(event.id.clone())
            .event(event.event_type.clone())
            .data(data.to_string());
        status.into_iter().chain([named]).collect()
    });
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(snapshot)]), events);
    Ok(Sse::new(stream))
}

/// Renders a follower's steps as SSE: its entries, a `ping` event when quiet
/// (an event, not a comment, so clients see the heartbeat), and a
/// `stream_error` event before it ends early: `code` says why
/// (`slow_consumer`, `store_unavailable`) and `lastId` where to resume
/// (`Last-Event-ID`).
pub(super) fn sse_steps<S: Source>(
    follower: Follower<S>,
    mut render: impl FnMut(S::Entry) -> Vec<SseEvent> + Send + 'static,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::StreamExt::flat_map(follower.into_stream(), move |step| {
        let events = match step {
            Step::Entry(entry) => render(entry),
            Step::Quiet => vec![
                SseEvent::default()
                    .event("ping")
                    .data(json!({ "type": "ping", "timestamp": now_ms() }).to_string()),
            ],
            Step::Interrupted(interruption) => {
                tracing::debug!(cause = ?interruption.cause, "closing an SSE stream early; the client resumes");
                vec![
                    SseEvent::default().event("stream_error").data(
                        json!({
                            "code": interruption.cause.code(),
                            "error": interruption.cause.message(),
                            "lastId": interruption.last_id,
                        })
                        .to_string(),
                    ),
                ]
            }
        };
        futures_util::stream::iter(events.into_iter().map(Ok))
    })
}

/// Where a stream resumes: after the `Last-Event-ID` header's id (an empty
/// one means none), else `last_id`'s, else from the start.
pub(super) fn resume_point(headers: &HeaderMap, query: StreamQuery) -> Result<String, ApiError> {
    Ok(resume_text(headers, query)?
        .as_deref()
        .map(stream_position)
        .transpose()?
        .unwrap_or_else(|| START.into()))
}

/// A stream from its first entry.
const START: &str = "0-0";

/// The resume id as the client gave it (the header wins), once both given
/// are checked to be stream ids (a bare number is one too).
pub(super) fn resume_text(
    headers: &HeaderMap,
    query: StreamQuery,
) -> Result<Option<String>, ApiError> {
    let header = match headers.get("last-event-id") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| {
                ApiError::invalid("invalid_last_id", "the Last-Event-ID header is not text")
            })?;
            Some(text.to_owned()).filter(|id| !id.is_empty())
        }
    };
    // Both are checked when both are given, though the header wins.
    for given in [&header, &query.last_id].into_iter().flatten() {
        stream_position(given)?;
    }
    Ok(header.or(query.last_id))
}

/// A watcher the hub would not admit: over a cap (503 for the instance's,
/// 429 for the key's), a bad resume id, or the store unavailable.
pub(super) fn refused(refusal: Refusal) -> ApiError {
    let message = refusal.to_string();
    match refusal {
        Refusal::InstanceFull(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_watchers",
            message,
        ),
        Refusal::KeyFull(_) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers_for_key",
            message,
        ),
        Refusal::InvalidId(_) => ApiError::invalid("invalid_last_id", message),
        Refusal::Store(error) => error.into(),
    }
}

/// A stream id as Redis reads it (`ms-seq`, digits; too large a number is
/// the largest), or a 422 naming it.
pub(super) fn stream_position(id: &str) -> Result<String, ApiError> {
    Position::parse(id)
        .map(|position| position.to_string())
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_last_id",
                format!("`{id}` is not a stream id like 1700000000000-0"),
            )
        })
}

/// `GET /api/v1/jobs/{id}/stream`: the same stream under design D's prefix.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/stream", tag = "jobs",
    params(super::schemas::JobPath, StreamQuery,
        super::schemas::ResumeHeader),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = super::schemas::ServerSentEvent),
        (status = 404, description = "No such job", body = super::error::ErrorBody)))]
pub async fn v1_status_stream(
    state: State<Arc<AppState>>,
    caller: Extension<Identity>,
    id: ApiPath<String>,
    query: ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    status_stream(state, caller, id, query, headers).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Events after this entry id (default: from the start).
    #[param(
        pattern = "^[0-9]+(-[0-9]+)?$",
        example = "1700000000000-0",
        nullable = false
    )]
    last_id: Option<String>,
}

/// A job's event stream read as a page (design C's replay) with its info.
#[derive(Serialize, ToSchema)]
pub struct EventsPage {
    #[schema(value_type = StreamInfo)]
    info: Value,
    events: Vec<Event>,
}

/// A job's events after `last_id`, and how long its stream is.
#[utoipa::path(get, path = "/api/job/{id}/events", tag = "jobs",
    params(super::schemas::JobPath, EventsQuery),
    responses((status = 200, body = EventsPage), (status = 404, description = "No such job", body = super::error::ErrorBody)))]
pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    let after = stream_position(query.last_id.as_deref().unwrap_or("0"))?;
    let mut redis = state.queue.connection();
    // A job's events outlive its record only within its retention; a bound
    // caller sees events of its own live jobs only.
    let record = state.queue.job(&id).await?;
    let keys = match &record {
        Some(record) => state.queue.keys(&record.queue).job(&id),
        None => state
            .queue
            .job_keys(&id)
            .await?
            .ok_or_else(|| job_not_found(&id))?,
    };
    let info = events::info(&mut redis, &keys.events).await?;
    let visible = match &record {
        Some(record) => caller.owns(&record.user_id),
        None => caller.user.is_none() && info["length"] != 0,
    };
    if !visible {
        return Err(job_not_found(&id));
    }
    let page = events::read(&mut redis, &keys.events, &after, None).await?;
    Ok(Json(EventsPage { info, events: page }))
}

/// `GET /api/v1/jobs/{id}/events`: the same page under design D's prefix.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(super::schemas::JobPath, EventsQuery),
    responses((status = 200, body = EventsPage), (status = 404, description = "No such job", body = super::error::ErrorBody)))]
pub async fn v1_job_events(
    state: State<Arc<AppState>>,
    caller: Extension<Identity>,
    id: ApiPath<String>,
    query: ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    job_events(state, caller, id, query).await
}
