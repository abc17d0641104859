//! Sessions, messages, content blocks and resumable message streams (issue #7,
//! designs C and D), across instances: real redis-server, real `spool serve`
//! processes, the pipeline guest driving messages, the stub model.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

type Frame = (Option<String>, String, Value);

async fn new_session(api: &Api, host: &Host) -> String {
    let (status, session) = api
        .post(
            &host.url("/api/v1/sessions"),
            &json!({"metadata": {"user": "ada"}}),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    session["id"].as_str().expect("session id").to_owned()
}

async fn start_task(api: &Api, host: &Host, sid: &str, body: Value) -> Value {
    let (status, task) = api
        .post(&host.url(&format!("/api/v1/sessions/{sid}/tasks")), &body)
        .await;
    assert_eq!(status, 202, "{task}");
    task
}

/// Starts a task and reads its message's stream to `message_end`; returns the
/// task (its ids) and the frames.
async fn run_task(api: &Api, host: &Host, sid: &str, body: Value) -> (Value, Vec<Frame>) {
    let task = start_task(api, host, sid, body).await;
    let mid = task["messageId"].as_str().expect("mid");
    let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));
    let frames = read_message_stream(&url, None, None).await;
    (task, frames)
}

/// Reads a message's SSE stream until it closes, or until `stop_after` id'd
/// events arrived (then drops the connection, like a client going away).
async fn read_message_stream(
    url: &str,
    last_event_id: Option<&str>,
    stop_after: Option<usize>,
) -> Vec<Frame> {
    let mut request = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("sse request");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.expect("sse chunk")));
            let complete = text.rfind("\n\n").map_or("", |end| &text[..end + 2]);
            if let Some(limit) = stop_after
                && parse_sse(complete)
                    .iter()
                    .filter(|(id, ..)| id.is_some())
                    .count()
                    >= limit
            {
                return parse_sse(complete);
            }
        }
        parse_sse(&text)
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("SSE stream ends by itself")
}

/// The stored events (pings excluded) must be numbered 1, 2, 3... in order.
fn assert_every_event_once_in_order(frames: &[Frame], expected_last_seq: u64) {
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|(id, ..)| id.is_some())
        .map(|(_, _, data)| data["seq"].as_u64().unwrap_or(0))
        .collect();
    let expected: Vec<u64> = (1..=expected_last_seq).collect();
    assert_eq!(seqs, expected, "events: {frames:?}");
    for (_, event, data) in frames.iter().filter(|(id, ..)| id.is_some()) {
        assert_eq!(
            data["type"].as_str(),
            Some(event.as_str()),
            "SSE event name and data type agree"
        );
    }
}

fn event_types(frames: &[Frame]) -> Vec<&str> {
    frames
        .iter()
        .filter(|(id, ..)| id.is_some())
        .map(|(_, event, _)| event.as_str())
        .collect()
}

