//! Size quotas on what a guest writes (issue 13): `state.set`, `emit`, `log`
//! and `append-text` with 10 MB values, and floods of smaller writes, each
//! fail their job typed (or are cut, for logs) while Redis memory and the log
//! stay bounded and normal jobs on the same host keep completing; and
//! `append-text` costs O(delta), so 100,000 small deltas stream in linear
//! time without stalling Redis for everyone else.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::sandbox::adversary_wasm;
use crate::support::*;

/// Queue `evil` runs the adversary, once per job; session tasks go there too.
fn config(adversary_limits: &str) -> String {
    format!(
        r#"
[handlers.adversary]
path = "{}"

[queues.chat]
handler = "chat"

[queues.evil]
handler = "adversary"
max_attempts = 1

[sessions]
task_queue = "evil"

[sandbox.handlers.adversary]
{adversary_limits}
"#,
        adversary_wasm().display()
    )
}

/// How a case must end: the job's state and error kind, and words its error
/// must contain.
struct Expect {
    state: &'static str,
    kind: Option<&'static str>,
    words: &'static [&'static str],
}

const fn failed(kind: &'static str, words: &'static [&'static str]) -> Expect {
    Expect {
        state: "failed",
        kind: Some(kind),
        words,
    }
}

const COMPLETED: Expect = Expect {
    state: "completed",
    kind: None,
    words: &[],
};

async fn submit_task(api: &Api, host: &Host, payload: &Value) -> (String, String) {
    let (status, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("session id");
    let (status, task) = api
        .post(&host.url(&format!("/api/v1/sessions/{sid}/tasks")), payload)
        .await;
    assert_eq!(status, 202, "{task}");
    let field = |name: &str| task[name].as_str().expect(name).to_owned();
    (field("jobId"), field("messageId"))
}

async fn submit_job(api: &Api, host: &Host, queue: &str, payload: &Value) -> String {
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/{queue}/jobs")),
            &json!({ "payload": payload }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["jobId"].as_str().expect("job id").to_owned()
}

async fn submit_chat(api: &Api, host: &Host, i: usize) -> String {
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": format!("u{i}"), "prompt": format!("normal job {i}")}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    reply["jobId"].as_str().expect("job id").to_owned()
}

const MB10: u64 = 10_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_the_quotas_fail_typed_while_redis_memory_and_the_log_stay_bounded() {
    // Per-handler totals below the defaults: the quotas are configurable per
    // handler, and the bound on Redis memory is then tighter.
    let stack = Stack::start(HostOptions {
        concurrency: 3,
        config: config(
            "deadline_ms = 20000\nmax_state_bytes = 1048576\nmax_event_bytes = 524288\nmax_message_bytes = 1048576\n",
        ),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let memory_before = redis.used_memory();
    let log_before = host.log_text().len();
    let started = Instant::now();

    // (what, payload, as a session task?, how it must end)
    let cases: Vec<(&str, Value, bool, Expect)> = vec![
        (
            "state.set of 10 MB",
            json!({"mode": "state_set", "size": MB10}),
            false,
            failed(
                "quota_exceeded",
                &[
                    "state value size",
                    "cap is 1048576",
                    "max_state_value_bytes",
                ],
            ),
        ),
        (
            "state.set of 100 x 64 KiB",
            json!({"mode": "state_set", "size": 65536, "count": 100}),
            false,
            failed("quota_exceeded", &["state size", "max_state_bytes"]),
        ),
        (
            "emit of 10 MB",
            json!({"mode": "emit", "size": MB10}),
            false,
            failed("rejected", &["emit refused after 0: too_large"]),
        ),
        (
            "emit of 400 x 60 KB",
            json!({"mode": "emit", "size": 60000, "count": 400}),
            false,
            failed(
                "quota_exceeded",
                &["event data", "cap is 524288", "max_event_bytes"],
            ),
        ),
        (
            "log of 10 MB",
            json!({"mode": "log", "size": MB10}),
            false,
            COMPLETED,
        ),
        (
            "log of 400 x 10 KB",
            json!({"mode": "log", "size": 10000, "count": 400}),
            false,
            COMPLETED,
        ),
        (
            "append-text of 10 MB",
            json!({"mode": "append_text", "size": MB10}),
            true,
            failed(
                "rejected",
                &["append_text refused after 0", "max_message_write_bytes"],
            ),
        ),
        (
            "append-text of 100 x 64 KiB",
            json!({"mode": "append_text", "size": 65536, "count": 100}),
            true,
            failed("quota_exceeded", &["message data", "max_message_bytes"]),
        ),
    ];
    let mut evil = Vec::new();
    for (what, payload, task, expect) in cases {
        let (id, message) = if task {
            let (id, message) = submit_task(api, host, &payload).await;
            (id, Some(message))
        } else {
            (submit_job(api, host, "evil", &payload).await, None)
        };
        evil.push((what, id, message, expect));
    }
    let mut normal = Vec::new();
    for i in 0..20 {
        normal.push(submit_chat(api, host, i).await);
    }

    for (what, id, message, expect) in &evil {
        let job = api.wait_terminal(host, id, Duration::from_secs(120)).await;
        assert_eq!(job["state"], expect.state, "{what}: {job}");
        if let Some(kind) = expect.kind {
            assert_eq!(job["errorKind"], kind, "{what}: {job}");
        }
        let error = job["error"].as_str().unwrap_or_default();
        for word in expect.words {
            assert!(
                error.contains(word),
                "{what}: {word:?} missing from {error:?}"
            );
        }
        println!("{what}: {} {error}", job["state"]);
        if let Some(mid) = message {
            // The message ends with its job, in an error, and holds no more
            // than the quota let through.
            let (status, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
            assert_eq!(status, 200, "{message}");
            assert_eq!(message["status"], "error", "{what}: {message}");
            let text = message["text"].as_str().unwrap_or_default().len();
            assert!(text <= 1 << 20, "{what}: the message holds {text} bytes");
        }
    }
    for id in &normal {
        let job = api.wait_terminal(host, id, Duration::from_secs(60)).await;
        assert_eq!(job["state"], "completed", "{job}");
    }

    let memory_after = redis.used_memory();
    let grown = memory_after.saturating_sub(memory_before);
    let dataset = redis.memory_info("used_memory_dataset");
    let clients = redis.memory_info("mem_clients_normal");
    println!(
        "Redis used_memory: {memory_before} bytes before, {memory_after} after (+{grown}; dataset {dataset}, client buffers {clients}); the writes asked for about 57 MB; {:?}",
        started.elapsed()
    );
    // What the quotas let through is about 3.5 MB: 1 MiB of state, 0.5 MiB
    // of events, 1 MiB of message text and as much again in its text_delta
    // events. The allocator's size classes (a 64 KiB value takes 80 KiB) and
    // client buffers not yet shrunk add up to as much again; without the
    // quotas the growth is over 50 MB.
    assert!(
        grown < 12 << 20,
        "Redis grew by {grown} bytes (from {memory_before} to {memory_after})"
    );

    // The log: the 10 MB line cut to 16 KiB with a marker, the flood of
    // lines cut off at 1 MiB with a note.
    let log = &host.log_text()[log_before..];
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    println!(
        "log grew by {} bytes; longest line {longest} bytes",
        log.len()
    );
    assert!(longest < 20_000, "a log line of {longest} bytes");
    assert!(log.contains("[cut: 9983616 more bytes]"), "no cut marker");
    assert!(log.contains("max_log_bytes"), "no note of dropped lines");
    assert!(log.len() < 2 << 20, "the log grew by {} bytes", log.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_small_deltas_append_in_linear_time_while_other_jobs_run() {
    // 100,000 appends of 100 bytes: 10 MB of text. Re-concatenating the text
    // on every append (what the message script did) copies ~500 GB in total
    // and cannot finish within the 60 s deadline; with APPEND each costs its
    // own 100 bytes.
    let stack = Stack::start(HostOptions {
        concurrency: 3,
        config: config(
            "deadline_ms = 60000\nmax_host_calls = 200000\nmax_message_bytes = 16777216\n",
        ),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let memory_before = redis.used_memory();
    let started = Instant::now();
    let (id, mid) = submit_task(
        api,
        host,
        &json!({"mode": "append_text", "size": 100, "count": 100_000}),
    )
    .await;

    // Meanwhile other jobs keep completing promptly: Redis is not blocked.
    let mut latencies = Vec::new();
    let mut i = 0;
    loop {
        let (status, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        assert_eq!(status, 200, "{job}");
        if job["state"] == "completed" || job["state"] == "failed" {
            break;
        }
        let submitted = Instant::now();
        let chat = submit_chat(api, host, i).await;
        let done = api
            .wait_terminal(host, &chat, Duration::from_secs(30))
            .await;
        assert_eq!(done["state"], "completed", "{done}");
        latencies.push(submitted.elapsed());
        i += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the append job is not done after 120 s: {job}"
        );
    }
    let took = started.elapsed();
    let job = api.wait_terminal(host, &id, Duration::from_secs(5)).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["result"], json!({"writes": 100_000}), "{job}");

    let (status, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(status, 200);
    assert_eq!(message["status"], "completed", "{}", message["status"]);
    assert_eq!(
        message["text"].as_str().map(str::len),
        Some(10_000_000),
        "every delta is in the text"
    );
    latencies.sort();
    let worst = latencies.last().copied().unwrap_or_default();
    let memory_after = redis.used_memory();
    println!(
        "100,000 appends took {took:?} ({:?} each, job included); {} chat jobs meanwhile, slowest {worst:?}; Redis used_memory {memory_before} -> {memory_after} bytes (10 MB of text)",
        took / 100_000,
        latencies.len()
    );
    assert!(!latencies.is_empty(), "no chat job ran during the appends");
    assert!(worst < Duration::from_secs(5), "a chat job took {worst:?}");
    // The text once, not once per delta.
    assert!(
        memory_after.saturating_sub(memory_before) < 16 << 20,
        "Redis grew from {memory_before} to {memory_after} bytes"
    );
}
