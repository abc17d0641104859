//! A stub model server speaking both Ollama's and OpenAI's HTTP protocols, for tests,
//! benchmarks and `spool serve` when no real model is configured.
//!
//! Owns its HTTP server, its deterministic answers, the fault queue and the call
//! statistics. It borrows only the message types of `spool_core::models` and must not
//! reach into the rest of spool.
//!
//! Answers (tests rely on them exactly):
//! - chat: [`answer`], i.e. `[{model}] {n} messages; you said: {last}`, where `n` counts
//!   the messages received and `last` is the content of the last `user` message ("" if
//!   none). /api/generate counts `system` + `prompt` as 2 messages (1 without `system`),
//!   the prompt being the user message. Sampling parameters are ignored.
//! - streamed replies split the answer at word boundaries, each word keeping the
//!   whitespace after it, so the pieces concatenate to the answer; finish reason "stop".
//! - usage: prompt tokens = whitespace-separated words of all input texts, completion
//!   tokens = words of the answer.
//! - embeddings: [`embedding`].
//!
//! Control API (JSON) under `/_stub/`:
//! - `GET /_stub/stats` → [`StubStats`]: every model call, faulted ones included.
//! - `POST /_stub/faults` with an array of [`Fault`]s appends to the fault queue. Each
//!   model call consumes the first queued fault whose `paths` match it.
//! - `POST /_stub/config` `{"latency_ms", "chunk_delay_ms"}` (either optional) retimes replies.
//! - `POST /_stub/reset` clears the fault queue and the statistics.
//!
//! Here: the server, its shared state and the control API. `answers` computes
//! the deterministic answers, `faults` the fault queue's entries and error
//! bodies, `protocol` the model endpoints of both protocols.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use spool_core::models::BackendKind;

mod answers;
mod faults;
mod protocol;

pub use answers::{EMBEDDING_DIM, answer, embedding, word_pieces};
pub use faults::Fault;
use faults::fault_response;
use protocol::{
    ollama_chat, ollama_embed, ollama_generate, ollama_tags, openai_chat, openai_embed,
    openai_models,
};

#[derive(Clone, Debug, clap::Args)]
pub struct StubArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:11435")]
    pub listen: SocketAddr,
    /// Delay before the first byte of every model reply.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Delay between streamed pieces.
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
}

