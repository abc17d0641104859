//! What a guest may use and how its misbehaviour is named: the per-call limits
//! and write quotas (with per-handler overrides), the resource limiter that enforces the memory
//! cap, the frozen clocks a guest sees, and [`GuestFailure`], the typed reason a
//! call did not return normally.
//!
//! Owns no engine and no store: `runtime/mod.rs` builds stores from these parts
//! and `imports.rs` counts host calls against them.

use std::collections::BTreeMap;
use std::time::Duration;

use wasmtime::{ResourceLimiter, Trap};

use crate::failure::FailureKind;

/// Sandbox limits: the defaults every handler gets, the per-handler overrides,
/// and the pool size (shared by all handlers).
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
    /// Other host calls (events, logging, state) one hook call may make.
    pub max_host_calls: u32,
    /// Bytes of `job-output` (result + blocks) one `handle` call may return.
    pub max_output_bytes: usize,
    /// Sizes of what a guest writes through its imports (state, events,
    /// messages, logs): per call and per job.
    pub quotas: Quotas,
    /// Handler name -> the limits it overrides.
    pub per_handler: BTreeMap<String, HandlerLimits>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(120),
            memory_bytes: 64 << 20,
            max_instances: 64,
            max_model_calls: 64,
            max_host_calls: 10_000,
            max_output_bytes: 1 << 20,
            quotas: Quotas::default(),
            per_handler: BTreeMap::new(),
        }
    }
}

/// Size caps on what a guest may write through its imports. Without them the
/// only bound on a write is the guest's memory cap, so one job could push
/// gigabytes into Redis or the log. "Per job" means per `handle` call (one
/// attempt), except `max_state_bytes`, which bounds what the job's state holds
/// in Redis whatever earlier attempts stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// One `state.set` value.
    pub max_state_value_bytes: usize,
    /// Keys plus values of the job's whole state.
    pub max_state_bytes: usize,
    /// Data of the custom events plus progress steps of one job (each event
    /// is also capped at [`MAX_EVENT_DATA_BYTES`](crate::MAX_EVENT_DATA_BYTES)).
    pub max_event_bytes: usize,
    /// One `append-text` text, or one content block (as JSON) added to a message.
    pub max_message_write_bytes: usize,
    /// Text, blocks and task descriptions one job adds to its message.
    pub max_message_bytes: usize,
    /// One log line; a longer one is cut, with a marker saying how much went.
    pub max_log_line_bytes: usize,
    /// Log output of one job; later lines are dropped, with one marker line.
    pub max_log_bytes: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_state_value_bytes: 1 << 20,
            max_state_bytes: 4 << 20,
            max_event_bytes: 1 << 20,
            max_message_write_bytes: 1 << 20,
            max_message_bytes: 4 << 20,
            max_log_line_bytes: 16 << 10,
            max_log_bytes: 1 << 20,
        }
    }
}

/// Quotas one handler sets for itself; `None` keeps the default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaOverrides {
    pub max_state_value_bytes: Option<usize>,
    pub max_state_bytes: Option<usize>,
    pub max_event_bytes: Option<usize>,
    pub max_message_write_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_log_line_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
}

impl Quotas {
    fn with(self, o: QuotaOverrides) -> Self {
        Self {
            max_state_value_bytes: o
                .max_state_value_bytes
                .unwrap_or(self.max_state_value_bytes),
            max_state_bytes: o.max_state_bytes.unwrap_or(self.max_state_bytes),
            max_event_bytes: o.max_event_bytes.unwrap_or(self.max_event_bytes),
            max_message_write_bytes: o
                .max_message_write_bytes
                .unwrap_or(self.max_message_write_bytes),
            max_message_bytes: o.max_message_bytes.unwrap_or(self.max_message_bytes),
            max_log_line_bytes: o.max_log_line_bytes.unwrap_or(self.max_log_line_bytes),
            max_log_bytes: o.max_log_bytes.unwrap_or(self.max_log_bytes),
        }
    }
}

/// Limits one handler sets for itself; `None` keeps the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandlerLimits {
    pub deadline: Option<Duration>,
    pub memory_bytes: Option<usize>,
    pub max_model_calls: Option<u32>,
    pub max_host_calls: Option<u32>,
    pub max_output_bytes: Option<usize>,
    pub quotas: QuotaOverrides,
}

/// The limits one call of one handler runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub max_model_calls: u32,
    pub max_host_calls: u32,
    pub max_output_bytes: usize,
    pub quotas: Quotas,
}

