//! The WebAssembly runtime: compiles handler components and runs their hooks, each
//! call in a fresh instance with a deadline and a memory cap.
//!
//! Owns the wasmtime `Engine` and `Linker`, the instance pool and the epoch ticker.
//! It knows nothing of Redis, queues or HTTP: a job's side effects go through the
//! [`JobHost`] it is handed, so the same runtime serves workers and guest tests.

use crate::admission::{Admission, AdmitReads, Decision};
use crate::{bindings, imports, output, sandbox};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use imports::{
    MAX_EVENT_DATA_BYTES, MAX_LABEL_BYTES, MAX_STATE_KEY_BYTES, chat_request, cut_with_marker,
};
use output::BoundedOutput;
pub use sandbox::{
    CallCap, CallLimits, GuestFailure, HandlerLimits, Limits, Quota, QuotaOverrides, Quotas,
    panic_message,
};
use sandbox::{FrozenClock, GuestLimiter};

pub use bindings::spool::handler::logging::Level as LogLevel;
pub use bindings::types::ContentKind;
pub use bindings::types::{
    ChatMessage, CodeBlock, ContentBlock, Job, JobError, JobOutput, Media, MediaSource, ModelError,
    ModelParams, ModelReply, ModelRequest, Placeholder, PriorityClass, PriorityDecision, RetryHint,
    Role, TaskStart, TaskStatus, TaskUpdate,
};
use bindings::{Handler, HandlerPre};

/// How often the epoch advances; the granularity of guest deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(5);
/// Bytes of a guest's stdout+stderr kept for its log and failure messages.
const GUEST_OUTPUT_CAP: usize = 16 * 1024;

/// What a running `handle` call may do outside its sandbox. Implemented by the
/// worker (Redis + model backend) and by guest tests (scripted replies).
pub trait JobHost: Send + Sync {
    fn chat(
        &self,
        request: crate::model::ChatRequest,
    ) -> BoxFuture<'_, Result<crate::model::ChatReply, crate::model::ModelError>>;
    fn embed(
        &self,
        model: Option<String>,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, crate::model::ModelError>>;
    fn progress(&self, percent: u8, step: String) -> BoxFuture<'_, ()>;
    fn emit(&self, event_type: String, data: String) -> BoxFuture<'_, ()>;
    fn state_get(&self, key: String) -> BoxFuture<'_, Option<String>>;
    fn state_set(&self, key: String, value: String) -> BoxFuture<'_, ()>;
    fn state_delete(&self, key: String) -> BoxFuture<'_, ()>;
    /// Key -> bytes (key + value) of every entry the job's state holds now,
    /// earlier attempts' included: the runtime checks `max_state_bytes`
    /// against it. Read once per call, before the first `state.set`.
    fn state_sizes(&self) -> BoxFuture<'_, HashMap<String, usize>> {
        Box::pin(async { HashMap::new() })
    }
    /// A line the guest logged through `logging`; the runtime has already
    /// written it to the host's log, tagged with the job id.
    fn log(&self, _level: LogLevel, _message: &str) {}
    /// What the guest wrote to stdout/stderr during one call (bounded); the
    /// runtime has already written it to the host's log.
    fn guest_output(&self, _text: &str) {}

    // The `messages` interface (design D). Defaults refuse: only a host that
    // binds jobs to session messages (the worker) overrides them.

    /// The id of the message this job drives, if any.
    fn message_id(&self) -> Option<String> {
        None
    }
    fn message_append_text(&self, _text: String) -> BoxFuture<'_, Result<(), HostCallError>> {
        no_bound_message()
    }
    fn message_add_content(
        &self,
        _block: ContentBlock,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        no_bound_message()
    }
    fn message_start_task(
        &self,
        _description: String,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        no_bound_message()
    }
    fn message_start_task_with(
        &self,
        _start: TaskStart,
    ) -> BoxFuture<'_, Result<String, HostCallError>> {
        no_bound_message()
    }
    fn message_update_task(
        &self,
        _task_id: String,
        _update: TaskUpdate,
    ) -> BoxFuture<'_, Result<(), HostCallError>> {
        no_bound_message()
    }
    fn message_complete(&self) -> BoxFuture<'_, Result<(), HostCallError>> {
        no_bound_message()
    }

    /// A follow-up job (the `jobs` interface) to queue if this job completes;
    /// returns the id it will have.
    /// `take_message`: the follow-up drives this job's message from then on.
    fn follow_up(
        &self,
        _queue: String,
        _payload: String,
        _take_message: bool,
    ) -> Result<String, HostCallError> {
        Err(HostCallError::HandleOnly)
    }
}

