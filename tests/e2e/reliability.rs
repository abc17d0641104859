//! Reliable delivery under faults (issue: reliability): killed workers, a killed
//! Redis, failing guests, dead letters, SIGTERM under load, retention, cancel,
//! and Redis outages. Real processes throughout.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::stub::Fault;

use crate::support::*;

pub const WAIT: Duration = Duration::from_secs(90);

pub async fn submit_chat(api: &Api, host: &Host, prompt: &str) -> (u16, Value) {
    api.post(
        &host.url("/api/chat"),
        &json!({"userId": "u", "prompt": prompt}),
    )
    .await
}

/// Every job finished once: one stored result, one final event, and the
/// result is the answer to that job's own prompt (not another job's).
async fn assert_completed_once(api: &Api, host: &Host, redis: &Redis, ids: &[String]) {
    for id in ids {
        let job = api.wait_terminal(host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
        let (_, page) = api.get(&host.url(&format!("/api/job/{id}/events"))).await;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let completions = events
            .iter()
            .filter(|e| e["event_type"] == "task_completed")
            .count();
        assert_eq!(
            completions, 1,
            "job {id} has {completions} completion events"
        );
        let payload: String = redis::cmd("HGET")
            .arg(format!("spool:job:{id}"))
            .arg("payload")
            .query(&mut redis.connection())
            .expect("HGET payload");
        let payload: Value = serde_json::from_str(&payload).expect("payload is JSON");
        let prompt = payload["prompt"]
            .as_str()
            .expect("a chat payload has a prompt");
        assert_eq!(
            job["result"]["response"],
            expected_chat_response(prompt, 0),
            "{job}"
        );
    }
}

fn count_events(pages: &[Value], event_type: &str) -> usize {
    pages
        .iter()
        .flat_map(|p| p["events"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["event_type"] == event_type)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_mid_run_loses_nothing_and_no_job_completes_twice() {
    let redis = Redis::start();
    let stub = stub().await;
    stub.set_timing(20, 0);
    let options = HostOptions {
        concurrency: 4,
        workers: "visibility_timeout_ms = 1500".into(),
        ..Default::default()
    };
    let mut doomed = Host::start(&redis, &stub, options.clone());
    let survivor = Host::start(&redis, &stub, options);
    let api = Api::default();
    let mut ids = Vec::new();
    for i in 0..500 {
        let host = if i % 2 == 0 { &doomed } else { &survivor };
        let (status, reply) = submit_chat(&api, host, &format!("job {i}")).await;
        assert_eq!(status, 202, "{reply}");
        ids.push(reply["jobId"].as_str().unwrap_or_default().to_owned());
    }
    loop {
        let (_, stats) = api.get(&survivor.url("/api/queue/stats")).await;
        if stats["completed"].as_u64().unwrap_or(0) >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    doomed.kill(); // SIGKILL, with jobs in flight
    assert_completed_once(&api, &survivor, &redis, &ids).await;
    let mut pages = Vec::new();
    for id in &ids {
        pages.push(
            api.get(&survivor.url(&format!("/api/job/{id}/events")))
                .await
                .1,
        );
    }
    assert!(
        count_events(&pages, "task_requeued") > 0,
        "the killed host's jobs in flight were recovered"
    );
}

/// Submits continuously until `stop_after` submissions; returns (accepted job ids with the instant
/// of their 2xx, non-2xx count).
async fn submit_through_outage(
    api: &Api,
    host: &Host,
    count: usize,
    pause: Duration,
) -> (Vec<(String, Instant)>, usize) {
    let (mut accepted, mut refused) = (Vec::new(), 0);
    for i in 0..count {
        let (status, reply) = submit_chat(api, host, &format!("job {i}")).await;
        if status == 202 {
            accepted.push((
                reply["jobId"].as_str().unwrap_or_default().to_owned(),
                Instant::now(),
            ));
        } else {
            assert_eq!(
                reply["error"]["code"], "redis_unavailable",
                "an outage is a JSON 503: {reply}"
            );
            refused += 1;
        }
        tokio::time::sleep(pause).await;
    }
    (accepted, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_appendfsync_always_every_accepted_job_survives_redis_being_killed() {
    let mut redis = Redis::start_with_fsync("always");
    let stub = stub().await;
    stub.set_timing(5, 0);
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            workers: "visibility_timeout_ms = 2000".into(),
            ..Default::default()
        },
    );
    let api = Api::default();
    let (before, _) = submit_through_outage(&api, &host, 150, Duration::from_millis(2)).await;
    redis.kill_and_restart(); // SIGKILL, then AOF replay on the same directory
    let (after, _) = submit_through_outage(&api, &host, 50, Duration::from_millis(2)).await;
    let ids: Vec<String> = before.into_iter().chain(after).map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 200, "Redis was back before the next submission");
    assert_completed_once(&api, &host, &redis, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_appendfsync_everysec_only_the_last_two_seconds_of_accepted_jobs_may_be_lost() {
    // The documented window (README, "Durability"): everysec fsyncs once a second,
    // so a SIGKILL of redis-server can lose writes acknowledged in the last ~1-2 s.
    let mut redis = Redis::start_with_fsync("everysec");
    let stub = stub().await;
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            workers: "visibility_timeout_ms = 2000".into(),
            ..Default::default()
        },
    );
    let api = Api::default();
    let (accepted, _) = submit_through_outage(&api, &host, 120, Duration::from_millis(25)).await; // ~3 s of traffic
    let killed_at = Instant::now();
    redis.kill_and_restart();
    let window = Duration::from_secs(2);
    let (mut lost_in_window, mut old_enough) = (0, 0);
    for (id, accepted_at) in &accepted {
        let in_window = killed_at.duration_since(*accepted_at) < window;
        let (status, _) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        if in_window && status == 404 {
            lost_in_window += 1;
            continue;
        }
        if !in_window {
            old_enough += 1;
        }
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(
            job["state"],
            "completed",
            "accepted {:?} before the kill: {job}",
            killed_at.duration_since(*accepted_at)
        );
    }
    assert!(
        old_enough > 0,
        "some jobs were accepted more than {window:?} before the kill"
    );
    println!(
        "everysec: {lost_in_window} of {} jobs accepted in the last {window:?} before SIGKILL were lost",
        accepted.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_always_fails_is_dead_lettered_after_three_attempts_and_replay_runs_it_again() {
    let redis = Redis::start();
    let stub = stub().await;
    let config =
        "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 3\nbackoff_ms = 100\n".to_owned();
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config,
            ..Default::default()
        },
    );
    stub.inject([Fault {
        status: Some(503),
        times: 3,
        ..Default::default()
    }])
    .expect("fault");
    let api = Api::default();
    let (_, reply) = submit_chat(&api, &host, "job doomed").await;
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("failed"), Some(3)),
        "{job}"
    );
    let history = job["attemptHistory"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(history.len(), 3, "{job}");
    assert!(
        history
            .iter()
            .all(|a| a["error"].as_str().is_some_and(|e| e.contains("503"))),
        "{history:?}"
    );

    let (status, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(status, 200);
    assert_eq!(dead["dead"][0]["jobId"], id.as_str(), "{dead}");
    assert_eq!(dead["dead"][0]["attempts"], 3);

    // Replay through the CLI; the stub answers normally now.
    let output = std::process::Command::new(SPOOL)
        .args(["dead", "replay", "chat", &id, "--url", &host.base])
        .output()
        .expect("run spool dead");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(
        job["result"]["response"],
        expected_chat_response("job doomed", 0)
    );
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(
        dead["dead"],
        json!([]),
        "replayed jobs leave the dead-letter queue"
    );

    // A reject is dead at once; purge empties the queue.
    stub.inject([Fault {
        status: Some(401),
        ..Default::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(&api, &host, "job unauthorised").await;
    let rejected = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = api.wait_terminal(&host, &rejected, WAIT).await;
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("failed"), Some(1)),
        "{job}"
    );
    let output = std::process::Command::new(SPOOL)
        .args(["dead", "list", "chat", "--url", &host.base])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&rejected));
    let (status, purged) = api.send_delete(&host.url("/api/queues/chat/dead")).await;
    assert_eq!((status, purged["purged"].as_u64()), (200, Some(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_jobs_in_flight_and_leaves_the_rest_to_another_instance() {
    let redis = Redis::start();
    let stub = stub().await;
    stub.set_timing(300, 0);
    let options = HostOptions {
        concurrency: 3,
        ..Default::default()
    };
    let mut leaving = Host::start(&redis, &stub, options.clone());
    let staying = Host::start(&redis, &stub, options);
    let api = Api::default();
    let (_, health) = api.get(&leaving.url("/health")).await;
    let leaving_instance = health["instance"].as_str().unwrap_or_default().to_owned();
    let mut ids = Vec::new();
    for i in 0..40 {
        let (_, reply) = submit_chat(&api, &leaving, &format!("job {i}")).await;
        ids.push(reply["jobId"].as_str().unwrap_or_default().to_owned());
    }
    // Wait until the leaving instance runs jobs, then ask it to stop.
    let mut in_flight = Vec::new();
    let looking_since = Instant::now();
    while in_flight.is_empty() {
        assert!(
            looking_since.elapsed() < WAIT,
            "the leaving instance never ran a job; log:\n{}",
            leaving.log_text()
        );
        for id in &ids {
            let (_, job) = api.get(&staying.url(&format!("/api/job/{id}"))).await;
            if job["state"] == "active"
                && job["worker"]
                    .as_str()
                    .is_some_and(|w| w.starts_with(&leaving_instance))
            {
                in_flight.push(id.clone());
            }
        }
    }
    leaving.signal(libc::SIGTERM);
    assert_eq!(
        leaving.wait_exit(Duration::from_secs(20)),
        Some(0),
        "clean exit; log:\n{}",
        leaving.log_text()
    );
    for id in &in_flight {
        let job = api.wait_terminal(&staying, id, WAIT).await;
        assert_eq!(job["state"], "completed");
        assert!(
            job["worker"]
                .as_str()
                .is_some_and(|w| w.starts_with(&leaving_instance)),
            "finished by the instance that ran it: {job}"
        );
    }
    assert_completed_once(&api, &staying, &redis, &ids).await;
    let workers: HashSet<String> = {
        let mut set = HashSet::new();
        for id in &ids {
            let (_, job) = api.get(&staying.url(&format!("/api/job/{id}"))).await;
            set.insert(
                job["worker"]
                    .as_str()
                    .unwrap_or_default()
                    .split("-w")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
        set
    };
    assert_eq!(
        workers.len(),
        2,
        "both instances did part of the work: {workers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_expire_after_their_retention_history_keeps_the_last_n_and_pending_entries_survive()
 {
    let redis = Redis::start();
    let stub = stub().await;
    let config = "[retention]\ncompleted_secs = 2\nfailed_secs = 4\nhistory = 5\n".to_owned();
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config,
            ..Default::default()
        },
    );
    let api = Api::default();

    // One long job stays pending while many others complete around it.
    stub.set_timing(1500, 0);
    let (_, reply) = submit_chat(&api, &host, "job long").await;
    let long = reply["jobId"].as_str().unwrap_or_default().to_owned();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stub.set_timing(0, 0);
    let mut quick = Vec::new();
    for i in 0..12 {
        let (_, reply) = submit_chat(&api, &host, &format!("job {i}")).await;
        quick.push(reply["jobId"].as_str().unwrap_or_default().to_owned());
    }
    for id in &quick {
        api.wait_terminal(&host, id, WAIT).await;
    }
    type PendingSummary = (
        u64,
        Option<String>,
        Option<String>,
        Option<Vec<(String, String)>>,
    );
    let pending: PendingSummary = redis::cmd("XPENDING")
        .arg("spool:q:{chat}:normal")
        .arg("spool-workers")
        .query(&mut redis.connection())
        .expect("XPENDING");
    assert_eq!(
        pending.0, 1,
        "only the long job's entry is pending, and it is: {pending:?}"
    );
    let job = api.wait_terminal(&host, &long, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");

    stub.inject([Fault {
        status: Some(401),
        ..Default::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(&api, &host, "job rejected").await;
    let failed = reply["jobId"].as_str().unwrap_or_default().to_owned();
    api.wait_terminal(&host, &failed, WAIT).await;

    let (_, history) = api
        .get(&host.url("/api/queues/chat/history?state=completed"))
        .await;
    assert_eq!(
        history["jobs"].as_array().map(Vec::len),
        Some(5),
        "history keeps the last 5: {history}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, _) = api.get(&host.url(&format!("/api/job/{}", quick[0]))).await;
    assert_eq!(status, 404, "completed jobs expire after 2 s");
    let (status, _) = api.get(&host.url(&format!("/api/job/{failed}"))).await;
    assert_eq!(status, 200, "failed jobs are kept longer");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (status, _) = api.get(&host.url(&format!("/api/job/{failed}"))).await;
    assert_eq!(status, 404, "failed jobs expire after 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_delayed_and_active_jobs_can_be_cancelled() {
    let redis = Redis::start();
    let stub = stub().await;
    // A retry due within a second: a cancel that did nothing would let it run.
    let config = "[queues.chat]\nhandler = \"chat\"\nbackoff_ms = 1000\n".to_owned();
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config,
            workers: "visibility_timeout_ms = 600".into(),
            ..Default::default()
        },
    );
    let api = Api::default();

    // Delayed: fails once, then waits a minute for its retry.
    stub.inject([Fault {
        status: Some(500),
        ..Default::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(&api, &host, "job delayed").await;
    let delayed = reply["jobId"].as_str().unwrap_or_default().to_owned();
    wait_for_state(&api, &host, &delayed, "delayed").await;

    // Waiting: the queue is paused.
    api.post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    let (_, reply) = submit_chat(&api, &host, "job waiting").await;
    let waiting = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let (_, reply) = submit_chat(&api, &host, "job kept").await;
    let kept = reply["jobId"].as_str().unwrap_or_default().to_owned();
    for id in [&delayed, &waiting] {
        let (status, body) = api.send_delete(&host.url(&format!("/api/job/{id}"))).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("cancelled")),
            "{body}"
        );
    }
    let calls_before = stub.stats().total;
    api.post(&host.url("/api/queues/chat/resume"), &json!({}))
        .await;
    let job = api.wait_terminal(&host, &kept, WAIT).await;
    assert_eq!(job["state"], "completed");
    // Past the latest the delayed job's retry could have come (1 s + 20 %).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        stub.stats().total,
        calls_before + 1,
        "cancelled jobs never ran"
    );
    let (_, delayed_job) = api.get(&host.url(&format!("/api/job/{delayed}"))).await;
    assert_eq!(delayed_job["state"], "cancelled", "{delayed_job}");

    // Active: the worker stops at its next heartbeat.
    stub.set_timing(5000, 0);
    let (_, reply) = submit_chat(&api, &host, "job active").await;
    let active = reply["jobId"].as_str().unwrap_or_default().to_owned();
    wait_for_state(&api, &host, &active, "active").await;
    let (status, body) = api
        .send_delete(&host.url(&format!("/api/job/{active}")))
        .await;
    assert_eq!(
        (status, body["cancel"].as_str()),
        (202, Some("requested")),
        "{body}"
    );
    let started = Instant::now();
    let job = api.wait_terminal_or_cancelled(&host, &active, WAIT).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "stopped well before the 5 s model call ended"
    );
    let (status, body) = api
        .send_delete(&host.url(&format!("/api/job/{kept}")))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_finished"))
    );
}

pub async fn wait_for_state(api: &Api, host: &Host, id: &str, state: &str) {
    let started = Instant::now();
    loop {
        let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        if job["state"] == state {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "job {id} never reached {state}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_the_api_answers_503_and_the_host_resumes_when_it_is_back() {
    let mut redis = Redis::start();
    let stub = stub().await;
    let host = Host::start(&redis, &stub, HostOptions::default());
    let api = Api::default();
    redis.kill();
    let started = Instant::now();
    let (status, body) = submit_chat(&api, &host, "job during outage").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("redis_unavailable")),
        "{body}"
    );
    let (status, body) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(status, 503, "{body}");
    let (status, health) = api.get(&host.url("/health")).await;
    assert_eq!(
        (status, health["redis"].as_str()),
        (503, Some("unavailable"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "answers come promptly, not after hanging"
    );
    redis.kill_and_restart();
    let mut accepted = None;
    for _ in 0..100 {
        let (status, reply) = submit_chat(&api, &host, "job after outage").await;
        if status == 202 {
            accepted = reply["jobId"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = accepted.expect("submissions work again once Redis is back");
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(
        job["result"]["response"],
        expected_chat_response("job after outage", 0)
    );
}

/// Follow-up jobs are queued under ids derived from their parent's, so a parent
/// that runs twice (recovery after a crash) must find its follow-up in place:
/// a second submission under a taken id is refused and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_is_queued_once_however_often_it_is_submitted() {
    use spool_core::queue::{NewJob, Queue, SubmitError};
    use spool_runtime::PriorityClass;

    let redis = Redis::start();
    let connection = redis::Client::open(redis.url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis");
    let queue = Queue::new(connection.into());
    let keys = queue.keys("documents");
    queue.ensure_groups(&keys).await.expect("groups");
    let job = |payload: &'static str| NewJob {
        id: "parent.1",
        queue: &keys,
        class: PriorityClass::Normal,
        score: 5,
        priority: 5,
        user_id: "u",
        user_tier: "",
        payload,
        message: None,
        handler: "pipeline",
        max_waiting: 100,
        parent: None,
    };
    queue
        .submit(job(r#"{"run": 1}"#))
        .await
        .expect("first submission");
    let again = queue.submit(job(r#"{"run": 2}"#)).await;
    assert!(matches!(again, Err(SubmitError::Duplicate)), "{again:?}");
    let record = queue.job("parent.1").await.expect("read").expect("job");
    assert_eq!(
        record.payload, r#"{"run": 1}"#,
        "the first submission stands"
    );
    let entries: u64 = redis::cmd("XLEN")
        .arg(keys.stream(PriorityClass::Normal))
        .query(&mut redis.connection())
        .expect("xlen");
    assert_eq!(entries, 1);
    let events: u64 = redis::cmd("XLEN")
        .arg("job_events:parent.1")
        .query(&mut redis.connection())
        .expect("xlen");
    assert_eq!(events, 1, "one task_queued event");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submission_under_the_same_key_returns_the_same_job_never_a_second() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let chat = host.url("/api/chat");
    let body = json!({"userId": "u", "prompt": "once only"});

    // A client that timed out retries: ten submissions race under one key.
    let replies =
        futures_util::future::join_all((0..10).map(|_| api.post_keyed(&chat, "order-42", &body)))
            .await;
    let created = replies.iter().filter(|(status, _)| *status == 202).count();
    assert_eq!(created, 1, "{replies:?}");
    for (status, reply) in &replies {
        assert!(matches!(status, 200 | 202), "{status} {reply}");
        assert_eq!(reply["jobId"], "order-42", "{reply}");
    }
    let job = api
        .wait_terminal(host, "order-42", Duration::from_secs(20))
        .await;
    assert_eq!(job["state"], "completed", "{job}");
    // After it finished, the same key still names it (while it is kept).
    let (status, again) = api.post_keyed(&chat, "order-42", &body).await;
    assert_eq!((status, again["state"].as_str()), (200, Some("completed")));
    assert_eq!(again["duplicate"], true);

    // BullMQ's form: a `jobId` field, here on the generic route.
    let generic = host.url("/api/queues/chat/jobs");
    let fielded = json!({"jobId": "order-43", "payload": {"prompt": "hi"}, "userId": "u"});
    let (first, _) = api.post(&generic, &fielded).await;
    let (second, reply) = api.post(&generic, &fielded).await;
    assert_eq!((first, second), (202, 200), "{reply}");
    assert_eq!(reply["jobId"], "order-43");

    // One job per key: nothing else was ever queued.
    let jobs: Vec<String> = redis::cmd("KEYS")
        .arg("spool:job:*")
        .query::<Vec<String>>(&mut redis.connection())
        .expect("KEYS")
        .into_iter()
        .filter(|key| key.matches(':').count() == 2)
        .collect();
    let mut jobs = jobs;
    jobs.sort();
    assert_eq!(jobs, ["spool:job:order-42", "spool:job:order-43"]);

    // Refusals: a bad key, header and field that disagree.
    let (status, bad) = api.post_keyed(&chat, "no:colons", &body).await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (422, Some("invalid_job_id"))
    );
    let (status, bad) = api
        .post_keyed(
            &chat,
            "a",
            &json!({"userId": "u", "prompt": "x", "jobId": "b"}),
        )
        .await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (409, Some("conflicting_job_id"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_job_whose_record_vanished_is_dropped_loudly_not_silently() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    api.post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    let (_, reply) = submit_chat(api, host, "evicted").await;
    let id = reply["jobId"].as_str().expect("job id").to_owned();
    // What an eviction (or a hand-made DEL) does to a queued job.
    let _: () = redis::cmd("DEL")
        .arg(format!("spool:job:{id}"))
        .query(&mut redis.connection())
        .expect("DEL");
    api.post(&host.url("/api/queues/chat/resume"), &json!({}))
        .await;
    wait_until("the entry is dropped and counted", WAIT, || {
        redis::cmd("GET")
            .arg("spool:q:{chat}:count:dropped")
            .query::<Option<u64>>(&mut redis.connection())
            .ok()
            .flatten()
            == Some(1)
    });
    wait_until("the drop is logged with the job id", WAIT, || {
        let log = host.log_text();
        log.contains("record is gone") && log.contains(&id)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_is_restarted_and_the_instance_reports_itself_degraded() {
    let stack = Stack::start(HostOptions {
        // One worker: if it were lost, nothing would run again.
        concurrency: 1,
        workers: "visibility_timeout_ms = 1500".into(),
        env: vec![("SPOOL_FAULT_PANIC_ON_JOB".into(), "boom".into())],
        ..Default::default()
    })
    .await;
    let Stack { host, api, .. } = &stack;
    let (status, _) = api
        .post_keyed(
            &host.url("/api/chat"),
            "boom",
            &json!({"userId": "u", "prompt": "panic on me"}),
        )
        .await;
    assert_eq!(status, 202);
    let (_, reply) = submit_chat(api, host, "after the panic").await;
    let after = reply["jobId"].as_str().expect("job id").to_owned();

    let job = api.wait_terminal(host, &after, WAIT).await;
    assert_eq!(job["state"], "completed", "{job}");
    // The panicked attempt is recovered like a crashed worker's.
    let boom = api.wait_terminal(host, "boom", WAIT).await;
    assert_eq!(
        (boom["state"].as_str(), boom["attempts"].as_u64()),
        (Some("completed"), Some(2))
    );
    let (status, health) = api.get(&host.url("/health")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (health["status"].as_str(), health["workerRestarts"].as_u64()),
        (Some("degraded"), Some(1)),
        "{health}"
    );
}
