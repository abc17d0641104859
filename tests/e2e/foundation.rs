//! The whole job path (issue: foundation): priorities, results shaped by the
//! guest, SSE progress, bad input, the second guest, the embedded Redis.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Submits 200 chat jobs of mixed priorities while the queue is paused, resumes,
/// and returns (class, job record) for each, plus the prompts by job id.
async fn run_mixed_priorities(host: &Host, api: &Api) -> Vec<(String, Value, String, usize)> {
    let (status, _) = api
        .post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let mut submitted = Vec::new();
    for i in 0..200u32 {
        let priority = 1 + (i * 7 % 10); // every value 1..=10, interleaved
        let vip = i % 25 == 0;
        let with_history = i % 3 == 0;
        let history = if with_history {
            json!([{"role": "user", "content": "earlier question"}, {"role": "assistant", "content": "earlier answer"}])
        } else {
            json!([])
        };
        let prompt = format!("job number {i}");
        let mut body = json!({"userId": format!("user-{i}"), "prompt": prompt, "priority": priority, "conversationHistory": history});
        if vip {
            body["userTier"] = json!("vip");
        }
        let (status, reply) = api.post(&host.url("/api/chat"), &body).await;
        assert_eq!(status, 202, "{reply}");
        let expected_class = if vip || priority >= 8 {
            "high"
        } else if priority >= 4 {
            "normal"
        } else {
            "low"
        };
        assert_eq!(
            reply["class"], expected_class,
            "priority {priority}, vip {vip}"
        );
        submitted.push((
            reply["jobId"].as_str().unwrap_or_default().to_owned(),
            expected_class.to_owned(),
            prompt,
            if with_history { 2 } else { 0 },
        ));
    }
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(
        stats["queues"]["chat"]["waiting"], 200,
        "all jobs wait while paused: {stats}"
    );
    assert_eq!(stats["queues"]["chat"]["active"], 0);
    let (status, _) = api
        .post(&host.url("/api/queues/chat/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);

    let mut finished = Vec::new();
    for (id, class, prompt, history) in submitted {
        let job = api.wait_terminal(host, &id, WAIT).await;
        finished.push((class, job, prompt, history));
    }
    finished
}

fn check_results(finished: &[(String, Value, String, usize)]) {
    for (class, job, prompt, history) in finished {
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["class"], class.as_str());
        let expected = expected_chat_response(prompt, *history);
        assert_eq!(
            job["result"]["response"], expected,
            "result is the stub's answer to the guest-shaped prompt"
        );
        assert_eq!(job["blocks"], json!([{"type": "text", "text": expected}]));
        assert_eq!(job["handler"], "chat");
        assert!(
            job["handlerVersion"]
                .as_str()
                .is_some_and(|v| v.len() == 12),
            "{job}"
        );
        assert_eq!(job["attempts"], 1);
        assert_eq!(job["progress"], 100);
        assert_eq!(job["step"], "parsing answer", "the guest's last step stays");
    }
}

fn times(finished: &[(String, Value, String, usize)], class: &str, field: &str) -> Vec<u64> {
    finished
        .iter()
        .filter(|(c, ..)| c == class)
        .map(|(_, job, ..)| job[field].as_u64().unwrap_or(0))
        .collect()
}

/// The chat queue in strict priority order (no fairness turns; the default
/// lets low and normal jobs through now and then, see trust.rs).
const STRICT_PRIORITY: &str = "[queues.chat]\nhandler = \"chat\"\nfair_every = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_finishes_every_high_job_before_any_normal_starts_and_normal_before_low() {
    let redis = Redis::start();
    one_worker_keeps_strict_priority(&redis.url()).await;
}

