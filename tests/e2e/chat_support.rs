#![allow(dead_code)] // Shared by the conversation and replica tests.
//! A conversation client for the tests: one WebSocket on `/ws/{conversation}`
//! (directly to an instance, or through nginx), reading JSON frames.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct ChatClient {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every frame received, in order.
    pub frames: Vec<Value>,
    /// The instance nginx chose (its `X-Spool-Upstream` header), if behind nginx.
    pub upstream: Option<String>,
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
        Self::try_connect_as(base, conversation, last_id, None).await
    }

    /// Connects presenting `key` (as `Authorization: Bearer`) when given.
    pub async fn try_connect_as(
        base: &str,
        conversation: &str,
        last_id: Option<&str>,
        key: Option<&str>,
    ) -> Result<Self, String> {
        let mut request = socket_url(base, conversation, last_id)
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some(key) = key {
            let bearer = format!("Bearer {key}").parse().map_err(|_| "a bad key")?;
            request.headers_mut().insert("authorization", bearer);
        }
        let (socket, response) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(request),
        )
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        let upstream = response
            .headers()
            .get("x-spool-upstream")
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        Ok(Self {
            socket,
            frames: Vec::new(),
            upstream,
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

    /// Whether the server closes the socket within `timeout` (frames before
    /// the close are kept); false when it is still open then.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(Message::Text(text)))) => self
                    .frames
                    .push(serde_json::from_str(&text).expect("frames are JSON")),
                Ok(Some(Ok(_))) => {}
            }
        }
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

/// A real nginx in front of spool instances, as the test's child: its own
/// config in a temp dir (round robin, WebSocket upgrade, no buffering), on a
/// free loopback port. Killed when dropped.
pub struct Nginx {
    pub base: String,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(upstreams: &[&str]) -> Self {
        let binary = ["nginx", "/usr/sbin/nginx"]
            .into_iter()
            .find(|candidate| {
                std::process::Command::new(candidate)
                    .arg("-v")
                    .output()
                    .is_ok_and(|out| out.status.success())
            })
            .unwrap_or_else(|| {
                panic!(
                    "nginx is not installed; the replica tests need it: apt-get install -y nginx (README command 2 and .ci/run install it)"
                )
            });
        let dir = tempfile::Builder::new()
            .prefix("spool-nginx-")
            .tempdir()
            .expect("temp dir");
        let port = crate::support::free_port();
        let servers: String = upstreams
            .iter()
            .map(|base| {
                format!(
                    "    server {} max_fails=1 fail_timeout=5s;\n",
                    base.trim_start_matches("http://")
                )
            })
            .collect();
        let path = dir.path().display();
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {path}/nginx.pid;\nerror_log {path}/error.log warn;\n\
events {{ worker_connections 8192; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {path}/body;\n  proxy_temp_path {path}/proxy;\n  fastcgi_temp_path {path}/fastcgi;\n  uwsgi_temp_path {path}/uwsgi;\n  scgi_temp_path {path}/scgi;\n\
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
  upstream spool {{\n{servers}  }}\n\
  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://spool;\n      proxy_http_version 1.1;\n\
      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_set_header Host $http_host;\n\
      proxy_buffering off;\n      proxy_read_timeout 1h;\n      proxy_connect_timeout 2s;\n      add_header X-Spool-Upstream $upstream_addr always;\n    }}\n  }}\n}}\n"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("nginx.conf");
        let child = std::process::Command::new(binary)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx starts");
        let nginx = Self {
            base: format!("http://127.0.0.1:{port}"),
            child,
            dir,
        };
        crate::support::wait_until("nginx listens", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        nginx
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
