//! GET /api/v1/sessions/{sid}/messages/{mid}/stream: a message's events over
//! SSE, from any instance, live until `message_end`. Each frame carries the
//! event's stream id as its SSE `id`, so a client that reconnects with
//! `Last-Event-ID` (or `?last_id=`) continues with the next event: no gap, no
//! duplicate. A quiet stream gets `ping` events (no id; never stored). If the
//! store becomes unreachable the stream ends with a `stream_error` event (not
//! to be confused with the message's own `error` event): reconnect to resume.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, Sse};
use futures_util::Stream;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ApiPath, ApiQuery};
use super::sessions::checked_id;
use super::stream::validate_stream_id;
use spool_core::queue::now_ms;
use spool_core::store::{FINAL_STATUSES, MessageEvent, StoreError, read_events};

#[derive(Deserialize)]
pub struct StreamQuery {
    last_id: Option<String>,
}

pub async fn message_stream(
    State(state): State<Arc<AppState>>,
    ApiPath((sid, mid)): ApiPath<(String, String)>,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    checked_id("session", &sid)?;
    checked_id("message", &mid)?;
    match state.sessions.message_status(&mid).await? {
        Some((session, _)) if session == sid => {}
        _ => return Err(StoreError::MessageNotFound(mid).into()),
    }
    let resume_from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.last_id);
    let after = resume_from.unwrap_or_else(|| "0".into());
    validate_stream_id(&after)?;
    let ping_every =
        Duration::from_millis(state.sessions.config().ping_interval_ms.clamp(50, 60_000));
    let config = AsyncConnectionConfig::new()
        .set_response_timeout(Some(ping_every + Duration::from_secs(5)));
    let connection = state
        .redis
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let follower = Follower {
        state,
        sid,
        mid,
        after,
        ping_every,
        connection,
        buffered: VecDeque::new(),
        finished: false,
    };
    Ok(Sse::new(futures_util::stream::unfold(
        follower,
        Follower::next,
    )))
}

/// Follows one message's event stream until `message_end`.
struct Follower {
    state: Arc<AppState>,
    sid: String,
    mid: String,
    after: String,
    ping_every: Duration,
    connection: MultiplexedConnection,
    buffered: VecDeque<MessageEvent>,
    finished: bool,
}

impl Follower {
    async fn next(mut self) -> Option<(Result<SseEvent, Infallible>, Self)> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                self.finished = event.event_type == "message_end";
                let data = json!({ "seq": event.seq, "type": event.event_type, "data": event.data, "timestamp": event.timestamp });
                let sse = SseEvent::default()
                    .id(event.id)
                    .event(event.event_type)
                    .data(data.to_string());
                return Some((Ok(sse), self));
            }
            if self.finished {
                return None;
            }
            match read_events(
                &mut self.connection,
                &self.sid,
                &self.mid,
                &self.after,
                Some(self.ping_every),
            )
            .await
            {
                Ok(batch) if !batch.is_empty() => {
                    if let Some(last) = batch.last() {
                        self.after = last.id.clone();
                    }
                    self.buffered.extend(batch);
                }
                // Quiet: end if the message is gone or already ended (its
                // message_end trimmed away); otherwise send a heartbeat.
                Ok(_) => match self.state.sessions.message_status(&self.mid).await {
                    Ok(Some((_, status))) if !FINAL_STATUSES.contains(&status.as_str()) => {
                        let ping = SseEvent::default()
                            .event("ping")
                            .data(json!({ "type": "ping", "timestamp": now_ms() }).to_string());
                        return Some((Ok(ping), self));
                    }
                    _ => return None,
                },
                Err(error) => {
                    tracing::warn!(message = %self.mid, %error, "message stream read failed; closing the SSE stream");
                    let sse = SseEvent::default().event("stream_error").data(
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