/// The strict-priority scenario on the Redis (or cluster) at `redis_url`.
pub async fn one_worker_keeps_strict_priority(redis_url: &str) {
    let stub = stub().await;
    let options = HostOptions {
        concurrency: 1,
        config: STRICT_PRIORITY.into(),
        ..Default::default()
    };
    let (host, api) = (Host::start_at(redis_url, &stub, options), Api::default());
    let finished = run_mixed_priorities(&host, &api).await;
    check_results(&finished);
    let last_high_finish = times(&finished, "high", "finishedAt")
        .into_iter()
        .max()
        .unwrap_or(0);
    let first_normal_start = times(&finished, "normal", "startedAt")
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    let last_normal_finish = times(&finished, "normal", "finishedAt")
        .into_iter()
        .max()
        .unwrap_or(0);
    let first_low_start = times(&finished, "low", "startedAt")
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    assert!(
        last_high_finish <= first_normal_start,
        "a normal job started before the last high one finished"
    );
    assert!(
        last_normal_finish <= first_low_start,
        "a low job started before the last normal one finished"
    );
    // Same-millisecond ties say nothing; the stream order inside a class is FIFO.
    let high_starts = times(&finished, "high", "startedAt");
    assert!(
        high_starts.windows(2).all(|w| w[0] <= w[1]),
        "high jobs ran in submission order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_start_every_high_job_before_any_normal_and_normal_before_low() {
    let stack = Stack::start(HostOptions {
        concurrency: 3,
        config: STRICT_PRIORITY.into(),
        ..Default::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let finished = run_mixed_priorities(host, api).await;
    check_results(&finished);
    // With three workers a normal job may start while the last high ones are
    // still running, but never before every high job has been claimed.
    let last_high_start = times(&finished, "high", "startedAt")
        .into_iter()
        .max()
        .unwrap_or(0);
    let first_normal_start = times(&finished, "normal", "startedAt")
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    let last_normal_start = times(&finished, "normal", "startedAt")
        .into_iter()
        .max()
        .unwrap_or(0);
    let first_low_start = times(&finished, "low", "startedAt")
        .into_iter()
        .min()
        .unwrap_or(u64::MAX);
    assert!(last_high_start <= first_normal_start);
    assert!(last_normal_start <= first_low_start);
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["queues"]["chat"]["completed"], 200, "{stats}");
    assert_eq!(stats["waiting"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_delivers_progress_deltas_and_the_terminal_state_and_resumes_without_gaps() {
    let redis = Redis::start();
    sse_delivers_and_resumes(&redis.url()).await;
}

/// The SSE scenario on the Redis (or cluster) at `redis_url`.
pub async fn sse_delivers_and_resumes(redis_url: &str) {
    let stub = stub().await;
    stub.set_timing(0, 20); // pieces arrive over ~200 ms, while the client watches
    let host = Host::start_at(redis_url, &stub, HostOptions::default());
    let api = Api::default();
    let prompt = "tell me something with several words in it";
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": prompt}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["class"], "normal", "default priority 5 is normal");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();

    let events = read_sse(&host.url(&format!("/stream/status/{id}")), None, WAIT).await;
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"state"), "a snapshot comes first");
    assert_eq!(
        names.last(),
        Some(&"task_completed"),
        "the stream ends with the terminal event: {names:?}"
    );
    for expected in ["task_queued", "task_started", "task_progress", "text_delta"] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let progress: Vec<u64> = events
        .iter()
        .filter(|(_, e, _)| e == "task_progress")
        .filter_map(|(_, _, d)| d["data"]["progress"].as_u64())
        .collect();
    assert!(
        progress.len() >= 3 && progress.windows(2).all(|w| w[0] < w[1]),
        "progress rises: {progress:?}"
    );
    let streamed: String = events
        .iter()
        .filter(|(_, e, _)| e == "text_delta")
        .filter_map(|(_, _, d)| d["data"]["text"].as_str())
        .collect();
    assert_eq!(
        streamed,
        expected_chat_response(prompt, 0),
        "deltas add up to the answer"
    );
    let completed = &events.last().map(|(_, _, d)| d.clone()).unwrap_or_default();
    assert_eq!(
        completed["data"]["result"]["response"],
        expected_chat_response(prompt, 0)
    );

    // Resume from the middle: exactly the rest, no gap, no duplicate.
    let ids: Vec<String> = events.iter().filter_map(|(id, ..)| id.clone()).collect();
    let middle = ids.len() / 2;
    let rest = read_sse(
        &host.url(&format!("/stream/status/{id}")),
        Some(&ids[middle]),
        WAIT,
    )
    .await;
    let rest_ids: Vec<String> = rest.iter().filter_map(|(id, ..)| id.clone()).collect();
    assert_eq!(rest_ids, ids[middle + 1..].to_vec());

    // The same events as a JSON page, with stream info (design C).
    let (status, page) = api.get(&host.url(&format!("/api/job/{id}/events"))).await;
    assert_eq!(status, 200);
    assert_eq!(page["info"]["length"].as_u64(), Some(ids.len() as u64));
    assert_eq!(page["events"].as_array().map(Vec::len), Some(ids.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_naming_the_problem_and_the_host_keeps_serving() {
    let stack = Stack::start(HostOptions {
        extra_args: vec![],
        config: "body_limit_bytes = 4096\n".into(),
        ..Default::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let chat = host.url("/api/chat");
    // (case, status, error code, words the message mentions, the reply)
    type Case<'a> = (&'a str, u16, &'a str, &'a str, (u16, Value));
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            400,
            "malformed_json",
            "",
            api.post_raw(&chat, "{\"userId\": ").await,
        ),
        (
            // The prompt is the chat handler's field: its admit refuses.
            "missing prompt",
            422,
            "rejected_by_handler",
            "prompt",
            api.post(&chat, &json!({"userId": "u"})).await,
        ),
        (
            "missing userId",
            422,
            "invalid_field",
            "userId",
            api.post(&chat, &json!({"prompt": "hi"})).await,
        ),
        (
            "priority 0",
            422,
            "invalid_priority",
            "got 0",
            api.post(
                &chat,
                &json!({"userId": "u", "prompt": "hi", "priority": 0}),
            )
            .await,
        ),
        (
            "priority 11",
            422,
            "invalid_priority",
            "got 11",
            api.post(
                &chat,
                &json!({"userId": "u", "prompt": "hi", "priority": 11}),
            )
            .await,
        ),
        (
            "unknown queue",
            404,
            "unknown_queue",
            "nope",
            api.post(&host.url("/api/queues/nope/jobs"), &json!({"payload": {}}))
                .await,
        ),
        (
            "body over the limit",
            413,
            "body_too_large",
            "",
            api.post(&chat, &json!({"userId": "u", "prompt": "x".repeat(5000)}))
                .await,
        ),
        (
            "guest rejects",
            422,
            "rejected_by_handler",
            "prompt",
            api.post(&chat, &json!({"userId": "u", "prompt": ""})).await,
        ),
        (
            "bad history",
            422,
            "rejected_by_handler",
            "",
            api.post(
                &chat,
                &json!({"userId": "u", "prompt": "hi", "conversationHistory": [{"role": "user"}]}),
            )
            .await,
        ),
        (
            "unknown job",
            404,
            "job_not_found",
            "",
            api.get(&host.url("/api/job/does-not-exist")).await,
        ),
        (
            "unknown route",
            404,
            "not_found",
            "",
            api.get(&host.url("/api/nothing")).await,
        ),
    ];
    for (case, status, code, mentions, (got_status, body)) in cases {
        assert_eq!(got_status, status, "{case}: {body}");
        assert_eq!(body["error"]["code"], code, "{case}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && message.contains(mentions),
            "{case}: message `{message}` should mention `{mentions}`"
        );
    }
    let (status, health) = api.get(&host.url("/health")).await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, reply) = api
        .post(&chat, &json!({"userId": "u", "prompt": "still here?"}))
        .await;
    assert_eq!(status, 202, "{reply}");
    let job = api
        .wait_terminal(host, reply["jobId"].as_str().unwrap_or_default(), WAIT)
        .await;
    assert_eq!(
        job["result"]["response"],
        expected_chat_response("still here?", 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_guest_runs_outline_then_document_with_its_business_events() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host,
        api,
        stub,
        redis,
    } = &stack;
    let (status, reply) = api
        .post(
            &host.url("/api/queues/documents/jobs"),
            &json!({"payload": {"topic": "tea 茶", "sections": 2}, "priority": 9}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["class"], "high");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    // Stage 1, the outline, is the submitted job; stage 2 its follow-up.
    let outline_job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(outline_job["state"], "completed", "{outline_job}");
    assert_eq!(outline_job["handler"], "pipeline");
    let outline = outline_job["result"]["outline"]
        .as_str()
        .unwrap_or_default();
    assert!(
        outline.contains("Write an outline with 2 sections about: tea 茶"),
        "{outline_job}"
    );
    let next = outline_job["result"]["next"].as_str().unwrap_or_default();
    assert_eq!(next, format!("{id}.1"), "{outline_job}");
    let document_job = api.wait_terminal(host, next, WAIT).await;
    assert_eq!(document_job["state"], "completed", "{document_job}");
    assert_eq!(
        document_job["class"], "high",
        "the follow-up keeps the priority"
    );
    assert_eq!(document_job["result"]["outline"], outline);
    let document = document_job["result"]["document"]
        .as_str()
        .unwrap_or_default();
    assert!(document.starts_with("[stub-chat]"), "{document_job}");
    assert_eq!(
        document_job["blocks"],
        json!([{"type": "markdown", "text": document}])
    );

    // Each stage's events are on its own job's stream, ending at its
    // completion; the first job's stream also carries the later stage's
    // (design C: one stream per task), each naming its stage in `jobId`.
    for (job, own_event) in [
        (&id, "outline_generated"),
        (&next.to_owned(), "document_generated"),
    ] {
        let events = read_sse(&host.url(&format!("/stream/status/{job}")), None, WAIT).await;
        let own: Vec<&str> = events
            .iter()
            .filter(|(_, _, data)| data.get("jobId").is_none())
            .map(|(_, e, _)| e.as_str())
            .collect();
        let position = |name: &str| {
            own.iter()
                .position(|n| *n == name)
                .unwrap_or_else(|| panic!("{name} missing from {job}: {own:?}"))
        };
        assert!(position("task_started") < position(own_event), "{own:?}");
        assert!(position(own_event) < position("task_completed"), "{own:?}");
        assert_eq!(own.iter().filter(|n| **n == "task_completed").count(), 1);
        assert_eq!(own.contains(&"follow_up_queued"), *job == id, "{own:?}");
        let stages: Vec<&Value> = events
            .iter()
            .filter(|(id, ..)| id.is_some())
            .filter_map(|(_, _, data)| data.get("jobId"))
            .collect();
        if *job == id {
            assert!(
                !stages.is_empty() && stages.iter().all(|s| *s == next),
                "{events:?}"
            );
            assert_eq!(
                events.last().map(|(_, e, _)| e.as_str()),
                Some("task_completed")
            );
            // Resumed after the root's own completion, the stream still knows
            // the stage it announced: it ends at that stage's end (or at once,
            // had the stage ended first), not at the next quiet check (15 s).
            let root_completed = events
                .iter()
                .find(|(_, name, data)| name == "task_completed" && data.get("jobId").is_none())
                .and_then(|(event_id, ..)| event_id.clone())
                .expect("the root's own completion, with its id");
            let resumed = read_sse(
                &host.url(&format!("/stream/status/{job}")),
                Some(&root_completed),
                Duration::from_secs(5),
            )
            .await;
            assert!(
                resumed.iter().all(|(_, name, _)| name != "task_queued"),
                "resumed after the point: {resumed:?}"
            );
        } else {
            assert!(
                stages.is_empty(),
                "a last stage copies nothing onto its own stream"
            );
        }
    }
    assert_eq!(
        stub.stats().calls.get("/api/chat"),
        Some(&2),
        "two stages, two model calls"
    );
    // Design C's entry fields, with non-ASCII text stored as is (not \u-escaped).
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("job_events:{id}"))
        .arg("-")
        .arg("+")
        .query(&mut redis.connection())
        .expect("job events");
    let (_, fields) = entries
        .iter()
        .find(|(_, fields)| {
            fields
                .iter()
                .any(|(k, v)| k == "event_type" && v == "outline_generated")
        })
        .expect("outline_generated entry");
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    for field in ["event_type", "data", "timestamp"] {
        assert!(names.contains(&field), "{names:?}");
    }
    let data = &fields.iter().find(|(k, _)| k == "data").expect("data").1;
    assert!(data.contains("茶") && !data.contains("\\u"), "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_fails_twice_then_completes_on_attempt_three_after_the_backoff() {
    let redis = Redis::start();
    fails_twice_then_completes(&redis.url()).await;
}

/// The retry scenario on the Redis (or cluster) at `redis_url`.
pub async fn fails_twice_then_completes(redis_url: &str) {
    let stub = stub().await;
    let config =
        "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 300\n".to_owned();
    let host = Host::start_at(
        redis_url,
        &stub,
        HostOptions {
            config,
            ..Default::default()
        },
    );
    stub.inject([spool::stub::Fault {
        status: Some(500),
        times: 2,
        ..Default::default()
    }])
    .expect("fault");
    let api = Api::default();
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "third time lucky"}),
        )
        .await;
    assert_eq!(status, 202);
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["attempts"], 3);
    let events = read_sse(&host.url(&format!("/stream/status/{id}")), None, WAIT).await;
    let starts: Vec<u64> = events
        .iter()
        .filter(|(_, e, _)| e == "task_started")
        .filter_map(|(_, _, d)| d["timestamp"].as_u64())
        .collect();
    let failures = events.iter().filter(|(_, e, _)| e == "task_failed").count();
    assert_eq!((starts.len(), failures), (3, 2));
    // Backoff 300 ms then 600 ms, each with at most 20 % jitter off.
    assert!(starts[1] - starts[0] >= 240, "gaps {:?}", starts);
    assert!(starts[2] - starts[1] >= 480, "gaps {:?}", starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_model_request_fails_the_job_at_once_with_a_readable_error() {
    let redis = Redis::start();
    let stub = stub().await;
    let host = Host::start(&redis, &stub, HostOptions::default());
    stub.inject([spool::stub::Fault {
        status: Some(401),
        times: 5,
        ..Default::default()
    }])
    .expect("fault");
    let api = Api::default();
    let (_, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    let job = api
        .wait_terminal(&host, reply["jobId"].as_str().unwrap_or_default(), WAIT)
        .await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["attempts"], 1, "not retried: {job}");
    assert!(
        job["error"].as_str().is_some_and(|e| e.contains("401")),
        "{job}"
    );
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["queues"]["chat"]["failed"], 1);
}

#[test]
fn serve_without_a_redis_url_runs_its_own_redis_server_and_stops_it_on_sigterm() {
    let data = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let log = data.path().join("spool.log");
    let mut child = std::process::Command::new(SPOOL)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data.path().join("redis"))
        .env_remove("SPOOL_REDIS_URL")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn spool");
    let socket = data.path().join("redis/redis.sock");
    wait_until(
        "the embedded redis answers",
        Duration::from_secs(30),
        || {
            redis::Client::open(format!("redis+unix://{}", socket.display()))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        },
    );
    // Read while it runs, asserted once it is stopped: a failed assertion
    // must not leave the child (and its redis-server) running.
    let aof_on = data.path().join("redis/appendonlydir").exists();
    let rewrite_from: Vec<String> =
        redis::Client::open(format!("redis+unix://{}", socket.display()))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("auto-aof-rewrite-min-size")
                    .query(&mut c)
            })
            .unwrap_or_default();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("spool exits");
    assert!(
        status.success(),
        "clean exit; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(aof_on, "AOF is on");
    assert_eq!(
        rewrite_from,
        ["auto-aof-rewrite-min-size", "536870912"],
        "a loaded instance does not rewrite its AOF every few seconds"
    );
    let still_up = redis::Client::open(format!("redis+unix://{}", socket.display()))
        .and_then(|c| c.get_connection())
        .is_ok();
    assert!(!still_up, "the embedded redis-server stopped with spool");
}

#[test]
fn serve_without_redis_server_installed_says_how_to_install_it() {
    let empty_path = tempfile::tempdir().expect("temp dir");
    let data = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("PATH", empty_path.path())
        .env_remove("SPOOL_REDIS_URL")
        .output()
        .expect("run spool");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("redis-server is not installed") && stderr.contains("apt-get install"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_a_redis_that_would_evict_queued_jobs_and_says_how_to_fix_it() {
    let redis = Redis::start();
    let set_policy = |policy: &str| {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory-policy")
            .arg(policy)
            .query(&mut redis.connection())
            .expect("CONFIG SET");
    };
    set_policy("allkeys-lru");
    let mut serve = std::process::Command::new(SPOOL)
        .args(["serve", "--listen", "127.0.0.1:0", "--redis-url"])
        .arg(redis.url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run spool");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = serve.try_wait().expect("wait for spool") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = serve.kill();
            panic!("spool started on a Redis that evicts queued jobs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let output = serve.wait_with_output().expect("spool's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("maxmemory-policy allkeys-lru") && stderr.contains("noeviction"),
        "{stderr}"
    );

    // volatile-* only warns: the host starts (and is stopped here).
    set_policy("volatile-lru");
    let stub = stub().await;
    let host = Host::start(&redis, &stub, HostOptions::default());
    assert!(host.log_text().contains("noeviction is recommended"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_submits_jobs_and_receives_their_events_until_the_end() {
    let redis = Redis::start();
    websocket_submits_and_follows(&redis.url()).await;
}

/// The WebSocket scenario on the Redis (or cluster) at `redis_url`.
pub async fn websocket_submits_and_follows(redis_url: &str) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let stub = stub().await;
    let host = Host::start_at(redis_url, &stub, HostOptions::default());
    let ws_url = host.base.replace("http://", "ws://") + "/ws";
    let (mut socket, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket connects");
    let send = |frame: Value| Message::Text(frame.to_string().into());
    socket
        .send(send(
            json!({"type": "submit", "userId": "ws", "prompt": "over the socket", "priority": 8}),
        ))
        .await
        .expect("send");
    socket
        .send(send(
            json!({"type": "submit", "userId": "ws", "prompt": "bad", "priority": 42}),
        ))
        .await
        .expect("send");
    socket
        .send(send(json!({"type": "dance"})))
        .await
        .expect("send");

    let (mut accepted, mut errors, mut events) = (None, Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + WAIT;
    while let Ok(Some(Ok(Message::Text(text)))) =
        tokio::time::timeout_at(deadline, socket.next()).await
    {
        let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
        match frame["type"].as_str() {
            Some("accepted") => accepted = Some(frame),
            Some("error") => errors.push(frame["code"].as_str().unwrap_or_default().to_owned()),
            Some("event") => {
                let done = frame["event"] == "task_completed";
                events.push(frame);
                if done {
                    break;
                }
            }
            other => panic!("unexpected frame type {other:?}"),
        }
    }
    let accepted = accepted.expect("the submission was accepted");
    assert_eq!(accepted["class"], "high");
    assert_eq!(
        errors,
        ["invalid_priority", "invalid_field"],
        "bad frames get typed errors, the socket stays open"
    );
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(names.first(), Some(&"task_queued"), "{names:?}");
    assert!(names.contains(&"text_delta"));
    let completed = events.last().expect("events");
    assert_eq!(completed["jobId"], accepted["jobId"]);
    assert_eq!(
        completed["data"]["result"]["response"],
        expected_chat_response("over the socket", 0)
    );
}
