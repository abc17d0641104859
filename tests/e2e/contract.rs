//! Promises of the contract the host keeps whatever a guest does: a guest
//! cannot forge the host's lifecycle events (and so cannot end anyone's
//! watch), and a handler's own payload rules, such as a new workflow name,
//! take a new handler version and no change to the host.

use std::time::Duration;

use serde_json::{Value, json};

use crate::sandbox::{adversary_config, submit_evil};
use crate::support::*;

/// Every name the host writes on a job's stream, plus one under its reserved
/// `task_` prefix: the adversary tries to emit each of them.
const HOST_NAMES: &[&str] = &[
    "task_queued",
    "task_started",
    "task_progress",
    "text_delta",
    "task_retrying",
    "task_requeued",
    "task_completed",
    "task_failed",
    "task_cancelled",
    "follow_up_queued",
    "task_anything",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_forging_host_event_names_gets_a_typed_refusal_and_closes_no_watcher() {
    let stack = Stack::start(HostOptions {
        config: adversary_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let id = submit_evil(api, host, "emit_reserved").await;

    // A watcher from the start: a forged terminal event would end its stream
    // before the job's real end.
    let events = read_sse(
        &host.url(&format!("/stream/status/{id}")),
        None,
        Duration::from_secs(30),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names.last(), Some(&"task_completed"), "{names:?}");
    for name in HOST_NAMES {
        let expected = match *name {
            "task_queued" | "task_started" | "task_completed" => 1,
            _ => 0,
        };
        let seen = names.iter().filter(|n| *n == name).count();
        assert_eq!(seen, expected, "`{name}` on the stream: {names:?}");
    }

    let report = events
        .iter()
        .find(|(_, name, _)| name == "emit_report")
        .map(|(_, _, frame)| frame["data"].clone())
        .expect("the guest's own event is published");
    let expected: serde_json::Map<String, Value> = HOST_NAMES
        .iter()
        .map(|name| (name.to_string(), json!("reserved_name")))
        .collect();
    assert_eq!(report, Value::Object(expected.clone()));
    let job = api.wait_terminal(host, &id, Duration::from_secs(10)).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["result"], Value::Object(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_version_with_a_new_workflow_runs_without_a_host_change() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (status, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("session id").to_owned();
    let task = json!({"task_description": "Tides", "workflow": "brief"});

    // The built-in pipeline knows no `brief` workflow: its own admit says so.
    let tasks = host.url(&format!("/api/v1/sessions/{sid}/tasks"));
    let (status, refused) = api.post(&tasks, &task).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "rejected_by_handler");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("workflow")),
        "{refused}"
    );

    // A new version of the `pipeline` handler that takes any workflow: the
    // host passes the task through untouched and the version drives it.
    let (status, deployed) = api
        .upload(
            &host.url("/admin/handlers/pipeline/versions"),
            crate::hot_swap::ECHO_V2.to_vec(),
        )
        .await;
    assert!(matches!(status, 200 | 201), "{deployed}");
    let (status, accepted) = api.post(&tasks, &task).await;
    assert_eq!(status, 202, "{accepted}");
    let job_id = accepted["jobId"].as_str().expect("job id");
    let job = api
        .wait_terminal(host, job_id, Duration::from_secs(20))
        .await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["result"]["version"], 2, "{job}");
    let message_id = accepted["messageId"].as_str().expect("message id");
    let (_, message) = api
        .get(&host.url(&format!("/api/v1/messages/{message_id}")))
        .await;
    assert_eq!(message["status"], "completed", "{message}");
}
