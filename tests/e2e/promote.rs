//! Promoting a delayed job over the admin API (BullMQ's `job.promote()`), and
//! reading a job's payload as an admin: a real host, Redis and the stub model.

use serde_json::json;
use spool::stub::Fault;

use crate::reliability::{WAIT, submit_chat, wait_for_state};
use crate::support::*;

/// A retry an hour away: only a promotion runs the job within the test.
const FAR_RETRY: &str =
    "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 3600000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_is_promoted_and_runs_at_once_keeping_its_attempts() {
    let stack = Stack::start(HostOptions {
        config: FAR_RETRY.into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    stub.inject([Fault {
        status: Some(500),
        ..Fault::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(api, host, "promote me").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(api, host, &id, "delayed").await;
    let (_, before) = api.get(&host.url(&format!("/api/job/{id}"))).await;

    // Someone without the admin role may not.
    let submitter_key = {
        let (status, created) = api
            .post(&host.url("/admin/keys"), &json!({"role": "submitter"}))
            .await;
        assert_eq!(status, 201, "{created}");
        created["key"].as_str().expect("key").to_owned()
    };
    let submitter = Api::with_key(Some(&submitter_key));
    let promote = format!("/api/queues/chat/jobs/{id}/promote");
    let (status, reply) = submitter.post(&host.url(&promote), &json!({})).await;
    assert_eq!(status, 403, "{reply}");
    let (_, still) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(still["state"], "delayed", "{still}");

    let (status, reply) = api.post(&host.url(&promote), &json!({})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["state"], "waiting", "{reply}");
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(
        job["state"], "completed",
        "ran long before its retry time: {job}"
    );
    assert_eq!(job["attempts"], 2, "the failed attempt still counts: {job}");
    assert_eq!(job["class"], before["class"], "{job}");
    assert_eq!(job["priority"], before["priority"], "{job}");

    // The promotion is in the job's event stream, as a queued event.
    let events = stream_events(&mut stack.redis.connection(), &format!("job_events:{id}"));
    assert!(
        events
            .iter()
            .any(|(kind, data)| kind == "task_queued" && data["promoted"] == true),
        "{events:?}"
    );

    // A finished job is not delayed: 409 naming its state.
    let (status, reply) = api.post(&host.url(&promote), &json!({})).await;
    assert_eq!(status, 409, "{reply}");
    assert_eq!(reply["error"]["code"], "not_delayed", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("completed"),
        "{reply}"
    );

    let (status, reply) = api
        .post(&host.url("/api/queues/chat/jobs/nope/promote"), &json!({}))
        .await;
    assert_eq!(status, 404, "{reply}");
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/nope/jobs/{id}/promote")),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reads_a_jobs_payload_and_a_submitter_cannot() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack { host, api, .. } = &stack;
    let (_, reply) = submit_chat(api, host, "hello payload").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    let path = format!("/api/queues/chat/jobs/{id}/payload");
    let (status, body) = api.get(&host.url(&path)).await;
    assert_eq!(status, 200, "{body}");
    // The chat body minus what the host takes for itself: the handler's payload.
    assert_eq!(body["prompt"], "hello payload", "{body}");

    let (status, created) = api
        .post(&host.url("/admin/keys"), &json!({"role": "submitter"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let submitter = Api::with_key(Some(created["key"].as_str().expect("key")));
    let (status, body) = submitter.get(&host.url(&path)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = Api::with_key(None).get(&host.url(&path)).await;
    assert_eq!(status, 401, "{body}");
    // The job view every role reads does not carry it.
    let (_, view) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    assert!(view.get("payload").is_none(), "{view}");
    let (status, body) = api
        .get(&host.url("/api/queues/chat/jobs/nope/payload"))
        .await;
    assert_eq!(status, 404, "{body}");
}
