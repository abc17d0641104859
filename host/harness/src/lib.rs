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
//! A thin, synchronous driver of `spool guest test`: each run hands the
//! fixture to that command on stdin and reads its JSON report, so a fixture
//! behaves the same in both, and a guest crate's tests compile none of the
//! host. The `spool` binary is `$SPOOL_BIN`, else `spool` on the `PATH`
//! (or the one given to [`Harness::spool_bin`]). This crate owns no sandbox
//! and no format: the formats are `spool-fixture`'s.

mod cargo;
mod scratch;
mod spool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use spool_fixture::{HistoryMessage, HookName};

pub use cargo::build_component;
pub use spool_fixture::{
    self as fixture, Expectations, Fixture, Report, Role, ScriptedReply as Reply,
};

use scratch::Scratch;
use spool::Limits;

/// A component to run and the `spool` that runs it.
pub struct Harness {
    component: PathBuf,
    spool: Option<PathBuf>,
    limits: Limits,
    /// Where [`Harness::from_bytes`] wrote the component; removed on drop.
    _scratch: Option<Scratch>,
}

impl Harness {
    /// Builds the handler crate at `crate_dir` for wasm32-wasip2 (release)
    /// and runs that component. Meant for a crate's own tests:
    /// `Harness::build(env!("CARGO_MANIFEST_DIR"))`.
    pub fn build(crate_dir: impl AsRef<Path>) -> Result<Self> {
        Self::load(build_component(crate_dir.as_ref())?)
    }

    /// Runs the component in a `.wasm` file (read again by every run, so a
    /// rebuilt component is picked up).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            bail!("no component at {}", path.display());
        }
        let component =
            std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
        Ok(Self {
            component,
            spool: None,
            limits: Limits::default(),
            _scratch: None,
        })
    }

    /// Runs a component given as bytes, written to a private temporary
    /// directory for as long as the harness lives. `name` names the handler.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let scratch = Scratch::new()?;
        let component = scratch.write(&format!("{}.wasm", file_name(name)), bytes)?;
        Ok(Self {
            _scratch: Some(scratch),
            ..Self::load(component)?
        })
    }

    /// Runs components with this `spool` binary instead of `$SPOOL_BIN` or
    /// the one on the `PATH`.
    pub fn spool_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.spool = Some(path.into());
        self
    }

    /// Wall-clock limit of each call (`--deadline-ms`) [default: the host's, 120 s].
    pub fn deadline_ms(mut self, ms: u64) -> Self {
        self.limits.deadline_ms = Some(ms);
        self
    }

    /// Memory cap of the guest in MiB (`--memory-mb`) [default: the host's, 64].
    pub fn memory_mb(mut self, mb: usize) -> Self {
        self.limits.memory_mb = Some(mb);
        self
    }

    /// Model calls a run may make (`--max-model-calls`) [default: the host's, 64].
    pub fn max_model_calls(mut self, calls: u32) -> Self {
        self.limits.max_model_calls = Some(calls);
        self
    }

    /// The component every run loads.
    pub fn component(&self) -> &Path {
        &self.component
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

    /// Runs a fixture as `spool guest test` would; panics when `spool` could
    /// not run it (no binary, an unloadable component), which is what a test
    /// wants.
    pub fn run_fixture(&self, fixture: &Fixture) -> Run {
        self.try_run_fixture(fixture)
            .unwrap_or_else(|error| panic!("spool-harness: {error:#}"))
    }

    /// Runs a fixture as `spool guest test` would.
    pub fn try_run_fixture(&self, fixture: &Fixture) -> Result<Run> {
        let spool = match &self.spool {
            Some(path) => path.clone(),
            None => spool::find()?,
        };
        spool::guest_test(&spool, &self.component, &self.limits, fixture).map(Run)
    }

    fn run(&self, job: Job) -> Run {
        self.run_fixture(&job.0)
    }
}

/// `name` as a file name of its own: it only names the handler.
fn file_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        "handler".to_owned()
    } else {
        name
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
            decision["score"]
                .as_u64()
                .and_then(|score| u8::try_from(score).ok())
                .unwrap_or(0),
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

    pub fn state(&self) -> &BTreeMap<String, String> {
        &self.0.state
    }

    /// The follow-up jobs `handle` asked for, each `{"id", "queue", "payload"}`
    /// (recorded, not queued).
    pub fn follow_ups(&self) -> &[Value] {
        &self.0.follow_ups
    }
}
