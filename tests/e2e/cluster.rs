//! spool on a real Redis Cluster (issue: scale past one Redis): three masters
//! with a replica each, started by `spool::local_cluster`. The suite's core
//! scenarios run unchanged against `redis+cluster://` seeds (strict priority,
//! retries, dead letters and their replay, cancel, the shared limiter on three
//! hosts, hot swap across two instances, live delivery, sessions and their
//! message streams, conversations); a 1,000-job run spreads its keys
//! over every master with no script refused; and a master killed with SIGKILL
//! mid-run loses no job whose submission was acknowledged.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use spool::local_cluster::{AppendFsync, ClusterOptions, LocalCluster};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

fn three_masters(appendfsync: AppendFsync) -> LocalCluster {
    LocalCluster::start(ClusterOptions {
        masters: 3,
        replicas_per_master: 1,
        appendfsync,
    })
    .expect("the test cluster starts")
}

/// One queue name per master, each hashing (as its `{name}` tag) into that
/// master's slots, in the order of `cluster.masters()`.
fn a_queue_on_each_master(cluster: &LocalCluster) -> Vec<String> {
    let masters = cluster.masters().expect("cluster masters");
    let mut node = cluster.connection(masters[0].addr).expect("a node");
    let mut names = vec![String::new(); masters.len()];
    for n in 0.. {
        let name = format!("spread-{n}");
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&name)
            .query(&mut node)
            .expect("CLUSTER KEYSLOT");
        if let Some(index) = masters
            .iter()
            .position(|m| m.slots.iter().any(|range| range.contains(&slot)))
            && names[index].is_empty()
        {
            names[index] = name;
        }
        if names.iter().all(|name| !name.is_empty()) {
            return names;
        }
    }
    unreachable!("every master owns slots")
}

fn chat_queues(names: &[String], extra: &str) -> String {
    names
        .iter()
        .map(|name| format!("[queues.{name}]\nhandler = \"chat\"\n{extra}\n"))
        .collect()
}

