//! Batched claims and outcomes (issue 16, fewer round trips per job): one
//! claim call starts a job for each waiting worker, in strict priority order,
//! and one finish call records a batch of outcomes, each exactly as if it were
//! alone, one outcome that cannot be written failing alone; one settle call
//! does both, the outcomes first, for the workers those outcomes freed. An
//! attempt's writes still unsent when it ended go with its outcome. A queue
//! a claim found empty is not asked again until work is announced for it.

use spool_core::queue::{
    Claimed, ClaimedJob, Finish, JobState, JobWrite, NewJob, Outcome, Queue, QueueKeys, Retention,
};
use spool_runtime::{FailureKind, PriorityClass};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::reliability::WAIT;
use crate::support::*;
use spool::stub::StubServer;

const NOOP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/noop.wasm"));

const RETENTION: Retention = Retention {
    completed_secs: 3600,
    failed_secs: 3600,
    history: 100,
    message_secs: 3600,
    message_events: 1000,
};

async fn queue_on(redis: &Redis, name: &str) -> (Queue, QueueKeys) {
    let connection = redis::Client::open(redis.url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis");
    let queue = Queue::new(connection.into());
    let keys = queue.keys(name);
    queue.ensure_groups(&keys).await.expect("groups");
    (queue, keys)
}

async fn submit(queue: &Queue, keys: &QueueKeys, id: &str, class: PriorityClass) {
    queue
        .submit(NewJob {
            id,
            queue: keys,
            class,
            score: 5,
            priority: 5,
            user_id: "u",
            user_tier: "",
            payload: "{}",
            message: None,
            handler: "noop",
            max_waiting: 1000,
            parent: None,
        })
        .await
        .expect("submit");
}

async fn claim(queue: &Queue, keys: &QueueKeys, consumers: &[&str]) -> Vec<ClaimedJob> {
    match queue
        .claim_many(keys, consumers, spool_core::queue::now_ms(), 0)
        .await
        .expect("claim")
    {
        Claimed::Jobs { jobs, dropped, .. } => {
            assert!(dropped.is_empty(), "nothing dropped: {dropped:?}");
            jobs
        }
        Claimed::Paused | Claimed::Again => panic!("the queue is neither paused nor new"),
    }
}

/// A completed attempt's outcome.
fn completed() -> Outcome {
    Outcome::Completed {
        result: "{}".into(),
        blocks: "[]".into(),
        handler_version: "v1".into(),
        follow_ups: Vec::new(),
    }
}

/// Jobs `ids` (normal class) submitted and claimed by workers w0, w1, ...
async fn running(queue: &Queue, keys: &QueueKeys, ids: &[&str]) -> Vec<ClaimedJob> {
    for id in ids {
        submit(queue, keys, id, PriorityClass::Normal).await;
    }
    let workers: Vec<String> = (0..ids.len()).map(|n| format!("w{n}")).collect();
    let workers: Vec<&str> = workers.iter().map(String::as_str).collect();
    let jobs = claim(queue, keys, &workers).await;
    assert_eq!(jobs.len(), ids.len());
    jobs
}

/// Job `id` was handed to another attempt meanwhile: its entry changed.
fn hand_to_another_attempt(redis: &Redis, id: &str) {
    set_job_field(redis, id, "entry", "0-1");
}

/// A cancel of job `id` was accepted while it ran.
fn accept_cancel(redis: &Redis, id: &str) {
    set_job_field(
        redis,
        id,
        "cancel",
        &spool_core::queue::now_ms().to_string(),
    );
}

fn set_job_field(redis: &Redis, id: &str, field: &str, value: &str) {
    redis::cmd("HSET")
        .arg(format!("spool:job:{id}"))
        .arg(field)
        .arg(value)
        .query::<()>(&mut redis.connection())
        .expect("HSET");
}

fn event_types(redis: &Redis, id: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("job_events:{id}"))
        .arg("-")
        .arg("+")
        .query(&mut redis.connection())
        .expect("XRANGE");
    entries
        .into_iter()
        .filter_map(|(_, fields)| {
            fields
                .into_iter()
                .find(|(name, _)| name == "event_type")
                .map(|(_, value)| value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_claim_starts_a_job_for_each_waiting_worker_in_priority_order() {
    let redis = Redis::start();
    let (queue, keys) = queue_on(&redis, "batch").await;
    for (id, class) in [
        ("low-1", PriorityClass::Low),
        ("normal-1", PriorityClass::Normal),
        ("high-1", PriorityClass::High),
        ("normal-2", PriorityClass::Normal),
        ("low-2", PriorityClass::Low),
        ("high-2", PriorityClass::High),
        ("normal-3", PriorityClass::Normal),
    ] {
        submit(&queue, &keys, id, class).await;
    }

    let workers = ["w0", "w1", "w2", "w3", "w4"];
    let jobs = claim(&queue, &keys, &workers).await;
    let ids: Vec<&str> = jobs.iter().map(|j| j.record.id.as_str()).collect();
    assert_eq!(
        ids,
        ["high-1", "high-2", "normal-1", "normal-2", "normal-3"],
        "high before normal, first in first out within a class"
    );
    for (job, worker) in jobs.iter().zip(workers) {
        assert_eq!(
            job.record.worker.as_deref(),
            Some(worker),
            "{}",
            job.record.id
        );
        assert_eq!(job.record.state, JobState::Active);
        assert_eq!(job.record.attempts, 1);
        let stored = queue
            .job(&job.record.id)
            .await
            .expect("job")
            .expect("record");
        assert_eq!(stored.worker.as_deref(), Some(worker));
        assert_eq!(stored.started_at, job.record.started_at);
        assert_eq!(stored.first_started_at, job.record.started_at);
        assert_eq!(
            event_types(&redis, &job.record.id),
            ["task_queued", "task_started"]
        );
    }

    // Three workers, two jobs left: the third is told the queue is dry.
    let rest = claim(&queue, &keys, &["w5", "w6", "w7"]).await;
    let ids: Vec<&str> = rest.iter().map(|j| j.record.id.as_str()).collect();
    assert_eq!(ids, ["low-1", "low-2"]);
    assert!(claim(&queue, &keys, &["w8"]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_finish_call_records_each_outcome_as_if_alone_and_a_bad_one_fails_alone() {
    let redis = Redis::start();
    let (queue, keys) = queue_on(&redis, "batch").await;
    let jobs = running(
        &queue,
        &keys,
        &["done", "broken", "retried", "poisoned", "lost"],
    )
    .await;
    // `poisoned`'s record is replaced by a string, so writing its outcome
    // fails; `lost` was handed to another attempt meanwhile.
    redis::cmd("SET")
        .arg("spool:job:poisoned")
        .arg("not a hash")
        .query::<()>(&mut redis.connection())
        .expect("SET");
    hand_to_another_attempt(&redis, "lost");
    // A record that lost its submission time: its response is not averaged.
    redis::cmd("HDEL")
        .arg("spool:job:broken")
        .arg("created_at")
        .query::<()>(&mut redis.connection())
        .expect("HDEL");

    let outcomes = [
        completed(),
        Outcome::Failed {
            error: "broken for good".into(),
            kind: FailureKind::Rejected,
        },
        Outcome::Retry {
            error: "try again".into(),
            kind: FailureKind::RetryRequested,
            retry_at_ms: spool_core::queue::now_ms() + 60_000,
        },
        completed(),
        completed(),
    ];
    let prepared: Vec<_> = jobs
        .iter()
        .zip(&outcomes)
        .map(|(job, outcome)| queue.prepare_outcome(job, outcome, RETENTION))
        .collect();
    let finished = queue.finish_many(&prepared).await.expect("finish");
    let finished: Vec<Option<Finish>> = finished.into_iter().map(Result::ok).collect();
    assert_eq!(
        finished,
        [
            Some(Finish::Recorded),
            Some(Finish::Recorded),
            Some(Finish::Recorded),
            None,
            Some(Finish::Lost),
        ],
        "done, broken and retried recorded; poisoned failed alone; lost refused"
    );

    let state = |id: &'static str| {
        let queue = queue.clone();
        async move { queue.job(id).await.expect("job").map(|job| job.state) }
    };
    assert_eq!(state("done").await, Some(JobState::Completed));
    assert_eq!(state("broken").await, Some(JobState::Failed));
    assert_eq!(state("retried").await, Some(JobState::Delayed));
    assert_eq!(
        state("lost").await,
        Some(JobState::Active),
        "left to its owner"
    );
    assert_eq!(
        event_types(&redis, "done"),
        ["task_queued", "task_started", "task_completed"]
    );
    let stats = queue.stats(&keys).await.expect("stats");
    assert_eq!((stats.completed, stats.failed, stats.dead), (1, 1, 1));
    assert_eq!(stats.delayed, 1);

    // The batch's requests were counted once each, the retry not at all.
    let monitoring = queue.monitoring(&keys).await.expect("monitoring");
    let minute = monitoring.windows[0];
    assert_eq!(
        (minute.completed, minute.failed, minute.cancelled),
        (1, 1, 0)
    );
    assert_eq!(minute.response_count, 1, "broken had no submission time");
    assert_eq!(minute.processing_count, 2);
    // The batch wrote one bucket, which expires, and only sums to it.
    let buckets: Vec<String> = redis::cmd("KEYS")
        .arg("spool:q:{batch}:monitor:*")
        .query(&mut redis.connection())
        .expect("KEYS");
    assert_eq!(buckets.len(), 1, "{buckets:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&buckets[0])
        .query(&mut redis.connection())
        .expect("TTL");
    assert!(ttl > 3600, "the bucket outlives the longest window: {ttl}");
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&buckets[0])
        .query(&mut redis.connection())
        .expect("HKEYS");
    // A sum of 0 ms (a job faster than the clock) is not written.
    let mut counted: Vec<&str> = fields
        .iter()
        .map(String::as_str)
        .filter(|field| !["response_ms", "processing_ms"].contains(field))
        .collect();
    counted.sort_unstable();
    assert_eq!(
        counted,
        ["completed", "failed", "response_missing"],
        "no count of its own beside each sum: {fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_settle_call_records_outcomes_then_claims_the_freed_workers_next_jobs() {
    let redis = Redis::start();
    let (queue, keys) = queue_on(&redis, "batch").await;
    let jobs = running(&queue, &keys, &["done", "retried", "cancelled"]).await;
    // Waiting now: two normal jobs and, queued later, a high one.
    for (id, class) in [
        ("next-1", PriorityClass::Normal),
        ("next-2", PriorityClass::Normal),
        ("urgent", PriorityClass::High),
    ] {
        submit(&queue, &keys, id, class).await;
    }
    accept_cancel(&redis, "cancelled");

    let completed = completed();
    let retry = Outcome::Retry {
        error: "try again".into(),
        kind: FailureKind::RetryRequested,
        retry_at_ms: spool_core::queue::now_ms() + 60_000,
    };
    let prepared = [
        queue.prepare_outcome(&jobs[0], &completed, RETENTION),
        queue.prepare_outcome(&jobs[1], &retry, RETENTION),
        queue.prepare_outcome(&jobs[2], &completed, RETENTION),
    ];
    let settled = queue
        .settle(
            &keys,
            &["w9"],
            &prepared,
            &[Some("w0"), None, Some("w2")],
            spool_core::queue::now_ms(),
            0,
        )
        .await
        .expect("settle");
    let finished: Vec<Option<Finish>> = settled.finished.into_iter().map(Result::ok).collect();
    assert_eq!(
        finished,
        [
            Some(Finish::Recorded),
            Some(Finish::Recorded),
            Some(Finish::CancelRequested)
        ],
        "a cancelled job's outcome is refused, the others recorded"
    );
    let Some(Ok(Claimed::Jobs { jobs: next, .. })) = settled.claimed else {
        panic!("the settle call claimed jobs");
    };
    let handed: Vec<(&str, Option<&str>)> = next
        .iter()
        .map(|job| (job.record.id.as_str(), job.record.worker.as_deref()))
        .collect();
    assert_eq!(
        handed,
        [("urgent", Some("w9")), ("next-1", Some("w0"))],
        "the worker that asked alone first, then the one whose outcome freed it, in \
         priority order; w1 did not ask and w2 must record its cancel first"
    );
    assert_eq!(
        queue.job("done").await.expect("job").map(|job| job.state),
        Some(JobState::Completed)
    );
    assert_eq!(
        queue
            .job("cancelled")
            .await
            .expect("job")
            .map(|job| job.state),
        Some(JobState::Active),
        "nothing written for it"
    );
    // Acknowledged: only the entries of the jobs still running are pending.
    let pending: u64 = redis::cmd("XPENDING")
        .arg(keys.stream(PriorityClass::Normal))
        .arg(spool_core::queue::GROUP)
        .query::<Vec<redis::Value>>(&mut redis.connection())
        .expect("XPENDING")
        .into_iter()
        .next()
        .and_then(|count| redis::from_redis_value(count).ok())
        .expect("a count");
    assert_eq!(pending, 2, "`cancelled` and `next-1`");

    // The retried attempt left its record; the completed one is its record.
    let history = queue.attempt_history("retried").await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["outcome"], "delayed");
    assert_eq!(history[0]["error"], "try again");
    let history = queue.attempt_history("done").await.expect("history");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["outcome"], "completed");
    assert_eq!(history[0]["worker"], "w0");
    assert_eq!(history[0]["attempt"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempts_last_writes_land_before_its_outcome_unless_it_lost_the_job_or_was_cancelled() {
    let redis = Redis::start();
    let (queue, keys) = queue_on(&redis, "batch").await;
    let jobs = running(&queue, &keys, &["ends", "lost", "cancelled"]).await;
    hand_to_another_attempt(&redis, "lost");
    accept_cancel(&redis, "cancelled");

    let writes = [
        JobWrite::Event {
            event_type: "text_delta".into(),
            data: r#"{"text":"hi"}"#.into(),
        },
        JobWrite::Progress {
            percent: 90,
            step: "parsing answer".into(),
        },
        JobWrite::SetState {
            key: "seen".into(),
            value: "yes".into(),
        },
    ];
    let completed = completed();
    let prepared: Vec<_> = jobs
        .iter()
        .map(|job| {
            queue
                .prepare_outcome(job, &completed, RETENTION)
                .with_writes(&writes)
        })
        .collect();
    let finished: Vec<Option<Finish>> = queue
        .finish_many(&prepared)
        .await
        .expect("finish")
        .into_iter()
        .map(Result::ok)
        .collect();
    assert_eq!(
        finished,
        [
            Some(Finish::Recorded),
            Some(Finish::Lost),
            Some(Finish::CancelRequested)
        ]
    );

    // The writes landed in order, before the last event.
    assert_eq!(
        event_types(&redis, "ends"),
        [
            "task_queued",
            "task_started",
            "text_delta",
            "task_progress",
            "task_completed"
        ]
    );
    let state = |job: &ClaimedJob| -> Option<String> {
        redis::cmd("HGET")
            .arg(&job.keys.state)
            .arg("seen")
            .query(&mut redis.connection())
            .expect("HGET")
    };
    assert_eq!(state(&jobs[0]).as_deref(), Some("yes"));

    // The lost attempt's writes were refused and counted, as fenced writes are.
    assert_eq!(event_types(&redis, "lost"), ["task_queued", "task_started"]);
    assert_eq!(state(&jobs[1]), None);
    let refused: u64 = redis::cmd("GET")
        .arg(keys.counter("fenced"))
        .query(&mut redis.connection())
        .expect("GET");
    assert_eq!(refused, 3);

    // Recorded as cancelled, the cancelled attempt's writes do not land.
    let cancelled = queue
        .prepare_outcome(&jobs[2], &Outcome::Cancelled, RETENTION)
        .with_writes(&writes);
    let recorded = queue.finish_many(&[cancelled]).await.expect("finish");
    assert!(matches!(recorded.as_slice(), [Ok(Finish::Recorded)]));
    let events = event_types(&redis, "cancelled");
    assert!(
        !events
            .iter()
            .any(|e| e == "text_delta" || e == "task_progress"),
        "no write after a cancel: {events:?}"
    );
    assert_eq!(state(&jobs[2]), None);
    let cancelled = queue.job("cancelled").await.expect("job").expect("record");
    assert_eq!(cancelled.state, JobState::Cancelled);
    assert_eq!(cancelled.progress, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_whose_record_lost_its_id_is_dropped_and_the_next_job_claimed() {
    let redis = Redis::start();
    let (queue, keys) = queue_on(&redis, "batch").await;
    for id in ["broken", "fine"] {
        submit(&queue, &keys, id, PriorityClass::Normal).await;
    }
    redis::cmd("HDEL")
        .arg("spool:job:broken")
        .arg("id")
        .query::<()>(&mut redis.connection())
        .expect("HDEL");

    let claimed = queue
        .claim_many(&keys, &["w0"], spool_core::queue::now_ms(), 0)
        .await
        .expect("a record without its id does not fail the claim");
    let Claimed::Jobs { jobs, dropped, .. } = claimed else {
        panic!("the queue is neither paused nor new");
    };
    assert_eq!(dropped, ["broken"]);
    let ids: Vec<&str> = jobs.iter().map(|j| j.record.id.as_str()).collect();
    assert_eq!(ids, ["fine"]);
    let count: u64 = redis::cmd("GET")
        .arg(keys.counter("dropped"))
        .query(&mut redis.connection())
        .expect("GET");
    assert_eq!(count, 1);
}

/// Counts the claims Redis runs of `queue`'s streams (a script's own
/// commands included: MONITOR shows them) until `stop` is set.
fn count_reads(
    redis: &Redis,
    queue: &str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    let mut monitor = redis.connection();
    let _: () = redis::cmd("MONITOR").query(&mut monitor).expect("MONITOR");
    monitor
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let stream = format!("spool:q:{{{queue}}}:normal");
    std::thread::spawn(move || {
        let mut reads = 0;
        while !stop.load(Ordering::SeqCst) {
            match monitor.recv_response() {
                Ok(redis::Value::SimpleString(line))
                    if line.contains("XREADGROUP") && line.contains(&stream) =>
                {
                    reads += 1
                }
                Ok(_) => {}
                Err(error) if error.is_timeout() => {}
                Err(error) => panic!("MONITOR: {error}"),
            }
        }
        reads
    })
}

/// An instance serving `queues` (their TOML tables, each with `handler =
/// "noop"`) with the no-op guest, written to the returned temp dir.
fn noop_host(
    redis: &Redis,
    stub: &StubServer,
    queues: &str,
    options: HostOptions,
) -> (Host, tempfile::TempDir) {
    let dir = tempfile::Builder::new()
        .prefix("spool-noop-")
        .tempdir()
        .expect("temp dir");
    let noop = dir.path().join("noop.wasm");
    std::fs::write(&noop, NOOP).expect("write noop");
    let config = format!("[handlers.noop]\npath = \"{}\"\n\n{queues}", noop.display());
    let host = Host::start(redis, stub, HostOptions { config, ..options });
    (host, dir)
}

/// Submits a job to `queue` and waits until it completed, at most `within`.
async fn run_job(api: &Api, host: &Host, queue: &str, within: Duration) {
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/{queue}/jobs")),
            &json!({ "payload": {} }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().expect("job id");
    let job = api.wait_terminal(host, id, within).await;
    assert_eq!(job["state"], "completed", "{job}");
}

/// Workers busy with one queue pass by another on their turns (every 16
/// jobs). Before, each pass paid Redis an empty claim of the other queue;
/// now one that found it empty is told so at once until work is announced
/// for it, and the job then queued there starts at once, though the idle
/// poll is a minute. A bulk wakes every idle worker it has work for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_found_empty_is_not_asked_again_until_work_is_announced() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _noop) = noop_host(
        &redis,
        &stub,
        "[queues.busy]\nhandler = \"noop\"\n\n[queues.quiet]\nhandler = \"noop\"\n",
        HostOptions {
            concurrency: 4,
            workers: "idle_poll_ms = 60000".into(),
            ..HostOptions::default()
        },
    );
    let api = Api::default();
    // Half the idle poll: a worker that took the queue for dry would wait it out.
    let half_the_poll = Duration::from_secs(30);
    // Its announcement arrives: the instance's subscription is up, and the
    // claims after the job find the quiet queue empty.
    run_job(&api, &host, "quiet", half_the_poll).await;
    let stop = Arc::new(AtomicBool::new(false));
    let quiet_reads = count_reads(&redis, "quiet", stop.clone());

    let jobs: Vec<_> = (0..400).map(|n| json!({ "payload": { "n": n } })).collect();
    let (status, reply) = api
        .post(
            &host.url("/api/queues/busy/jobs/bulk"),
            &json!({ "jobs": jobs }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let ids: Vec<String> = reply["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["jobId"].as_str().expect("job id").to_owned())
        .collect();
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
        workers.insert(job["worker"].as_str().unwrap_or_default().to_owned());
    }
    // The bulk was one announcement, which wakes one worker; each that
    // found work woke the next, or the rest would sleep out the idle poll.
    assert!(workers.len() > 1, "the jobs ran on {workers:?} alone");
    stop.store(true, Ordering::SeqCst);
    let reads = quiet_reads.join().expect("monitor");
    // 400 jobs on 4 workers are 25 turns at the quiet queue; each claim
    // that went to Redis read it (and its other classes) once.
    assert_eq!(reads, 0, "the quiet queue was read while the busy one ran");

    run_job(&api, &host, "quiet", half_the_poll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_announced_while_the_subscription_was_down_starts_once_it_is_back() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _noop) = noop_host(
        &redis,
        &stub,
        "[queues.quiet]\nhandler = \"noop\"\n",
        HostOptions {
            concurrency: 2,
            workers: "idle_poll_ms = 60000".into(),
            ..HostOptions::default()
        },
    );
    let api = Api::default();
    // A third of the idle poll: the instance reconnects within seconds.
    let a_third_of_the_poll = Duration::from_secs(20);
    // The subscription is up, and both workers found the queue empty since.
    run_job(&api, &host, "quiet", a_third_of_the_poll).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = redis.kill_pubsub_clients();
    assert!(killed >= 1, "the instance held a Pub/Sub connection");
    // Announced while the instance is unsubscribed: nobody hears it, and
    // the idle workers would sleep out the poll unless the new subscription
    // woke them.
    run_job(&api, &host, "quiet", a_third_of_the_poll).await;
}

/// The instance's count of `submit.lua` calls.
async fn submit_calls(host: &Host) -> f64 {
    counter(
        host,
        "spool_redis_roundtrip_seconds_count",
        &[("operation", "submit")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_submissions_that_arrive_together_share_a_call_each_answered_on_its_own() {
    let redis = Redis::start();
    let stub = stub().await;
    let (host, _noop) = noop_host(
        &redis,
        &stub,
        "[queues.burst]\nhandler = \"noop\"\nmax_waiting = 30\n",
        HostOptions::default(),
    );
    let api = Api::default();
    // Paused, so that what is queued stays waiting and counts against max_waiting.
    let (status, reply) = api
        .post(&host.url("/api/queues/burst/pause"), &json!({}))
        .await;
    assert_eq!(status, 200, "{reply}");
    let calls_before = submit_calls(&host).await;

    // Redis holds every script for a moment: the POSTs that arrive meanwhile
    // wait for the call in flight, and go together.
    redis.pause_writes(700);
    let posts = (0..40).map(|n| {
        let api = &api;
        let url = host.url("/api/queues/burst/jobs");
        async move { api.post(&url, &json!({ "payload": { "n": n } })).await }
    });
    let replies = futures_util::future::join_all(posts).await;

    let accepted: Vec<String> = replies
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, reply)| reply["jobId"].as_str().expect("job id").to_owned())
        .collect();
    let full = replies
        .iter()
        .filter(|(status, reply)| *status == 429 && reply["error"]["code"] == "queue_full")
        .count();
    assert_eq!(
        (accepted.len(), full),
        (30, 10),
        "each job answered on its own, up to max_waiting: {replies:?}"
    );
    for id in &accepted {
        let (status, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        assert_eq!(
            (status, job["state"].as_str()),
            (200, Some("waiting")),
            "{job}"
        );
    }
    let calls = submit_calls(&host).await - calls_before;
    assert!(
        calls <= 10.0,
        "40 submissions that arrived together took {calls} calls"
    );
}
