//! A handler that misbehaves on request. The job payload's `mode` picks how:
//!
//! - `ok`: succeeds at once (the control);
//! - `loop`: spins forever without ever calling the host;
//! - `alloc`: allocates 1 MiB blocks until memory runs out;
//! - `panic`: panics with a known message;
//! - `stack`: recurses until the call stack overflows;
//! - `big_output`: returns a 10 MB result;
//! - `model_calls`: makes 10,000 model calls, then succeeds;
//! - `probe`: reports what it can see of files, network, environment and clock.

wit_bindgen::generate!({
    world: "handler",
    path: "../../../wit",
});

use std::hint::black_box;

use exports::spool::handler::hooks::Guest;
use spool::handler::model;
use spool::handler::types::{
    ChatMessage, ContentBlock, Job, JobError, JobOutput, ModelParams, ModelRequest, PriorityClass, PriorityDecision,
    Role,
};

pub const PANIC_MESSAGE: &str = "adversary panics on purpose";

struct Adversary;

impl Guest for Adversary {
    fn admit(job: Job) -> Result<PriorityDecision, String> {
        Ok(PriorityDecision { class: PriorityClass::Normal, score: job.priority })
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
            other => return Err(JobError::Reject(format!("unknown mode {other:?}"))),
        };
        Ok(JobOutput { result, blocks: Vec::new() })
    }
}

export!(Adversary);

/// Recursion the optimiser cannot turn into a loop.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    if depth == 0 { 0 } else { black_box(recurse(black_box(depth - 1))) + 1 }
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

fn request(prompt: &str) -> ModelRequest {
    ModelRequest {
        model: None,
        messages: vec![ChatMessage { role: Role::User, content: prompt.to_owned() }],
        params: ModelParams { temperature: None, top_p: None, max_tokens: None, stop: Vec::new(), json_output: false },
    }
}
