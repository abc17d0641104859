//! Design D's own client, unchanged: its request bodies (`{user_id,
//! metadata}`, `{content, type, metadata}`), its event envelope
//! (`{event_type, message_id, session_id, sequence, payload}`) on the
//! message stream, and the README's resume rule (`id:` is the sequence
//! number; `?last_id=<seq>` continues right after that event). Checked field
//! by field against the tables below, taken from requirements.md part D and
//! the design's examples.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// requirements.md D: "Event types: message_start, message_end, text_delta,
/// content_added, content_updated, task_started, task_progress,
/// task_completed, task_failed, error, ping. Each event has a sequence number."
const EVENT_TYPES: &[&str] = &[
    "message_start",
    "message_end",
    "text_delta",
    "content_added",
    "content_updated",
    "task_started",
    "task_progress",
    "task_completed",
    "task_failed",
    "error",
    "ping",
];

#[derive(Clone, Copy, Debug)]
enum Kind {
    Text,
    Number,
    Object,
}

fn is(kind: Kind, value: &Value) -> bool {
    match kind {
        Kind::Text => value.is_string(),
        Kind::Number => value.is_u64(),
        Kind::Object => value.is_object(),
    }
}

/// Design D's `StreamEvent(event_type, message_id, session_id, sequence, payload)`.
const ENVELOPE: &[(&str, Kind)] = &[
    ("event_type", Kind::Text),
    ("message_id", Kind::Text),
    ("session_id", Kind::Text),
    ("sequence", Kind::Number),
    ("payload", Kind::Object),
];

/// Payload fields per event type, from the design (`payload={'delta': '你好'}`).
const PAYLOADS: &[(&str, &str, Kind)] = &[("text_delta", "delta", Kind::Text)];

/// The stored events of a stream (pings carry no id) as (id, event, data).
async fn stored_events(url: &str, last_event_id: Option<&str>) -> Vec<(String, String, Value)> {
    read_sse(url, last_event_id, WAIT)
        .await
        .into_iter()
        .filter_map(|(id, event, data)| Some((id?, event, data)))
        .collect()
}

