//! Three `spool serve` processes on one Redis behind a real nginx (round
//! robin, WebSocket upgrade, no buffering): a conversation reaches every
//! client on every instance once and in order with the bot's answer; a
//! client cut off mid-answer resumes on another instance with exactly what it
//! missed; an instance killed with SIGKILL loses nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::chat_support::{ChatClient, Nginx, ids, is_answer_end, streamed_text};
use crate::support::{Api, Host, HostOptions, Redis, expected_chat_response, stub};

const WAIT: Duration = Duration::from_secs(20);

struct Replicas {
    hosts: Vec<Host>,
    nginx: Nginx,
    _stub: spool::stub::StubServer,
    redis: Redis,
}

impl Replicas {
    async fn start(options: HostOptions, chunk_delay_ms: u64) -> Self {
        let redis = Redis::start();
        let stub = stub().await;
        stub.set_timing(0, chunk_delay_ms);
        let hosts: Vec<Host> = (0..3)
            .map(|_| Host::start(&redis, &stub, options.clone()))
            .collect();
        let bases: Vec<&str> = hosts.iter().map(|h| h.base.as_str()).collect();
        let nginx = Nginx::start(&bases);
        Self {
            hosts,
            nginx,
            _stub: stub,
            redis,
        }
    }

    /// Which instance (its base URL) nginx gave a client.
    fn instance_of(&self, client: &ChatClient) -> String {
        let upstream = client
            .upstream
            .as_deref()
            .expect("nginx names the upstream");
        // After a failed try nginx lists every upstream it tried; the last served.
        let served = upstream.rsplit(", ").next().unwrap_or(upstream);
        format!("http://{served}")
    }
}

