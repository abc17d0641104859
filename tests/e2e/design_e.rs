//! Design E's own client, unchanged: its page posts a chat, listens to
//! `/stream/status/{jobId}` with `EventSource.onmessage` and, once the job is
//! completed, fetches `/api/job/{jobId}` for the answer. The listener below
//! follows the EventSource rules that matter here (an event's type is its
//! `event:` field, `message` when absent; `onmessage` gets only `message`
//! events; `data:` lines join with a newline), so a stream of named events
//! alone shows the page nothing.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// What an `EventSource` hands to `onmessage`: the data of every event whose
/// type is `message`, until the server closes the stream or `until` is true.
async fn on_message(url: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
    let response = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("the EventSource connects");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut pending = String::new();
    let mut delivered = Vec::new();
    let (mut event_type, mut data) = (String::new(), Vec::<String>::new());
    let read = async {
        while let Some(chunk) = body.next().await {
            pending.push_str(&String::from_utf8_lossy(&chunk.expect("a chunk")));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    // Dispatch: only `message` events reach `onmessage`.
                    let kind = if event_type.is_empty() {
                        "message"
                    } else {
                        &event_type
                    };
                    if kind == "message" && !data.is_empty() {
                        let value: Value =
                            serde_json::from_str(&data.join("\n")).unwrap_or(Value::Null);
                        let stop = until(&value);
                        delivered.push(value);
                        if stop {
                            return;
                        }
                    }
                    event_type.clear();
                    data.clear();
                } else if line.starts_with(':') {
                    continue;
                } else {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event_type = value.to_owned(),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("the stream ends or completes");
    delivered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_e_page_sees_waiting_active_progress_completed_and_the_answer() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    // Paused, so the page's stream is open before the job runs.
    let (status, _) = api
        .post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);

    // The page's submit, with design E's body.
    let prompt = "hello from design E";
    let (status, queued) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "user-123", "prompt": prompt, "conversationHistory": [], "priority": 5}),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["success"], true, "{queued}");
    assert!(queued["message"].is_string(), "{queued}");
    let job = queued["jobId"].as_str().expect("jobId").to_owned();

    // The page's EventSource, open while the job waits.
    let stream_url = host.url(&format!("/stream/status/{job}"));
    let listener =
        tokio::spawn(
            async move { on_message(&stream_url, |data| data["state"] == "completed").await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = api
        .post(&host.url("/api/queues/chat/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let seen = listener.await.expect("the listener");

    for status in &seen {
        assert_eq!(status["type"], "status", "{status}");
        assert_eq!(status["jobId"], job.as_str(), "{status}");
        assert!(
            status["progress"].as_u64().is_some_and(|p| p <= 100),
            "{status}"
        );
    }
    let states: Vec<&str> = seen.iter().filter_map(|s| s["state"].as_str()).collect();
    let first = |state: &str| states.iter().position(|s| *s == state);
    let (waiting, active, completed) = (
        first("waiting").unwrap_or_else(|| panic!("waiting in {seen:?}")),
        first("active").unwrap_or_else(|| panic!("active in {seen:?}")),
        first("completed").unwrap_or_else(|| panic!("completed in {seen:?}")),
    );
    let progressed = seen.iter().position(|s| {
        s["state"] == "active" && s["progress"].as_u64().is_some_and(|p| p > 0 && p < 100)
    });
    let progressed = progressed.unwrap_or_else(|| panic!("progress in {seen:?}"));
    assert!(
        waiting < active && active < progressed && progressed < completed,
        "{states:?}"
    );
    assert_eq!(seen[completed]["progress"], 100);
    let progress: Vec<u64> = seen.iter().filter_map(|s| s["progress"].as_u64()).collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");

    // The page's fetch once completed: the answer in design E's result.
    let (status, detail) = api.get(&host.url(&format!("/api/job/{job}"))).await;
    assert_eq!(status, 200);
    assert_eq!(detail["jobId"], job.as_str(), "{detail}");
    assert_eq!(detail["state"], "completed");
    assert_eq!(detail["progress"], 100);
    assert_eq!(detail["result"]["success"], true, "{detail}");
    assert_eq!(
        detail["result"]["response"],
        expected_chat_response(prompt, 0)
    );
    assert!(
        detail["result"]["timestamp"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{detail}"
    );

    // The page's stats: design E's fields with `total` (jobs not yet finished).
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    for field in ["waiting", "active", "completed", "failed", "total"] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
    assert_eq!(stats["completed"], 1, "{stats}");
    assert_eq!(stats["total"], 0, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_e_stats_total_counts_the_jobs_not_yet_finished() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    api.post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    for i in 0..3 {
        let (status, _) = api
            .post(
                &host.url("/api/chat"),
                &json!({"userId": format!("u{i}"), "prompt": "hi"}),
            )
            .await;
        assert_eq!(status, 202);
    }
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["waiting"], 3, "{stats}");
    assert_eq!(stats["total"], 3, "{stats}");
}
