//! A stub model server speaking both Ollama's and OpenAI's HTTP protocols, for tests,
//! benchmarks and `spool serve` when no real model is configured.
//!
//! Owns its HTTP server, its deterministic answers, the fault queue and the call
//! statistics. It borrows only the message types of `crate::models` and must not
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

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::models::{BackendKind, ChatMessage, Role};

pub const EMBEDDING_DIM: usize = 8;
const CREATED_AT: &str = "1970-01-01T00:00:00Z";

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

/// The stub's chat answer for `messages` sent to `model`.
pub fn answer(model: &str, messages: &[ChatMessage]) -> String {
    let last = messages
        .iter()
        .rev()
        .find(|message| message.role == Role::User);
    let last = last.map_or("", |message| message.content.as_str());
    format!("[{model}] {} messages; you said: {last}", messages.len())
}

/// The stub's embedding: `EMBEDDING_DIM` values in [-1, 1). With `s` = FNV-1a-64 of the
/// text's UTF-8 bytes and `z_i` the i-th output (from 1) of SplitMix64 seeded with `s`,
/// `v[i-1] = (z_i >> 40) / 2^23 - 1`, exact in f32 and stable everywhere.
pub fn embedding(text: &str) -> Vec<f32> {
    let mut state = fnv1a64(text.as_bytes());
    (0..EMBEDDING_DIM)
        .map(|_| (splitmix64(&mut state) >> 40) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect()
}

/// How the stub streams `text`: words with their trailing whitespace.
pub fn word_pieces(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let (mut piece_has_word, mut after_space) = (false, false);
    for (index, character) in text.char_indices() {
        let is_space = character.is_whitespace();
        if piece_has_word && after_space && !is_space {
            pieces.push(&text[start..index]);
            start = index;
        }
        piece_has_word |= !is_space;
        after_space = is_space;
    }
    if start < text.len() {
        pieces.push(&text[start..]);
    }
    pieces
}

fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One entry of the fault queue; `POST /_stub/faults` takes a JSON array of these.
/// Exactly one of `status` and `midstream_error` must be set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fault {
    /// Answer with this status (400..=599) and an error body in the protocol's format;
    /// 200 answers normally (a spacer: "the next call succeeds, the one after fails").
    pub status: Option<u16>,
    /// Sent as `Retry-After`.
    pub retry_after_secs: Option<u64>,
    /// Sent as `retry-after-ms`.
    pub retry_after_ms: Option<u64>,
    /// Extra response headers, e.g. `{"x-ratelimit-reset-requests": "6m0s"}`.
    pub headers: BTreeMap<String, String>,
    /// OpenAI error `code`, e.g. `insufficient_quota`.
    pub code: Option<String>,
    /// Replaces the error body: a JSON string is sent as plain text, other JSON as is.
    pub body: Option<Value>,
    /// Start a 200 stream, send one piece, then report this error in the protocol's
    /// stream format and close (no `done` / `[DONE]`). Non-streamed replies instead send
    /// half their body and drop the connection.
    pub midstream_error: Option<String>,
    /// How many calls this fault answers before it leaves the queue (default 1).
    pub times: u32,
    /// Model paths it applies to, e.g. `["/api/chat"]`; empty means all.
    pub paths: Vec<String>,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            status: None,
            retry_after_secs: None,
            retry_after_ms: None,
            headers: BTreeMap::new(),
            code: None,
            body: None,
            midstream_error: None,
            times: 1,
            paths: Vec::new(),
        }
    }
}