fn assert_ordered_once(frames: &[Value]) {
    let ids = ids(frames);
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a frame came twice: {ids:?}");
    let positions: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let (ms, seq) = id.split_once('-').expect("stream id");
            (ms.parse().expect("ms"), seq.parse().expect("seq"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "out of order: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_behind_nginx_deliver_each_message_and_answer_to_every_client_once_in_order()
 {
    let replicas = Replicas::start(HostOptions::default(), 5).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(ChatClient::connect(&replicas.nginx.base, "lobby", None).await);
    }
    let landed: BTreeSet<String> = clients.iter().map(|c| replicas.instance_of(c)).collect();
    let all: BTreeSet<String> = replicas.hosts.iter().map(|h| h.base.clone()).collect();
    assert_eq!(
        landed, all,
        "round robin spreads the clients over the three instances"
    );

    let prompts: Vec<String> = (0..4).map(|n| format!("message number {n}")).collect();
    for prompt in &prompts {
        clients[0].send(prompt).await;
    }
    let mut everyone = Vec::new();
    for client in &mut clients {
        let mut ended = 0;
        let mut frames = Vec::new();
        while ended < prompts.len() {
            let frame = client
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("every answer arrives; got {frames:#?}"));
            if frame["type"] == "event"
                && matches!(
                    frame["event"].as_str(),
                    Some("task_completed" | "task_failed")
                )
            {
                ended += 1;
            }
            frames.push(frame);
        }
        everyone.push(frames);
    }
    for frames in &everyone {
        assert_ordered_once(frames);
        assert_eq!(
            frames, &everyone[0],
            "every client on every instance sees the same conversation"
        );
    }
    let messages: Vec<&Value> = everyone[0]
        .iter()
        .filter(|f| f["type"] == "message")
        .collect();
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(
        texts,
        prompts.iter().map(String::as_str).collect::<Vec<_>>(),
        "in the order sent"
    );
    for (message, prompt) in messages.iter().zip(&prompts) {
        let job = message["jobId"].as_str().expect("a bot job");
        assert_eq!(
            streamed_text(&everyone[0], job),
            expected_chat_response(prompt, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_mid_answer_reconnects_through_nginx_to_another_instance_and_gets_exactly_what_it_missed()
 {
    let replicas = Replicas::start(HostOptions::default(), 40).await;
    let mut observer = ChatClient::connect(&replicas.nginx.base, "story", None).await;
    let mut leaving = ChatClient::connect(&replicas.nginx.base, "story", None).await;
    let prompt = "tell me a long story about queues and streams and many replicas";
    leaving.send(prompt).await;
    let message = leaving.next(WAIT).await.expect("the message");
    let job = message["jobId"].as_str().expect("job").to_owned();
    leaving.until(WAIT, |f| f["event"] == "text_delta").await;
    let before = leaving.frames.clone();
    let last_id = leaving.last_id().expect("an id");
    let left = replicas.instance_of(&leaving);
    leaving.close().await;

    let mut back = ChatClient::connect(&replicas.nginx.base, "story", Some(&last_id)).await;
    assert_ne!(
        replicas.instance_of(&back),
        left,
        "round robin sends it elsewhere"
    );
    let after = back.until(WAIT, |f| is_answer_end(f, &job)).await;
    let everything = observer.until(WAIT, |f| is_answer_end(f, &job)).await;
    assert!(
        !streamed_text(&after, &job).is_empty(),
        "the cut fell inside the answer"
    );
    let mut joined = before;
    joined.extend(after);
    assert_ordered_once(&joined);
    assert_eq!(
        joined, everything,
        "exactly the missed frames, then live ones"
    );
    assert_eq!(
        streamed_text(&joined, &job),
        expected_chat_response(prompt, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_with_sigkill_loses_its_clients_to_the_others_and_nothing_is_lost() {
    // A killed worker's job is recovered after its visibility timeout, a
    // killed relay's answer after its lease.
    let options = HostOptions {
        workers: "visibility_timeout_ms = 1500".into(),
        config: "[conversations]\nrelay_lease_ms = 1000\n".into(),
        ..HostOptions::default()
    };
    let mut replicas = Replicas::start(options, 60).await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(ChatClient::connect(&replicas.nginx.base, "crash", None).await);
    }
    let prompt = "an answer long enough to be cut off by a crash of one replica";
    clients[0].send(prompt).await;
    let mut job = String::new();
    for client in &mut clients {
        let frames = client.until(WAIT, |f| f["event"] == "text_delta").await;
        job = frames[0]["jobId"]
            .as_str()
            .expect("the message names its job")
            .to_owned();
    }
    // The victim is the instance relaying the answer (its id begins the
    // lease's value), so another must take the relay over.
    let holder: String = redis::cmd("GET")
        .arg(format!("chat:relay_lease:{job}"))
        .query(&mut replicas.redis.connection())
        .expect("the relay lease is held");
    let mut index = None;
    for (n, host) in replicas.hosts.iter().enumerate() {
        let (_, health) = Api::default().get(&host.url("/health")).await;
        let instance = health["instance"].as_str().expect("instance id");
        if holder.starts_with(&format!("{instance}-")) {
            index = Some(n);
        }
    }
    let index = index.expect("one of the instances holds the lease");
    let victim = replicas.hosts[index].base.clone();
    let killed_at = Instant::now();
    replicas.hosts[index].signal(libc::SIGKILL);
    let _ = replicas.hosts[index].wait_exit(Duration::from_secs(5));

    // Clients of the killed instance see their socket end and resume through nginx.
    let mut history: Vec<Vec<Value>> = Vec::new();
    let mut cut_off = 0;
    let mut reconnected_after = Duration::ZERO;
    for client in clients.iter_mut() {
        if replicas.instance_of(client) != victim {
            history.push(std::mem::take(&mut client.frames));
            continue;
        }
        cut_off += 1;
        while client.next(WAIT).await.is_some() {}
        let last_id = client.last_id().expect("an id");
        let earlier = std::mem::take(&mut client.frames);
        let again = loop {
            match ChatClient::try_connect(&replicas.nginx.base, "crash", Some(&last_id)).await {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        killed_at.elapsed() < WAIT,
                        "no reconnect through nginx: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        reconnected_after = killed_at.elapsed();
        assert_ne!(replicas.instance_of(&again), victim);
        *client = again;
        history.push(earlier);
    }
    assert!(cut_off >= 2, "round robin gave the victim two clients");

    let job_of = |frames: &[Value]| {
        frames
            .iter()
            .find(|f| f["type"] == "message")
            .and_then(|f| f["jobId"].as_str())
            .map(str::to_owned)
    };
    assert_eq!(job_of(&history[0]).as_deref(), Some(job.as_str()));
    for (client, earlier) in clients.iter_mut().zip(history.iter_mut()) {
        let rest = client.until(WAIT, |f| is_answer_end(f, &job)).await;
        earlier.extend(rest);
    }
    let answered_after = killed_at.elapsed();
    // And the conversation goes on for everyone.
    clients[1].send("after the crash").await;
    for (client, frames) in clients.iter_mut().zip(history.iter_mut()) {
        let more = client.until(WAIT, |f| f["text"] == "after the crash").await;
        frames.extend(more);
    }
    for frames in &history {
        assert_ordered_once(frames);
        assert_eq!(
            frames, &history[0],
            "every client has the whole conversation, once"
        );
    }
    let last = history[0]
        .iter()
        .rev()
        .find(|f| is_answer_end(f, &job))
        .expect("the end");
    assert_eq!(last["event"], "task_completed", "{last}");
    assert_eq!(
        last["data"]["result"]["response"],
        expected_chat_response(prompt, 0)
    );
    println!(
        "recovery after SIGKILL of one of three instances: {cut_off} clients reconnected through nginx and resumed in {} ms; the interrupted answer completed for all {} clients {} ms after the kill",
        reconnected_after.as_millis(),
        clients.len(),
        answered_after.as_millis()
    );
}
