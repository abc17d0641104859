//! The WebAssembly runtime: compiles handler components and runs their hooks, each
//! call in a fresh instance with a deadline and a memory cap.
//!
//! Owns the wasmtime `Engine` and `Linker`, the instance pool and the epoch ticker.
//! It knows nothing of Redis, queues or HTTP: a job's side effects go through the
//! [`JobHost`] it is handed, so the same runtime serves workers and guest tests.

mod bindings;
mod imports;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::types::{
    ChatMessage, CodeBlock, ContentBlock, Job, JobError, JobOutput, Media, MediaSource, ModelError, ModelParams,
    ModelReply, ModelRequest, Placeholder, PriorityClass, PriorityDecision, RetryHint, Role, TaskStatus, TaskUpdate,
};
pub use bindings::spool::handler::logging::Level as LogLevel;
use bindings::{Handler, HandlerPre};

/// How often the epoch advances; the granularity of guest deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Bytes of a guest's stdout+stderr kept for its log and failure messages.
const GUEST_OUTPUT_CAP: usize = 16 * 1024;

/// Per-call sandbox limits.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Wall-clock bound for one hook call, host calls included.
    pub deadline: Duration,
    /// Linear memory a guest may grow to.
    pub memory_bytes: usize,
    /// Instances that may exist at once; further calls wait for a free slot.
    pub max_instances: u32,
    /// Model calls (chat + embed) one `handle` call may make.
    pub max_model_calls: u32,
}

/// A guest call that did not return normally. Only the job that made it fails.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    #[error("handler exceeded its deadline of {0:?}")]
    Deadline(Duration),
    #[error("handler trapped: {0}")]
    Trap(String),
    #[error("handler could not be instantiated: {0}")]
    Instantiate(String),
}

/// What a running `handle` call may do outside its sandbox. Implemented by the
/// worker (Redis + model backend) and by guest tests (scripted replies).
pub trait JobHost: Send + Sync {
    fn chat(&self, request: crate::models::ChatRequest) -> BoxFuture<'_, Result<crate::models::ChatReply, crate::models::ModelError>>;
    fn embed(&self, model: Option<String>, texts: Vec<String>) -> BoxFuture<'_, Result<Vec<Vec<f32>>, crate::models::ModelError>>;
    fn progress(&self, percent: u8, step: String) -> BoxFuture<'_, ()>;
    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()>;
    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>>;
    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()>;
    fn state_delete(&self, key: String) -> BoxFuture<'_, ()>;

    // The `messages` interface (design D). Defaults refuse: only a host that
    // binds jobs to session messages (the worker) overrides them.

    /// The id of the message this job drives, if any.
    fn message_id(&self) -> Option<String> {
        None
    }
    fn message_append_text(&self, _text: String) -> BoxFuture<'_, Result<(), String>> {
        no_bound_message()
    }
    fn message_add_content(&self, _block: ContentBlock) -> BoxFuture<'_, Result<String, String>> {
        no_bound_message()
    }
    fn message_start_task(&self, _description: String) -> BoxFuture<'_, Result<String, String>> {
        no_bound_message()
    }
    fn message_update_task(&self, _task_id: String, _update: TaskUpdate) -> BoxFuture<'_, Result<(), String>> {
        no_bound_message()
    }
    fn message_complete(&self) -> BoxFuture<'_, Result<(), String>> {
        no_bound_message()
    }
}

fn no_bound_message<T: Send + 'static>() -> BoxFuture<'static, Result<T, String>> {
    Box::pin(async { Err("this job drives no message".to_owned()) })
}

/// A compiled handler version, ready to instantiate.
#[derive(Clone)]
pub struct HandlerComponent {
    pub name: String,
    /// First 12 hex digits of the component's SHA-256.
    pub version: String,
    pre: HandlerPre<GuestState>,
}