impl Fault {
    fn check(&self) -> Result<(), String> {
        match (self.status, &self.midstream_error) {
            (Some(status), None) if status != 200 && !(400..=599).contains(&status) => {
                return Err(format!(
                    "status {status} is neither 200 nor an error status (400..=599)"
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => return Err("a fault needs exactly one of `status` and `midstream_error`".into()),
        }
        if self.times == 0 {
            return Err("`times` must be at least 1".into());
        }
        for (name, value) in &self.headers {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("header name {name:?}: {e}"))?;
            HeaderValue::from_str(value)
                .map_err(|e| format!("header {name} value {value:?}: {e}"))?;
        }
        Ok(())
    }

    fn applies_to(&self, path: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|candidate| candidate == path)
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
    tokio::time::sleep(Duration::from_millis(timing.latency_ms)).await;
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

fn fault_response(kind: BackendKind, fault: &Fault) -> Response {
    let status = fault
        .status
        .and_then(|status| StatusCode::from_u16(status).ok());
    let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let rate_limited_openai =
        kind == BackendKind::Openai && status == StatusCode::TOO_MANY_REQUESTS;
    let code = fault
        .code
        .as_deref()
        .or(rate_limited_openai.then_some("rate_limit_exceeded"));
    let mut response = match &fault.body {
        Some(Value::String(text)) => (status, text.clone()).into_response(),
        Some(body) => (status, Json(body.clone())).into_response(),
        None => error_response(
            kind,
            status,
            &format!("stub: injected HTTP {}", status.as_u16()),
            code,
        ),
    };
    let headers = response.headers_mut();
    if let Some(secs) = fault.retry_after_secs {
        headers.insert(RETRY_AFTER, secs.into());
    }
    if let Some(ms) = fault.retry_after_ms {
        headers.insert(HeaderName::from_static("retry-after-ms"), ms.into());
    }
    if rate_limited_openai {
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_static("0"),
        );
    }
    for (name, value) in &fault.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    response
}

fn error_response(
    kind: BackendKind,
    status: StatusCode,
    message: &str,
    code: Option<&str>,
) -> Response {
    let body = match kind {
        BackendKind::Ollama => json!({ "error": message }),
        BackendKind::Openai => {
            let error_type = match code {
                Some("insufficient_quota") => "insufficient_quota",
                _ if status.is_server_error() => "server_error",
                _ if status == StatusCode::TOO_MANY_REQUESTS => "requests",
                _ => "invalid_request_error",
            };
            json!({ "error": { "message": message, "type": error_type, "code": code } })
        }
    };
    (status, Json(body)).into_response()
}

// Handlers return `Result<Response, Response>`; boxing the error would only add noise.
#[allow(clippy::result_large_err)]
fn parse<T: DeserializeOwned>(kind: BackendKind, body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        error_response(
            kind,
            StatusCode::BAD_REQUEST,
            &format!("invalid request body: {e}"),
            None,
        )
    })
}

#[derive(Deserialize)]
struct ChatBody {
    model: String,
    messages: Vec<ChatMessage>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct GenerateBody {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    stream: Option<bool>,
}

#[derive(Deserialize)]
struct EmbedBody {
    model: String,
    input: EmbedInput,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

impl EmbedInput {
    fn into_texts(self) -> Vec<String> {
        match self {
            EmbedInput::One(text) => vec![text],
            EmbedInput::Many(texts) => texts,
        }
    }
}

async fn ollama_chat(State(stub): State<Stub>, body: Bytes) -> Result<Response, Response> {
    let request: ChatBody = parse(BackendKind::Ollama, &body)?;
    let completion = Completion::answering(request.model, &request.messages);
    chat_reply(
        &stub,
        Flavor::OllamaChat,
        &completion,
        request.stream.unwrap_or(true),
    )
    .await
}

async fn ollama_generate(State(stub): State<Stub>, body: Bytes) -> Result<Response, Response> {
    let request: GenerateBody = parse(BackendKind::Ollama, &body)?;
    let system = request
        .system
        .map(|system| ChatMessage::new(Role::System, system));
    let messages: Vec<ChatMessage> = system
        .into_iter()
        .chain([ChatMessage::new(Role::User, request.prompt)])
        .collect();
    let completion = Completion::answering(request.model, &messages);
    chat_reply(
        &stub,
        Flavor::OllamaGenerate,
        &completion,
        request.stream.unwrap_or(true),
    )
    .await
}

async fn openai_chat(State(stub): State<Stub>, body: Bytes) -> Result<Response, Response> {
    let request: ChatBody = parse(BackendKind::Openai, &body)?;
    let include_usage = request
        .stream_options
        .is_some_and(|options| options.include_usage);
    let completion = Completion::answering(request.model, &request.messages);
    chat_reply(
        &stub,
        Flavor::Openai { include_usage },
        &completion,
        request.stream.unwrap_or(false),
    )
    .await
}

async fn ollama_embed(State(stub): State<Stub>, body: Bytes) -> Result<Response, Response> {
    let request: EmbedBody = parse(BackendKind::Ollama, &body)?;
    let texts = request.input.into_texts();
    let (failure, _) = admit(&stub, BackendKind::Ollama, "/api/embed", texts.len()).await?;
    let vectors: Vec<Vec<f32>> = texts.iter().map(|text| embedding(text)).collect();
    Ok(json_reply(
        &json!({ "model": request.model, "embeddings": vectors }),
        failure.is_some(),
    ))
}

async fn openai_embed(State(stub): State<Stub>, body: Bytes) -> Result<Response, Response> {
    let request: EmbedBody = parse(BackendKind::Openai, &body)?;
    let texts = request.input.into_texts();
    let (failure, _) = admit(&stub, BackendKind::Openai, "/v1/embeddings", texts.len()).await?;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embedding(text) }))
        .collect();
    let tokens: usize = texts.iter().map(|text| word_count(text)).sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    });
    Ok(json_reply(&body, failure.is_some()))
}