fn assert_design_envelope(events: &[(String, String, Value)], sid: &str, mid: &str) {
    for (index, (id, event, data)) in events.iter().enumerate() {
        for (field, kind) in ENVELOPE {
            assert!(is(*kind, &data[field]), "{field} ({kind:?}) in {data}");
        }
        assert_eq!(data["event_type"], event.as_str(), "{data}");
        assert!(EVENT_TYPES.contains(&event.as_str()), "{event}");
        assert_eq!(data["session_id"], sid);
        assert_eq!(data["message_id"], mid);
        assert_eq!(
            data["sequence"],
            index as u64 + 1,
            "numbered from 1: {data}"
        );
        assert_eq!(
            id,
            &data["sequence"].to_string(),
            "the SSE id is the sequence"
        );
        for (event_type, field, kind) in PAYLOADS {
            if event == event_type {
                assert!(is(*kind, &data["payload"][field]), "{field} in {data}");
            }
        }
        // spool's own envelope stays beside the design's.
        assert_eq!(data["seq"], data["sequence"]);
        assert_eq!(data["type"], data["event_type"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn design_d_bodies_are_accepted_and_its_envelope_is_on_the_message_stream() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;

    // POST /api/v1/sessions {"user_id": "user_123", "metadata": {}}
    let (status, session) = api
        .post(
            &host.url("/api/v1/sessions"),
            &json!({"user_id": "user_123", "metadata": {}}),
        )
        .await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("id").to_owned();
    let (_, session) = api.get(&host.url(&format!("/api/v1/sessions/{sid}"))).await;
    assert_eq!(session["userId"], "user_123", "{session}");

    // POST .../messages {"content": "你好", "type": "text", "metadata": {}}
    let (status, message) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &json!({"content": "你好", "type": "text", "metadata": {"from": "design D"}}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["text"], "你好");
    assert_eq!(message["role"], "user", "a design D message is the user's");
    assert_eq!(message["metadata"], json!({"from": "design D"}));
    let mid = message["id"].as_str().expect("id").to_owned();

    let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));
    let events = stored_events(&url, None).await;
    let types: Vec<&str> = events.iter().map(|(_, event, _)| event.as_str()).collect();
    assert_eq!(types, ["message_start", "text_delta", "message_end"]);
    assert_design_envelope(&events, &sid, &mid);
    assert_eq!(events[1].2["payload"]["delta"], "你好");

    // Another of design D's content types becomes a block of that type.
    let (status, message) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &json!({"content": "# Title", "type": "markdown", "metadata": {}}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    assert_eq!(message["blocks"][0]["type"], "markdown", "{message}");
    assert_eq!(message["blocks"][0]["text"], "# Title", "{message}");

    // An unknown type is a 422 naming it.
    let (status, error) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &json!({"content": "x", "type": "hologram"}),
        )
        .await;
    assert_eq!(status, 422, "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("hologram")),
        "{error}"
    );
}

/// README: "`id:` = sequence number", "resumable: ?last_id=<seq> or Last-Event-ID".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_id_as_the_readme_says_resumes_right_after_that_event() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (_, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let sid = session["id"].as_str().expect("sid").to_owned();
    let (status, task) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/tasks")),
            &json!({"task_description": "Tides", "workflow": "critic", "max_iterations": 2}),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    let mid = task["messageId"].as_str().expect("mid").to_owned();
    let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));
    let all = stored_events(&url, None).await;
    assert!(all.len() >= 6, "{all:?}");
    let seqs: Vec<u64> = all
        .iter()
        .map(|(_, _, d)| d["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(seqs, (1..=all.len() as u64).collect::<Vec<_>>());

    for k in [1, 3, all.len() - 1] {
        let (id, ..) = &all[k - 1];
        assert_eq!(id, &k.to_string(), "the SSE id is the sequence number");
        let by_query = stored_events(&format!("{url}?last_id={k}"), None).await;
        let by_header = stored_events(&url, Some(id)).await;
        for resumed in [&by_query, &by_header] {
            let seqs: Vec<u64> = resumed
                .iter()
                .map(|(_, _, d)| d["seq"].as_u64().unwrap_or(0))
                .collect();
            assert_eq!(
                seqs,
                (k as u64 + 1..=all.len() as u64).collect::<Vec<_>>(),
                "after {k}: no gap, no duplicate"
            );
        }
    }
}

/// Design D's `DELETE` closes the session (spool's delete is `?purge=true`),
/// and `cleanup_old_messages(session_id, keep_days)` is a route of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_closes_a_session_and_a_session_cleans_up_its_own_old_messages() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let session_url = |sid: &str, tail: &str| host.url(&format!("/api/v1/sessions/{sid}{tail}"));
    let new_session = || async {
        let (status, session) = api
            .post(
                &host.url("/api/v1/sessions"),
                &json!({"user_id": "u", "metadata": {}}),
            )
            .await;
        assert_eq!(status, 201, "{session}");
        session["id"].as_str().expect("id").to_owned()
    };
    let message = json!({"content": "hi", "type": "text", "metadata": {}});

    let sid = new_session().await;
    let (status, _) = api.post(&session_url(&sid, "/messages"), &message).await;
    assert_eq!(status, 201);
    let (status, closed) = api.delete(&session_url(&sid, "")).await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(
        (closed["closed"].clone(), closed["deleted"].clone()),
        (json!(true), json!(false))
    );
    let (status, session) = api.get(&session_url(&sid, "")).await;
    assert_eq!(status, 200, "a closed session is still there: {session}");
    assert_eq!(session["status"], "closed");
    assert!(session["closedAt"].is_u64(), "{session}");
    let (_, page) = api.get(&session_url(&sid, "/messages")).await;
    assert_eq!(page["total"], 1, "its messages stay readable: {page}");
    let (status, refused) = api.post(&session_url(&sid, "/messages"), &message).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "session_closed");
    let (status, refused) = api
        .post(
            &session_url(&sid, "/tasks"),
            &json!({"task_description": "Tides"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    let (status, purged) = api.delete(&session_url(&sid, "?purge=true")).await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(
        (purged["deleted"].clone(), purged["messagesDeleted"].clone()),
        (json!(true), json!(1))
    );
    let (status, _) = api.get(&session_url(&sid, "")).await;
    assert_eq!(status, 404);

    // Per-session cleanup: keep_days 1 keeps a fresh message, 0 takes it;
    // another session's message is untouched.
    let (sid, other) = (new_session().await, new_session().await);
    for session in [&sid, &other] {
        let (status, _) = api.post(&session_url(session, "/messages"), &message).await;
        assert_eq!(status, 201);
    }
    let (status, kept) = api
        .post(&session_url(&sid, "/cleanup"), &json!({"keep_days": 1}))
        .await;
    assert_eq!(status, 200, "{kept}");
    assert_eq!(kept["messagesDeleted"], 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, cleaned) = api
        .post(&session_url(&sid, "/cleanup"), &json!({"keep_days": 0}))
        .await;
    assert_eq!(status, 200, "{cleaned}");
    assert_eq!(cleaned["messagesDeleted"], 1, "{cleaned}");
    let (status, session) = api.get(&session_url(&sid, "")).await;
    assert_eq!(status, 200, "the session stays, empty: {session}");
    assert_eq!(session["messageCount"], 0, "{session}");
    let (_, page) = api.get(&session_url(&other, "/messages")).await;
    assert_eq!(page["total"], 1, "{page}");
    let (status, error) = api
        .post(&session_url(&other, "/cleanup"), &json!({"keep_days": -1}))
        .await;
    assert_eq!(status, 422, "{error}");
}

/// Design D's `ContentBlock.create_placeholder(content_type, task_id)`: the
/// placeholder's fields, and the content type a task type stands for
/// (`ContentType`: TEXT, IMAGE, AUDIO).
const PLACEHOLDER: &[(&str, Kind)] = &[("content_type", Kind::Text), ("task_id", Kind::Text)];
const CONTENT_TYPES: &[(&str, &str)] = &[
    ("image_generation", "image"),
    ("audio_generation", "audio"),
    ("document_generation", "text"),
];

async fn start_session_task(api: &Api, host: &Host, sid: &str, body: Value) -> (u16, Value) {
    api.post(&host.url(&format!("/api/v1/sessions/{sid}/tasks")), &body)
        .await
}

/// `start_task(task_id, 'image_generation')`: the caller's id and type are in
/// the answer, the placeholder and the task events; the workflow's answer
/// completes that task; the placeholder's `content_type` follows the design's
/// table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_task_id_and_type_show_in_placeholder_events_and_answer() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (_, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let sid = session["id"].as_str().expect("sid").to_owned();
    for (index, (task_type, content_type)) in CONTENT_TYPES.iter().enumerate() {
        let task_id = format!("task_00{index}");
        let (status, answer) = start_session_task(
            api,
            host,
            &sid,
            json!({"task_description": "Tides", "workflow": "simple",
                   "task_id": task_id, "task_type": task_type}),
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["task_id"], task_id.as_str(), "{answer}");
        assert_eq!(answer["taskId"], task_id.as_str(), "{answer}");
        assert_eq!(answer["task_type"], *task_type, "{answer}");
        let mid = answer["messageId"].as_str().expect("mid").to_owned();
        let url = host.url(&format!("/api/v1/sessions/{sid}/messages/{mid}/stream"));
        let events = stored_events(&url, None).await;
        assert_design_envelope(&events, &sid, &mid);

        let placeholder = events
            .iter()
            .map(|(_, _, data)| &data["payload"]["block"])
            .find(|block| block["type"] == "placeholder" && block["task_id"] == task_id.as_str())
            .unwrap_or_else(|| panic!("no placeholder for {task_id}: {events:?}"));
        for (field, kind) in PLACEHOLDER {
            assert!(is(*kind, &placeholder[field]), "{field} in {placeholder}");
        }
        assert_eq!(placeholder["content_type"], *content_type, "{placeholder}");

        let of_task = |event_type: &str| {
            events
                .iter()
                .filter(|(_, event, data)| {
                    event == event_type && data["payload"]["task_id"] == task_id.as_str()
                })
                .map(|(_, _, data)| data["payload"].clone())
                .collect::<Vec<_>>()
        };
        let started = of_task("task_started");
        assert_eq!(started.len(), 1, "{events:?}");
        assert_eq!(started[0]["task_type"], *task_type, "{started:?}");
        let completed = of_task("task_completed");
        assert_eq!(
            completed.len(),
            1,
            "the answer completes the caller's task: {events:?}"
        );
        assert_eq!(completed[0]["task_type"], *task_type, "{completed:?}");
        assert!(completed[0]["result"].is_object(), "{completed:?}");

        // The pipeline guest starts its own stage task through the contract's
        // `start-task-with`, naming its type and content kind.
        let stage = events
            .iter()
            .find(|(_, event, data)| {
                event == "task_started" && data["payload"]["task_id"] != task_id.as_str()
            })
            .map(|(_, _, data)| data["payload"].clone())
            .unwrap_or_else(|| panic!("no stage task: {events:?}"));
        assert_eq!(stage["task_type"], "text_generation", "{stage}");
        assert_eq!(stage["content_type"], "markdown", "{stage}");
    }
}

/// A task id is the caller's only once per session (409 naming it), and must
/// be key-safe (422 naming the field), as other ids; so must the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_task_id_is_409_and_a_bad_one_422() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (_, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let sid = session["id"].as_str().expect("sid").to_owned();
    let body = |task_id: Value, task_type: Value| {
        json!({"task_description": "Tides", "workflow": "simple",
               "task_id": task_id, "task_type": task_type})
    };
    let (status, first) = start_session_task(
        api,
        host,
        &sid,
        body(json!("task_001"), json!("image_generation")),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let (status, again) =
        start_session_task(api, host, &sid, body(json!("task_001"), Value::Null)).await;
    assert_eq!(status, 409, "{again}");
    assert_eq!(again["error"]["code"], "task_exists", "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("task_001"),
        "{again}"
    );

    for (task_id, task_type, field) in [
        (json!("has space"), Value::Null, "task_id"),
        (json!("a:b"), Value::Null, "task_id"),
        (json!("x".repeat(65)), Value::Null, "task_id"),
        (json!(7), Value::Null, "task_id"),
        (json!("task_002"), json!("Image Generation"), "task_type"),
        (json!("task_002"), json!(""), "task_type"),
    ] {
        let (status, refused) =
            start_session_task(api, host, &sid, body(task_id.clone(), task_type)).await;
        assert_eq!(status, 422, "{task_id}: {refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "{refused}"
        );
    }
    // Another session may use the same id.
    let (_, other) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let other = other["id"].as_str().expect("sid").to_owned();
    let (status, answer) =
        start_session_task(api, host, &other, body(json!("task_001"), Value::Null)).await;
    assert_eq!(status, 202, "{answer}");
}