/// Everything one instance owns; dropped with its store after every call.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    handler: String,
    job_id: String,
    /// `None` for the pure hooks, which get no model access and no state.
    host: Option<Arc<dyn JobHost>>,
    model_calls_left: u32,
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    limits: Limits,
    slots: Arc<Semaphore>,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    pub fn new(limits: Limits) -> Result<Self> {
        let mut pool = PoolingAllocationConfig::new();
        let instances = limits.max_instances;
        // A Rust wasip2 component is one main module plus a few small shims.
        pool.total_component_instances(instances)
            .total_core_instances(instances * 8)
            .total_memories(instances * 2)
            .total_tables(instances * 4)
            .total_stacks(instances)
            .max_memory_size(limits.memory_bytes);

        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // No WASIp3 here; without it calls into the component are 4-5x cheaper.
            .concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| wasm_error(e, "configuring the WebAssembly engine"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| wasm_error(e, "linking WASI"))?;
        Handler::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| wasm_error(e, "linking the spool:handler imports"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone());
        let slots = Arc::new(Semaphore::new(instances as usize));
        Ok(Self { engine, linker, limits, slots, ticker_stop })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a component and links it against the handler world. Export
    /// types are only checked at instantiation: callers activating a new
    /// version should make one call (e.g. `admit`) before trusting it.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<HandlerComponent> {
        let component = Component::new(&self.engine, bytes).map_err(|e| wasm_error(e, &format!("compiling handler `{name}`")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| wasm_error(e, &format!("handler `{name}` does not fit the spool:handler world")))?;
        let pre = HandlerPre::new(instance_pre).map_err(|e| wasm_error(e, &format!("handler `{name}` lacks the hooks export")))?;
        Ok(HandlerComponent { name: name.to_owned(), version: content_version(bytes), pre })
    }

    /// The priority rule. `Ok(Err(reason))` is the guest refusing the job.
    pub async fn admit(&self, handler: &HandlerComponent, job: &Job) -> Result<Result<PriorityDecision, String>, GuestFailure> {
        self.call(handler, job, None, async |hooks, store| hooks.call_admit(store, job).await).await
    }

    pub async fn shape_prompt(&self, handler: &HandlerComponent, job: &Job, history: &[ChatMessage]) -> Result<ModelRequest, GuestFailure> {
        self.call(handler, job, None, async |hooks, store| hooks.call_shape_prompt(store, job, history).await).await
    }

    pub async fn parse_content(&self, handler: &HandlerComponent, job: &Job, text: &str) -> Result<Vec<ContentBlock>, GuestFailure> {
        self.call(handler, job, None, async |hooks, store| hooks.call_parse_content(store, text).await).await
    }

    /// Runs a whole job with access to `host`.
    pub async fn handle(&self, handler: &HandlerComponent, job: &Job, host: Arc<dyn JobHost>) -> Result<Result<JobOutput, JobError>, GuestFailure> {
        self.call(handler, job, Some(host), async |hooks, store| hooks.call_handle(store, job).await).await
    }

    /// One hook call in a fresh instance: waits for a pool slot, instantiates,
    /// calls, and drops the instance whatever happened.
    async fn call<R>(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        host: Option<Arc<dyn JobHost>>,
        invoke: impl AsyncFnOnce(&bindings::hooks::Guest, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self.slots.acquire().await.map_err(|e| GuestFailure::Instantiate(e.to_string()))?;
        let output = MemoryOutputPipe::new(GUEST_OUTPUT_CAP);
        let mut store = self.new_store(handler, job, host, output.clone());
        let deadline = self.limits.deadline;
        let run = async {
            let instance = handler.pre.instantiate_async(&mut store).await.map_err(|e| (true, e))?;
            invoke(instance.spool_handler_hooks(), &mut store).await.map_err(|e| (false, e))
        };
        let outcome = tokio::time::timeout(deadline, run).await;
        let guest_output = String::from_utf8_lossy(&output.contents()).into_owned();
        if !guest_output.trim().is_empty() {
            tracing::info!(handler = %handler.name, job = %job.id, output = %guest_output.trim_end(), "guest output");
        }
        match outcome {
            Err(_elapsed) => Err(GuestFailure::Deadline(deadline)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err((true, error))) => Err(GuestFailure::Instantiate(error_chain(&error))),
            Ok(Err((false, error))) => Err(classify_trap(error, deadline, &guest_output)),
        }
    }

    fn new_store(&self, handler: &HandlerComponent, job: &Job, host: Option<Arc<dyn JobHost>>, output: MemoryOutputPipe) -> Store<GuestState> {
        // Nothing granted: no preopened dirs, no env, no args, no sockets.
        let wasi = WasiCtx::builder().stdout(output.clone()).stderr(output).build();
        let limits = StoreLimitsBuilder::new().memory_size(self.limits.memory_bytes).instances(32).build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limits,
            handler: handler.name.clone(),
            job_id: job.id.clone(),
            host,
            model_calls_left: self.limits.max_model_calls,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        // Yield to tokio at every tick so the timeout above can cancel a guest
        // that loops without ever calling the host.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

fn spawn_epoch_ticker(engine: Engine, stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("spool-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::error!("cannot start the epoch ticker, guest deadlines rely on timeouts only: {e}"));
}

fn classify_trap(error: wasmtime::Error, deadline: Duration, guest_output: &str) -> GuestFailure {
    if matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return GuestFailure::Deadline(deadline);
    }
    // A Rust guest prints its panic message to stderr just before trapping.
    let panic_line = guest_output.lines().rev().find(|l| l.contains("panicked at")).or_else(|| guest_output.lines().last());
    match panic_line {
        Some(line) => GuestFailure::Trap(format!("{} (guest said: {})", error_chain(&error), line.trim())),
        None => GuestFailure::Trap(error_chain(&error)),
    }
}

/// wasmtime's errors are not `std::error::Error`; keep their whole cause chain.
fn wasm_error(error: wasmtime::Error, context: &str) -> anyhow::Error {
    anyhow::anyhow!("{context}: {}", error_chain(&error))
}

fn error_chain(error: &wasmtime::Error) -> String {
    error.chain().map(|cause| cause.to_string()).collect::<Vec<_>>().join(": ")
}

/// The version id of a component: its content hash, so equal bytes are one version.
pub fn content_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