async fn ollama_tags() -> Json<Value> {
    Json(json!({ "models": [{
        "name": "stub", "model": "stub", "modified_at": CREATED_AT, "size": 0, "digest": "stub", "details": {}
    }] }))
}

async fn openai_models() -> Json<Value> {
    Json(
        json!({ "object": "list", "data": [{ "id": "stub", "object": "model", "created": 0, "owned_by": "spool" }] }),
    )
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

/// A deterministic reply, with the usage numbers both protocols report.
struct Completion {
    model: String,
    text: String,
    prompt_tokens: usize,
    completion_tokens: usize,
}

impl Completion {
    fn answering(model: String, messages: &[ChatMessage]) -> Self {
        let text = answer(&model, messages);
        Self {
            prompt_tokens: messages
                .iter()
                .map(|message| word_count(&message.content))
                .sum(),
            completion_tokens: word_count(&text),
            text,
            model,
        }
    }
}

/// The three chat endpoints differ only in how they frame the same completion.
#[derive(Clone, Copy)]
enum Flavor {
    OllamaChat,
    OllamaGenerate,
    Openai { include_usage: bool },
}

impl Flavor {
    fn kind(self) -> BackendKind {
        match self {
            Flavor::Openai { .. } => BackendKind::Openai,
            _ => BackendKind::Ollama,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Flavor::OllamaChat => "/api/chat",
            Flavor::OllamaGenerate => "/api/generate",
            Flavor::Openai { .. } => "/v1/chat/completions",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Flavor::Openai { .. } => "text/event-stream",
            _ => "application/x-ndjson",
        }
    }

    /// The single-object reply to `stream: false`.
    fn whole(self, completion: &Completion) -> Value {
        match self {
            Flavor::Openai { .. } => json!({
                "id": "chatcmpl-stub",
                "object": "chat.completion",
                "created": 0,
                "model": completion.model,
                "choices": [{
                    "index": 0,
                    "message": { "role": "assistant", "content": completion.text },
                    "finish_reason": "stop",
                }],
                "usage": openai_usage(completion),
            }),
            _ => self.ollama_line(completion, &completion.text, true),
        }
    }

    fn piece(self, completion: &Completion, piece: &str) -> Bytes {
        match self {
            Flavor::Openai { .. } => {
                sse(&openai_chunk(completion, json!({ "content": piece }), None))
            }
            _ => ndjson(&self.ollama_line(completion, piece, false)),
        }
    }

    /// What follows the last piece of a complete stream.
    fn ending(self, completion: &Completion) -> Vec<Bytes> {
        match self {
            Flavor::Openai { include_usage } => {
                let mut frames = vec![sse(&openai_chunk(completion, json!({}), Some("stop")))];
                if include_usage {
                    let mut usage = openai_chunk(completion, json!({}), None);
                    usage["choices"] = json!([]);
                    usage["usage"] = openai_usage(completion);
                    frames.push(sse(&usage));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                frames
            }
            _ => vec![ndjson(&self.ollama_line(completion, "", true))],
        }
    }

    /// An error reported inside a 200 stream.
    fn failure(self, message: &str) -> Bytes {
        match self {
            Flavor::Openai { .. } => sse(
                &json!({ "error": { "message": message, "type": "server_error", "code": null } }),
            ),
            _ => ndjson(&json!({ "error": message })),
        }
    }

    fn ollama_line(self, completion: &Completion, content: &str, done: bool) -> Value {
        let mut line = json!({ "model": completion.model, "created_at": CREATED_AT, "done": done });
        match self {
            Flavor::OllamaChat => {
                line["message"] = json!({ "role": "assistant", "content": content })
            }
            _ => line["response"] = json!(content),
        }
        if done {
            line["done_reason"] = json!("stop");
            line["prompt_eval_count"] = json!(completion.prompt_tokens);
            line["eval_count"] = json!(completion.completion_tokens);
        }
        line
    }
}

fn openai_chunk(completion: &Completion, delta: Value, finish_reason: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": completion.model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
    })
}

