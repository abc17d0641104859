//! The WebSocket channel, `GET /ws`: submit jobs and follow their events over one
//! socket. Client frames are JSON text:
//!
//! - `{"type": "submit", ...}`: without `queue`, the rest is the body of `POST
//!   /api/chat`; with `"queue": "..."`, the body of `POST /api/queues/{queue}/jobs`;
//! - `{"type": "watch", "jobId": "...", "lastId"?: "..."}`: follow an existing job
//!   (again from `lastId` if it is already followed).
//!
//! Server frames: `{"type": "accepted", ...}` (the HTTP 202 body), `{"type":
//! "event", "jobId", "id", "event", "data", "timestamp"}` for every event of each
//! job submitted or watched until its terminal one, and `{"type": "error", "code",
//! "message"}`; an error that ends a watch early (`slow_consumer`,
//! `store_unavailable`) also names its `jobId` and the `lastId` to watch again
//! from. Events come from the instance's hub, so any instance can serve them.
//!
//! One task per socket does everything: it reads the client's frames, polls the
//! socket's watches and writes, so nothing outlives the socket and nothing waits
//! on a queue only it drains. A message over the API's body limit closes the
//! socket with 1009; a socket follows at most `[hub] max_watches_per_socket` jobs.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::Response;
use axum::{Extension, Json};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};
use tokio_stream::StreamMap;

use super::AppState;
use super::error::ApiError;
use super::job_view::CHAT_QUEUE;
use super::jobs::{chat_submission, generic_submission, submit, visible_job};
use super::stream::{refused, stream_position};
use spool_core::access::Identity;
use spool_core::follow::{Follower, Step};

/// A client that takes longer than this to accept one frame is cut off.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The socket's followed jobs by id, each a stream of frames to send.
type Watches = StreamMap<String, Pin<Box<dyn Stream<Item = Value> + Send>>>;

/// Submit and watch jobs over one socket (see the module's frame list).
#[utoipa::path(get, path = "/ws", tag = "jobs", params(super::schemas::WebSocketHandshake),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket opening handshake", body = super::error::ErrorBody)))]
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Identity>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|refusal| {
        ApiError::new(refusal.status(), "not_a_websocket", refusal.body_text())
    })?;
    let limit = state.body_limit_bytes;
    Ok(upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| serve(state, caller, socket)))
}

async fn serve(state: Arc<AppState>, caller: Identity, mut socket: WebSocket) {
    let mut watches = Watches::new();
    loop {
        let frames = tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    handle_frame(&state, &caller, &mut watches, text.as_str()).await
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(error)) => return refuse(socket, error, state.body_limit_bytes).await,
                Some(Ok(_)) => continue, // pings are answered by axum; binary frames are ignored
            },
            Some((_, frame)) = watches.next() => vec![frame],
        };
        for frame in frames {
            let sent = tokio::time::timeout(
                SEND_TIMEOUT,
                socket.send(Message::Text(frame.to_string().into())),
            )
            .await;
            if !matches!(sent, Ok(Ok(()))) {
                return;
            }
        }
    }
}

/// Ends the socket after a failed read; a message over the limit is told why.
async fn refuse(mut socket: WebSocket, error: axum::Error, limit: usize) {
    let too_long = matches!(
        error.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    );
    if too_long {
        let close = CloseFrame {
            code: close_code::SIZE,
            reason: format!("a message may have at most {limit} bytes (body_limit_bytes)").into(),
        };
        let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Close(Some(close)))).await;
    }
}

