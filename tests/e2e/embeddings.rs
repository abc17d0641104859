//! Embeddings end to end (design A): `POST /api/embeddings` through the
//! `embeddings` queue, its Wasm handler's priority rule, the shared limiter,
//! the batcher and the cache, against the stub model server, which records
//! every embed call and how many texts it carried.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::stub::{Fault, embedding};

use crate::support::*;

const EMBED_PATH: &str = "/api/embed";

fn config() -> HostOptions {
    HostOptions {
        // Enough workers for 50 jobs to be in flight at once, so their texts
        // can share batches; a quick recovery so the test sees it.
        concurrency: 16,
        config: "[limits]\nrate_per_sec = 20.0\ncapacity = 5.0\nrecovery_quiet_ms = 300\n\
                 recovery_interval_ms = 200\nrecovery_step = 0.5\nembed_batch_size = 5\n\
                 embed_batch_wait_ms = 50\n"
            .into(),
        ..HostOptions::default()
    }
}

/// Request `i`'s 1-3 texts: "are you there?" in every fourth, the rest from a
/// pool of 30 so that texts repeat across requests.
fn texts_of(i: usize) -> Vec<String> {
    let count = 1 + i % 3;
    (0..count)
        .map(|k| {
            if k == 0 && i.is_multiple_of(4) {
                "are you there?".to_owned()
            } else {
                format!("message {}", (i * 7 + k * 13) % 30)
            }
        })
        .collect()
}

async fn embed_all(api: &Api, host: &Host, requests: usize) -> Vec<(u16, Value)> {
    let calls = (0..requests).map(|i| {
        let body = json!({"texts": texts_of(i), "user": format!("user-{i}"), "priority": i % 3});
        let url = host.url("/api/embeddings");
        async move { api.post(&url, &body).await }
    });
    futures_util::future::join_all(calls).await
}

fn assert_vectors(answers: &[(u16, Value)]) {
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {body}");
        let expected: Vec<Vec<f32>> = texts_of(i).iter().map(|text| embedding(text)).collect();
        let got: Vec<Vec<f32>> =
            serde_json::from_value(body["embeddings"].clone()).expect("embeddings");
        assert_eq!(got, expected, "request {i}: its own vectors, in order");
    }
}

/// Successful embed calls at the stub: how many texts each carried.
fn embed_batches(stub: &spool::stub::StubServer) -> Vec<usize> {
    stub.stats()
        .model_calls
        .iter()
        .filter(|call| call.path == EMBED_PATH && call.status.is_none())
        .map(|call| call.items)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_are_batched_cached_and_ride_out_a_403_burst() {
    let stack = Stack::start(config()).await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    // A burst of rate-limit 403s, as design A's embedding API answered.
    stub.inject([Fault {
        status: Some(403),
        retry_after_ms: Some(300),
        times: 3,
        body: Some(json!({"error": "Rate limit exceeded: too many requests, slow down"})),
        paths: vec![EMBED_PATH.into()],
        ..Fault::default()
    }])
    .expect("fault");

    // Watch the shared rate while the requests run.
    let watching = tokio::spawn({
        let url = host.url("/api/limits");
        async move {
            let api = Api::default();
            let mut lowest = f64::MAX;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                let (_, body) = api.get(&url).await;
                let rate = body["limiter"]["effectiveRatePerSec"]
                    .as_f64()
                    .unwrap_or(f64::MAX);
                lowest = lowest.min(rate);
                if lowest < 20.0 {
                    return lowest;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            lowest
        }
    });
    let requests = 50;
    let answers = embed_all(api, host, requests).await;
    assert_vectors(&answers);
    let lowest = watching.await.expect("watcher");

    let texts_asked: usize = (0..requests).map(|i| texts_of(i).len()).sum();
    let batches = embed_batches(stub);
    let faulted = stub
        .stats()
        .model_calls
        .iter()
        .filter(|call| call.status == Some(403))
        .count();
    println!(
        "{requests} requests, {texts_asked} texts: {} embed calls carrying {:?} texts; {faulted} answered 403; lowest shared rate {lowest}/s",
        batches.len(),
        batches
    );
    assert_eq!(faulted, 3, "the whole 403 burst was met");
    assert!(
        batches.iter().all(|&texts| texts <= 5),
        "no call over 5 texts: {batches:?}"
    );
    assert!(
        batches.len() * 2 < requests,
        "requests coalesced: {} calls for {requests} requests",
        batches.len()
    );
    let sent: usize = batches.iter().sum();
    assert!(
        sent < texts_asked,
        "repeated texts are embedded once per batch or served from the cache: {sent} sent of {texts_asked}"
    );
    assert!(
        lowest < 20.0,
        "the 403s lowered the shared rate (lowest seen {lowest}/s)"
    );

    // The rate recovers, and the same texts again come from the cache alone.
    let recovered = Instant::now();
    loop {
        let (_, body) = api.get(&host.url("/api/limits")).await;
        if body["limiter"]["effectiveRatePerSec"].as_f64() == Some(20.0) {
            break;
        }
        assert!(
            recovered.elapsed() < Duration::from_secs(15),
            "rate never recovered: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, before) = api.get(&host.url("/api/limits")).await;
    let calls_before = embed_batches(stub).len();
    let again = embed_all(api, host, requests).await;
    assert_vectors(&again);
    let (_, after) = api.get(&host.url("/api/limits")).await;
    assert_eq!(
        embed_batches(stub).len(),
        calls_before,
        "all from the cache: no model call"
    );
    let hits = |body: &Value| body["embeddings"]["cacheHits"].as_u64().unwrap_or(0);
    assert_eq!(hits(&after) - hits(&before), texts_asked as u64, "{after}");
}

/// Design A's user classes and 0/1/2 scale, applied by the embed handler's rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_a_user_classes_and_priorities_pick_the_class() {
    let stack = Stack::start(config()).await;
    let Stack { host, api, .. } = &stack;
    let cases = [
        (json!({"priority": 2}), "high"),
        (json!({"priority": 1}), "normal"),
        (json!({"priority": 0}), "low"),
        (json!({"userTier": "paying"}), "high"),
        (json!({"userTier": "vip", "priority": 0}), "high"),
        (json!({"userTier": "new", "priority": 2}), "low"),
        (json!({"userTier": "inactive"}), "low"),
    ];
    for (fields, class) in cases {
        let mut body = json!({"texts": ["hello"], "user": "ada"});
        body.as_object_mut()
            .expect("object")
            .extend(fields.as_object().expect("object").clone());
        let (status, answer) = api.post(&host.url("/api/embeddings"), &body).await;
        assert_eq!(status, 200, "{body}: {answer}");
        assert_eq!(answer["class"], class, "{body}: {answer}");
        let vector: Vec<f32> =
            serde_json::from_value(answer["embeddings"][0].clone()).expect("a vector");
        assert_eq!(vector, embedding("hello"));
    }
    for (body, code) in [
        (json!({"texts": []}), "invalid_texts"),
        (json!({"texts": ["a"], "priority": 3}), "invalid_priority"),
        (json!({"texts": [""]}), "invalid_texts"),
    ] {
        let (status, answer) = api.post(&host.url("/api/embeddings"), &body).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
}
