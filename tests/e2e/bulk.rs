//! Bulk submission (issue #16): `POST /api/queues/{queue}/jobs/bulk` and
//! `POST /api/chat/bulk` queue a whole batch or nothing, name every bad item,
//! keep to `bulk_max_jobs` and the queue's room, and treat ids like the
//! single routes do. The generic queue runs the no-op fixture handler.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;
use spool::stub::StubServer;

const NOOP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/noop.wasm"));
const WAIT: Duration = Duration::from_secs(60);

/// A host whose queue `noop` runs the no-op handler (and `chat` the chat one); `extra` is more top-level TOML.
fn start(
    redis: &Redis,
    stub: &StubServer,
    extra: &str,
    max_waiting: u64,
) -> (Host, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("spool-bulk-")
        .tempdir()
        .expect("temp dir");
    let wasm = dir.path().join("noop.wasm");
    std::fs::write(&wasm, NOOP).expect("write the fixture");
    let host = Host::start(
        redis,
        stub,
        HostOptions {
            config: format!(
                "{extra}\n[handlers.noop]\npath = \"{}\"\n\n[queues.noop]\nhandler = \"noop\"\nmax_waiting = {max_waiting}\n\n[queues.chat]\nhandler = \"chat\"\n",
                wasm.display()
            ),
            ..HostOptions::default()
        },
    );
    (host, dir)
}

fn ids(reply: &Value) -> Vec<String> {
    reply["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .map(|job| job["jobId"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn assert_absent(api: &Api, host: &Host, id: &str) {
    let (status, reply) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(status, 404, "job {id} must not exist: {reply}");
}

#[tokio::test]
async fn a_batch_is_all_queued_and_all_run() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub, "", 10_000);
    let api = Api::default();

    let batch: Vec<Value> = (0..200)
        .map(
            |i| json!({ "payload": { "n": i }, "priority": 1 + i % 10, "userId": format!("u{i}") }),
        )
        .collect();
    let (status, reply) = api
        .post(
            &host.url("/api/queues/noop/jobs/bulk"),
            &json!({ "jobs": batch }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["queued"], 200, "{reply}");
    assert_eq!(reply["duplicates"], 0, "{reply}");
    let ids = ids(&reply);
    assert_eq!(ids.len(), 200);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        200,
        "every item has its own id"
    );
    for id in &ids {
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(job["queue"], "noop", "{job}");
    }
    // The items kept their own fields, in order.
    let (_, job) = api.get(&host.url(&format!("/api/job/{}", ids[7]))).await;
    assert_eq!(job["userId"], "u7", "{job}");

    let chats: Vec<Value> = (0..3)
        .map(|i| json!({ "userId": "u", "prompt": format!("hello {i}") }))
        .collect();
    let (status, reply) = api
        .post(&host.url("/api/chat/bulk"), &json!({ "jobs": chats }))
        .await;
    assert_eq!(status, 202, "{reply}");
    for (i, id) in ids_of(&reply).iter().enumerate() {
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
        assert_eq!(
            job["result"]["response"],
            expected_chat_response(&format!("hello {i}"), 0),
            "{job}"
        );
    }
}

fn ids_of(reply: &Value) -> Vec<String> {
    ids(reply)
}

#[tokio::test]
async fn one_bad_item_refuses_the_whole_batch_naming_each() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub, "", 10_000);
    let api = Api::default();

    let (status, reply) = api
        .post(
            &host.url("/api/queues/noop/jobs/bulk"),
            &json!({ "jobs": [
                { "payload": 1, "jobId": "good-a" },
                { "payload": 2, "jobId": "bad-priority", "priority": 11 },
                { "payload": 3, "jobId": "good-b" },
                { "payload": 4, "jobId": "bad id!" },
            ] }),
        )
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_items", "{reply}");
    let items = reply["items"].as_array().cloned().unwrap_or_default();
    let named: Vec<(u64, &str)> = items
        .iter()
        .map(|item| {
            (
                item["index"].as_u64().unwrap_or(99),
                item["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        named,
        vec![(1, "invalid_priority"), (3, "invalid_job_id")],
        "{reply}"
    );
    for id in ["good-a", "bad-priority", "good-b"] {
        assert_absent(&api, &host, id).await;
    }

    // A refusal by the handler's rule (the chat rule: the prompt is blank) is per item too.
    let (status, reply) = api
        .post(
            &host.url("/api/chat/bulk"),
            &json!({ "jobs": [
                { "userId": "u", "prompt": "fine", "jobId": "chat-good" },
                { "userId": "u", "prompt": "   ", "jobId": "chat-blank" },
            ] }),
        )
        .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["items"][0]["index"], 1, "{reply}");
    assert_eq!(reply["items"][0]["code"], "rejected_by_handler", "{reply}");
    assert!(
        reply["items"].as_array().is_some_and(|a| a.len() == 1),
        "{reply}"
    );
    assert_absent(&api, &host, "chat-good").await;

    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["waiting"], 0, "{stats}");
    assert_eq!(stats["completed"], 0, "{stats}");
}