fn no_crossslot(hosts: &[&Host]) {
    for host in hosts {
        let log = host.log_text();
        assert!(
            !log.contains("CROSSSLOT") && !log.contains("crossed slots"),
            "a command spanned hash slots:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_priority_holds_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::foundation::one_worker_keeps_strict_priority(&cluster.seeds_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_retried_with_backoff_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::foundation::fails_twice_then_completes(&cluster.seeds_url()).await;
}

/// Live delivery: SSE with resume, and a WebSocket that submits and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_events_are_delivered_live_over_sse_and_websocket_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::foundation::sse_delivers_and_resumes(&cluster.seeds_url()).await;
    crate::foundation::websocket_submits_and_follows(&cluster.seeds_url()).await;
}

/// Wake-ups, cancels and handler switches travel on shard channels: each
/// queue's on the master of its slot, none on a classic channel; and a
/// running job's cancel reaches its instance at once, stopping the guest in
/// its 6 s model call (the next heartbeat would come after 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_travel_on_shard_channels_and_a_cancel_stops_a_running_job_at_once() {
    let cluster = three_masters(AppendFsync::Everysec);
    let queues = a_queue_on_each_master(&cluster);
    let stub = stub().await;
    let options = HostOptions {
        config: chat_queues(&queues, ""),
        ..Default::default()
    };
    let host = Host::start_at(&cluster.seeds_url(), &stub, options);
    let api = Api::default();

    let masters = cluster.masters().expect("masters");
    let mut shard_channels = Vec::new();
    for (master, queue) in masters.iter().zip(&queues) {
        let mut node = cluster.connection(master.addr).expect("node");
        let wanted = ["wake", "cancel"].map(|kind| format!("spool:q:{{{queue}}}:{kind}"));
        // A host answers before its subscriptions are all confirmed.
        let subscribed = Instant::now();
        let channels = loop {
            let mut channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .query(&mut node)
                .expect("PUBSUB SHARDCHANNELS");
            channels.sort();
            if wanted.iter().all(|channel| channels.contains(channel))
                || subscribed.elapsed() > Duration::from_secs(10)
            {
                break channels;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let classic: Vec<String> = redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("spool:*")
            .query(&mut node)
            .expect("PUBSUB CHANNELS");
        assert!(
            classic.is_empty(),
            "classic channels on {}: {classic:?}",
            master.addr
        );
        for channel in &wanted {
            assert!(
                channels.contains(channel),
                "{channel} on {}: {channels:?}",
                master.addr
            );
        }
        shard_channels.extend(channels);
    }
    let registry = "spool:{registry}:handlers:changed".to_owned();
    let subscribed = Instant::now();
    while !shard_channels.contains(&registry) && subscribed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for master in &masters {
            let mut node = cluster.connection(master.addr).expect("node");
            let channels: Vec<String> = redis::cmd("PUBSUB")
                .arg("SHARDCHANNELS")
                .query(&mut node)
                .expect("PUBSUB SHARDCHANNELS");
            shard_channels.extend(channels);
        }
    }
    assert!(shard_channels.contains(&registry), "{shard_channels:?}");

    stub.set_timing(6000, 0);
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/{}/jobs", queues[0])),
            &json!({"payload": {"prompt": "a long answer"}}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    loop {
        let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        if job["state"] == "active" {
            break;
        }
        assert!(started.elapsed() < WAIT, "the job never started: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = api.send_delete(&host.url(&format!("/api/job/{id}"))).await;
    assert_eq!(status, 202);
    let job = api.wait_terminal_or_cancelled(&host, &id, WAIT).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let ran = job["finishedAt"]
        .as_u64()
        .unwrap_or(u64::MAX)
        .saturating_sub(job["startedAt"].as_u64().unwrap_or(0));
    assert!(
        ran < 6000,
        "the guest ran {ran} ms: it was not stopped by the cancel signal: {job}"
    );
    no_crossslot(&[&host]);
}

/// Sessions and message streams: a task started on one instance runs on a
/// second in two stages (the follow-up taking its message over in the same
/// script as its fence check) and streams from a third; a stream cut off
/// mid-way resumes without gap or duplicate. Every key of it lives in the
/// task queue's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_message_streams_work_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::sessions::a_task_crosses_three_instances(&cluster.seeds_url()).await;
    crate::sessions::a_message_stream_resumes(&cluster.seeds_url()).await;

    // A large block is stored apart (its key declared to the script), read
    // back, and purged with its session.
    let stub = stub().await;
    let host = Host::start_at(&cluster.seeds_url(), &stub, HostOptions::default());
    let api = Api::default();
    let (status, session) = api
        .post(&host.url("/api/v1/sessions"), &json!({"metadata": {}}))
        .await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("sid");
    let image = "iVBORw0KGgo".repeat(2_000);
    let (status, message) = api
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/messages")),
            &json!({"role": "user", "content": "look", "blocks": [{"type": "image", "base64": image}]}),
        )
        .await;
    assert_eq!(status, 201, "{message}");
    let cid = message["blocks"][0]["contentId"]
        .as_str()
        .expect("stored apart");
    let content_url = host.url(&format!("/api/v1/content/{cid}"));
    let (status, content) = api.get(&content_url).await;
    assert_eq!(status, 200, "{content}");
    assert_eq!(content["block"]["base64"], image.as_str());
    let (status, deleted) = api
        .delete(&host.url(&format!("/api/v1/sessions/{sid}?purge=true")))
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["messagesDeleted"], 1, "{deleted}");
    let (status, _) = api.get(&content_url).await;
    assert_eq!(status, 404, "the content went with its session");
    no_crossslot(&[&host]);
}

/// Conversations: two instances, clients on both, the bot's answer relayed
/// once; design B's own subscriber (on one master) gets every frame, since a
/// cluster forwards classic PUBLISHes to every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_span_instances_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    let masters = cluster.masters().expect("cluster masters");
    let subscriber = format!("redis://{}", masters[0].addr);
    crate::conversations::a_conversation_spans_two_instances(&cluster.seeds_url(), &subscriber)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_one_limit_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::limits::three_hosts_share_one_limit(&cluster.seeds_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_across_two_instances_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    crate::hot_swap::deploy_and_rollback_under_load(&cluster.seeds_url()).await;
}

/// A job that fails for good is dead-lettered in its queue on its master,
/// replayed from there, and a waiting job is cancelled: the scripts that
/// take jobs out of line find their queue's keys on the right node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_and_cancel_work_on_a_cluster() {
    let cluster = three_masters(AppendFsync::Everysec);
    let stub = stub().await;
    let config = "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 1\n";
    let host = Host::start_at(
        &cluster.seeds_url(),
        &stub,
        HostOptions {
            config: config.into(),
            ..Default::default()
        },
    );
    let api = Api::default();
    stub.inject([spool::stub::Fault {
        status: Some(500),
        times: 1,
        ..Default::default()
    }])
    .expect("fault");
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "doomed"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(job["state"], "failed", "{job}");

    let (status, dead) = api.get(&host.url("/api/queues/chat/dead")).await;
    assert_eq!(status, 200, "{dead}");
    assert!(
        dead.to_string().contains(&id),
        "the letter names the job: {dead}"
    );
    let (status, replayed) = api
        .post(
            &host.url(&format!("/api/queues/chat/dead/{id}/replay")),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    let job = api.wait_terminal(&host, &id, WAIT).await;
    assert_eq!(
        job["state"], "completed",
        "the replayed job ran again: {job}"
    );

    api.post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    let (_, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "never mind"}),
        )
        .await;
    let waiting = reply["jobId"].as_str().unwrap_or_default().to_owned();
    let (status, cancelled) = api
        .send_delete(&host.url(&format!("/api/job/{waiting}")))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let (_, job) = api.get(&host.url(&format!("/api/job/{waiting}"))).await;
    assert_eq!(job["state"], "cancelled", "{job}");
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    assert_eq!(stats["queues"]["chat"]["waiting"], 0, "{stats}");
    no_crossslot(&[&host]);
}