impl Limits {
    /// The defaults with `handler`'s overrides applied.
    pub fn for_handler(&self, handler: &str) -> CallLimits {
        let overrides = self.per_handler.get(handler).cloned().unwrap_or_default();
        CallLimits {
            deadline: overrides.deadline.unwrap_or(self.deadline),
            memory_bytes: overrides.memory_bytes.unwrap_or(self.memory_bytes),
            max_model_calls: overrides.max_model_calls.unwrap_or(self.max_model_calls),
            max_host_calls: overrides.max_host_calls.unwrap_or(self.max_host_calls),
            max_output_bytes: overrides.max_output_bytes.unwrap_or(self.max_output_bytes),
            quotas: self.quotas.with(overrides.quotas),
        }
    }

    /// The largest memory cap any handler has: what the instance pool must
    /// reserve per memory slot.
    pub fn largest_memory(&self) -> usize {
        let overrides = self.per_handler.values().filter_map(|o| o.memory_bytes);
        overrides.fold(self.memory_bytes, usize::max)
    }
}

/// Which cap a guest ran into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallCap {
    Model,
    Host,
}

impl std::fmt::Display for CallCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Model => "model",
            Self::Host => "host",
        })
    }
}

/// A size cap whose breach fails the job (`quota_exceeded`): the ones a guest
/// cannot be told about through the call's return value (`state.set` returns
/// nothing), and the per-job totals, which a guest that ignores errors would
/// otherwise keep hitting. The names are the host's, stable in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// A state key over [`MAX_STATE_KEY_BYTES`](crate::MAX_STATE_KEY_BYTES).
    StateKey,
    /// [`Quotas::max_state_value_bytes`].
    StateValue,
    /// [`Quotas::max_state_bytes`].
    State,
    /// [`Quotas::max_event_bytes`].
    Events,
    /// [`Quotas::max_message_bytes`].
    Message,
}

impl Quota {
    /// The setting that raises it (`[sandbox]` or `[sandbox.handlers.<name>]`).
    pub fn setting(self) -> &'static str {
        match self {
            Self::StateKey => "a fixed limit",
            Self::StateValue => "max_state_value_bytes",
            Self::State => "max_state_bytes",
            Self::Events => "max_event_bytes",
            Self::Message => "max_message_bytes",
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::StateKey => "state key size",
            Self::StateValue => "state value size",
            Self::State => "state size",
            Self::Events => "event data",
            Self::Message => "message data",
        })
    }
}

/// A guest call that did not return normally. Only the job that made it fails;
/// [`GuestFailure::kind`] is the stable name stored on the job and its events.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    #[error("handler exceeded its deadline of {0:?}")]
    Deadline(Duration),
    #[error(
        "handler ran out of memory: it tried to grow its memory to {requested} bytes; the cap is {limit} bytes"
    )]
    MemoryExhausted { requested: usize, limit: usize },
    #[error("handler panicked: {0}")]
    Panic(String),
    #[error("handler overflowed its call stack")]
    StackOverflow,
    #[error("handler trapped: {0}")]
    Trap(String),
    #[error("handler returned {bytes} bytes of output; the cap is {limit} bytes")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("handler exceeded its cap of {limit} {cap} calls per job")]
    CallCapExceeded { cap: CallCap, limit: u32 },
    #[error(
        "handler exceeded its {quota} quota: {bytes} bytes where the cap is {limit} bytes ({})",
        quota.setting()
    )]
    QuotaExceeded {
        quota: Quota,
        bytes: usize,
        limit: usize,
    },
    #[error("handler could not be instantiated: {0}")]
    Instantiate(String),
}

impl GuestFailure {
    /// Stable name of the failure (the job's `errorKind`).
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Deadline(_) => FailureKind::Deadline,
            Self::MemoryExhausted { .. } => FailureKind::MemoryExhausted,
            Self::Panic(_) => FailureKind::Panic,
            Self::StackOverflow => FailureKind::StackOverflow,
            Self::Trap(_) => FailureKind::Trap,
            Self::OutputTooLarge { .. } => FailureKind::OutputTooLarge,
            Self::CallCapExceeded { .. } => FailureKind::CallCapExceeded,
            Self::QuotaExceeded { .. } => FailureKind::QuotaExceeded,
            Self::Instantiate(_) => FailureKind::Instantiate,
        }
    }
}

/// Enforces the memory cap and remembers that it had to, so that the trap that
/// usually follows (a Rust guest aborts when an allocation fails) is reported
/// as memory exhaustion rather than as an anonymous `unreachable`.
pub struct GuestLimiter {
    memory_cap: usize,
    /// The size a refused `memory.grow` asked for.
    pub refused_growth: Option<usize>,
}

