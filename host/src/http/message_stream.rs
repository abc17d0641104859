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
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::sessions::{checked_id, visible_message};
use super::stream::{refused, sse_steps, validate_stream_id};
use spool_core::access::Identity;
use spool_core::follow::Follower;
use spool_core::store::{MessageEvent, MessageEvents, StoreError};

#[derive(Deserialize)]
pub struct StreamQuery {
    last_id: Option<String>,
}

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
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_id);
    let after = resume_from.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
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