fn redis_client(redis: &Redis) -> redis::Client {
    redis::Client::open(redis.url()).expect("redis url")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_started_on_a_is_processed_by_b_and_streamed_from_c_with_every_event_once_in_order()
{
    let redis = Redis::start();
    a_task_crosses_three_instances(&redis.url()).await;
}

/// The session-task scenario on the Redis (or cluster) at `redis_url`: a
/// task started on A runs on B in two stages (the second a follow-up job
/// that takes the message over) and streams from C, every event once and in
/// order; then its message and both jobs' event streams are read back.
pub async fn a_task_crosses_three_instances(redis_url: &str) {
    let stub = stub().await;
    stub.set_timing(20, 0); // each model call takes a moment, so C streams it live
    let a = Host::start_at(
        redis_url,
        &stub,
        HostOptions {
            concurrency: 0,
            ..Default::default()
        },
    );
    let b = Host::start_at(
        redis_url,
        &stub,
        HostOptions {
            concurrency: 1,
            ..Default::default()
        },
    );
    let c = Host::start_at(
        redis_url,
        &stub,
        HostOptions {
            concurrency: 0,
            ..Default::default()
        },
    );
    let api = Api::default();

    let sid = new_session(&api, &a).await;
    let task = start_task(
        &api,
        &a,
        &sid,
        json!({"task_description": "Tides", "workflow": "planner"}),
    )
    .await;
    let (mid, job_id) = (
        task["messageId"].as_str().expect("mid"),
        task["jobId"].as_str().expect("job"),
    );

    let frames = read_message_stream(
        &c.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream")),
        None,
        None,
    )
    .await;
    let (status, message) = api.get(&c.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["status"], "completed", "{message}");
    assert_every_event_once_in_order(&frames, message["seq"].as_u64().expect("seq"));
    let types = event_types(&frames);
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(types.last(), Some(&"message_end"));
    for kind in [
        "task_started",
        "content_added",
        "task_completed",
        "content_updated",
    ] {
        assert_eq!(
            types.iter().filter(|t| **t == kind).count(),
            2,
            "{kind} once per stage: {types:?}"
        );
    }
    assert_eq!(
        types.iter().filter(|t| **t == "text_delta").count(),
        1,
        "{types:?}"
    );

    // Both stages' placeholders were replaced by their results.
    let blocks = message["blocks"].as_array().expect("blocks");
    assert_eq!(blocks.len(), 2, "{message}");
    assert!(blocks.iter().all(|b| b["type"] == "markdown"), "{message}");
    assert!(
        message["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .all(|t| t["status"] == "completed"),
        "{message}"
    );
    assert!(
        message["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[stub-chat]")),
        "{message}"
    );

    // B ran both stages, each a job of its own (A and C have no workers),
    // and C serves both job streams (design C): lifecycle and business events.
    let (_, health_b) = api.get(&b.url("/health")).await;
    let instance_b = health_b["instance"].as_str().expect("instance");
    let document_job = format!("{job_id}.1");
    for (job, business) in [
        (job_id, "outline_generated"),
        (document_job.as_str(), "document_generated"),
    ] {
        let (status, job_events) = api.get(&c.url(&format!("/api/v1/jobs/{job}/events"))).await;
        assert_eq!(status, 200, "{job_events}");
        let events = job_events["events"].as_array().expect("events");
        let started = events
            .iter()
            .find(|e| e["event_type"] == "task_started")
            .expect("task_started");
        assert!(
            started["data"]["worker"]
                .as_str()
                .is_some_and(|w| w.starts_with(instance_b)),
            "{started} vs {instance_b}"
        );
        let job_types: Vec<&str> = events
            .iter()
            .filter_map(|e| e["event_type"].as_str())
            .collect();
        for kind in ["task_started", "task_progress", business, "task_completed"] {
            assert!(job_types.contains(&kind), "{kind} in {job}: {job_types:?}");
        }
        assert_eq!(
            job_events["info"]["length"].as_u64(),
            Some(events.len() as u64)
        );
        let completed = events
            .iter()
            .find(|e| e["event_type"] == "task_completed")
            .expect("task_completed");
        assert!(completed["data"]["duration_ms"].is_u64(), "{completed}");
        if job == job_id {
            let queued = events
                .iter()
                .find(|e| e["event_type"] == "follow_up_queued")
                .expect("follow_up_queued");
            assert_eq!(queued["data"]["jobId"], document_job.as_str(), "{queued}");
            assert_eq!(completed["data"]["result"]["next"], document_job.as_str());
        } else {
            assert!(
                completed["data"]["result"]["document"].is_string(),
                "{completed}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_stream_resumes_from_its_last_id_without_gap_or_duplicate() {
    let redis = Redis::start();
    a_message_stream_resumes(&redis.url()).await;
}

/// The resume scenario on the Redis (or cluster) at `redis_url`: a client
/// cut off after five events resumes by header and by query, with no gap
/// and no duplicate; a bad resume point is refused by name.
pub async fn a_message_stream_resumes(redis_url: &str) {
    let stub = stub().await;
    stub.set_timing(40, 0);
    let host = Host::start_at(redis_url, &stub, HostOptions::default());
    let api = Api::default();
    let sid = new_session(&api, &host).await;
    let task = start_task(
        &api,
        &host,
        &sid,
        json!({"task_description": "Bridges", "workflow": "critic", "max_iterations": 3}),
    )
    .await;
    let mid = task["messageId"].as_str().expect("mid");
    let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));

    let first = read_message_stream(&url, None, Some(5)).await;
    let first: Vec<Frame> = first.into_iter().filter(|(id, ..)| id.is_some()).collect();
    assert_eq!(first.len(), 5);
    assert!(
        !event_types(&first).contains(&"message_end"),
        "disconnected mid-stream: {first:?}"
    );
    let last_id = first
        .last()
        .and_then(|(id, ..)| id.clone())
        .expect("last id");

    // Resume once by header, and once more (from the same point) by query.
    let rest = read_message_stream(&url, Some(&last_id), None).await;
    let by_query = read_message_stream(&format!("{url}?last_id={last_id}"), None, None).await;
    let (_, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(message["status"], "completed", "{message}");
    let all: Vec<Frame> = first.into_iter().chain(rest.iter().cloned()).collect();
    assert_every_event_once_in_order(&all, message["seq"].as_u64().expect("seq"));
    assert_eq!(event_types(&rest), event_types(&by_query));

    // A bad resume point is a 4xx JSON error naming it.
    let (status, error) = api.get(&format!("{url}?last_id=yesterday")).await;
    assert_eq!(status, 422);
    assert_eq!(error["error"]["code"], "invalid_last_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_kb_image_is_stored_apart_referenced_from_the_snapshot_and_loaded_on_demand() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let sid = new_session(api, host).await;
    let image = "iVBORw0KGgo".repeat(50 * 1024 / 11 + 1);
    let body = json!({"role": "user", "content": "look at this", "blocks": [
        {"type": "image", "base64": image, "mimeType": "image/png", "caption": "a cat", "width": 640, "height": 480},
        {"type": "code", "language": "rust", "code": "fn main() {}"},
    ]});
    let (status, message) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &body,
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let mid = message["id"].as_str().expect("mid");
    let reference = &message["blocks"][0];
    let cid = reference["contentId"]
        .as_str()
        .expect("the image is a reference");
    assert_eq!(reference["stored"], "separate");
    assert_eq!(reference["caption"], "a cat");
    assert_eq!(reference["width"], 640);
    assert!(
        reference["bytes"].as_u64().is_some_and(|b| b > 50 * 1024),
        "{reference}"
    );
    assert!(
        reference.get("base64").is_none(),
        "the snapshot does not carry the bytes"
    );
    assert_eq!(
        message["blocks"][1],
        json!({"id": message["blocks"][1]["id"], "type": "code", "language": "rust", "code": "fn main() {}"})
    );

    // In Redis: the snapshot holds a small reference; the bytes live in content:{id} (7 days).
    let mut redis_connection = redis.connection();
    let snapshot_bytes: u64 = redis::cmd("HSTRLEN")
        .arg(format!("message:{mid}"))
        .arg(format!("block:{cid}"))
        .query(&mut redis_connection)
        .expect("hstrlen");
    assert!(snapshot_bytes < 1024, "reference is {snapshot_bytes} bytes");
    let ttl: i64 = redis::cmd("TTL")
        .arg(format!("content:{cid}"))
        .query(&mut redis_connection)
        .expect("ttl");
    assert!(
        (7 * 86_400 - 60..=7 * 86_400).contains(&ttl),
        "content ttl {ttl}"
    );
    let message_ttl: i64 = redis::cmd("TTL")
        .arg(format!("message:{mid}"))
        .query(&mut redis_connection)
        .expect("ttl");
    assert!(
        (86_400 - 60..=86_400).contains(&message_ttl),
        "message ttl {message_ttl}"
    );

    // Loaded only when asked for: by id, or with the message.
    let (status, content) = api.get(&host.url(&format!("/api/v1/content/{cid}"))).await;
    assert_eq!(status, 200);
    assert_eq!(content["block"]["base64"].as_str(), Some(image.as_str()));
    assert_eq!(content["messageId"], mid);
    let (_, plain) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert!(plain["blocks"][0].get("base64").is_none());
    let (_, full) = api
        .get(&host.url(&format!("/api/v1/messages/{mid}?include_content=true")))
        .await;
    assert_eq!(full["blocks"][0]["base64"].as_str(), Some(image.as_str()));
    assert_eq!(full["blocks"][0]["caption"], "a cat");

    // The content_added event carries the reference, not 50 KB.
    let frames = read_message_stream(
        &host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream")),
        None,
        None,
    )
    .await;
    assert_eq!(
        event_types(&frames),
        [
            "message_start",
            "text_delta",
            "content_added",
            "content_added",
            "message_end"
        ]
    );
    assert_eq!(frames[2].2["data"]["block"]["contentId"], cid);

    // Bad input is a 4xx naming the problem.
    let url = host.url(&format!("/api/v1/sessions/{sid}/messages"));
    let (status, error) = api
        .post(
            &url,
            &json!({"role": "user", "blocks": [{"type": "sticker"}]}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_block")),
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("blocks[0]") && m.contains("sticker"))
    );
    let (status, error) = api
        .post(&url, &json!({"role": "robot", "content": "x"}))
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_role"))
    );
    let (status, error) = api
        .post(
            &host.url("/api/v1/sessions/nope/messages"),
            &json!({"role": "user", "content": "x"}),
        )
        .await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("session_not_found"))
    );
    let (status, error) = api.get(&host.url("/api/v1/messages/has:colon")).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_id"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_task_replaces_its_placeholder_and_a_failed_one_leaves_task_failed_and_an_error_state()
 {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let sid = new_session(api, host).await;

    let (task, frames) = run_task(
        api,
        host,
        &sid,
        json!({"task_description": "Moons", "workflow": "simple"}),
    )
    .await;
    let mid = task["messageId"].as_str().expect("mid");
    assert_eq!(
        event_types(&frames),
        [
            "message_start",
            "task_started",
            "content_added",
            "task_completed",
            "content_updated",
            "text_delta",
            "message_end"
        ]
    );
    let placeholder = &frames[2].2["data"]["block"];
    assert_eq!(placeholder["type"], "placeholder");
    let task_id = placeholder["taskId"].as_str().expect("task id");
    assert_eq!(frames[4].2["data"]["blockId"], task_id);
    assert_eq!(frames[4].2["data"]["block"]["type"], "markdown");
    let (_, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(message["blocks"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        message["blocks"][0]["id"], task_id,
        "the result took the placeholder's place"
    );
    assert_eq!(message["blocks"][0]["type"], "markdown");
    assert_eq!(message["tasks"][0]["status"], "completed");

    // The model refuses (401): the stage fails, the job fails, the message ends in error.
    stub.inject([spool::stub::Fault {
        status: Some(401),
        times: 1,
        ..Default::default()
    }])
    .expect("fault");
    let (task, frames) = run_task(
        api,
        host,
        &sid,
        json!({"task_description": "Comets", "workflow": "planner"}),
    )
    .await;
    let mid = task["messageId"].as_str().expect("mid");
    let types = event_types(&frames);
    assert_eq!(
        types,
        [
            "message_start",
            "task_started",
            "content_added",
            "task_failed",
            "content_updated",
            "error",
            "message_end"
        ]
    );
    assert_eq!(frames[4].2["data"]["removed"], true);
    let (_, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(message["status"], "error", "{message}");
    assert!(
        message["error"].as_str().is_some_and(|e| e.contains("401")),
        "{message}"
    );
    assert_eq!(
        message["blocks"],
        json!([]),
        "no dangling placeholder: {message}"
    );
    assert_eq!(message["tasks"][0]["status"], "failed");
    let job = api
        .wait_terminal(host, task["jobId"].as_str().expect("job"), WAIT)
        .await;
    assert_eq!(job["state"], "failed");

    // The outline stage succeeds, the document stage (the follow-up job, which
    // took the message over) is refused: the message still ends in error.
    stub.inject([
        spool::stub::Fault {
            status: Some(200),
            ..Default::default()
        },
        spool::stub::Fault {
            status: Some(401),
            times: 1,
            ..Default::default()
        },
    ])
    .expect("faults");
    let (task, frames) = run_task(
        api,
        host,
        &sid,
        json!({"task_description": "Rings", "workflow": "planner"}),
    )
    .await;
    let mid = task["messageId"].as_str().expect("mid");
    assert_eq!(
        event_types(&frames),
        [
            "message_start",
            "task_started",
            "content_added",
            "task_completed",
            "content_updated",
            "task_started",
            "content_added",
            "task_failed",
            "content_updated",
            "error",
            "message_end"
        ]
    );
    let (_, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(message["status"], "error", "{message}");
    let blocks = message["blocks"].as_array().expect("blocks");
    assert_eq!(
        blocks.len(),
        1,
        "the outline stays, no placeholder: {message}"
    );
    assert_eq!(blocks[0]["type"], "markdown");
    let first = task["jobId"].as_str().expect("job");
    let outline_job = api.wait_terminal(host, first, WAIT).await;
    let document_job = api.wait_terminal(host, &format!("{first}.1"), WAIT).await;
    assert_eq!(
        (
            outline_job["state"].as_str(),
            document_job["state"].as_str()
        ),
        (Some("completed"), Some("failed"))
    );

    // Listing the session shows every message, oldest first.
    let (status, list) = api
        .get(&host.url(&format!(
            "/api/v1/sessions/{sid}/messages?limit=50&offset=0"
        )))
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["total"], 3);
    let statuses: Vec<&str> = list["messages"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["status"].as_str())
        .collect();
    assert_eq!(statuses, ["completed", "error", "error"]);
    let (status, error) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/tasks")),
            &json!({"task_description": "x", "workflow": "chaos"}),
        )
        .await;
    // The workflow is the task queue's handler's business: its admit refuses.
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("rejected_by_handler"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_and_the_event_cap_hold_with_shortened_values() {
    let redis = Redis::start();
    let stub = stub().await;
    let config = "[sessions]\nmessage_ttl_secs = 1\ncontent_ttl_secs = 3\nmax_events = 20\ninline_limit_bytes = 1024\n";
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: config.into(),
            ..Default::default()
        },
    );
    let api = Api::default();
    let sid = new_session(&api, &host).await;

    // The same store the hosts use, driven directly: 50 appends to one message.
    let manager = redis_client(&redis)
        .get_connection_manager()
        .await
        .expect("redis");
    let store = spool_core::store::Store::new(
        manager.into(),
        spool_core::store::SessionsConfig {
            message_ttl_secs: 1,
            content_ttl_secs: 3,
            max_events: 20,
            inline_limit_bytes: 1024,
            ..Default::default()
        },
        Default::default(),
    );
    let mid = store
        .create_message(&sid, "assistant", None)
        .await
        .expect("create");
    for i in 0..50 {
        store
            .append_text(&sid, &mid, &format!("piece {i} "))
            .await
            .expect("append");
    }
    let big = json!({"type": "file", "base64": "A".repeat(2048), "name": "a.bin"});
    let cid = store.add_content(&sid, &mid, &big).await.expect("add");
    let last = store.complete(&sid, &mid).await.expect("complete");
    assert_eq!(last, 53, "start + 50 deltas + content + end");

    let mut connection = redis.connection();
    let stream = format!("stream:session:{sid}:message:{mid}");
    let length: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query(&mut connection)
        .expect("xlen");
    assert_eq!(length, 20, "the stream keeps the last max_events events");
    let frames = read_message_stream(
        &host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream")),
        None,
        None,
    )
    .await;
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|(_, _, d)| d["seq"].as_u64())
        .collect();
    assert_eq!(
        seqs,
        (34..=53).collect::<Vec<u64>>(),
        "the newest 20, in order"
    );

    for (key, max_ms) in [
        (format!("message:{mid}"), 1000),
        (stream.clone(), 1000),
        (format!("content:{cid}"), 3000),
    ] {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query(&mut connection)
            .expect("pttl");
        assert!(ttl > 0 && ttl <= max_ms, "{key}: pttl {ttl}");
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, error) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (404, Some("message_not_found"))
    );
    let exists: bool = redis::cmd("EXISTS")
        .arg(&stream)
        .query(&mut connection)
        .expect("exists");
    assert!(!exists, "the event stream expired with its message");
    let (status, _) = api.get(&host.url(&format!("/api/v1/content/{cid}"))).await;
    assert_eq!(
        status, 200,
        "content outlives its message (7 days against 24 h by default)"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, _) = api.get(&host.url(&format!("/api/v1/content/{cid}"))).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_deletes_old_messages_and_keeps_the_session_index_consistent() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let sid = new_session(api, host).await;
    let url = host.url(&format!("/api/v1/sessions/{sid}/messages"));
    let mut old = Vec::new();
    for i in 0..3 {
        let blocks =
            json!([{"type": "file", "base64": "B".repeat(20_000), "name": format!("f{i}")}]);
        let (status, message) = api
            .post(
                &url,
                &json!({"role": "user", "content": format!("old {i}"), "blocks": blocks}),
            )
            .await;
        assert_eq!(status, 201);
        old.push((
            message["id"].as_str().expect("id").to_owned(),
            message["blocks"][0]["contentId"]
                .as_str()
                .expect("cid")
                .to_owned(),
        ));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, fresh) = api
        .post(&url, &json!({"role": "user", "content": "new"}))
        .await;

    let (status, error) = api.post(&host.url("/api/v1/cleanup"), &json!({})).await;
    assert_eq!(
        (status, error["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let (status, cleaned) = api
        .post(&host.url("/api/v1/cleanup"), &json!({"olderThanSecs": 1}))
        .await;
    assert_eq!(status, 200, "{cleaned}");
    assert_eq!(cleaned["report"]["messagesDeleted"], 3);

    let (_, list) = api.get(&url).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["messages"][0]["id"], fresh["id"]);
    let mut connection = redis.connection();
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("session:{sid}:messages"))
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .expect("zrange");
    assert_eq!(indexed, [fresh["id"].as_str().expect("id")]);
    for (mid, cid) in &old {
        let keys = [
            format!("message:{mid}"),
            format!("stream:session:{sid}:message:{mid}"),
            format!("content:{cid}"),
        ];
        let existing: u64 = redis::cmd("EXISTS")
            .arg(&keys)
            .query(&mut connection)
            .expect("exists");
        assert_eq!(existing, 0, "{keys:?}");
    }

    // Purging the session takes its remaining messages with it.
    let (status, deleted) = api
        .delete(&host.url(&format!("/api/v1/sessions/{sid}?purge=true")))
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["messagesDeleted"], 1);
    let (status, _) = api.get(&host.url(&format!("/api/v1/sessions/{sid}"))).await;
    assert_eq!(status, 404);
    let (status, _) = api
        .get(&host.url(&format!(
            "/api/v1/messages/{}",
            fresh["id"].as_str().expect("id")
        )))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_message_stream_gets_ping_heartbeats_and_ends_at_message_end() {
    let redis = Redis::start();
    let stub = stub().await;
    let config = "[sessions]\nping_interval_ms = 100\n";
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: config.into(),
            ..Default::default()
        },
    );
    let api = Api::default();
    let sid = new_session(&api, &host).await;
    let manager = redis_client(&redis)
        .get_connection_manager()
        .await
        .expect("redis");
    let store = spool_core::store::Store::new(
        manager.into(),
        spool_core::store::SessionsConfig::default(),
        Default::default(),
    );
    let mid = store
        .create_message(&sid, "assistant", None)
        .await
        .expect("create");

    let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));
    let reader = tokio::spawn(async move { read_message_stream(&url, None, None).await });
    // Quiet until a few heartbeats have certainly been due, then end the message.
    tokio::time::sleep(Duration::from_millis(600)).await;
    store.complete(&sid, &mid).await.expect("complete");
    let frames = reader.await.expect("reader");
    let pings = frames
        .iter()
        .filter(|(id, event, _)| id.is_none() && event == "ping")
        .count();
    assert!(pings >= 1, "{frames:?}");
    assert_eq!(
        event_types(&frames),
        ["message_start", "message_end"],
        "pings carry no id and no sequence number"
    );
}