/// Table elements one instance may have; generous for any real guest.
const TABLE_ELEMENTS_CAP: usize = 100_000;
/// Instances, memories and tables one store may create; a Rust wasip2
/// component is a main module plus a few adapter shims.
const STORE_OBJECTS_CAP: usize = 32;

impl GuestLimiter {
    pub fn new(memory_cap: usize) -> Self {
        Self {
            memory_cap,
            refused_growth: None,
        }
    }
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.refused_growth = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS_CAP)
    }

    fn instances(&self) -> usize {
        STORE_OBJECTS_CAP
    }

    fn tables(&self) -> usize {
        STORE_OBJECTS_CAP
    }

    fn memories(&self) -> usize {
        STORE_OBJECTS_CAP
    }
}

/// The only time a guest can read: the Unix epoch, forever. The WIT grants no
/// clock, so a handler's behaviour cannot depend on when it runs.
pub struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Names a trap. Order matters: a refused memory growth or an exceeded call
/// cap explains whatever trap followed it.
pub fn classify_trap(
    error: &wasmtime::Error,
    limits: &CallLimits,
    refused_growth: Option<usize>,
    guest_output: &str,
    error_chain: &str,
) -> GuestFailure {
    let trap = error.downcast_ref::<Trap>();
    if matches!(trap, Some(Trap::Interrupt)) {
        return GuestFailure::Deadline(limits.deadline);
    }
    if let Some(requested) = refused_growth {
        return GuestFailure::MemoryExhausted {
            requested,
            limit: limits.memory_bytes,
        };
    }
    if matches!(trap, Some(Trap::StackOverflow)) {
        return GuestFailure::StackOverflow;
    }
    if let Some(message) = panic_message(guest_output) {
        return GuestFailure::Panic(message);
    }
    match guest_output
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
    {
        Some(line) => GuestFailure::Trap(format!("{error_chain} (guest said: {})", line.trim())),
        None => GuestFailure::Trap(error_chain.to_owned()),
    }
}

/// The message of a Rust panic as the standard library prints it to stderr:
/// `thread '…' panicked at src/lib.rs:3:5:` then the message, then (usually) a
/// `note: run with RUST_BACKTRACE=1` line.
pub fn panic_message(guest_output: &str) -> Option<String> {
    let mut lines = guest_output.lines();
    let header = lines.rfind(|line| line.contains("panicked at"))?;
    let location = header
        .split("panicked at")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .trim_end_matches(':');
    // The message follows the header up to the backtrace note; older
    // toolchains put it on the header line itself, after a comma.
    let after = guest_output
        .rsplit_once(header)
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let message: Vec<&str> = after
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.starts_with("note:"))
        .collect();
    let message = message.join("\n").trim().to_owned();
    Some(match (message.is_empty(), location.is_empty()) {
        (true, _) => header.trim().to_owned(),
        (false, true) => message,
        (false, false) => format!("{message} (at {location})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_per_handler() {
        let mut limits = Limits::default();
        limits.per_handler.insert(
            "small".into(),
            HandlerLimits {
                memory_bytes: Some(1 << 20),
                deadline: Some(Duration::from_millis(5)),
                ..Default::default()
            },
        );
        limits.per_handler.insert(
            "big".into(),
            HandlerLimits {
                memory_bytes: Some(256 << 20),
                quotas: QuotaOverrides {
                    max_state_bytes: Some(64 << 20),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let small = limits.for_handler("small");
        assert_eq!(
            (small.memory_bytes, small.deadline),
            (1 << 20, Duration::from_millis(5))
        );
        assert_eq!(small.max_model_calls, limits.max_model_calls);
        assert_eq!(
            limits.for_handler("other").memory_bytes,
            limits.memory_bytes
        );
        assert_eq!(limits.largest_memory(), 256 << 20);
        // Quotas override one by one; the rest keep the defaults.
        let big = limits.for_handler("big").quotas;
        assert_eq!(big.max_state_bytes, 64 << 20);
        assert_eq!(big.max_event_bytes, Quotas::default().max_event_bytes);
        assert_eq!(small.quotas, Quotas::default());
    }

    #[test]
    fn panic_message_is_read_from_stderr() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nguest gave up: bad input\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("guest gave up: bad input (at src/lib.rs:12:9)")
        );
        assert_eq!(panic_message("just some output\n"), None);
    }
}
