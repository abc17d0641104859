#![allow(dead_code)] // Shared by the conversation and replica tests.
//! A conversation client for the tests: one WebSocket on `/ws/{conversation}`
//! (directly to an instance, or through nginx), reading JSON frames.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct ChatClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every frame received, in order.
    pub frames: Vec<Value>,
}

/// `ws://` for an `http://` base.
pub fn socket_url(base: &str, conversation: &str, last_id: Option<&str>) -> String {
    let mut url = base.replace("http://", "ws://") + "/ws/" + conversation;
    if let Some(last) = last_id {
        url += if url.contains('?') { "&" } else { "?" };
        url += &format!("last_id={last}");
    }
    url
}

impl ChatClient {
    pub async fn connect(base: &str, conversation: &str, last_id: Option<&str>) -> Self {
        Self::try_connect(base, conversation, last_id)
            .await
            .unwrap_or_else(|error| panic!("a conversation socket on {base} opens: {error}"))
    }

    pub async fn try_connect(
        base: &str,
        conversation: &str,
        last_id: Option<&str>,
    ) -> Result<Self, String> {
        let url = socket_url(base, conversation, last_id);
        let (socket, _) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(Self {
            socket,
            frames: Vec::new(),
        })
    }

    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("the frame is sent");
    }

    /// The next text frame as JSON; None on timeout or when the socket ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let text = self.next_text(timeout).await?;
        let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
        self.frames.push(frame.clone());
        Some(frame)
    }

    /// The next text frame as sent.
    pub async fn next_text(&mut self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => return Some(text.as_str().to_owned()),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Frames until one matches `done` (included); panics after `timeout`.
    pub async fn until(&mut self, timeout: Duration, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(frame) = self.next(left).await else {
                panic!("no matching frame within {timeout:?}; got {got:#?}");
            };
            let finished = done(&frame);
            got.push(frame);
            if finished {
                return got;
            }
        }
    }

    /// Frames arriving within `quiet` of each other, until a pause.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        while let Some(frame) = self.next(quiet).await {
            got.push(frame);
        }
        got
    }

    pub fn last_id(&self) -> Option<String> {
        self.frames
            .iter()
            .rev()
            .find_map(|f| f["id"].as_str().map(str::to_owned))
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Whether a frame is the bot's final event for `job`.
pub fn is_answer_end(frame: &Value, job: &str) -> bool {
    frame["type"] == "event"
        && frame["jobId"] == job
        && matches!(
            frame["event"].as_str(),
            Some("task_completed" | "task_failed" | "task_cancelled")
        )
}

/// The ids of frames, in order.
pub fn ids(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter_map(|f| f["id"].as_str().map(str::to_owned))
        .collect()
}

/// The text the bot streamed for `job`, from its `text_delta` events.
pub fn streamed_text(frames: &[Value], job: &str) -> String {
    frames
        .iter()
        .filter(|f| f["jobId"] == job && f["event"] == "text_delta")
        .filter_map(|f| f["data"]["text"].as_str())
        .collect()
}
