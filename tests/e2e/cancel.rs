//! Once a cancel is accepted, the job ends cancelled: it is stopped at once
//! (not at its next heartbeat), it is not retried, it does not complete, and a
//! recovered attempt does not restart it.

use serde_json::Value;
use spool::stub::Fault;

use crate::reliability::{WAIT, submit_chat, wait_for_state};
use crate::support::*;

/// The names of a job's events, oldest first.
fn event_names(redis: &Redis, id: &str) -> Vec<String> {
    stream_events(&mut redis.connection(), &format!("job_events:{id}"))
        .into_iter()
        .map(|(event_type, _)| event_type)
        .collect()
}

fn assert_ended_cancelled(redis: &Redis, job: &Value) {
    let id = job["id"].as_str().expect("job id");
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["attempts"], 1, "never run again: {job}");
    let names = event_names(redis, id);
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    assert_eq!(count("task_started"), 1, "{names:?}");
    assert_eq!(count("task_completed"), 0, "{names:?}");
    assert_eq!(count("task_cancelled"), 1, "{names:?}");
    assert_eq!(
        names.last().map(String::as_str),
        Some("task_cancelled"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_job_is_stopped_at_once_and_ends_cancelled() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host,
        api,
        stub,
        redis,
    } = &stack;
    // One model call takes 3 s; the heartbeat comes every 10 s.
    stub.set_timing(3000, 0);
    let (_, reply) = submit_chat(api, host, "long answer").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(api, host, &id, "active").await;
    let (status, _) = api.send_delete(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(status, 202);
    let job = api.wait_terminal_or_cancelled(host, &id, WAIT).await;
    assert_ended_cancelled(redis, &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_signal_is_lost_still_wins_over_completion_and_retry() {
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 50\n";
    let stack = Stack::start(HostOptions {
        config: config.into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host,
        api,
        stub,
        redis,
    } = &stack;
    stub.set_timing(1000, 0);
    // The flag a cancel sets, without its announcement (as if the Pub/Sub
    // message were lost): the attempt runs to its end and must not stand.
    let flag = |id: &str| {
        let _: () = redis::cmd("HSET")
            .arg(format!("spool:job:{id}"))
            .arg("cancel")
            .arg(1)
            .query(&mut redis.connection())
            .expect("HSET");
    };

    let (_, reply) = submit_chat(api, host, "would complete").await;
    let completes = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(api, host, &completes, "active").await;
    flag(&completes);
    let job = api.wait_terminal_or_cancelled(host, &completes, WAIT).await;
    assert_ended_cancelled(redis, &job);

    stub.inject([Fault {
        status: Some(503),
        ..Default::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(api, host, "would retry").await;
    let retries = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(api, host, &retries, "active").await;
    flag(&retries);
    let job = api.wait_terminal_or_cancelled(host, &retries, WAIT).await;
    assert_ended_cancelled(redis, &job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_job_whose_worker_vanished_is_not_restarted_by_recovery() {
    let redis = Redis::start();
    let stub = stub().await;
    stub.set_timing(3000, 0);
    let options = HostOptions {
        workers: "visibility_timeout_ms = 1500".into(),
        ..Default::default()
    };
    let first = Host::start(&redis, &stub, options.clone());
    let api = Api::default();
    let (_, reply) = submit_chat(&api, &first, "interrupted").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    wait_for_state(&api, &first, &id, "active").await;

    // Its worker stops answering; a second instance takes over the queue.
    first.signal(libc::SIGSTOP);
    let second = Host::start(&redis, &stub, options);
    let (status, _) = api
        .send_delete(&second.url(&format!("/api/job/{id}")))
        .await;
    assert_eq!(status, 202);
    let job = api.wait_terminal_or_cancelled(&second, &id, WAIT).await;
    first.signal(libc::SIGCONT);
    assert_ended_cancelled(&redis, &job);
}
