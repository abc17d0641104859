//! `spool-harness`: test a spool handler component the way the host runs it,
//! with no Redis and no model server.
//!
//! Load a component (or build one from its crate), describe a job with the
//! model replies it will get (text, embeddings, or errors such as a 429), run
//! any hook, and assert on what it returned, the events it emitted, the model
//! requests it made, its logs and its state. Each run is one fresh instance in
//! the same sandbox as production (deadline, memory cap, call caps).
//!
//! ```no_run
//! use serde_json::json;
//! use spool_harness::{Harness, Reply};
//!
//! let harness = Harness::build(env!("CARGO_MANIFEST_DIR")).unwrap();
//! let run = harness.handle(harness.job(json!({"prompt": "Hi"})).reply(Reply::text("Hello!")));
//! assert_eq!(run.result()["response"], "Hello!");
//! ```
//!
//! A thin, synchronous front over `spool::guest_test`, the engine that
//! `spool guest test` runs too, so a fixture behaves the same in both.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use spool::guest_test::{Fixture, HistoryMessage, HookName, Report};
use spool::runtime::{HandlerComponent, Limits, Runtime};

pub use spool::guest_test::{Expectations, ScriptedReply as Reply};
pub use spool::models::Role;

/// A loaded component and the sandbox it runs in.
pub struct Harness {
    executor: tokio::runtime::Runtime,
    runtime: Runtime,
    handler: HandlerComponent,
}

impl Harness {
    /// Loads a component from a `.wasm` file with the host's default limits.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).with_context(|| format!("reading component {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("handler")
            .to_owned();
        Self::from_bytes(&name, &bytes)
    }

    /// Loads a component from its bytes with the host's default limits.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        Self::with_limits(name, bytes, default_limits())
    }

    /// Loads a component under the given limits (e.g. a short deadline).
    pub fn with_limits(name: &str, bytes: &[u8], limits: Limits) -> Result<Self> {
        let executor = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("starting the async runtime")?;
        let runtime = Runtime::new(limits)?;
        let handler = runtime.load(name, bytes)?;
        Ok(Self {
            executor,
            runtime,
            handler,
        })
    }

    /// Builds the handler crate at `crate_dir` for wasm32-wasip2 (release) and
    /// loads the component. Meant for a crate's own tests:
    /// `Harness::build(env!("CARGO_MANIFEST_DIR"))`.
    pub fn build(crate_dir: impl AsRef<Path>) -> Result<Self> {
        Self::load(build_component(crate_dir.as_ref())?)
    }

    /// A job with this payload and default everything else (priority 5,
    /// attempt 1, no replies).
    pub fn job(&self, payload: Value) -> Job {
        let mut fixture = Fixture::default();
        fixture.job.payload = payload;
        Job(fixture)
    }

    pub fn admit(&self, job: Job) -> Run {
        self.run(job.hook(HookName::Admit))
    }

    pub fn shape_prompt(&self, job: Job) -> Run {
        self.run(job.hook(HookName::ShapePrompt))
    }

    pub fn parse_content(&self, text: &str) -> Run {
        let mut fixture = Fixture {
            hook: HookName::ParseContent,
            ..Fixture::default()
        };
        fixture.text = text.to_owned();
        self.run(Job(fixture))
    }

    pub fn handle(&self, job: Job) -> Run {
        self.run(job.hook(HookName::Handle))
    }

    /// Runs a fixture as `spool guest test` would.
    pub fn run_fixture(&self, fixture: &Fixture) -> Run {
        Run(self.executor.block_on(spool::guest_test::run(
            &self.runtime,
            &self.handler,
            fixture,
        )))
    }

    fn run(&self, job: Job) -> Run {
        self.run_fixture(&job.0)
    }
}

/// The limits of a `spool serve` with no configuration, on a small pool.
pub fn default_limits() -> Limits {
    Limits {
        max_instances: 4,
        ..spool::config::SandboxConfig::default().limits()
    }
}

/// A job to run, built up from [`Harness::job`].
#[derive(Clone, Debug)]
pub struct Job(Fixture);

impl Job {
    fn hook(mut self, hook: HookName) -> Self {
        self.0.hook = hook;
        self
    }

    pub fn priority(mut self, priority: u8) -> Self {
        self.0.job.priority = priority;
        self
    }

    pub fn user_tier(mut self, tier: &str) -> Self {
        self.0.job.user_tier = tier.to_owned();
        self
    }

    pub fn user_id(mut self, id: &str) -> Self {
        self.0.job.user_id = id.to_owned();
        self
    }

    pub fn attempt(mut self, attempt: u32) -> Self {
        self.0.job.attempt = attempt;
        self
    }