fn no_bound_message<T: Send + 'static>() -> BoxFuture<'static, Result<T, HostCallError>> {
    Box::pin(async { Err(HostCallError::NoMessage) })
}

/// Why the host refused a `messages` or `jobs` call. The guest receives the
/// sentence (those interfaces return `string` errors); the host keeps the kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostCallError {
    #[error("only `handle` may change messages or queue jobs")]
    HandleOnly,
    #[error("this job used up its budget of host calls")]
    OverBudget,
    #[error("this job drives no message")]
    NoMessage,
    /// The call itself is wrong: a bad block, a finished task, an unknown
    /// queue, a payload over the cap... The sentence says which.
    #[error("{0}")]
    Refused(String),
    /// The store did not answer; the call may succeed if the job is retried.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

/// What the guest receives: the WIT's error type is a sentence.
impl From<HostCallError> for String {
    fn from(error: HostCallError) -> Self {
        error.to_string()
    }
}

/// The host of the pure hooks: they may log, nothing else reaches it.
struct PureHookHost;

impl JobHost for PureHookHost {
    fn chat(
        &self,
        _request: crate::model::ChatRequest,
    ) -> BoxFuture<'_, Result<crate::model::ChatReply, crate::model::ModelError>> {
        Box::pin(async {
            Err(crate::model::ModelError::Unavailable(
                "no model in pure hooks".into(),
            ))
        })
    }
    fn embed(
        &self,
        _model: Option<String>,
        _texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, crate::model::ModelError>> {
        Box::pin(async {
            Err(crate::model::ModelError::Unavailable(
                "no model in pure hooks".into(),
            ))
        })
    }
    fn progress(&self, _percent: u8, _step: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn emit(&self, _event_type: String, _data: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn state_get(&self, _key: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
    fn state_set(&self, _key: String, _value: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn state_delete(&self, _key: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A compiled handler version, ready to instantiate.
#[derive(Clone)]
pub struct HandlerComponent {
    pub name: String,
    /// First 12 hex digits of the component's SHA-256.
    pub version: String,
    pre: HandlerPre<GuestState>,
    /// What this version's `admit` reads and the decisions kept from it.
    admission: Arc<Admission>,
}

/// How [`Runtime::admit_or_reuse`] answered.
#[derive(Debug)]
pub enum Admitted {
    /// `admit` ran in a fresh instance.
    Called(Result<Decision, GuestFailure>),
    /// The version's rule decided these same declared inputs before.
    Reused(Decision),
}

/// Everything one instance owns; dropped with its store after every call.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: GuestLimiter,
    pub(crate) limits: CallLimits,
    pub(crate) handler: String,
    pub(crate) job_id: String,
    pub(crate) host: Arc<dyn JobHost>,
    /// False for the pure hooks, which get no model access, no state and no events.
    pub(crate) full_access: bool,
    pub(crate) model_calls_left: u32,
    pub(crate) host_calls_left: u32,
    /// Set by the first call beyond a cap or quota; fails the call.
    pub(crate) breach: Option<Breach>,
    /// What this call wrote so far, against the per-job quotas.
    pub(crate) written: Written,
}

/// Why a call must fail whatever the guest does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Breach {
    Cap(CallCap),
    Quota {
        quota: Quota,
        bytes: usize,
        limit: usize,
    },
}

/// Bytes a call has written through its imports, for the per-job quotas.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub events: usize,
    pub message: usize,
    pub log: usize,
    /// A log line was dropped (the marker is written once).
    pub log_dropped: bool,
    /// The job's state, entry by entry, loaded at the first `state.set`.
    pub state: Option<imports::StateSizes>,
}

/// A hook and its arguments, for callers that pick the hook at run time
/// (`spool guest test`, the test harness).
#[derive(Clone, Copy, Debug)]
pub enum Hook<'a> {
    Admit,
    ShapePrompt(&'a [ChatMessage]),
    ParseContent(&'a str),
    Handle,
}

/// What a [`Hook`] returned.
#[derive(Clone, Debug)]
pub enum HookReturn {
    Admit(Result<PriorityDecision, String>),
    ShapePrompt(ModelRequest),
    ParseContent(Vec<ContentBlock>),
    Handle(Result<JobOutput, JobError>),
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Linear memory a freed pool slot keeps resident (see [`Runtime::new`]).
const KEEP_RESIDENT_MEMORY: usize = 4 << 20;

pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    pub(crate) limits: Limits,
    slots: Arc<Semaphore>,
    ticker_stop: Arc<AtomicBool>,
    pure_hook_host: Arc<dyn JobHost>,
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
            .max_memory_size(limits.largest_memory())
            // Reset the used top of a pooled fiber stack by memset instead of
            // madvise on every call.
            .async_stack_keep_resident(128 << 10)
            // Zero a freed slot's tables by memset rather than madvise: an
            // instance per call made the madvise a quarter of the call
            // (no-op handler, instantiate + handle + drop, one at a time: 31 -> 24 us).
            .table_keep_resident(64 << 10)
            // Reset linear memory by memsetting only the pages the guest
            // dirtied (found with Linux's PAGEMAP_SCAN, 6.7+), up to this
            // much, instead of madvise: under load every madvise flushed the
            // TLBs of every core running the process.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .pagemap_scan(wasmtime::Enabled::Auto);

        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // No WASIp3 here; without it calls into the component are 4-5x cheaper.
            .concurrency_support(false);
        let engine = Engine::new(&config)
            .map_err(|e| wasm_error(e, "configuring the WebAssembly engine"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| wasm_error(e, "linking WASI"))?;
        Handler::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)
            .map_err(|e| wasm_error(e, "linking the spool:handler imports"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        spawn_epoch_ticker(engine.clone(), ticker_stop.clone());
        let slots = Arc::new(Semaphore::new(instances as usize));
        Ok(Self {
            engine,
            linker,
            limits,
            slots,
            ticker_stop,
            pure_hook_host: Arc::new(PureHookHost),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Compiles a component and links it against the handler world. Export
    /// types are only checked at instantiation: callers activating a new
    /// version should make one call (e.g. `admit`) before trusting it.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<HandlerComponent> {
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| wasm_error(e, &format!("compiling handler `{name}`")))?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            wasm_error(
                e,
                &format!("handler `{name}` does not fit the spool:handler world"),
            )
        })?;
        let pre = HandlerPre::new(instance_pre)
            .map_err(|e| wasm_error(e, &format!("handler `{name}` lacks the hooks export")))?;
        Ok(HandlerComponent {
            name: name.to_owned(),
            version: content_version(bytes),
            pre,
            admission: Arc::new(Admission::of(&component)),
        })
    }

    /// The engine components are compiled for (handler deployment compiles,
    /// serializes and inspects components with it).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Identifies which precompiled artifacts this engine can load: artifacts
    /// from an engine with another fingerprint (other wasmtime version or
    /// settings) must be compiled again.
    pub fn engine_fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    }

    /// Links an already compiled component (fresh or from the compiled cache)
    /// against the handler world, as [`Runtime::load`] does after compiling.
    pub fn link(
        &self,
        name: &str,
        version: &str,
        component: &Component,
    ) -> Result<HandlerComponent> {
        let instance_pre = self.linker.instantiate_pre(component).map_err(|e| {
            wasm_error(
                e,
                &format!("handler `{name}` does not fit the spool:handler world"),
            )
        })?;
        let pre = HandlerPre::new(instance_pre)
            .map_err(|e| wasm_error(e, &format!("handler `{name}` lacks the hooks export")))?;
        Ok(HandlerComponent {
            name: name.to_owned(),
            version: version.to_owned(),
            pre,
            admission: Arc::new(Admission::of(component)),
        })
    }

    /// The priority rule. `Ok(Err(reason))` is the guest refusing the job.
    pub async fn admit(
        &self,
        handler: &HandlerComponent,
        job: &Job,
    ) -> Result<Result<PriorityDecision, String>, GuestFailure> {
        let host = self.pure_hook_host.clone();
        self.call(handler, job, host, false, async |hooks, store| {
            hooks.call_admit(store, job).await
        })
        .await
    }

    /// The priority rule, or the decision it made before for the same
    /// declared inputs (WIT interface `admission`). A rule that declares
    /// nothing, or declares the payload, is called every time.
    pub async fn admit_or_reuse(&self, handler: &HandlerComponent, job: &Job) -> Admitted {
        let Some(reads) = self.admit_reads(handler).await else {
            return Admitted::Called(self.admit(handler, job).await);
        };
        let key = Admission::key(reads, job);
        if let Some(decision) = handler.admission.kept(&key) {
            return Admitted::Reused(decision);
        }
        let called = self.admit(handler, job).await;
        // Only the rule's answers are kept: a trap or a deadline may pass.
        if let Ok(decision) = &called {
            handler.admission.keep(key, decision.clone());
        }
        Admitted::Called(called)
    }

    /// What `handler`'s `admit` declared it reads, asked once per version;
    /// `None` when its decisions may not be reused.
    pub async fn admit_reads(&self, handler: &HandlerComponent) -> Option<AdmitReads> {
        *handler
            .admission
            .reads()
            .get_or_init(|| self.ask_admit_reads(handler))
            .await
    }

    async fn ask_admit_reads(&self, handler: &HandlerComponent) -> Option<AdmitReads> {
        let export = handler.admission.export()?;
        match self.call_admit_reads(handler, export).await {
            Ok(reads) => reads,
            Err(error) => {
                tracing::warn!(handler = %handler.name, version = %handler.version, error = %error, "admit-reads failed; admit runs for every submission");
                None
            }
        }
    }

    /// Calls the optional `admit-reads` export in a fresh instance, under the
    /// handler's limits like any hook.
    async fn call_admit_reads(
        &self,
        handler: &HandlerComponent,
        export: wasmtime::component::ComponentExportIndex,
    ) -> Result<Option<AdmitReads>, String> {
        use wasmtime::component::Val;
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        let limits = self.limits.for_handler(&handler.name);
        let declaration = Job {
            id: "admit-reads".into(),
            queue: String::new(),
            user_id: String::new(),
            user_tier: String::new(),
            priority: 5,
            payload: String::new(),
            attempt: 0,
        };
        let output = BoundedOutput::new(GUEST_OUTPUT_CAP);
        let host = self.pure_hook_host.clone();
        let mut store = self.new_store(handler, &declaration, host, false, limits, output);
        let run = async {
            let instance = handler
                .pre
                .instance_pre()
                .instantiate_async(&mut store)
                .await?;
            let func = instance
                .get_func(&mut store, export)
                .ok_or_else(|| wasmtime::format_err!("`admit-reads` is not a function"))?;
            let mut results = [Val::Bool(false)];
            func.call_async(&mut store, &[], &mut results).await?;
            Ok::<_, wasmtime::Error>(results)
        };
        match tokio::time::timeout(limits.deadline, run).await {
            Err(_elapsed) => Err(format!("no answer within {:?}", limits.deadline)),
            Ok(Err(error)) => Err(error_chain(&error)),
            Ok(Ok([Val::Flags(names)])) => {
                Ok(AdmitReads::from_flags(names.iter().map(String::as_str)))
            }
            Ok(Ok([other])) => Err(format!("`admit-reads` returned {other:?}, not flags")),
        }
    }

    pub async fn shape_prompt(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        history: &[ChatMessage],
    ) -> Result<ModelRequest, GuestFailure> {
        let host = self.pure_hook_host.clone();
        self.call(handler, job, host, false, async |hooks, store| {
            hooks.call_shape_prompt(store, job, history).await
        })
        .await
    }

    pub async fn parse_content(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        text: &str,
    ) -> Result<Vec<ContentBlock>, GuestFailure> {
        let host = self.pure_hook_host.clone();
        self.call(handler, job, host, false, async |hooks, store| {
            hooks.call_parse_content(store, text).await
        })
        .await
    }

    /// Runs a whole job with access to `host`. Output beyond the handler's
    /// `max_output_bytes` fails the call.
    pub async fn handle(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        host: Arc<dyn JobHost>,
    ) -> Result<Result<JobOutput, JobError>, GuestFailure> {
        let returned = self
            .call(handler, job, host, true, async |hooks, store| {
                hooks.call_handle(store, job).await
            })
            .await?;
        let limit = self.limits.for_handler(&handler.name).max_output_bytes;
        if let Ok(output) = &returned {
            let bytes = output_size(output);
            if bytes > limit {
                return Err(GuestFailure::OutputTooLarge { bytes, limit });
            }
        }
        Ok(returned)
    }

    /// Any hook, chosen at run time. The pure hooks get `host` for their logs
    /// only: as in production they have no model, state or events.
    pub async fn call_hook(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        hook: Hook<'_>,
        host: Arc<dyn JobHost>,
    ) -> Result<HookReturn, GuestFailure> {
        match hook {
            Hook::Admit => self
                .call(handler, job, host, false, async |hooks, store| {
                    hooks.call_admit(store, job).await
                })
                .await
                .map(HookReturn::Admit),
            Hook::ShapePrompt(history) => self
                .call(handler, job, host, false, async |hooks, store| {
                    hooks.call_shape_prompt(store, job, history).await
                })
                .await
                .map(HookReturn::ShapePrompt),
            Hook::ParseContent(text) => self
                .call(handler, job, host, false, async |hooks, store| {
                    hooks.call_parse_content(store, text).await
                })
                .await
                .map(HookReturn::ParseContent),
            Hook::Handle => self
                .handle(handler, job, host)
                .await
                .map(HookReturn::Handle),
        }
    }

    /// One hook call in a fresh instance: waits for a pool slot, instantiates,
    /// calls, and drops the instance whatever happened.
    async fn call<R>(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        host: Arc<dyn JobHost>,
        full_access: bool,
        invoke: impl AsyncFnOnce(&bindings::hooks::Guest, &mut Store<GuestState>) -> wasmtime::Result<R>,
    ) -> Result<R, GuestFailure> {
        // The semaphore is never closed, so acquiring only waits.
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|e| GuestFailure::Instantiate(e.to_string()))?;
        let limits = self.limits.for_handler(&handler.name);
        let output = BoundedOutput::new(GUEST_OUTPUT_CAP);
        let mut store = self.new_store(
            handler,
            job,
            host.clone(),
            full_access,
            limits,
            output.clone(),
        );
        let run = async {
            let instance = handler
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| (true, e))?;
            invoke(instance.spool_handler_hooks(), &mut store)
                .await
                .map_err(|e| (false, e))
        };
        let outcome = tokio::time::timeout(limits.deadline, run).await;
        let guest_output = output.text();
        if !guest_output.trim().is_empty() {
            tracing::info!(handler = %handler.name, job = %job.id, output = %guest_output.trim_end(), "guest output");
            host.guest_output(&guest_output);
        }
        let state = store.data();
        // A guest that went past a call cap or a quota fails whatever it did next.
        match state.breach {
            Some(Breach::Cap(cap)) => {
                let limit = match cap {
                    CallCap::Model => limits.max_model_calls,
                    CallCap::Host => limits.max_host_calls,
                };
                return Err(GuestFailure::CallCapExceeded { cap, limit });
            }
            Some(Breach::Quota {
                quota,
                bytes,
                limit,
            }) => {
                return Err(GuestFailure::QuotaExceeded {
                    quota,
                    bytes,
                    limit,
                });
            }
            None => {}
        }
        match outcome {
            Err(_elapsed) => Err(GuestFailure::Deadline(limits.deadline)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err((true, error))) => Err(GuestFailure::Instantiate(error_chain(&error))),
            Ok(Err((false, error))) => Err(sandbox::classify_trap(
                &error,
                &limits,
                state.limiter.refused_growth,
                &guest_output,
                &error_chain(&error),
            )),
        }
    }

    fn new_store(
        &self,
        handler: &HandlerComponent,
        job: &Job,
        host: Arc<dyn JobHost>,
        full_access: bool,
        limits: CallLimits,
        output: BoundedOutput,
    ) -> Store<GuestState> {
        // Nothing granted: no preopened dirs, no env, no args, no sockets (the
        // default address check refuses every address), and a clock stuck at
        // the epoch.
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output)
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false)
            .build();
        let state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: GuestLimiter::new(limits.memory_bytes),
            limits,
            handler: handler.name.clone(),
            job_id: job.id.clone(),
            host,
            full_access,
            model_calls_left: limits.max_model_calls,
            host_calls_left: limits.max_host_calls,
            breach: None,
            written: Written::default(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Yield to tokio at every tick so the timeout above can cancel a guest
        // that loops without ever calling the host.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// Bytes of a job's output as the host will store it.
fn output_size(output: &JobOutput) -> usize {
    output.result.len()
        + crate::content::blocks_to_json(&output.blocks)
            .to_string()
            .len()
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
        .unwrap_or_else(|e| {
            tracing::error!(
                "cannot start the epoch ticker, guest deadlines rely on timeouts only: {e}"
            )
        });
}

/// wasmtime's errors are not `std::error::Error`; keep their whole cause chain.
fn wasm_error(error: wasmtime::Error, context: &str) -> anyhow::Error {
    anyhow::anyhow!("{context}: {}", error_chain(&error))
}

fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// The version id of a component: its content hash, so equal bytes are one version.
/// Whether `version` is a version id as [`content_version`] writes them: 12
/// lowercase hex digits.
pub fn valid_version(version: &str) -> bool {
    version.len() == 12
        && version
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub fn content_version(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

impl PriorityClass {
    /// The class's name as clients and Redis keys spell it.
    pub fn name(self) -> &'static str {
        match self {
            PriorityClass::High => "high",
            PriorityClass::Normal => "normal",
            PriorityClass::Low => "low",
        }
    }
}
