//! A handler that misbehaves on request. The job payload's `mode` picks how:
//!
//! - `ok`: succeeds at once (the control);
//! - `loop`: spins forever without ever calling the host;
//! - `alloc`: allocates 1 MiB blocks until memory runs out;
//! - `panic`: panics with a known message;
//! - `stack`: recurses until the call stack overflows;
//! - `big_output`: returns a 10 MB result;
//! - `model_calls`: makes 10,000 model calls, then succeeds;
//! - `probe`: reports what it can see of files, network, environment and clock;
//! - `emit_reserved`: tries to emit every event name the host writes itself
//!   (and `task_anything`, under the host's reserved `task_` prefix), then
//!   emits `emit_report` with the error each attempt got, e.g.
//!   `{"task_queued": "reserved_name", …}` (`"ok"` for one that was
//!   accepted), and succeeds with that same object as its result;
//! - `retry_never`: asks to be retried after `u64::MAX` ms;
//! - `writer`: `ticks` times (10 by default), makes one model call (the stub's
//!   latency paces it), then emits `tick` `{"attempt", "i"}` and sets state
//!   key `last` to `"{attempt}:{i}"`; succeeds with `{"attempt"}`. The
//!   fencing tests watch which attempt's writes land;
//! - `flaky`: its first attempt asks to be retried after 50 ms; later ones
//!   are a `writer`.
//! - `remember`: reads, then marks, a static counter and both ends of a
//!   newly allocated 8 MiB buffer; succeeds with `{"seen": [counter, first,
//!   last]}`, all 0 in a fresh instance (a reused memory that was not reset
//!   shows the marks of the job before).
//!
//! Writes far past the sandbox's size quotas (tests/e2e/quotas.rs). `size`
//! is bytes per write, `count` the number of writes; each mode stops at the
//! first refusal and rejects the job with `"{mode} refused after {n}: {error}"`,
//! else succeeds with `{"writes": n}`:
//! - `state_set`: `state.set` of keys `k0`, `k1`, ... (10 MB, once, by default);
//! - `emit`: `emit` of `blob` events whose data is a JSON string of `size`
//!   bytes (10 MB, once, by default);
//! - `log`: `log` lines of `size` bytes at level info (10 MB, once, by
//!   default; logging cannot refuse, so it always succeeds);
//! - `append_text`: `append-text` of `size` bytes (10 MB, once, by default)
//!   to the message the job drives (start it as a session task); then
//!   completes the message.
//!
//! Owns the misbehaviours the sandbox tests (tests/e2e/sandbox.rs) select by
//! `mode`; a mode changes only together with the test that relies on it.
//! Any other mode is rejected.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use spool_sdk::chat::{Message, Request};
use spool_sdk::{
    ChatMessage, ContentBlock, EmitError, Guest, Job, JobError, JobOutput, ModelRequest,
    PriorityClass, PriorityDecision, RetryHint, events, logging, messages, model, state,
};

pub const PANIC_MESSAGE: &str = "adversary panics on purpose";

struct Adversary;

impl Guest for Adversary {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Ok(PriorityDecision {
            class: PriorityClass::Normal,
            score: job.priority,
        })
    }

    fn shape_prompt(job: Job, _history: Vec<ChatMessage>) -> ModelRequest {
        request(&job.payload)
    }

    fn parse_content(text: String) -> Vec<ContentBlock> {
        vec![ContentBlock::Text(text)]
    }

    fn handle(job: Job) -> Result<JobOutput, JobError> {
        let payload: serde_json::Value = serde_json::from_str(&job.payload).unwrap_or_default();
        let mode = payload["mode"].as_str().unwrap_or("ok");
        let result = match mode {
            "ok" => r#"{"ok":true}"#.to_owned(),
            "loop" => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    black_box(&hoard);
                }
            }
            "panic" => panic!("{PANIC_MESSAGE}"),
            "stack" => format!("{{\"depth\":{}}}", recurse(u64::MAX)),
            "big_output" => format!("\"{}\"", "x".repeat(10 << 20)),
            "model_calls" => {
                let mut answered = 0;
                for _ in 0..10_000 {
                    if model::chat(&request("{}")).is_ok() {
                        answered += 1;
                    }
                }
                format!("{{\"answered\":{answered}}}")
            }
            "probe" => probe(),
            "emit_reserved" => emit_reserved()?,
            "retry_never" => {
                return Err(JobError::Retry(RetryHint {
                    reason: "come back at the end of time".to_owned(),
                    after_ms: Some(u64::MAX),
                }));
            }
            "writer" => writer(&job, payload["ticks"].as_u64().unwrap_or(10)),
            "flaky" if job.attempt == 1 => {
                return Err(JobError::Retry(RetryHint {
                    reason: "first attempts fail".to_owned(),
                    after_ms: Some(50),
                }));
            }
            "flaky" => writer(&job, payload["ticks"].as_u64().unwrap_or(10)),
            "remember" => remember(),
            "state_set" | "emit" | "log" | "append_text" => flood(mode, &payload)?,
            other => return Err(JobError::Reject(format!("unknown mode {other:?}"))),
        };
        Ok(JobOutput {
            result,
            blocks: Vec::new(),
        })
    }
}