/// Acts on one client frame; returns the frames to send back at once.
async fn handle_frame(
    state: &Arc<AppState>,
    caller: &Identity,
    watches: &mut Watches,
    text: &str,
) -> Vec<Value> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => {
            return vec![error_frame(&ApiError::invalid(
                "malformed_json",
                e.to_string(),
            ))];
        }
    };
    match frame["type"].as_str() {
        Some("submit") => submit_and_follow(state, caller, watches, frame).await,
        Some("watch") => {
            let Some(job) = frame["jobId"].as_str() else {
                return vec![error_frame(&ApiError::invalid(
                    "invalid_field",
                    "watch needs a `jobId`",
                ))];
            };
            let after = match stream_position(frame["lastId"].as_str().unwrap_or("0")) {
                Ok(after) => after,
                Err(error) => return vec![error_frame(&error)],
            };
            if !watches.contains_key(job)
                && let Err(error) = room_for_one_more(state, watches)
            {
                return vec![error_frame(&error)];
            }
            if let Err(error) = visible_job(state, caller, job).await {
                return vec![error_frame(&error)];
            }
            match follow(state, caller, job, &after).await {
                Ok(frames) => {
                    watches.insert(job.to_owned(), frames);
                    Vec::new()
                }
                Err(error) => vec![error_frame(&error)],
            }
        }
        _ => vec![error_frame(&ApiError::invalid(
            "invalid_field",
            "`type` must be `submit` or `watch`",
        ))],
    }
}

async fn submit_and_follow(
    state: &Arc<AppState>,
    caller: &Identity,
    watches: &mut Watches,
    mut body: Value,
) -> Vec<Value> {
    // A job this socket could not follow is not submitted.
    if let Err(error) = room_for_one_more(state, watches) {
        return vec![error_frame(&error)];
    }
    let queue = body.as_object_mut().and_then(|object| {
        object.remove("type");
        object.remove("queue")
    });
    // As over HTTP: without `queue` the frame is POST /api/chat's body,
    // with one it is POST /api/queues/{queue}/jobs's.
    let submission = match queue {
        None => chat_submission(body).map(|s| (CHAT_QUEUE.to_owned(), s)),
        Some(Value::String(queue)) => generic_submission(body).map(|s| (queue, s)),
        Some(_) => Err(ApiError::invalid(
            "invalid_field",
            "`queue` must be a string",
        )),
    };
    let accepted = match submission {
        Ok((queue, submission)) => submit(state, caller, &queue, submission).await,
        Err(error) => Err(error),
    };
    let (job, mut accepted) = match accepted {
        Ok((_, Json(accepted))) => (
            accepted.job_id.clone(),
            serde_json::to_value(accepted).unwrap_or_default(),
        ),
        Err(error) => return vec![error_frame(&error)],
    };
    accepted["type"] = json!("accepted");
    match follow(state, caller, &job, "0").await {
        Ok(frames) => {
            watches.insert(job, frames);
            vec![accepted]
        }
        // Accepted all the same; the client may watch it later.
        Err(error) => vec![accepted, error_frame(&error)],
    }
}

fn room_for_one_more(state: &AppState, watches: &Watches) -> Result<(), ApiError> {
    let cap = state.hub.config().max_watches_per_socket;
    if watches.len() < cap {
        return Ok(());
    }
    Err(ApiError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        "too_many_watches_on_socket",
        format!(
            "this socket follows {cap} jobs already (hub.max_watches_per_socket); wait for one to end or open another socket"
        ),
    ))
}

/// One job's events as frames, until its terminal event or an interruption
/// (whose frame says where to watch again from).
async fn follow(
    state: &AppState,
    caller: &Identity,
    job: &str,
    after: &str,
) -> Result<Pin<Box<dyn Stream<Item = Value> + Send>>, ApiError> {
    let source = super::jobs::job_events(state, job).await?;
    let follower = Follower::open(
        &state.hub,
        source,
        after,
        state.quiet_interval(),
        &caller.key_id,
    )
    .await
    .map_err(refused)?;
    let job = job.to_owned();
    let frames = follower.into_stream().filter_map(move |step| {
        let frame = match step {
            Step::Entry(event) => Some(json!({
                "type": "event", "jobId": job, "id": event.id, "event": event.event_type,
                "data": event.data, "timestamp": event.timestamp,
            })),
            Step::Quiet => None,
            Step::Interrupted(interruption) => Some(json!({
                "type": "error", "code": interruption.cause.code(),
                "message": interruption.cause.message(), "jobId": job, "lastId": interruption.last_id,
            })),
        };
        std::future::ready(frame)
    });
    Ok(Box::pin(frames))
}

fn error_frame(error: &ApiError) -> Value {
    json!({ "type": "error", "code": error.code, "message": error.message })
}
