//! Job event streams over HTTP: GET /stream/status/{id} (SSE, live until the job
//! ends, resumable with `Last-Event-ID` or `?last_id=`) and GET
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
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::jobs::{job_not_found, visible_job};
use spool_core::access::Identity;
use spool_core::events::{self, Event, JobEvents};
use spool_core::follow::{Follower, Source, Step};
use spool_core::hub::Refusal;
use spool_core::queue::now_ms;

#[derive(Deserialize)]
pub struct StreamQuery {
    last_id: Option<String>,
}

pub async fn status_stream(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let record = visible_job(&state, &caller, &id).await?;
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_id);
    let after = resume_from.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
    let source = JobEvents {
        queue: state.queue.clone(),
        job_id: id,
    };
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
        .data(record.to_json().to_string());
    let events = sse_steps(follower, |event: Event| {
        SseEvent::default()
            .id(event.id.clone())
            .event(event.event_type.clone())
            .data(json!({ "type": event.event_type, "data": event.data, "timestamp": event.timestamp }).to_string())
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
    render: fn(S::Entry) -> SseEvent,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::StreamExt::map(follower.into_stream(), move |step| {
        Ok(match step {
            Step::Entry(entry) => render(entry),
            Step::Quiet => SseEvent::default()
                .event("ping")
                .data(json!({ "type": "ping", "timestamp": now_ms() }).to_string()),
            Step::Interrupted(interruption) => {
                tracing::debug!(cause = ?interruption.cause, "closing an SSE stream early; the client resumes");
                SseEvent::default().event("stream_error").data(
                    json!({
                        "code": interruption.cause.code(),
                        "error": interruption.cause.message(),
                        "lastId": interruption.last_id,
                    })
                    .to_string(),
                )
            }
        })
    })
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

pub(super) fn validate_stream_id(id: &str) -> Result<(), ApiError> {
    let mut parts = id.splitn(2, '-');
    let valid = parts
        .next()
        .is_some_and(|ms| !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
        && parts
            .next()
            .is_none_or(|seq| !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "invalid_last_id",
            format!("`{id}` is not a stream id like 1700000000000-0"),
        ))
    }
}

#[derive(Deserialize)]
pub struct EventsQuery {
    last_id: Option<String>,
}

pub async fn job_events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = query.last_id.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
    let mut redis = state.queue.connection();
    // A job's events outlive its record only within its retention; a bound
    // caller sees events of its own live jobs only.
    let record = state.queue.job(&id).await?;
    let info = events::info(&mut redis, &id).await?;
    let visible = match &record {
        Some(record) => caller.owns(&record.user_id),
        None => caller.user.is_none() && info["length"] != 0,
    };
    if !visible {
        return Err(job_not_found(&id));
    }
    let page = events::read(&mut redis, &id, &after, None).await?;
    Ok(Json(json!({ "info": info, "events": page })))
}