spool_sdk::export!(Adversary);

static CALLS: AtomicU64 = AtomicU64::new(0);

fn remember() -> String {
    let counter = CALLS.fetch_add(1, Ordering::Relaxed);
    // Grown memory, which the allocator trusts to be zero. Larger than what
    // a freed instance slot keeps resident, so both ways the host resets
    // memory (memset of dirtied pages, then madvise) are crossed.
    let mut big = black_box(vec![0u8; 8 << 20]);
    let last = big.len() - 1;
    let seen = (big[0], big[last]);
    big[0] = 1;
    big[last] = 1;
    black_box(&big);
    format!("{{\"seen\":[{counter},{},{}]}}", seen.0, seen.1)
}

/// Recursion the optimiser cannot turn into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 {
        0
    } else {
        black_box(recurse(black_box(depth - 1))) + 1
    }
}

/// What the sandbox lets a guest see; every answer should be "nothing".
fn probe() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX);
    serde_json::json!({
        "env": std::env::vars().count(),
        "args": std::env::args().count(),
        "read_root": std::fs::read_dir("/").is_ok(),
        "read_file": std::fs::read("/etc/hostname").is_ok(),
        "tcp": std::net::TcpStream::connect("127.0.0.1:80").is_ok(),
        "wall_clock_secs": since_epoch,
    })
    .to_string()
}

/// The event names the host writes itself, and one more under its reserved
/// `task_` prefix: a guest must get every one of them refused.
const HOST_EVENTS: [&str; 11] = [
    "task_queued",
    "task_started",
    "task_progress",
    "text_delta",
    "task_retrying",
    "task_requeued",
    "task_completed",
    "task_failed",
    "task_cancelled",
    "follow_up_queued",
    "task_anything",
];

/// Emits each of [`HOST_EVENTS`] and reports what came back, as the custom
/// event `emit_report` and as the result.
fn emit_reserved() -> Result<String, JobError> {
    let report: Map<String, Value> = HOST_EVENTS
        .iter()
        .map(|name| {
            let outcome = match events::emit(name, "{}") {
                Ok(()) => "ok".to_owned(),
                Err(error) => snake_case(error),
            };
            (name.to_string(), Value::String(outcome))
        })
        .collect();
    let report = Value::Object(report).to_string();
    // The report is the evidence: without it the test would see a success
    // that proves nothing, so a refused report fails the job instead.
    events::emit("emit_report", &report).map_err(|error| {
        JobError::Reject(format!("emit_report was refused: {}", snake_case(error)))
    })?;
    Ok(report)
}

/// Writes a tick per model call, each stamped with the attempt.
fn writer(job: &Job, ticks: u64) -> String {
    for i in 0..ticks {
        let _ = model::chat(&request("tick"));
        let tick = serde_json::json!({"attempt": job.attempt, "i": i}).to_string();
        let _ = events::emit("tick", &tick);
        state::set("last", &format!("{}:{i}", job.attempt));
    }
    serde_json::json!({"attempt": job.attempt}).to_string()
}

/// `count` writes of `size` bytes through the import `mode` names (see the
/// crate docs); the first refusal rejects the job, naming it.
fn flood(mode: &str, payload: &Value) -> Result<String, JobError> {
    let size = payload["size"].as_u64().unwrap_or(10_000_000) as usize;
    let count = payload["count"].as_u64().unwrap_or(1);
    // Built once: the point is the host's side of each write, not the guest's.
    let text = "x".repeat(size);
    let json = format!("\"{}\"", "x".repeat(size.saturating_sub(2)));
    for n in 0..count {
        let refused = match mode {
            "state_set" => {
                state::set(&format!("k{n}"), &text);
                None
            }
            "emit" => events::emit("blob", &json).err().map(snake_case),
            "log" => {
                logging::log(logging::Level::Info, &text);
                None
            }
            _ => messages::append_text(&text).err(),
        };
        if let Some(error) = refused {
            return Err(JobError::Reject(format!(
                "{mode} refused after {n}: {error}"
            )));
        }
    }
    if mode == "append_text" {
        let _ = messages::complete();
    }
    Ok(serde_json::json!({ "writes": count }).to_string())
}

/// The error's WIT name in lower_snake_case, like every other name in events.
fn snake_case(error: EmitError) -> String {
    error.name().replace('-', "_")
}

fn request(prompt: &str) -> ModelRequest {
    Request::new(vec![Message::user(prompt)]).into()
}
