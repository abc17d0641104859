//! The guest sandbox (issue #6): adversarial guests, built from tests/guests,
//! each fail their own job with the right typed error within their limits,
//! while 100 normal chat jobs on the same host all succeed.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Builds the adversarial guest workspace (tests/guests) once per test run and
/// returns the component's path. It shares guest/'s target dir and profile, so
/// only the adversary itself is compiled.
pub fn adversary_wasm() -> PathBuf {
    static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.as_ref() {
        return path.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join("target").join("guests");
    let status = std::process::Command::new(env!("CARGO"))
        .current_dir(root.join("tests/guests"))
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building tests/guests failed");
    let path = target_dir.join("wasm32-wasip2/release/adversary.wasm");
    *built = Some(path.clone());
    path
}

/// (mode, expected error kind, words the error message must contain)
const ADVERSARIES: &[(&str, &str, &str)] = &[
    ("loop", "deadline", "deadline of 1s"),
    ("alloc", "memory_exhausted", "the cap is 50331648 bytes"),
    ("panic", "panic", "adversary panics on purpose"),
    ("stack", "stack_overflow", "call stack"),
    ("big_output", "output_too_large", "the cap is 1048576 bytes"),
    ("model_calls", "call_cap_exceeded", "cap of 20 model calls"),
];

pub fn adversary_config() -> String {
    format!(
        r#"
[handlers.adversary]
path = "{}"

[queues.chat]
handler = "chat"

[queues.evil]
handler = "adversary"
max_attempts = 2
backoff_ms = 50

[sandbox.handlers.adversary]
deadline_ms = 1000
memory_mb = 48
max_model_calls = 20
max_output_bytes = 1048576
"#,
        adversary_wasm().display()
    )
}

pub async fn submit_evil(api: &Api, host: &Host, mode: &str) -> String {
    let (status, reply) = api
        .post(
            &host.url("/api/queues/evil/jobs"),
            &json!({"payload": {"mode": mode}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["jobId"].as_str().expect("job id").to_owned()
}

/// The `task_failed` events of a job, oldest first.
fn failed_events(redis: &Redis, id: &str) -> Vec<Value> {
    stream_events(&mut redis.connection(), &format!("job_events:{id}"))
        .into_iter()
        .filter(|(event_type, _)| event_type == "task_failed")
        .map(|(_, data)| data)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversarial_guests_fail_alone_while_normal_jobs_succeed() {
    let stack = Stack::start(HostOptions {
        concurrency: 4,
        config: adversary_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host,
        api,
        stub,
        redis,
    } = &stack;

    let started = Instant::now();
    let mut evil = Vec::new();
    for (mode, kind, words) in ADVERSARIES {
        evil.push((submit_evil(api, host, mode).await, *mode, *kind, *words));
    }
    let mut normal = Vec::new();
    for i in 0..100 {
        let prompt = format!("normal job {i}");
        let (status, reply) = api
            .post(
                &host.url("/api/chat"),
                &json!({"userId": format!("u{i}"), "prompt": prompt}),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        normal.push((reply["jobId"].as_str().expect("job id").to_owned(), prompt));
    }

    for (id, prompt) in &normal {
        let job = api.wait_terminal(host, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["result"]["response"], expected_chat_response(prompt, 0));
    }
    for (id, mode, kind, words) in &evil {
        let job = api.wait_terminal(host, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "failed", "{mode}: {job}");
        assert_eq!(job["errorKind"], *kind, "{mode}: {job}");
        let error = job["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(words),
            "{mode}: error {error:?} should mention {words:?}"
        );
        // Two attempts, as the queue's policy says; each failure is typed.
        assert_eq!(job["attempts"], 2, "{mode}: {job}");
        let events = failed_events(redis, id);
        assert_eq!(events.len(), 2, "{mode}: {events:?}");
        assert_eq!(events[0]["final"], false);
        assert_eq!(events[1]["final"], true);
        for event in &events {
            assert_eq!(event["error_kind"], *kind, "{mode}: {event}");
            let message = event["error"].as_str().unwrap_or_default();
            assert!(message.contains(words), "{mode}: {event}");
        }
    }
    // The looping guest was stopped by its 1 s deadline on both attempts, not
    // by the 120 s default (a generous bound: this only has to tell them apart).
    assert!(started.elapsed() < Duration::from_secs(60));
    // The call-cap guest reached the model 20 times per attempt, never more:
    // 100 chat calls + 2 x 20.
    assert_eq!(stub.stats().total, 100 + 2 * 20, "{:?}", stub.stats().calls);
}

/// Every job runs in a fresh instance: one worker runs job after job in
/// the same pool slots, and none sees what the job before it wrote to its
/// memory, whether the host reset the page by memset or by madvise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_sees_the_memory_of_the_job_before_it() {
    let stack = Stack::start(HostOptions {
        concurrency: 1,
        config: adversary_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    for _ in 0..5 {
        let id = submit_evil(api, host, "remember").await;
        let job = api.wait_terminal(host, &id, Duration::from_secs(30)).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["result"], json!({"seen": [0, 0, 0]}), "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_sees_no_files_network_environment_or_clock() {
    let stack = Stack::start(HostOptions {
        concurrency: 1,
        config: adversary_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let id = submit_evil(api, host, "probe").await;
    let job = api.wait_terminal(host, &id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["result"],
        json!({"env": 0, "args": 0, "read_root": false, "read_file": false, "tcp": false, "wall_clock_secs": 0}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_asked_for_at_the_end_of_time_is_capped_and_the_worker_lives_on() {
    let stack = Stack::start(HostOptions {
        concurrency: 1,
        config: adversary_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let id = submit_evil(api, host, "retry_never").await;
    // Once it is parked, the only worker must still be there for the next job.
    let (_, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "still served"}),
        )
        .await;
    let next = reply["jobId"].as_str().expect("job id").to_owned();
    let job = api
        .wait_terminal(host, &next, Duration::from_secs(30))
        .await;
    assert_eq!(job["state"], "completed", "{job}");

    let retry_at: Option<f64> = redis::cmd("ZSCORE")
        .arg("spool:q:{evil}:delayed")
        .arg(&id)
        .query(&mut redis.connection())
        .expect("ZSCORE");
    let retry_at = retry_at.expect("the job waits for its retry") as u64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let day = 24 * 60 * 60 * 1000;
    assert!(
        retry_at > now + day - 60_000 && retry_at <= now + day,
        "retry at {retry_at}, now {now}: capped at one day"
    );
}
