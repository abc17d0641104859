//! Design C's consumer, unchanged: it knows one job id and reads
//! `job_events:{job_id}` (from Redis, or over SSE) to see the whole
//! outline -> document task, `document_generated` included, with the
//! design's payloads. Checked field by field against the table below, taken
//! from requirements.md part C and the design's publisher examples.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// requirements.md C: entry fields `data` (JSON, non-ASCII as is),
/// `timestamp`, `event_type`; lifecycle and business events with the
/// design's payloads (`publish_task_started(job_id, task_type)`,
/// `publish_outline_generated(job_id, {"title", "nodes"})`,
/// `publish_document_generated(job_id, {"title", "content", "word_count"})`,
/// `publish_task_completed(job_id, task_type, result)`).
const ENTRY_FIELDS: &[&str] = &["event_type", "data", "timestamp"];
const PAYLOADS: &[(&str, &[&str])] = &[
    ("task_started", &["task_type"]),
    ("outline_generated", &["title", "nodes"]),
    ("document_generated", &["title", "content", "word_count"]),
    ("task_completed", &["result"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_c_consumer_of_the_root_id_sees_every_stage_with_the_designs_payloads() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let topic = "tea 茶";
    let (status, reply) = api
        .post(
            &host.url("/api/queues/documents/jobs"),
            &json!({"payload": {"topic": topic, "sections": 2}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let root = reply["jobId"].as_str().expect("jobId").to_owned();

    // Over SSE: the root's stream goes on through the document stage and
    // ends once it and every stage have completed. Follow-ups are queued
    // before their parent's completion is recorded (a crash must not lose
    // them), so a fast last stage may complete first: the stream ends at
    // whichever completion comes last.
    let events = read_sse(&host.url(&format!("/stream/status/{root}")), None, WAIT).await;
    let names: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    let at = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .unwrap_or_else(|| panic!("{name} missing: {names:?}"))
    };
    assert!(
        at("outline_generated") < at("document_generated"),
        "{names:?}"
    );
    let (_, last, _) = events.last().expect("events");
    assert_eq!(last, "task_completed", "{names:?}");
    let stage = format!("{root}.1");
    let completions: Vec<&Value> = events
        .iter()
        .filter(|(_, name, _)| name == "task_completed")
        .map(|(_, _, data)| data)
        .collect();
    assert!(
        completions.iter().any(|data| data["jobId"] == stage),
        "the last stage's: {names:?}"
    );
    assert!(
        completions
            .iter()
            .any(|data| data.get("jobId").is_none() && data["data"]["followUps"] == json!([stage])),
        "the root's own, naming its stage: {names:?}"
    );

    // In Redis, as design C's consumer reads it: every entry has the
    // design's fields, every payload the design's keys.
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("job_events:{root}"))
        .arg("-")
        .arg("+")
        .query(&mut redis.connection())
        .expect("job events");
    let mut seen = Vec::new();
    for (_, fields) in &entries {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        for name in ENTRY_FIELDS {
            assert!(field(name).is_some(), "{name} in {fields:?}");
        }
        let event_type = field("event_type").unwrap_or_default();
        let data: Value =
            serde_json::from_str(&field("data").unwrap_or_default()).expect("JSON data");
        for (kind, keys) in PAYLOADS {
            if event_type == *kind {
                for key in *keys {
                    assert!(!data[key].is_null(), "{kind}.{key} in {data}");
                }
            }
        }
        seen.push((event_type, field("job"), data));
    }
    let stage = format!("{root}.1");
    let find = |kind: &str, job: Option<&str>| {
        seen.iter()
            .find(|(t, j, _)| t == kind && j.as_deref() == job)
            .map(|(_, _, data)| data.clone())
            .unwrap_or_else(|| panic!("{kind} of {job:?} missing: {seen:?}"))
    };
    assert_eq!(find("task_started", None)["task_type"], "documents");
    assert_eq!(find("task_started", Some(&stage))["task_type"], "documents");
    let outline = find("outline_generated", None);
    assert_eq!(outline["title"], topic);
    assert!(
        outline["nodes"].as_array().is_some_and(|n| !n.is_empty()),
        "{outline}"
    );
    let document = find("document_generated", Some(&stage));
    assert_eq!(document["title"], topic);
    let content = document["content"].as_str().expect("content");
    assert!(content.starts_with("[stub-chat]"), "{document}");
    assert_eq!(
        document["word_count"],
        content.split_whitespace().count(),
        "{document}"
    );
    assert_eq!(find("task_completed", None)["followUps"], json!([stage]));
    let raw = entries
        .iter()
        .flat_map(|(_, fields)| fields.iter().map(|(_, v)| v.as_str()))
        .collect::<String>();
    assert!(
        raw.contains("茶") && !raw.contains("\\u8336"),
        "non-ASCII kept as is"
    );
}
