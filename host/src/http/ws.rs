//! The WebSocket channel, `GET /ws`: submit jobs and follow their events over one
//! socket. Client frames are JSON text:
//!
//! - `{"type": "submit", ...}`: without `queue`, the rest is the body of `POST
//!   /api/chat`; with `"queue": "..."`, the body of `POST /api/queues/{queue}/jobs`;
//! - `{"type": "watch", "jobId": "...", "lastId"?: "..."}`: follow an existing job.
//!
//! Server frames: `{"type": "accepted", ...}` (the HTTP 202 body), `{"type":
//! "event", "jobId", "id", "event", "data", "timestamp"}` for every event of each
//! job submitted or watched until its terminal one, and `{"type": "error", "code",
//! "message"}`. Events come from the job's stream, so any instance can serve them.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::{Extension, Json};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::AppState;
use super::error::ApiError;
use super::jobs::{CHAT_QUEUE, chat_submission, generic_submission, submit, visible_job};
use spool_core::access::Identity;
use spool_core::events::JobEvents;
use spool_core::follow::{Follower, Step};

/// Frames waiting to be written before readers of job events slow down.
const OUTBOX: usize = 256;

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
    Ok(upgrade.on_upgrade(move |socket| serve(state, caller, socket)))
}

async fn serve(state: Arc<AppState>, caller: Identity, mut socket: WebSocket) {
    let (outbox, mut frames) = mpsc::channel::<Value>(OUTBOX);
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(reply) = handle_frame(&state, &caller, &outbox, text.as_str()).await {
                        let _ = outbox.send(reply).await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {} // pings are answered by axum; binary frames are ignored
            },
            Some(frame) = frames.recv() => {
                if socket.send(Message::Text(frame.to_string().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Acts on one client frame; returns the immediate reply, if any.
async fn handle_frame(
    state: &Arc<AppState>,
    caller: &Identity,
    outbox: &mpsc::Sender<Value>,
    text: &str,
) -> Option<Value> {
    let frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => {
            return Some(error_frame(&ApiError::invalid(
                "malformed_json",
                e.to_string(),
            )));
        }
    };
    match frame["type"].as_str() {
        Some("submit") => {
            let mut body = frame;
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
            match accepted {
                Ok((_, Json(accepted))) => {
                    let job = accepted.job_id.clone();
                    let mut accepted = serde_json::to_value(accepted).unwrap_or_default();
                    accepted["type"] = json!("accepted");
                    let _ = outbox.send(accepted).await;
                    tokio::spawn(follow(state.clone(), job, "0".into(), outbox.clone()));
                    None
                }
                Err(error) => Some(error_frame(&error)),
            }
        }
        Some("watch") => {
            let Some(job) = frame["jobId"].as_str() else {
                return Some(error_frame(&ApiError::invalid(
                    "invalid_field",
                    "watch needs a `jobId`",
                )));
            };
            if let Err(error) = visible_job(state, caller, job).await {
                return Some(error_frame(&error));
            }
            let after = frame["lastId"].as_str().unwrap_or("0").to_owned();
            tokio::spawn(follow(state.clone(), job.to_owned(), after, outbox.clone()));
            None
        }
        _ => Some(error_frame(&ApiError::invalid(
            "invalid_field",
            "`type` must be `submit` or `watch`",
        ))),
    }
}

/// Forwards one job's events to the socket until its terminal event.
async fn follow(state: Arc<AppState>, job: String, after: String, outbox: mpsc::Sender<Value>) {
    let source = JobEvents {
        queue: state.queue.clone(),
        job_id: job.clone(),
    };
    let mut follower =
        match Follower::open(&state.redis, source, after, state.quiet_interval()).await {
            Ok(follower) => follower,
            Err(error) => {
                let _ = outbox.send(error_frame(&error.into())).await;
                return;
            }
        };
    while let Some(step) = follower.next().await {
        let frame = match step {
            Step::Entry(event) => json!({
                "type": "event", "jobId": job, "id": event.id, "event": event.event_type,
                "data": event.data, "timestamp": event.timestamp,
            }),
            Step::Quiet => continue,
            Step::Failed(error) => error_frame(&error.into()),
        };
        if outbox.send(frame).await.is_err() {
            return;
        }
    }
}

fn error_frame(error: &ApiError) -> Value {
    json!({ "type": "error", "code": error.code, "message": error.message })
}
