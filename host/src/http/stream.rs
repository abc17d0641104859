//! Job event streams over HTTP: GET /stream/status/{id} (SSE, live until the job
//! ends, resumable with `Last-Event-ID` or `?last_id=`) and GET
//! /api/job/{id}/events (a JSON page of the same events, plus stream info).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::jobs::job_not_found;
use spool_core::events::{self, Event};

/// How long one blocking read waits before the job's state is re-checked.
const READ_BLOCK: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct StreamQuery {
    last_id: Option<String>,
}

pub async fn status_stream(
    State(state): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let record = state
        .queue
        .job(&id)
        .await?
        .ok_or_else(|| job_not_found(&id))?;
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_id);
    let after = resume_from.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(READ_BLOCK + Duration::from_secs(5)));
    let connection = state
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await?;

    let snapshot = SseEvent::default()
        .event("state")
        .data(record.to_json().to_string());
    let reader = Reader {
        state,
        job_id: id,
        after,
        connection,
        buffered: VecDeque::new(),
        finished: false,
    };
    let events = futures_util::stream::unfold(reader, Reader::next);
    let stream = futures_util::StreamExt::chain(futures_util::stream::iter([Ok(snapshot)]), events);
    // Heartbeats are `ping` events (design D), so clients see them as events.
    let ping = SseEvent::default().event("ping").data("{}");
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).event(ping)))
}

/// Follows one job's event stream until its terminal event.
struct Reader {
    state: Arc<AppState>,
    job_id: String,
    after: String,
    connection: MultiplexedConnection,
    buffered: VecDeque<Event>,
    finished: bool,
}

impl Reader {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.finished = event.is_terminal();
                let sse = SseEvent::default()
                    .id(event.id.clone())
                    .event(event.event_type.clone())
                    .data(json!({ "type": event.event_type, "data": event.data, "timestamp": event.timestamp }).to_string());
                return Some((Ok(sse), self));
            }
            if self.finished {
                return None;
            }
            match events::read(
                &mut self.connection,
                &self.job_id,
                &self.after,
                Some(READ_BLOCK),
            )
            .await
            {
                Ok(batch) if !batch.is_empty() => {
                    if let Some(last) = batch.last() {
                        self.after = last.id.clone();
                    }
                    self.buffered.extend(batch);
                }
                // Quiet for a while: end if the job finished and its final event
                // is no longer in the stream (trimmed or expired).
                Ok(_) => match self.state.queue.job(&self.job_id).await {
                    Ok(Some(record)) if !record.state.is_terminal() => {}
                    _ => return None,
                },
                Err(error) => {
                    tracing::warn!(job = %self.job_id, %error, "event stream read failed; closing the SSE stream");
                    let sse = SseEvent::default().event("error").data(
                        json!({ "error": "event store unavailable; reconnect with Last-Event-ID" })
                            .to_string(),
                    );
                    self.finished = true;
                    return Some((Ok(sse), self));
                }
            }
        }
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
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let after = query.last_id.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
    let mut redis = state.queue.connection();
    let info = events::info(&mut redis, &id).await?;
    if info["length"] == 0 && state.queue.job(&id).await?.is_none() {
        return Err(job_not_found(&id));
    }
    let page = events::read(&mut redis, &id, &after, None).await?;
    Ok(Json(json!({ "info": info, "events": page })))
}
