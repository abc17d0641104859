//! Fencing and settled messages (issue 14, items 2 and 3): an attempt that
//! lost its job cannot write into it any more (state, events, progress, its
//! message, its follow-ups), and a job's session message ends in the same
//! step as the job, whichever way it ends.

use std::time::Duration;

use serde_json::{Value, json};
use spool_core::queue::{Claim, Fence, NewJob, Queue, QueueKeys, Retention, SubmitError, Written};
use spool_core::store::{BoundMessage, SessionsConfig, Store, StoreError};
use spool_runtime::PriorityClass;

use crate::reliability::{WAIT, wait_for_state};
use crate::sandbox::adversary_wasm;
use crate::support::*;

const RETENTION: Retention = Retention {
    completed_secs: 3600,
    failed_secs: 3600,
    history: 100,
    message_secs: 3600,
    message_events: 1000,
};

async fn manager(redis: &Redis) -> redis::aio::ConnectionManager {
    redis::Client::open(redis.url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis")
}

/// The `writes` queue runs the adversary's `writer` mode with room to tick.
pub(crate) fn writer_config() -> String {
    format!(
        r#"
[handlers.adversary]
path = "{}"

[queues.writes]
handler = "adversary"

[sandbox.handlers.adversary]
deadline_ms = 60000
max_model_calls = 100
"#,
        adversary_wasm().display()
    )
}

/// The `tick` events of a job, as (attempt, i), and the index in that list
/// of the first one after attempt 2 started.
fn ticks(redis: &Redis, id: &str) -> (Vec<(u64, u64)>, usize) {
    let mut ticks = Vec::new();
    let mut second_started = usize::MAX;
    for (event_type, data) in stream_events(&mut redis.connection(), &format!("job_events:{id}")) {
        match event_type.as_str() {
            "task_started" if data["attempt"] == 2 => second_started = ticks.len(),
            "tick" => ticks.push((
                data["attempt"].as_u64().unwrap_or(0),
                data["i"].as_u64().unwrap_or(0),
            )),
            _ => {}
        }
    }
    (ticks, second_started)
}

/// A running attempt whose job is requeued under it (as recovery does when
/// its worker looks dead) keeps running until its next heartbeat, 10 s away.
/// Before fencing it went on writing ticks into the job the second attempt
/// now owns; now its first write after the requeue is refused and counted,
/// and it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_attempt_cannot_write_into_the_job_it_lost() {
    let stack = Stack::start(HostOptions {
        concurrency: 2,
        config: writer_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host,
        api,
        stub,
        redis,
    } = &stack;
    stub.set_timing(250, 0);
    let (status, reply) = api
        .post(
            &host.url("/api/queues/writes/jobs"),
            &json!({"payload": {"mode": "writer", "ticks": 12}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    wait_until("the first attempt ticked twice", WAIT, || {
        ticks(redis, &id).0.len() >= 2
    });

    // Another instance's recovery sweep takes the entry (idle 0: at once).
    let queue = Queue::new(manager(redis).await.into());
    let requeued = queue
        .recover(&queue.keys("writes"), "sweeper", Duration::ZERO, RETENTION)
        .await
        .expect("recover");
    assert_eq!(requeued, 1);

    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(
        job["result"]["attempt"], 2,
        "the second attempt's result: {job}"
    );

    let (ticks, second_started) = ticks(redis, &id);
    assert!(second_started < usize::MAX, "attempt 2 started: {ticks:?}");
    let stale: Vec<_> = ticks[second_started..]
        .iter()
        .filter(|(attempt, _)| *attempt != 2)
        .collect();
    assert!(
        stale.is_empty(),
        "the lost attempt wrote {} ticks after the job moved on: {ticks:?}",
        stale.len()
    );
    let last: String = redis::cmd("HGET")
        .arg(format!("spool:job:{id}:state"))
        .arg("last")
        .query(&mut redis.connection())
        .expect("HGET");
    assert_eq!(last, "2:11", "the guest state is the second attempt's");
    let fenced: u64 = redis::cmd("GET")
        .arg("spool:q:{writes}:count:fenced")
        .query(&mut redis.connection())
        .expect("GET");
    assert!(fenced >= 1, "the refused write was counted");
}

/// Claims the only job of `keys` for `consumer`.
async fn claim(queue: &Queue, keys: &QueueKeys, consumer: &str) -> Fence {
    match queue.claim(keys, consumer).await.expect("claim") {
        Claim::Job(job) => Fence::of(&job),
        _ => panic!("no job to claim"),
    }
}

/// Every kind of write a running attempt makes checks its fence: after the
/// job was requeued and claimed again, the first attempt's writes are all
/// refused and counted, the second attempt's all land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_of_an_attempt_checks_its_fence() {
    let redis = Redis::start();
    let connection = manager(&redis).await;
    let queue = Queue::new(connection.clone().into());
    let store = Store::new(
        connection.into(),
        SessionsConfig::default(),
        Default::default(),
    );
    let keys = queue.keys("documents");
    queue.ensure_groups(&keys).await.expect("groups");

    let session = store
        .create_session(&json!({}), None, None)
        .await
        .expect("session");
    let message_id = store
        .create_message(&session, "assistant", Some("job"))
        .await
        .expect("message");
    let message = BoundMessage {
        session_id: session.clone(),
        message_id: message_id.clone(),
    };
    let job = |id: &'static str, message: Option<&'static BoundMessage>| NewJob {
        id,
        queue: &keys,
        class: PriorityClass::Normal,
        score: 5,
        priority: 5,
        user_id: "u",
        user_tier: "",
        payload: "{}",
        message,
        handler: "pipeline",
        max_waiting: 100,
        parent: None,
    };
    let message: &'static BoundMessage = Box::leak(Box::new(message));
    queue
        .submit(job("job", Some(message)))
        .await
        .expect("submit");

    let first = claim(&queue, &keys, "first").await;
    queue
        .recover(&keys, "sweeper", Duration::ZERO, RETENTION)
        .await
        .expect("recover");
    let second = claim(&queue, &keys, "second").await;
    assert_ne!(first, second);

    let fenced = |written: redis::RedisResult<Written>| written.expect("redis") == Written::Fenced;
    assert!(fenced(queue.append_event(&first, "tick", "{}").await));
    assert!(fenced(queue.set_progress(&first, 50, "half").await));
    assert!(fenced(queue.set_state(&first, "k", "stale").await));
    assert!(fenced(queue.delete_state(&first, "k").await));
    let stale_store = store.fenced(first.clone());
    assert!(matches!(
        stale_store
            .append_text(&session, &message_id, "stale")
            .await,
        Err(StoreError::Fenced)
    ));
    assert!(matches!(
        stale_store.complete(&session, &message_id).await,
        Err(StoreError::Fenced)
    ));
    let follow_up = NewJob {
        parent: Some(&first),
        ..job("job.1", Some(message))
    };
    assert!(matches!(
        queue.submit(follow_up).await,
        Err(SubmitError::Fenced)
    ));
    let counted: u64 = redis::cmd("GET")
        .arg("spool:q:{documents}:count:fenced")
        .query(&mut redis.connection())
        .expect("GET");
    assert_eq!(counted, 7, "each refused write is counted");

    assert!(!fenced(queue.append_event(&second, "tick", "{}").await));
    assert!(!fenced(queue.set_state(&second, "k", "fresh").await));
    let live_store = store.fenced(second.clone());
    live_store
        .append_text(&session, &message_id, "fresh")
        .await
        .expect("the owner writes its message");
    let follow_up = NewJob {
        parent: Some(&second),
        ..job("job.1", Some(message))
    };
    queue
        .submit(follow_up)
        .await
        .expect("the owner's follow-up");
    assert!(
        matches!(
            live_store.append_text(&session, &message_id, "after").await,
            Err(StoreError::Fenced)
        ),
        "the message went to the follow-up with its submission"
    );
    let snapshot = store
        .load(&message_id, false)
        .await
        .expect("load")
        .expect("message");
    assert_eq!(snapshot["text"], "fresh", "{snapshot}");

    // Once a cancel is accepted, nothing of the job changes: the owner's
    // writes are refused too (and not counted as fenced).
    queue.cancel("job", RETENTION).await.expect("cancel");
    assert_eq!(
        queue.set_state(&second, "k", "late").await.expect("redis"),
        Written::Cancelled
    );
    assert_eq!(
        queue
            .append_event(&second, "tick", "{}")
            .await
            .expect("redis"),
        Written::Cancelled
    );
    let follow_up = NewJob {
        parent: Some(&second),
        ..job("job.2", None)
    };
    assert!(matches!(
        queue.submit(follow_up).await,
        Err(SubmitError::ParentCancelled)
    ));
}

async fn new_session(api: &Api, host: &Host) -> String {
    let (status, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    assert_eq!(status, 201, "{session}");
    session["id"].as_str().expect("session id").to_owned()
}

async fn start_task(api: &Api, host: &Host, sid: &str) -> (String, String) {
    let (status, task) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/tasks")),
            &json!({"task_description": "Tides", "workflow": "planner"}),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    let field = |name: &str| task[name].as_str().expect(name).to_owned();
    (field("jobId"), field("messageId"))
}

async fn message(api: &Api, host: &Host, mid: &str) -> Value {
    let (status, message) = api.get(&host.url(&format!("/api/v1/messages/{mid}"))).await;
    assert_eq!(status, 200, "{message}");
    message
}

/// Cancelling a task's job before it ran ends its message in an error with a
/// `message_end`; before, the message stayed `streaming` until it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_waiting_task_ends_its_message() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (status, _) = api
        .post(&host.url("/api/queues/documents/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let sid = new_session(api, host).await;
    let (job, mid) = start_task(api, host, &sid).await;
    let (status, reply) = api.send_delete(&host.url(&format!("/api/job/{job}"))).await;
    assert!(status < 300, "{status} {reply}");

    let message = message(api, host, &mid).await;
    assert_eq!(message["status"], "error", "{message}");
    assert_eq!(message["error"], "the job was cancelled", "{message}");
    let events = store_event_types(stack.redis.connection(), &sid, &mid);
    assert_eq!(
        events.last().map(String::as_str),
        Some("message_end"),
        "{events:?}"
    );
}

/// A task's job cancelled while its worker is gone is ended by recovery, and
/// its message with it, in the same step; before, the message was left
/// `streaming` with its tasks running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_whose_worker_died_ends_with_its_message_at_recovery() {
    let redis = Redis::start();
    let stub = stub().await;
    let options = || HostOptions {
        workers: "visibility_timeout_ms = 1500".into(),
        ..HostOptions::default()
    };
    let mut doomed = Host::start(&redis, &stub, options());
    let api = Api::default();
    stub.set_timing(30_000, 0);
    let sid = new_session(&api, &doomed).await;
    let (job, mid) = start_task(&api, &doomed, &sid).await;
    wait_for_state(&api, &doomed, &job, "active").await;
    wait_until("the task started", WAIT, || {
        store_event_types(redis.connection(), &sid, &mid).contains(&"task_started".to_owned())
    });
    doomed.kill();
    let rescuer = Host::start(&redis, &stub, options());
    let (status, reply) = api
        .send_delete(&rescuer.url(&format!("/api/job/{job}")))
        .await;
    assert_eq!(status, 202, "an active job's cancel is requested: {reply}");

    let record = api.wait_terminal_or_cancelled(&rescuer, &job, WAIT).await;
    assert_eq!(record["state"], "cancelled", "{record}");
    let message = message(&api, &rescuer, &mid).await;
    assert_eq!(message["status"], "error", "{message}");
    let tasks = message["tasks"].as_array().cloned().unwrap_or_default();
    assert!(
        tasks.iter().all(|task| task["status"] != "running"),
        "no task is left running: {message}"
    );
    let events = store_event_types(redis.connection(), &sid, &mid);
    assert_eq!(
        events.last().map(String::as_str),
        Some("message_end"),
        "{events:?}"
    );
}

/// The event types of a message's stream, oldest first.
fn store_event_types(mut connection: redis::Connection, sid: &str, mid: &str) -> Vec<String> {
    let key = format!("stream:session:{sid}:message:{mid}");
    stream_events(&mut connection, &key)
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect()
}
