//! Reused priority decisions (issue #16, WIT `admission`): a handler whose
//! `admit` declares what it reads is called once per version and set of
//! declared inputs, one that reads the payload is called for every
//! submission, and a hot swap never reuses the old version's decisions.
//!
//! The guest calls are counted by the instance's own metrics
//! (`spool_handler_calls_total{hook="admit"}` per handler version, and
//! `spool_admit_reused_total`), scraped over loopback.

use serde_json::{Value, json};

use crate::support::*;

const NOOP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/noop.wasm"));
const ECHO_V1: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v1.wasm"));
const ECHO_V2: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_v2.wasm"));

/// A host with queue `noop` (the no-op fixture, whose rule declares
/// `priority`), queue `echo` (echo v1, declaring `priority`) and the
/// built-in `chat` queue (whose rule reads the payload and declares so).
fn start(redis: &Redis, stub: &spool::stub::StubServer) -> (Host, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("spool-admission-")
        .tempdir()
        .expect("temp dir");
    let noop = dir.path().join("noop.wasm");
    let echo = dir.path().join("echo_v1.wasm");
    std::fs::write(&noop, NOOP).expect("write noop");
    std::fs::write(&echo, ECHO_V1).expect("write echo");
    let config = format!(
        "[handlers.noop]\npath = \"{}\"\n\n[handlers.echo]\npath = \"{}\"\n\n[queues.noop]\nhandler = \"noop\"\n\n[queues.echo]\nhandler = \"echo\"\n\n[queues.chat]\nhandler = \"chat\"\n",
        noop.display(),
        echo.display()
    );
    let host = Host::start(
        redis,
        stub,
        HostOptions {
            config,
            ..HostOptions::default()
        },
    );
    (host, dir)
}

async fn submit(api: &Api, host: &Host, queue: &str, body: Value) -> Value {
    let (status, reply) = api
        .post(&host.url(&format!("/api/queues/{queue}/jobs")), &body)
        .await;
    assert_eq!(status, 202, "{reply}");
    reply
}

async fn admit_calls(host: &Host, handler: &str, version: &str) -> f64 {
    counter(
        host,
        "spool_handler_calls_total",
        &[
            ("handler", handler),
            ("version", version),
            ("hook", "admit"),
        ],
    )
    .await
}

async fn reused(host: &Host, handler: &str) -> f64 {
    counter(host, "spool_admit_reused_total", &[("handler", handler)]).await
}

#[tokio::test]
async fn a_declared_rule_is_called_once_per_distinct_declared_inputs() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub);
    let api = Api::default();
    let version = spool_runtime::content_version(NOOP);

    // The noop rule declares `priority` only: payloads and users differ, and
    // the decision is still the one the rule gave the first job.
    for n in 0..20 {
        let reply = submit(
            &api,
            &host,
            "noop",
            json!({ "payload": { "n": n }, "priority": 5, "userId": format!("u{n}") }),
        )
        .await;
        assert_eq!(reply["class"], "normal", "{reply}");
        assert_eq!(reply["score"], 5, "{reply}");
    }
    assert_eq!(admit_calls(&host, "noop", &version).await, 1.0);
    assert_eq!(reused(&host, "noop").await, 19.0);

    // Another priority is another input: the rule runs once more, then is reused.
    for _ in 0..5 {
        let reply = submit(&api, &host, "noop", json!({ "payload": {}, "priority": 8 })).await;
        assert_eq!(reply["score"], 8, "{reply}");
    }
    assert_eq!(admit_calls(&host, "noop", &version).await, 2.0);
    assert_eq!(reused(&host, "noop").await, 23.0);
}

#[tokio::test]
async fn a_rule_that_reads_the_payload_is_called_for_every_submission() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub);
    let api = Api::default();

    // The chat handler refuses a blank prompt: a refusal made by reading the
    // payload must not be handed to the next job with the same fields.
    for _ in 0..3 {
        let (status, reply) = api
            .post(
                &host.url("/api/queues/chat/jobs"),
                &json!({ "payload": { "prompt": " " }, "priority": 5 }),
            )
            .await;
        assert_eq!(status, 422, "{reply}");
        let reply = submit(
            &api,
            &host,
            "chat",
            json!({ "payload": { "prompt": "hello" }, "priority": 5 }),
        )
        .await;
        assert_eq!(reply["class"], "normal", "{reply}");
    }
    let calls = counter(
        &host,
        "spool_handler_calls_total",
        &[("handler", "chat"), ("hook", "admit")],
    )
    .await;
    assert_eq!(calls, 6.0);
    assert_eq!(reused(&host, "chat").await, 0.0);
}

#[tokio::test]
async fn a_hot_swap_to_another_rule_decides_the_next_submission() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _dir) = start(&redis, &stub);
    let api = Api::default();
    let (v1, v2) = (
        spool_runtime::content_version(ECHO_V1),
        spool_runtime::content_version(ECHO_V2),
    );

    // v1 queues everything as `normal`; its decision for priority 9 is kept.
    for _ in 0..3 {
        let reply = submit(&api, &host, "echo", json!({ "payload": {}, "priority": 9 })).await;
        assert_eq!(reply["class"], "normal", "{reply}");
    }
    assert_eq!(admit_calls(&host, "echo", &v1).await, 1.0);

    // v2's rule (the SDK's standard one) puts priority 9 in `high`.
    let (status, reply) = api
        .upload(&host.url("/admin/handlers/echo/versions"), ECHO_V2.to_vec())
        .await;
    assert_eq!(status, 201, "{reply}");
    for _ in 0..3 {
        let reply = submit(&api, &host, "echo", json!({ "payload": {}, "priority": 9 })).await;
        assert_eq!(
            reply["class"], "high",
            "the new version's rule decides: {reply}"
        );
        assert_eq!(reply["score"], 9, "{reply}");
    }
    assert_eq!(admit_calls(&host, "echo", &v2).await, 1.0);
    assert_eq!(admit_calls(&host, "echo", &v1).await, 1.0);
    assert_eq!(reused(&host, "echo").await, 4.0);
}
