//! GET /api/v1/sessions/{sid}/messages/{mid}/stream: a message's events over
//! SSE, from any instance, live until `message_end`. Each frame carries the
//! event's sequence number as its SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (or `?last_id=<seq>`) continues with the next event: no
//! gap, no duplicate (a stream id `ms-seq`, as `stream_error` gives, works
//! too). Each frame's JSON is design D's envelope, `{event_type, message_id,
//! session_id, sequence, payload}` (a `text_delta`'s payload with `delta`),
//! and beside it spool's own, `{seq, type, data, timestamp}`. A quiet stream
//! gets `ping` events (no id; never stored). If the store becomes
//! unreachable, or the client reads slower than the message grows, the stream
//! ends with a `stream_error` event carrying `lastId` (not to be confused
//! with the message's own `error` event): reconnect to resume.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use serde_json::{Map, Value, json};

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::sessions::{checked_id, visible_message};
use super::stream::{StreamQuery, refused, resume_text, sse_steps, stream_position};
use spool_core::access::Identity;
use spool_core::follow::Follower;
use spool_core::store::{MessageEvent, MessageEventType, MessageEvents, StoreError};

/// A message's events over SSE (`message_start`, `text_delta`, `content_added`,
/// `task_*`, `message_end`, ...), each with its sequence number as its `id`,
/// in design D's envelope and spool's.
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
    let after = match resume_text(&headers, query)? {
        Some(seq) if seq.bytes().all(|b| b.is_ascii_digit()) => {
            // Past any message's last event, however large.
            let seq = seq.parse().unwrap_or(u64::MAX);
            state.sessions.position_after_seq(&sid, &mid, seq).await?
        }
        Some(id) => stream_position(&id)?,
        None => "0-0".into(),
    };
    let (session_id, message_id) = (sid.clone(), mid.clone());
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
    Ok(Sse::new(sse_steps(follower, move |event: MessageEvent| {
        let data = envelope(&session_id, &message_id, &event);
        vec![
            SseEvent::default()
                .id(event.seq.to_string())
                .event(event.event_type)
                .data(data.to_string()),
        ]
    })))
}

/// One frame's JSON: design D's `StreamEvent` and spool's fields side by side.
fn envelope(session_id: &str, message_id: &str, event: &MessageEvent) -> Value {
    let mut payload = match &event.data {
        Value::Object(fields) => fields.clone(),
        _ => Map::new(),
    };
    // Design D names a text delta's text `delta`; spool's data calls it `text`.
    if event.event_type == MessageEventType::TextDelta.as_str()
        && let Some(text) = payload.get("text").cloned()
    {
        payload.insert("delta".into(), text);
    }
    json!({
        "event_type": event.event_type,
        "message_id": message_id,
        "session_id": session_id,
        "sequence": event.seq,
        "payload": payload,
        "seq": event.seq,
        "type": event.event_type,
        "data": event.data,
        "timestamp": event.timestamp,
    })
}
