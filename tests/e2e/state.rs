//! State that must stay bounded (issue 14, item 6): the dead-letter stream has a
//! cap and an index (no lookup reads the whole stream, none trusts an entry
//! naming another job), every key a cancelled job leaves expires, and
//! consumers of instances that are gone leave the groups. Real processes.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use spool::stub::Fault;

use crate::reliability::{WAIT, submit_chat, wait_for_state};
use crate::support::*;

fn job_id(reply: &Value) -> String {
    reply["jobId"].as_str().unwrap_or_default().to_owned()
}

fn query<T: redis::FromRedisValue>(redis: &Redis, command: &mut redis::Cmd) -> T {
    command
        .query(&mut redis.connection())
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

/// Fails one chat job at once (the model refuses it: no retry) and waits for it.
async fn fail_chat_job(stack: &Stack, prompt: &str) -> String {
    let Stack {
        host, api, stub, ..
    } = stack;
    stub.inject([Fault {
        status: Some(401),
        ..Default::default()
    }])
    .expect("fault");
    let (status, reply) = submit_chat(api, host, prompt).await;
    assert_eq!(status, 202, "{reply}");
    let id = job_id(&reply);
    let job = api.wait_terminal(host, &id, WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_queue_keeps_at_most_max_dead_letters_and_its_index_follows() {
    let stack = Stack::start(HostOptions {
        config: "[queues.chat]\nhandler = \"chat\"\nmax_dead = 5\n".into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let mut failed = Vec::new();
    for i in 0..8 {
        failed.push(fail_chat_job(&stack, &format!("doomed {i}")).await);
    }
    let letters: u64 = query(redis, redis::cmd("XLEN").arg("spool:q:{chat}:dead"));
    let indexed: u64 = query(redis, redis::cmd("HLEN").arg("spool:q:{chat}:dead:index"));
    assert_eq!(
        (letters, indexed),
        (5, 5),
        "the cap holds, and the index with it"
    );
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    let listed: Vec<&str> = dead["dead"]
        .as_array()
        .map(|d| d.iter().filter_map(|l| l["jobId"].as_str()).collect())
        .unwrap_or_default();
    let newest: Vec<&str> = failed[3..].iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest, "the oldest letters left first");
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["queues"]["chat"]["dead"], 5, "{stats}");

    // A trimmed letter is gone for replay and purge alike.
    let (status, body) = api
        .post(
            &host.url(&format!("/api/queues/chat/dead/{}/replay", failed[0])),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_dead")),
        "{body}"
    );
    let (status, _) = api
        .send_delete(&host.url(&format!("/api/queues/chat/dead/{}", failed[1])))
        .await;
    assert_eq!(status, 404);

    // An index entry naming a letter that is gone breaks nothing and is dropped.
    let _: () = query(
        redis,
        redis::cmd("HSET")
            .arg("spool:q:{chat}:dead:index")
            .arg(&failed[2])
            .arg("1-1"),
    );
    let (status, _) = api
        .post(
            &host.url(&format!("/api/queues/chat/dead/{}/replay", failed[2])),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let stale: bool = query(
        redis,
        redis::cmd("HEXISTS")
            .arg("spool:q:{chat}:dead:index")
            .arg(&failed[2]),
    );
    assert!(!stale, "the stale index entry was dropped");

    // Purging one letter takes its index entry with it; the rest stay.
    let (status, body) = api
        .send_delete(&host.url(&format!("/api/queues/chat/dead/{}", failed[7])))
        .await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)), "{body}");
    let letters: u64 = query(redis, redis::cmd("XLEN").arg("spool:q:{chat}:dead"));
    let indexed: u64 = query(redis, redis::cmd("HLEN").arg("spool:q:{chat}:dead:index"));
    assert_eq!((letters, indexed), (4, 4));
    // And a new failure still finds room.
    let last = fail_chat_job(&stack, "doomed last").await;
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(dead["dead"][0]["jobId"], last.as_str(), "{dead}");
    assert_eq!(dead["dead"].as_array().map(Vec::len), Some(5), "{dead}");

    // An instance started with a lower cap drops the oldest letters at once.
    let lower = Host::start(
        redis,
        &stack.stub,
        HostOptions {
            config: "[queues.chat]\nhandler = \"chat\"\nmax_dead = 3\n".into(),
            ..Default::default()
        },
    );
    let (_, dead) = api.get(&lower.url("/api/queues/chat/dead")).await;
    let listed: Vec<&str> = dead["dead"]
        .as_array()
        .map(|d| d.iter().filter_map(|l| l["jobId"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(listed, [last.as_str(), &failed[6], &failed[5]], "{dead}");
    let indexed: u64 = query(redis, redis::cmd("HLEN").arg("spool:q:{chat}:dead:index"));
    assert_eq!(indexed, 3);
}

/// Dead letters as spool wrote them before the index: stream entries only.
fn write_unindexed_letters(redis: &Redis, count: usize) {
    let script = "local pad = string.rep('x', 1500)
        for i = 1, tonumber(ARGV[1]) do
          local id = 'old-' .. i
          local record = {'id', id, 'queue', 'chat', 'state', 'failed', 'class', 'normal',
            'score', '5', 'priority', '5', 'user_id', 'u', 'user_tier', '', 'handler', 'chat',
            'attempts', '3', 'progress', '0', 'created_at', '1', 'error', 'gave up',
            'payload', cjson.encode({prompt = pad})}
          redis.call('XADD', KEYS[1], '*', 'job', id, 'failed_at', '1', 'record', cjson.encode(record))
        end
        return redis.call('XLEN', KEYS[1])";
    let written: u64 = query(
        redis,
        redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg("spool:q:{chat}:dead")
            .arg(count),
    );
    assert_eq!(written, count as u64);
}

/// Redis' own count of the bytes it sent to clients.
fn bytes_sent(redis: &Redis) -> u64 {
    let info: String = query(redis, redis::cmd("INFO").arg("stats"));
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO stats has total_net_output_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_or_purging_one_dead_letter_never_reads_the_whole_stream() {
    // 9,000 letters of 1.5 KB (under the default cap): reading them all takes
    // Redis over 100 ms (a Lua scan) or sends 13 MB; one letter takes neither.
    let redis = Redis::start();
    write_unindexed_letters(&redis, 9_000);
    let stub = stub().await;
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config: "[retention]\nfailed_secs = 1\n".into(),
            ..Default::default()
        },
    );
    let stack = Stack {
        host,
        api: Api::default(),
        stub,
        redis,
    };
    let Stack {
        host, api, redis, ..
    } = &stack;
    let expired = fail_chat_job(&stack, "replay me").await;
    wait_until("the failed job's record expired", WAIT, || {
        !query::<bool>(
            redis,
            redis::cmd("EXISTS").arg(format!("spool:job:{expired}")),
        )
    });

    let _: () = query(
        redis,
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("slowlog-log-slower-than")
            .arg(10_000),
    );
    let _: () = query(redis, redis::cmd("SLOWLOG").arg("RESET"));
    let (status, body) = api
        .post(
            &host.url(&format!("/api/queues/chat/dead/{expired}/replay")),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let slow: Vec<redis::Value> = query(redis, redis::cmd("SLOWLOG").arg("GET").arg(10));
    assert!(slow.is_empty(), "replay: commands over 10 ms: {slow:?}");

    let sent_before = bytes_sent(redis);
    // A letter from before the index: found all the same.
    let (status, body) = api
        .send_delete(&host.url("/api/queues/chat/dead/old-4500"))
        .await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(1)), "{body}");
    let sent = bytes_sent(redis) - sent_before;
    let slow: Vec<redis::Value> = query(redis, redis::cmd("SLOWLOG").arg("GET").arg(10));
    assert!(slow.is_empty(), "purge: commands over 10 ms: {slow:?}");
    assert!(sent < 1_000_000, "purging one letter sent {sent} bytes");

    let job = api.wait_terminal(host, &expired, WAIT).await;
    assert_eq!(job["state"], "completed", "the replayed job ran: {job}");
    let letters: u64 = query(redis, redis::cmd("XLEN").arg("spool:q:{chat}:dead"));
    assert_eq!(
        letters, 8_999,
        "the replayed and the purged letter left, no other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_only_replayed_or_purged_by_the_job_it_names() {
    let stack = Stack::start(HostOptions::default()).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let chat_job = fail_chat_job(&stack, "dead in chat").await;
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    let chat_letter = dead["dead"][0]["deadId"]
        .as_str()
        .expect("the chat job's letter")
        .to_owned();
    // Two queues dead-letter in the same millisecond: equal entry ids. Here
    // the documents queue's letter of another job gets the chat letter's id.
    let _: String = query(
        redis,
        redis::cmd("XADD")
            .arg("spool:q:{documents}:dead")
            .arg(&chat_letter)
            .arg("job")
            .arg("another-job")
            .arg("failed_at")
            .arg(1)
            .arg("record")
            .arg("[]"),
    );
    // And a documents index entry that names it under the chat job's id.
    let _: () = query(
        redis,
        redis::cmd("HSET")
            .arg("spool:q:{documents}:dead:index")
            .arg(&chat_job)
            .arg(&chat_letter),
    );
    let (status, body) = api
        .post(
            &host.url(&format!("/api/queues/documents/dead/{chat_job}/replay")),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_dead")),
        "{body}"
    );
    let (status, _) = api
        .send_delete(&host.url(&format!("/api/queues/documents/dead/{chat_job}")))
        .await;
    assert_eq!(status, 404);
    let documents_letters: u64 = query(redis, redis::cmd("XLEN").arg("spool:q:{documents}:dead"));
    assert_eq!(documents_letters, 1, "the other job's letter is untouched");
    let (_, job) = api.get(&host.url(&format!("/api/job/{chat_job}"))).await;
    assert_eq!(
        job["state"], "failed",
        "the chat job was not replayed: {job}"
    );
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(dead["dead"][0]["jobId"], chat_job.as_str(), "{dead}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_not_replayed_over_a_live_job_that_reuses_its_id() {
    let stack = Stack::start(HostOptions {
        config: "[retention]\nfailed_secs = 1\n".into(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let id = fail_chat_job(&stack, "dead in chat").await;
    wait_until("the failed job's record expired", WAIT, || {
        !query::<bool>(redis, redis::cmd("EXISTS").arg(format!("spool:job:{id}")))
    });
    // The id is free again: a documents job takes it and waits (paused queue).
    api.post(&host.url("/api/queues/documents/pause"), &json!({}))
        .await;
    let (status, reply) = api
        .post(
            &host.url("/api/queues/documents/jobs"),
            &json!({"payload": {"topic": "tea", "sections": 1}, "jobId": id}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");

    let (status, body) = api
        .post(
            &host.url(&format!("/api/queues/chat/dead/{id}/replay")),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("job_id_taken")),
        "{body}"
    );
    let entries: u64 = query(redis, redis::cmd("XLEN").arg("spool:q:{documents}:normal"));
    assert_eq!(entries, 1, "the live job is queued once");
    let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(
        (job["queue"].as_str(), job["state"].as_str()),
        (Some("documents"), Some("waiting")),
        "{job}"
    );
    let (_, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(
        dead["dead"][0]["jobId"],
        id.as_str(),
        "the letter stays: {dead}"
    );
}

fn ttl(redis: &Redis, key: &str) -> i64 {
    query(redis, redis::cmd("TTL").arg(key))
}

/// The guest's state of a job, as a handler that keeps state leaves it.
fn leave_guest_state(redis: &Redis, id: &str) {
    let _: () = query(
        redis,
        redis::cmd("HSET")
            .arg(format!("spool:job:{id}:state"))
            .arg("cursor")
            .arg("3"),
    );
}

/// Every key of a finished job expires (TTL above 0), none is kept for good.
fn assert_all_keys_expire(redis: &Redis, id: &str) {
    for key in [
        format!("spool:job:{id}"),
        format!("job_events:{id}"),
        format!("spool:job:{id}:state"),
    ] {
        let ttl = ttl(redis, &key);
        assert!(ttl > 0, "{key} has TTL {ttl} (-1: kept for good, -2: gone)");
    }
}

/// A finished job's guest state expires with it, though the outcome's call
/// sets that expiry only for a job whose attempt wrote state (or that ran
/// before): a job that wrote none has no state key to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_a_job_wrote_expires_with_it() {
    let stack = Stack::start(HostOptions {
        config: crate::fencing::writer_config(),
        ..HostOptions::default()
    })
    .await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let mut ids = Vec::new();
    for payload in [
        json!({"mode": "writer", "ticks": 2}),
        json!({"mode": "writer", "ticks": 0}),
    ] {
        let (status, reply) = api
            .post(
                &host.url("/api/queues/writes/jobs"),
                &json!({ "payload": payload }),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        let id = job_id(&reply);
        let job = api.wait_terminal(host, &id, WAIT).await;
        assert_eq!(
            (job["state"].as_str(), &job["attempts"]),
            (Some("completed"), &json!(1)),
            "{job}"
        );
        ids.push(id);
    }
    assert_all_keys_expire(redis, &ids[0]);
    let last: String = query(
        redis,
        redis::cmd("HGET")
            .arg(format!("spool:job:{}:state", ids[0]))
            .arg("last"),
    );
    assert_eq!(last, "1:1", "the state the attempt wrote");
    assert_eq!(
        ttl(redis, &format!("spool:job:{}:state", ids[1])),
        -2,
        "a job that wrote no state has no state key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_of_a_cancelled_job_expires() {
    let redis = Redis::start();
    let stub = stub().await;
    let options = HostOptions {
        // A retry a minute away: the job stays delayed.
        config: "[queues.chat]\nhandler = \"chat\"\nbackoff_ms = 60000\n".into(),
        // Long enough for the second instance to accept the cancel before
        // its recovery finds the first one's job.
        workers: "visibility_timeout_ms = 5000".into(),
        ..Default::default()
    };
    let mut first = Host::start(&redis, &stub, options.clone());
    let api = Api::default();

    // Delayed: failed once, waits for its retry.
    stub.inject([Fault {
        status: Some(500),
        ..Default::default()
    }])
    .expect("fault");
    let (_, reply) = submit_chat(&api, &first, "delayed").await;
    let delayed = job_id(&reply);
    wait_for_state(&api, &first, &delayed, "delayed").await;
    leave_guest_state(&redis, &delayed);
    let (status, body) = api
        .send_delete(&first.url(&format!("/api/job/{delayed}")))
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("cancelled")),
        "{body}"
    );
    assert_all_keys_expire(&redis, &delayed);

    // Waiting: the queue is paused.
    api.post(&first.url("/api/queues/chat/pause"), &json!({}))
        .await;
    let (_, reply) = submit_chat(&api, &first, "waiting").await;
    let waiting = job_id(&reply);
    leave_guest_state(&redis, &waiting);
    let (status, _) = api
        .send_delete(&first.url(&format!("/api/job/{waiting}")))
        .await;
    assert_eq!(status, 200);
    assert_all_keys_expire(&redis, &waiting);
    api.post(&first.url("/api/queues/chat/resume"), &json!({}))
        .await;

    // Active on an instance that dies; the cancel is accepted meanwhile, and
    // recovery ends the job cancelled.
    stub.set_timing(60_000, 0);
    let (_, reply) = submit_chat(&api, &first, "orphaned").await;
    let orphaned = job_id(&reply);
    wait_for_state(&api, &first, &orphaned, "active").await;
    leave_guest_state(&redis, &orphaned);
    first.kill();
    let second = Host::start(&redis, &stub, options);
    let (status, _) = api
        .send_delete(&second.url(&format!("/api/job/{orphaned}")))
        .await;
    assert_eq!(status, 202, "accepted while it looks active");
    let job = api
        .wait_terminal_or_cancelled(&second, &orphaned, WAIT)
        .await;
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_all_keys_expire(&redis, &orphaned);
}

const GROUP: &str = "spool-workers";

/// (consumer name, pending entries) of the workers' group on `stream`.
fn consumers(redis: &Redis, stream: &str) -> Vec<(String, usize)> {
    let reply: redis::streams::StreamInfoConsumersReply = query(
        redis,
        redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(GROUP),
    );
    reply
        .consumers
        .into_iter()
        .map(|c| (c.name, c.pending))
        .collect()
}

fn consumer_counts(redis: &Redis, queues: &[&str]) -> Vec<(String, usize)> {
    let mut counts = Vec::new();
    for queue in queues {
        for class in ["high", "normal", "low"] {
            let stream = format!("spool:q:{{{queue}}}:{class}");
            counts.push((stream.clone(), consumers(redis, &stream).len()));
        }
    }
    counts
}

/// Every start names new consumers (the process id is in the name). Half the
/// instances here stop cleanly (they delete their own), half are killed (the
/// sweep of a later instance deletes theirs); every tenth is killed with a job
/// in flight, whose consumer must survive until recovery took the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_restarts_leave_the_consumer_count_of_each_group_bounded() {
    const RESTARTS: usize = 100;
    const CONCURRENCY: usize = 2;
    let redis = Redis::start();
    let stub = stub().await;
    let options = HostOptions {
        concurrency: CONCURRENCY,
        workers: "visibility_timeout_ms = 500\ndrain_timeout_ms = 2000".into(),
        ..Default::default()
    };
    let api = Api::default();
    let started = Instant::now();
    let mut most = 0;
    let mut interrupted = Vec::new();
    for round in 0..RESTARTS {
        let mut host = Host::start(&redis, &stub, options.clone());
        // One job per class: a consumer in each of the chat queue's groups.
        let mut ids = Vec::new();
        for priority in [9, 5, 2] {
            let (status, reply) = api
                .post(
                    &host.url("/api/chat"),
                    &json!({"userId": "u", "prompt": format!("round {round}"), "priority": priority}),
                )
                .await;
            assert_eq!(status, 202, "{reply}");
            ids.push(job_id(&reply));
        }
        for id in &ids {
            let job = api.wait_terminal(&host, id, WAIT).await;
            assert_eq!(job["state"], "completed", "{job}");
        }
        if round % 10 == 9 {
            stub.set_timing(60_000, 0);
            let (_, reply) = submit_chat(&api, &host, &format!("interrupted {round}")).await;
            let id = job_id(&reply);
            wait_for_state(&api, &host, &id, "active").await;
            host.kill();
            stub.set_timing(0, 0);
            interrupted.push(id);
        } else if round % 2 == 0 {
            host.kill();
        } else {
            host.signal(libc::SIGTERM);
            assert_eq!(
                host.wait_exit(Duration::from_secs(20)),
                Some(0),
                "{}",
                host.log_text()
            );
        }
        let counts = consumer_counts(&redis, &["chat", "documents"]);
        most = most.max(counts.iter().map(|(_, n)| *n).max().unwrap_or(0));
        // Each instance has at most CONCURRENCY + 1 consumers per group, and
        // the groups keep only those of the instances killed within the idle
        // limit (4 visibility timeouts: 2 s, some 20 rounds here, half of them
        // killed). Without pruning every round adds one per group.
        assert!(most <= 40, "round {round}: consumers per group {counts:?}");
    }
    let restarts_took = started.elapsed();
    // The jobs of killed workers were still pending: the last instance runs them.
    let host = Host::start(&redis, &stub, options);
    for id in &interrupted {
        let job = api.wait_terminal(&host, id, WAIT).await;
        assert_eq!(job["state"], "completed", "{job}");
    }
    // Soon the groups hold the consumers of the one live instance alone.
    let (_, health) = api.get(&host.url("/health")).await;
    let live = format!("{}-", health["instance"].as_str().unwrap_or_default());
    wait_until("only the live instance's consumers remain", WAIT, || {
        ["high", "normal", "low"]
            .iter()
            .flat_map(|class| consumers(&redis, &format!("spool:q:{{chat}}:{class}")))
            .all(|(name, _)| name.starts_with(&live))
    });
    eprintln!(
        "{RESTARTS} restarts in {restarts_took:?}; at most {most} consumers in a group; \
         {:?} until only the live instance's remained",
        started.elapsed() - restarts_took
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_keeps_the_consumer_of_a_job_it_could_not_finish() {
    let redis = Redis::start();
    let stub = stub().await;
    let options = HostOptions {
        concurrency: 1,
        workers: "visibility_timeout_ms = 600\ndrain_timeout_ms = 200".into(),
        ..Default::default()
    };
    let mut leaving = Host::start(&redis, &stub, options.clone());
    let api = Api::default();
    stub.set_timing(3_000, 0);
    let (_, reply) = submit_chat(&api, &leaving, "too slow to drain").await;
    let id = job_id(&reply);
    wait_for_state(&api, &leaving, &id, "active").await;
    leaving.signal(libc::SIGTERM);
    assert_eq!(leaving.wait_exit(Duration::from_secs(20)), Some(0));
    let left = consumers(&redis, "spool:q:{chat}:normal");
    assert!(
        left.iter().any(|(_, pending)| *pending == 1),
        "the consumer holding the unfinished job stays: {left:?}"
    );
    stub.set_timing(0, 0);
    let staying = Host::start(&redis, &stub, options);
    let job = api.wait_terminal(&staying, &id, WAIT).await;
    assert_eq!(
        job["state"], "completed",
        "recovered by the next instance: {job}"
    );
}