    /// Appends a turn to the history `shape_prompt` receives.
    pub fn history(mut self, role: Role, content: &str) -> Self {
        self.0.history.push(HistoryMessage {
            role,
            content: content.to_owned(),
        });
        self
    }

    /// Queues the answer to the next model call.
    pub fn reply(mut self, reply: Reply) -> Self {
        self.0.replies.push(reply);
        self
    }

    /// Sets a key of the job's state before the run.
    pub fn state(mut self, key: &str, value: &str) -> Self {
        self.0.state.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn fixture(&self) -> &Fixture {
        &self.0
    }
}

/// What one run did. The accessors panic with the whole report when the run
/// did not end the way they read it, which is what a test wants.
#[derive(Clone, Debug)]
pub struct Run(pub Report);

impl Run {
    pub fn report(&self) -> &Report {
        &self.0
    }

    fn expect_path(&self, path: &[&str]) -> &Value {
        let mut value = &self.0.returned;
        for key in path {
            value = value.get(key).unwrap_or_else(|| {
                panic!("run did not return {path:?}; report: {}", self.pretty())
            });
        }
        value
    }

    fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.0).unwrap_or_default()
    }

    /// The sandbox failure's kind (`deadline`, `panic`, ...), if the call failed.
    pub fn failure_kind(&self) -> Option<&str> {
        self.0.failure.as_ref().map(|f| f.kind.as_str())
    }

    pub fn failure_message(&self) -> Option<&str> {
        self.0.failure.as_ref().map(|f| f.message.as_str())
    }

    /// `handle`'s result (parsed JSON); panics unless it returned `ok`.
    pub fn result(&self) -> &Value {
        self.expect_path(&["ok", "result"])
    }

    /// `handle`'s content blocks (as JSON); panics unless it returned `ok`.
    pub fn blocks(&self) -> Vec<Value> {
        self.expect_path(&["ok", "blocks"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// `handle` asked for a retry: (reason, after_ms).
    pub fn retry(&self) -> Option<(String, Option<u64>)> {
        let retry = self.0.returned.get("retry")?;
        Some((
            retry["reason"].as_str().unwrap_or_default().to_owned(),
            retry["afterMs"].as_u64(),
        ))
    }

    /// `handle` rejected the job with this reason.
    pub fn rejected(&self) -> Option<&str> {
        self.0.returned.get("reject")?.as_str()
    }

    /// `admit`'s decision: (class, score); panics unless it accepted the job.
    pub fn decision(&self) -> (String, u8) {
        let decision = self.expect_path(&["ok"]);
        (
            decision["class"].as_str().unwrap_or_default().to_owned(),
            decision["score"].as_u64().unwrap_or(0) as u8,
        )
    }

    /// `admit` refused the job with this reason.
    pub fn refused(&self) -> Option<&str> {
        self.0.returned.get("refused")?.as_str()
    }

    /// `shape_prompt`'s request `{"model", "messages", "params"}`, or
    /// `parse_content`'s blocks.
    pub fn returned(&self) -> &Value {
        &self.0.returned
    }

    pub fn events(&self) -> &[Value] {
        &self.0.events
    }

    pub fn event_types(&self) -> Vec<String> {
        self.0
            .events
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Every model request (`{"kind": "chat", "request"}` or `{"kind": "embed", ...}`).
    pub fn model_requests(&self) -> &[Value] {
        &self.0.model_requests
    }

    /// The chat requests, each `{"model", "messages", "params"}`.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.0
            .model_requests
            .iter()
            .filter(|r| r["kind"] == "chat")
            .map(|r| r["request"].clone())
            .collect()
    }

    pub fn logs(&self) -> &[Value] {
        &self.0.logs
    }

    pub fn state(&self) -> &std::collections::BTreeMap<String, String> {
        &self.0.state
    }

    /// The follow-up jobs `handle` asked for, each `{"id", "queue", "payload"}`
    /// (recorded, not queued).
    pub fn follow_ups(&self) -> &[Value] {
        &self.0.follow_ups
    }
}

/// Runs `cargo build --release --target wasm32-wasip2` in `crate_dir` and
/// returns the component's path. The target dir is `$CARGO_TARGET_DIR` or
/// the crate's own `target/`.
pub fn build_component(crate_dir: &Path) -> Result<PathBuf> {
    let manifest = std::fs::read_to_string(crate_dir.join("Cargo.toml"))
        .with_context(|| format!("reading {}/Cargo.toml", crate_dir.display()))?;
    let manifest: toml::Table = manifest.parse().context("Cargo.toml is not valid TOML")?;
    let Some(name) = manifest
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{}/Cargo.toml has no package name", crate_dir.display());
    };
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir.join("target"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(crate_dir)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!(
            "building the component failed (is the target installed? `rustup target add wasm32-wasip2`)"
        );
    }
    Ok(target_dir
        .join("wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_"))))
}