/// Submits `count` chat jobs round-robin over `queues`.
async fn submit_spread(api: &Api, host: &Host, queues: &[String], count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let queue = &queues[i % queues.len()];
        let (status, reply) = api
            .post(
                &host.url(&format!("/api/queues/{queue}/jobs")),
                &json!({"payload": {"prompt": format!("spread {i}")}}),
            )
            .await;
        assert_eq!(status, 202, "{reply}");
        ids.push(reply["jobId"].as_str().unwrap_or_default().to_owned());
    }
    ids
}

async fn completed_in(api: &Api, host: &Host, queues: &[String]) -> u64 {
    let (_, stats) = api.get(&host.url("/api/queue/stats")).await;
    queues
        .iter()
        .map(|q| stats["queues"][q]["completed"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_of_a_thousand_jobs_spread_over_every_master() {
    let cluster = three_masters(AppendFsync::Everysec);
    let queues = a_queue_on_each_master(&cluster);
    let stub = stub().await;
    let options = HostOptions {
        concurrency: 8,
        config: chat_queues(&queues, ""),
        ..Default::default()
    };
    let host = Host::start_at(&cluster.seeds_url(), &stub, options);
    let api = Api::default();
    let ids = submit_spread(&api, &host, &queues, 1000).await;
    let started = Instant::now();
    while completed_in(&api, &host, &queues).await < 1000 {
        assert!(started.elapsed() < WAIT, "the jobs did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in ids.iter().step_by(97) {
        let (_, job) = api.get(&host.url(&format!("/api/job/{id}"))).await;
        assert_eq!(job["state"], "completed", "found by id alone: {job}");
    }
    let counts = cluster.keys_per_master().expect("key counts");
    println!("keys per master after 1,000 jobs over {queues:?}: {counts:?}");
    assert_eq!(counts.len(), 3);
    for (master, keys) in &counts {
        // A third of the jobs, each with its record and its events.
        assert!(*keys > 600, "master {master} holds {keys} keys: {counts:?}");
    }
    no_crossslot(&[&host]);
}

/// SIGKILL of a master mid-run under `appendfsync always`: its replica takes
/// over, every job whose submission was answered 2xx completes exactly once,
/// and the hosts serve again after a bounded pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_run_loses_no_acknowledged_job() {
    let mut cluster = three_masters(AppendFsync::Always);
    let queues = a_queue_on_each_master(&cluster);
    let stub = stub().await;
    let options = HostOptions {
        concurrency: 6,
        config: chat_queues(&queues, "max_attempts = 5\nbackoff_ms = 200"),
        workers: "visibility_timeout_ms = 3000".into(),
        ..Default::default()
    };
    let seeds = cluster.seeds_url();
    let hosts = [
        Host::start_at(&seeds, &stub, options.clone()),
        Host::start_at(&seeds, &stub, options),
    ];
    let api = Api::default();

    // 1,000 submissions at ~200/s over both hosts; each answered 2xx is
    // recorded with its queue's index and how long its answer took.
    let accepted: Arc<Mutex<Vec<(String, usize, Duration)>>> = Arc::default();
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let load = {
        let urls: Vec<String> = (0..1000)
            .map(|i| hosts[i % 2].url(&format!("/api/queues/{}/jobs", queues[i % queues.len()])))
            .collect();
        let (accepted, refused, api) = (accepted.clone(), refused.clone(), api.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut posts = tokio::task::JoinSet::new();
            for (i, url) in urls.into_iter().enumerate() {
                tick.tick().await;
                let (api, accepted, refused) = (api.clone(), accepted.clone(), refused.clone());
                posts.spawn(async move {
                    let body = json!({"payload": {"prompt": format!("failover {i}")}});
                    let sent = Instant::now();
                    let (status, reply) = api.post(&url, &body).await;
                    match (status, reply["jobId"].as_str()) {
                        (200..=299, Some(id)) => accepted.lock().expect("lock").push((
                            id.to_owned(),
                            i % 3,
                            sent.elapsed(),
                        )),
                        _ => refused
                            .lock()
                            .expect("lock")
                            .push(format!("{status} {reply}")),
                    }
                });
            }
            while posts.join_next().await.is_some() {}
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = cluster.kill_master(0).expect("kill a master");
    let failover = tokio::task::block_in_place(|| cluster.wait_for_failover(WAIT))
        .expect("the replica takes over");
    load.await.expect("load");

    let accepted = accepted.lock().expect("lock").clone();
    let refused = refused.lock().expect("lock").clone();
    let ids: BTreeSet<&String> = accepted.iter().map(|(id, ..)| id).collect();
    let mut completions = 0;
    for id in ids {
        let job = api.wait_terminal(&hosts[0], id, WAIT).await;
        assert_eq!(
            job["state"], "completed",
            "an acknowledged job was lost: {job}"
        );
        let (_, page) = api
            .get(&hosts[1].url(&format!("/api/job/{id}/events")))
            .await;
        let ends = page["events"]
            .as_array()
            .map(|events| {
                events
                    .iter()
                    .filter(|e| e["event_type"] == "task_completed")
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(ends, 1, "job {id} completed {ends} times: {page}");
        completions += 1;
    }
    // The killed master's queue (the first) waited through the failover;
    // the others' never stopped.
    let slowest = |queue: usize| {
        accepted
            .iter()
            .filter(|(_, q, _)| *q == queue)
            .map(|(.., took)| *took)
            .max()
            .unwrap_or_default()
    };
    let (pause, others) = (slowest(0), slowest(1).max(slowest(2)));
    println!(
        "failover: killed {killed}; replica promoted after {failover:?}; slowest acknowledged submission to its queue took {pause:?} \
         (to the other masters' queues: {others:?}); \
         {} of 1,000 submissions acknowledged, all {completions} completed exactly once; {} refused (not acknowledged): {:?}",
        accepted.len(),
        refused.len(),
        refused.iter().take(3).collect::<Vec<_>>()
    );
    assert!(accepted.len() >= 500, "most submissions were served");
    assert!(
        pause < Duration::from_secs(30),
        "hosts served again after {pause:?}"
    );
    let (status, _) = api.get(&hosts[0].url("/health")).await;
    assert_eq!(status, 200);
}