#[tokio::test]
async fn a_batch_over_the_cap_or_the_queue_room_is_refused() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub, "bulk_max_jobs = 3", 4);
    let api = Api::default();
    let url = host.url("/api/queues/noop/jobs/bulk");
    let batch = |n: usize, prefix: &str| -> Value {
        json!({ "jobs": (0..n).map(|i| json!({ "payload": i, "jobId": format!("{prefix}-{i}") })).collect::<Vec<_>>() })
    };

    let (status, reply) = api.post(&url, &batch(4, "over")).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_batch_size", "{reply}");
    assert_absent(&api, &host, "over-0").await;

    let (status, reply) = api.post(&url, &batch(0, "empty")).await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_batch_size", "{reply}");

    // Room for 4 waiting: with 3 waiting (paused), a batch of 2 does not fit at all.
    let (status, reply) = api
        .post(&host.url("/api/queues/noop/pause"), &json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let (status, reply) = api.post(&url, &batch(3, "fits")).await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = api.post(&url, &batch(2, "spills")).await;
    assert_eq!(status, 429, "{reply}");
    assert_eq!(reply["error"]["code"], "queue_full", "{reply}");
    for id in ["spills-0", "spills-1"] {
        assert_absent(&api, &host, id).await;
    }
    let (status, _) = api.post(&url, &batch(1, "last")).await;
    assert_eq!(status, 202, "one more still fits");
}

#[tokio::test]
async fn repeated_ids_behave_like_the_single_route() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub, "", 10_000);
    let api = Api::default();
    let url = host.url("/api/queues/noop/jobs/bulk");

    let (status, first) = api
        .post(
            &host.url("/api/queues/noop/jobs"),
            &json!({ "payload": "x", "jobId": "single-1" }),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    let body = json!({ "jobs": [
        { "payload": "a", "jobId": "single-1" },
        { "payload": "b", "jobId": "fresh-1" },
        { "payload": "c", "jobId": "fresh-1" },
    ] });
    let (status, reply) = api.post(&url, &body).await;
    assert_eq!(status, 202, "{reply}");
    assert_eq!(reply["queued"], 1, "{reply}");
    assert_eq!(reply["duplicates"], 2, "{reply}");
    assert_eq!(reply["jobs"][0]["duplicate"], true, "{reply}");
    assert!(reply["jobs"][1].get("duplicate").is_none(), "{reply}");
    assert_eq!(reply["jobs"][2]["duplicate"], true, "{reply}");
    for id in ["single-1", "fresh-1"] {
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
    }
    // The repeat is the first job, run once: its payload was not replaced.
    let (_, job) = api.get(&host.url("/api/job/fresh-1")).await;
    assert_eq!(
        job["attemptHistory"].as_array().map(Vec::len),
        Some(1),
        "{job}"
    );

    // The same batch again: nothing new, 200, each names the job as it is now.
    let (status, reply) = api.post(&url, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["queued"], 0, "{reply}");
    assert_eq!(reply["jobs"][1]["state"], "completed", "{reply}");

    // An id of another queue's job refuses the whole batch (409, like the single route).
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({ "userId": "u", "prompt": "hi", "jobId": "chat-owned" }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let (status, reply) = api
        .post(
            &url,
            &json!({ "jobs": [
                { "payload": 1, "jobId": "would-queue" },
                { "payload": 2, "jobId": "chat-owned" },
            ] }),
        )
        .await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["items"][0]["index"], 1, "{reply}");
    assert_eq!(reply["items"][0]["code"], "job_id_taken", "{reply}");
    assert_absent(&api, &host, "would-queue").await;
}