impl StubArgs {
    /// Loopback on a free port, without delays.
    pub fn ephemeral() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency_ms: 0,
            chunk_delay_ms: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StubStats {
    /// Model calls per path.
    pub calls: BTreeMap<String, u64>,
    pub total: u64,
    /// Every model call in arrival order.
    pub model_calls: Vec<ModelCall>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelCall {
    pub path: String,
    /// Arrival time in milliseconds since the stub started.
    pub at_ms: f64,
    /// Number of inputs of an embed call, else 1.
    pub items: usize,
    /// Only for calls answered by an injected fault: its status, or 200 for a mid-stream error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// A running stub; dropping it stops the server (gracefully, in the background).
pub struct StubServer {
    addr: SocketAddr,
    stub: Stub,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl StubServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL for clients; an unspecified listen address is reached over loopback.
    pub fn url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// The same as `GET /_stub/stats`, without a round trip.
    pub fn stats(&self) -> StubStats {
        self.stub.lock().stats.clone()
    }

    /// The same as `POST /_stub/faults`; returns the queue length.
    pub fn inject(&self, faults: impl IntoIterator<Item = Fault>) -> Result<usize, String> {
        self.stub.inject(faults.into_iter().collect())
    }

    /// The same as `POST /_stub/config` with both fields.
    pub fn set_timing(&self, latency_ms: u64, chunk_delay_ms: u64) {
        self.stub.lock().timing = Timing {
            latency_ms,
            chunk_delay_ms,
        };
    }

    /// The same as `POST /_stub/reset`.
    pub fn reset(&self) {
        self.stub.reset();
    }

    /// Stops accepting calls and waits for the ones in flight to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StubServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// As [`start`], on a thread and runtime of its own. An instance's built-in
/// model stands for a model server elsewhere. On the instance's runtime it
/// shared the one worker thread the instance keeps beside a local Redis
/// (about a sixth of that thread in `bench-compare`'s chat runs), and model
/// calls waited behind jobs for it.
pub async fn start_apart(args: &StubArgs) -> anyhow::Result<StubServer> {
    let (started, server) = oneshot::channel();
    let args = args.clone();
    std::thread::Builder::new()
        .name("spool-stub".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let runtime = match runtime {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started.send(Err(anyhow::Error::from(error)));
                    return;
                }
            };
            runtime.block_on(async move {
                match start(&args).await {
                    Ok(mut server) => {
                        // Served here until stopped; the caller holds the rest.
                        let serving = server.task.take();
                        let _ = started.send(Ok(server));
                        if let Some(serving) = serving {
                            let _ = serving.await;
                        }
                    }
                    Err(error) => {
                        let _ = started.send(Err(error));
                    }
                }
            });
        })
        .context("starting the stub model server's thread")?;
    server
        .await
        .context("the stub model server's thread ended before it served")?
}

/// Binds `args.listen` and serves the stub on the current runtime.
pub async fn start(args: &StubArgs) -> anyhow::Result<StubServer> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the stub model server to {}", args.listen))?;
    let addr = listener
        .local_addr()
        .context("reading the stub model server's address")?;
    let stub = Stub::new(Timing {
        latency_ms: args.latency_ms,
        chunk_delay_ms: args.chunk_delay_ms,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let app = router(stub.clone());
    let task = tokio::spawn(async move {
        // Streamed frames are small writes: without NODELAY, Nagle holds each
        // one until the client acknowledges the one before it.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let serving = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(error) = serving.await {
            tracing::warn!(%error, "stub model server failed");
        }
    });
    Ok(StubServer {
        addr,
        stub,
        stop: Some(stop),
        task: Some(task),
    })
}

/// `spool stub-model`: serves until ctrl-c.
pub async fn run(args: StubArgs) -> anyhow::Result<()> {
    let server = start(&args).await?;
    tracing::info!(url = %server.url(), "stub model server (Ollama and OpenAI protocols) listening");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    server.shutdown().await;
    Ok(())
}

fn router(stub: Stub) -> Router {
    Router::new()
        .route("/api/chat", post(ollama_chat))
        .route("/api/generate", post(ollama_generate))
        .route("/api/embed", post(ollama_embed))
        .route("/v1/chat/completions", post(openai_chat))
        .route("/v1/embeddings", post(openai_embed))
        .route("/api/tags", get(ollama_tags))
        .route(
            "/api/version",
            get(|| async { Json(json!({ "version": "0.0.0-stub" })) }),
        )
        .route("/v1/models", get(openai_models))
        .route(
            "/_stub/stats",
            get(|State(stub): State<Stub>| async move { Json(stub.lock().stats.clone()) }),
        )
        .route("/_stub/faults", post(add_faults))
        .route("/_stub/config", post(configure))
        .route(
            "/_stub/reset",
            post(|State(stub): State<Stub>| async move { stub.reset() }),
        )
        .with_state(stub)
}

#[derive(Clone)]
struct Stub {
    started: Instant,
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    timing: Timing,
    faults: VecDeque<Fault>,
    stats: StubStats,
}

#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Timing {
    latency_ms: u64,
    chunk_delay_ms: u64,
}

impl Stub {
    fn new(timing: Timing) -> Self {
        Self {
            started: Instant::now(),
            shared: Arc::new(Mutex::new(Shared {
                timing,
                ..Shared::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues all of `faults` or, if any is invalid, none of them.
    fn inject(&self, faults: Vec<Fault>) -> Result<usize, String> {
        for (index, fault) in faults.iter().enumerate() {
            fault.check().map_err(|e| format!("fault {index}: {e}"))?;
        }
        let mut shared = self.lock();
        shared.faults.extend(faults);
        Ok(shared.faults.len())
    }

    fn reset(&self) {
        let mut shared = self.lock();
        shared.faults.clear();
        shared.stats = StubStats::default();
    }

    /// Records a model call as it arrives and takes the fault that answers it, if any.
    fn record_call(&self, path: &str, items: usize) -> (Option<Fault>, Timing) {
        let at_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let mut shared = self.lock();
        let fault = shared.take_fault(path);
        let status = fault.as_ref().map(|fault| fault.status.unwrap_or(200));
        let stats = &mut shared.stats;
        *stats.calls.entry(path.to_owned()).or_default() += 1;
        stats.total += 1;
        stats.model_calls.push(ModelCall {
            path: path.to_owned(),
            at_ms,
            items,
            status,
        });
        (fault, shared.timing)
    }
}

impl Shared {
    fn take_fault(&mut self, path: &str) -> Option<Fault> {
        let index = self
            .faults
            .iter()
            .position(|fault| fault.applies_to(path))?;
        let fault = self.faults.get_mut(index)?;
        fault.times = fault.times.saturating_sub(1);
        if fault.times == 0 {
            self.faults.remove(index)
        } else {
            Some(fault.clone())
        }
    }
}

/// Records the call, waits out the latency, and either answers with an injected error
/// status (`Err`) or lets the endpoint answer, possibly failing part-way with the
/// returned message. Also returns the delay between streamed pieces.
async fn admit(
    stub: &Stub,
    kind: BackendKind,
    path: &'static str,
    items: usize,
) -> Result<(Option<String>, Duration), Response> {
    let (fault, timing) = stub.record_call(path, items);
    tracing::debug!(path, items, ?fault, "stub model call");
    if timing.latency_ms > 0 {
        // Not a zero sleep either: tokio would round it up to its next
        // timer tick, up to a millisecond on every call.
        tokio::time::sleep(Duration::from_millis(timing.latency_ms)).await;
    }
    let chunk_delay = Duration::from_millis(timing.chunk_delay_ms);
    match fault {
        None
        | Some(Fault {
            status: Some(200), ..
        }) => Ok((None, chunk_delay)),
        Some(Fault {
            midstream_error: Some(message),
            ..
        }) => Ok((Some(message), chunk_delay)),
        Some(fault) => Err(fault_response(kind, &fault)),
    }
}

async fn add_faults(State(stub): State<Stub>, body: Bytes) -> Response {
    let queued = serde_json::from_slice::<Vec<Fault>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|faults| stub.inject(faults));
    match queued {
        Ok(queued) => Json(json!({ "queued": queued })).into_response(),
        Err(message) => {
            (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
        }
    }
}

async fn configure(State(stub): State<Stub>, body: Bytes) -> Response {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TimingUpdate {
        latency_ms: Option<u64>,
        chunk_delay_ms: Option<u64>,
    }
    let update: TimingUpdate = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    let mut shared = stub.lock();
    let timing = &mut shared.timing;
    timing.latency_ms = update.latency_ms.unwrap_or(timing.latency_ms);
    timing.chunk_delay_ms = update.chunk_delay_ms.unwrap_or(timing.chunk_delay_ms);
    Json(*timing).into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;
    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    use serde_json::Value;

    use super::*;

    async fn call(
        http: &reqwest::Client,
        server: &StubServer,
        path: &str,
        body: Value,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let response = http
            .post(format!("{}{path}", server.url()))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }

    fn json_of(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn unstreamed_replies_have_the_single_object_forms() {
        let server = start(&StubArgs::ephemeral()).await.unwrap();
        let http = reqwest::Client::new();
        let messages = json!([{ "role": "user", "content": "hi there" }]);

        let (_, _, text) = call(
            &http,
            &server,
            "/api/chat",
            json!({ "model": "m", "messages": messages, "stream": false }),
        )
        .await;
        let reply = json_of(&text);
        assert_eq!(
            reply["message"]["content"],
            "[m] 1 messages; you said: hi there"
        );
        assert_eq!(
            (
                reply["done"].clone(),
                reply["prompt_eval_count"].clone(),
                reply["eval_count"].clone()
            ),
            (json!(true), json!(2), json!(7))
        );

        let (_, _, text) = call(
            &http,
            &server,
            "/api/generate",
            json!({ "model": "g", "prompt": "yo", "system": "s", "stream": false }),
        )
        .await;
        assert_eq!(json_of(&text)["response"], "[g] 2 messages; you said: yo");

        let (_, headers, text) = call(
            &http,
            &server,
            "/v1/chat/completions",
            json!({ "model": "o", "messages": messages }),
        )
        .await;
        let reply = json_of(&text);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            reply["choices"][0]["message"]["content"],
            "[o] 1 messages; you said: hi there"
        );
        assert_eq!(reply["usage"]["total_tokens"], 9);

        let (_, _, text) = call(
            &http,
            &server,
            "/api/embed",
            json!({ "model": "e", "input": "one" }),
        )
        .await;
        let vectors: Vec<Vec<f32>> =
            serde_json::from_value(json_of(&text)["embeddings"].clone()).unwrap();
        assert_eq!(vectors, [embedding("one")]);

        let (status, _, text) = call(
            &http,
            &server,
            "/v1/chat/completions",
            json!({ "messages": [] }),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            json_of(&text)["error"]["message"]
                .as_str()
                .unwrap()
                .contains("model"),
            "{text}"
        );
        assert_eq!(
            server.stats().total,
            4,
            "malformed calls are not model calls"
        );
    }

    #[tokio::test]
    async fn openai_stream_ends_with_usage_and_done() {
        let server = start(&StubArgs::ephemeral()).await.unwrap();
        let body = json!({ "model": "o", "messages": [{ "role": "user", "content": "x" }], "stream": true,
                           "stream_options": { "include_usage": true } });
        let (_, headers, text) = call(
            &reqwest::Client::new(),
            &server,
            "/v1/chat/completions",
            body,
        )
        .await;
        assert_eq!(headers[CONTENT_TYPE], "text/event-stream");
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|event| !event.is_empty())
            .collect();
        let pieces = word_pieces("[o] 1 messages; you said: x");
        assert_eq!(events.len(), pieces.len() + 3, "{text}");
        assert_eq!(events[events.len() - 1], "data: [DONE]");
        let usage = json_of(events[events.len() - 2].trim_start_matches("data: "));
        assert_eq!(usage["usage"]["completion_tokens"], 6);
    }

    #[tokio::test]
    async fn control_api_queues_faults_by_path_and_counts_calls() {
        let server = start(&StubArgs::ephemeral()).await.unwrap();
        let http = reqwest::Client::new();
        let faults = json!([
            { "status": 429, "retry_after_secs": 2, "times": 2, "paths": ["/api/embed"] },
            { "status": 503, "body": "<html>down</html>" },
        ]);
        let (status, _, text) = call(&http, &server, "/_stub/faults", faults).await;
        assert_eq!((status, json_of(&text)), (200, json!({ "queued": 2 })));
        let (status, _, _) = call(&http, &server, "/_stub/faults", json!([{ "times": 1 }])).await;
        assert_eq!(
            status, 400,
            "a fault without status or midstream_error is refused"
        );

        let embed = json!({ "model": "e", "input": ["a", "b"] });
        let chat = json!({ "model": "m", "messages": [], "stream": false });
        let (status, _, text) = call(&http, &server, "/api/chat", chat.clone()).await;
        assert_eq!(
            (status, text.as_str()),
            (503, "<html>down</html>"),
            "the first matching fault, not the first queued"
        );
        for _ in 0..2 {
            let (status, headers, text) = call(&http, &server, "/api/embed", embed.clone()).await;
            assert_eq!(
                (status, &headers[RETRY_AFTER]),
                (429, &HeaderValue::from_static("2"))
            );
            assert_eq!(
                json_of(&text),
                json!({ "error": "stub: injected HTTP 429" })
            );
        }
        assert_eq!(
            call(&http, &server, "/api/embed", embed).await.0,
            200,
            "the fault was used up"
        );

        let stats: StubStats = serde_json::from_str(
            &http
                .get(format!("{}/_stub/stats", server.url()))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(stats.total, 4);
        assert_eq!(
            stats.calls,
            BTreeMap::from([("/api/chat".to_owned(), 1), ("/api/embed".to_owned(), 3)])
        );
        let statuses: Vec<Option<u16>> = stats.model_calls.iter().map(|call| call.status).collect();
        assert_eq!(statuses, [Some(503), Some(429), Some(429), None]);
        assert_eq!(stats.model_calls[1].items, 2);
        assert!(
            stats
                .model_calls
                .windows(2)
                .all(|pair| pair[0].at_ms <= pair[1].at_ms)
        );

        let (status, _, _) = call(
            &http,
            &server,
            "/_stub/config",
            json!({ "latency_ms": 150 }),
        )
        .await;
        assert_eq!(status, 200);
        let started = Instant::now();
        assert_eq!(call(&http, &server, "/api/chat", chat).await.0, 200);
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "latency applies"
        );

        server
            .inject([Fault {
                midstream_error: Some("x".into()),
                ..Fault::default()
            }])
            .unwrap();
        assert_eq!(
            call(&http, &server, "/_stub/reset", json!(null)).await.0,
            200
        );
        assert_eq!(server.stats(), StubStats::default());
        assert_eq!(server.stub.lock().faults.len(), 0);

        for path in ["/api/tags", "/api/version", "/v1/models"] {
            let response = http
                .get(format!("{}{path}", server.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
        server.shutdown().await;
    }
}