fn openai_usage(completion: &Completion) -> Value {
    json!({
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    })
}

fn ndjson(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

async fn chat_reply(
    stub: &Stub,
    flavor: Flavor,
    completion: &Completion,
    stream: bool,
) -> Result<Response, Response> {
    let (failure, chunk_delay) = admit(stub, flavor.kind(), flavor.path(), 1).await?;
    if !stream {
        return Ok(json_reply(&flavor.whole(completion), failure.is_some()));
    }
    let pieces = word_pieces(&completion.text);
    let frames: Vec<Bytes> = match failure {
        None => pieces
            .iter()
            .map(|piece| flavor.piece(completion, piece))
            .chain(flavor.ending(completion))
            .collect(),
        Some(message) => pieces
            .iter()
            .take(1)
            .map(|piece| flavor.piece(completion, piece))
            .chain([flavor.failure(&message)])
            .collect(),
    };
    Ok(streamed(flavor.content_type(), frames, chunk_delay))
}

/// A whole JSON reply. When `cut`, only its first half is sent before the connection
/// drops: the non-streamed form of a mid-stream failure.
fn json_reply(body: &Value, cut: bool) -> Response {
    let bytes = Bytes::from(body.to_string());
    let json = [(CONTENT_TYPE, "application/json")];
    if !cut {
        return (json, bytes).into_response();
    }
    let half = bytes.slice(..bytes.len() / 2);
    let broken = futures_util::stream::iter([
        Ok(half),
        Err(std::io::Error::other("stub: injected mid-stream failure")),
    ]);
    (json, Body::from_stream(broken)).into_response()
}

fn streamed(content_type: &'static str, frames: Vec<Bytes>, delay: Duration) -> Response {
    let body = futures_util::stream::iter(frames.into_iter().enumerate()).then(
        move |(index, frame)| async move {
            if index > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, std::io::Error>(frame)
        },
    );
    ([(CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_names_model_count_and_last_user_message() {
        let messages = [
            ChatMessage::new(Role::User, "first"),
            ChatMessage::new(Role::User, "second"),
            ChatMessage::new(Role::Assistant, "reply"),
        ];
        assert_eq!(answer("m", &messages), "[m] 3 messages; you said: second");
        assert_eq!(answer("m", &messages[2..]), "[m] 1 messages; you said: ");
    }

    #[test]
    fn pieces_split_at_words_and_rejoin() {
        assert_eq!(word_pieces(" a  b\nc "), [" a  ", "b\n", "c "]);
        assert!(word_pieces("").is_empty());
        let text = answer("m", &[ChatMessage::new(Role::User, "héllo 🌍\twörld")]);
        assert_eq!(word_pieces(&text).concat(), text);
    }

    #[test]
    fn embedding_is_stable_and_bounded() {
        let vector = embedding("hello");
        assert_eq!(vector.len(), EMBEDDING_DIM);
        assert!(
            vector.iter().all(|value| (-1.0..1.0).contains(value)),
            "{vector:?}"
        );
        assert_eq!(vector, embedding("hello"));
        assert_ne!(vector, embedding("hellp"));
        // Pins the formula: FNV-1a-64("") is 0xcbf29ce484222325.
        let mut state = 0xcbf2_9ce4_8422_2325;
        assert_eq!(
            embedding("")[0],
            (splitmix64(&mut state) >> 40) as f32 / 8_388_608.0 - 1.0
        );
    }

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
