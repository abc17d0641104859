//! What a guest may use and how its misbehaviour is named: the per-call limits
//! (with per-handler overrides), the resource limiter that enforces the memory
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
            per_handler: BTreeMap::new(),
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
}

/// The limits one call of one handler runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallLimits {
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub max_model_calls: u32,
    pub max_host_calls: u32,
    pub max_output_bytes: usize,
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
