//! GET /api/v1/sessions/{sid}/messages/{mid}/stream: a message's events over
//! SSE, from any instance, live until `message_end`. Each frame carries the
//! event's stream id as its SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (or `?last_id=`) continues with the next event: no gap, no
//! duplicate. A quiet stream gets `ping` events (no id; never stored). If the
//! store becomes unreachable, or the client reads slower than the message
//! grows, the stream ends with a `stream_error` event carrying `lastId` (not
//! to be confused with the message's own `error` event): reconnect to resume.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::sessions::{checked_id, visible_message};
use super::stream::{StreamQuery, refused, resume_point, sse_steps};
use spool_core::access::Identity;
use spool_core::follow::Follower;
use spool_core::store::{MessageEvent, MessageEvents, StoreError};

/// A message's events over SSE (`message_start`, `text_delta`, `content_added`,
/// `task_*`, `message_end`, ...), each with its stream id and sequence number.
#[utoipa::path(get, path = "/api/v1/sessions/{sid}/messages/{mid}/stream", tag = "sessions",
    params(super::schemas::SessionMessagePath,
        StreamQuery, super::schemas::ResumeHeader),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = super::schemas::ServerSentEvent),
        (status = 404, description = "No such message in this session", body = super::error::ErrorBody)))]
pub async fn message_stream(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    ApiPath((sid, mid)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    checked_id("session", &sid)?;
    if visible_message(&state, &caller, &mid).await? != sid {
        return Err(StoreError::MessageNotFound(mid).into());
    }
    let after = resume_point(&headers, query)?;
    let source = MessageEvents {
        store: state.sessions.clone(),
        session_id: sid,
        message_id: mid,
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
    Ok(Sse::new(sse_steps(follower, |event: MessageEvent| {
        let data = json!({ "seq": event.seq, "type": event.event_type, "data": event.data, "timestamp": event.timestamp });
        SseEvent::default()
            .id(event.id)
            .event(event.event_type)
            .data(data.to_string())
    })))
}
