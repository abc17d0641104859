//! The OpenAI-compatible front door driven by the official `openai` Python
//! package (pinned; installed by tests/openai/install-openai into
//! target/openai, or named by `SPOOL_OPENAI_PYTHON`): chat completions whole
//! and streamed, embeddings, an error body, and an over-limit burst that is
//! queued and paced rather than refused. The script is tests/openai/client.py.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use spool::stub::embedding;

use crate::support::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the repository")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_package_chats_streams_embeds_and_is_paced_in_a_burst() {
    let python = std::env::var_os("SPOOL_OPENAI_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/openai/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: run tests/openai/install-openai (the README's test command does)",
        python.display()
    );
    // 2 calls per second, bursts of 2: the burst below is over the limit.
    let (rate, capacity, burst) = (2.0, 2.0, 8usize);
    let stack = Stack::start(HostOptions {
        concurrency: 8,
        config: format!("[limits]\nrate_per_sec = {rate}\ncapacity = {capacity}\n"),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let (status, created) = api
        .post(&host.url("/admin/keys"), &json!({"role": "submitter"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().expect("key").to_owned();

    let output = tokio::task::spawn_blocking({
        let base = host.base.clone();
        move || {
            Command::new(python)
                .arg(repo_root().join("tests/openai/client.py"))
                .args([base, key, burst.to_string()])
                .output()
                .expect("run python")
        }
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    let reports: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let report = |kind: &str| {
        reports
            .iter()
            .find(|report| report["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} report in:\n{stdout}"))
            .clone()
    };

    // The stub's answer names the model and counts the messages it got:
    // system + 2 history turns + the prompt.
    let chat = report("chat");
    assert_eq!(chat["object"], "chat.completion", "{chat}");
    assert!(
        chat["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-")),
        "{chat}"
    );
    assert_eq!(chat["role"], "assistant");
    assert_eq!(chat["finish_reason"], "stop");
    assert_eq!(
        chat["content"], "[stub-chat] 4 messages; you said: what is spool?",
        "{chat}"
    );
    assert!(chat["total_tokens"].as_u64().unwrap_or(0) > 0, "{chat}");

    let stream = report("stream");
    assert_eq!(
        stream["content"], "[stub-chat] 2 messages; you said: stream this please",
        "{stream}"
    );
    assert!(
        stream["chunks"].as_u64().unwrap_or(0) >= 3,
        "role, deltas, finish: {stream}"
    );
    assert_eq!(stream["finish_reason"], "stop", "{stream}");
    assert!(stream["total_tokens"].as_u64().unwrap_or(0) > 0, "{stream}");

    let embeddings = report("embeddings");
    assert_eq!(embeddings["object"], "list");
    assert_eq!(embeddings["indexes"], json!([0, 1]));
    let vectors: Vec<Vec<f32>> =
        serde_json::from_value(embeddings["vectors"].clone()).expect("vectors");
    assert_eq!(
        vectors,
        vec![embedding("are you there?"), embedding("hello")]
    );

    let error = report("error");
    assert_eq!(error["status"], 422, "{error}");
    assert_eq!(error["body"]["code"], "invalid_messages", "{error}");
    assert_eq!(error["body"]["type"], "invalid_request_error", "{error}");

    let results = report("burst")["results"]
        .as_array()
        .expect("results")
        .clone();
    assert_eq!(results.len(), burst);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result["ok"], true, "burst {i} failed: {result}");
        let content = result["content"].as_str().unwrap_or_default();
        assert!(
            content.ends_with(&format!("you said: burst {i}")),
            "{result}"
        );
    }
    // Paced, not refused: the burst's model calls are spread at the rate.
    let mut times: Vec<f64> = stub
        .stats()
        .model_calls
        .iter()
        .filter(|call| call.path == "/api/chat")
        .map(|call| call.at_ms / 1000.0)
        .collect();
    times.sort_by(f64::total_cmp);
    let burst_times = &times[times.len() - burst..];
    let span = burst_times[burst - 1] - burst_times[0];
    let slowest = results
        .iter()
        .filter_map(|result| result["secs"].as_f64())
        .fold(0.0, f64::max);
    println!(
        "burst of {burst} at {rate}/s (capacity {capacity}): model calls spread over {span:.2} s; slowest answer {slowest:.2} s"
    );
    // At most `capacity` tokens were left from before; the rest come at `rate`.
    let least = (burst as f64 - capacity) / rate;
    assert!(
        span >= least - 0.1,
        "{burst} calls in {span:.2} s: not paced at {rate}/s"
    );
}

/// A chat job retried after part of its answer was streamed starts its
/// answer again; the `/v1` stream sends every character once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_job_streams_its_answer_once() {
    let stack = Stack::start(HostOptions {
        config: "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 50\n".into(),
        ..HostOptions::default()
    })
    .await;
    // Attempt 1 streams a piece of its answer, then the model fails.
    stack
        .stub
        .inject([spool::stub::Fault {
            midstream_error: Some("the model went away".into()),
            ..spool::stub::Fault::default()
        }])
        .expect("fault");
    let body = reqwest::Client::new()
        .post(stack.host.url("/v1/chat/completions"))
        .bearer_auth(admin_token())
        .header("content-type", "application/json")
        .body(
            json!({"model": "default", "stream": true,
                "messages": [{"role": "user", "content": "say it once"}]})
            .to_string(),
        )
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .expect("the stream opens")
        .text()
        .await
        .expect("the stream ends");
    let chunks: Vec<Value> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).expect("chunks are JSON"))
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, expected_chat_response("say it once", 0), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let (_, job) = stack
        .api
        .get(&stack.host.url(&format!(
            "/api/job/{}",
            chunks[0]["id"]
                .as_str()
                .and_then(|id| id.strip_prefix("chatcmpl-"))
                .expect("a chatcmpl id")
        )))
        .await;
    assert_eq!(job["attempts"], 2, "the job was retried once: {job}");
}
