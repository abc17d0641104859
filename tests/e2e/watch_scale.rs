//! Issue 12's scale check: 5,000 watchers, SSE and WebSocket mixed, on one
//! `spool serve`, read through a bounded number of Redis connections, while
//! the instance keeps running jobs; one more watcher is refused clearly.
//! Prints the Redis client count and the host's RSS (figures, not limits).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;
use crate::watchers::{
    Socket, connected_clients, held_jobs, held_stack_options, raise_fd_limit, raw_sse, rss_kib,
    send, ws_url,
};

const WAIT: Duration = Duration::from_secs(60);
const JOBS: usize = 100;
const SSE_WATCHERS: usize = 4_000;
const SOCKETS: usize = 10;
/// Each socket watches every job once: 10 x 100 = 1,000 WebSocket watchers.
const WATCHES_PER_SOCKET: usize = JOBS;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_mixed_watchers_share_a_bounded_number_of_redis_connections() {
    raise_fd_limit();
    let total = SSE_WATCHERS + SOCKETS * WATCHES_PER_SOCKET;
    let hub = format!(
        "[hub]\nmax_watchers = {total}\nmax_watchers_per_key = {total}\nmax_watches_per_socket = {WATCHES_PER_SOCKET}\n"
    );
    let stack = Stack::start(held_stack_options(&hub, 2)).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let jobs = held_jobs(api, host, JOBS).await;
    let token = admin_token();
    let before = connected_clients(redis);
    let rss_before = rss_kib(host.pid());
    let started = Instant::now();

    // SSE watchers on raw connections, 40 per job, each past its first event.
    let opened: Vec<_> = futures_util::stream::iter(0..SSE_WATCHERS)
        .map(|i| {
            let (base, token, job) = (host.base.clone(), token.clone(), jobs[i % JOBS].clone());
            async move {
                let path = format!("/stream/status/{job}");
                let mut watcher = raw_sse(&base, &path, Some(&token), None)
                    .await
                    .expect("within the caps");
                assert!(watcher.read_until("task_queued", WAIT).await);
                watcher
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let mut sse = opened;

    // WebSocket watchers: every socket follows every job.
    let mut sockets = Vec::new();
    for _ in 0..SOCKETS {
        let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
            .await
            .expect("websocket connects");
        for job in &jobs {
            send(&mut socket, json!({"type": "watch", "jobId": job})).await;
        }
        sockets.push(socket);
    }
    for socket in &mut sockets {
        let queued = events_named(socket, "task_queued", WATCHES_PER_SOCKET).await;
        assert_eq!(queued, WATCHES_PER_SOCKET);
    }
    let opening = started.elapsed();
    let during = connected_clients(redis);
    let rss_during = rss_kib(host.pid());
    println!(
        "{total} watchers ({SSE_WATCHERS} SSE, {} WebSocket on {SOCKETS} sockets) opened in {:.1} s",
        SOCKETS * WATCHES_PER_SOCKET,
        opening.as_secs_f64()
    );
    println!("Redis clients: {before} before, {during} with {total} watchers");
    println!(
        "host RSS: {} MiB before, {} MiB with {total} watchers",
        rss_before / 1024,
        rss_during / 1024
    );
    assert!(
        during <= before + 1,
        "Redis clients grew with watchers: {before} before, {during} with {total}"
    );

    // Over the instance's cap: a clear refusal on both transports.
    let Err((status, body)) = raw_sse(
        &host.base,
        &format!("/stream/status/{}", jobs[0]),
        None,
        None,
    )
    .await
    else {
        panic!("watcher {} was accepted", total + 1);
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_watchers", "{body}");
    let (mut extra, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    send(&mut extra, json!({"type": "watch", "jobId": jobs[0]})).await;
    let refusal = next_text(&mut extra).await;
    assert_eq!(refusal["code"], "too_many_watchers", "{refusal}");

    // The instance keeps running jobs meanwhile.
    let submitted = Instant::now();
    let (status, accepted) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "busy", "prompt": "still serving?"}),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["jobId"].as_str().expect("jobId");
    let done = api.wait_terminal(host, id, WAIT).await;
    assert_eq!(done["state"], "completed", "{done}");
    println!(
        "a job submitted meanwhile completed in {} ms",
        submitted.elapsed().as_millis()
    );

    // Every watcher sees its job end.
    let (status, _) = api
        .post(&host.url("/api/queues/held/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let ended = Instant::now();
    for watcher in &mut sse {
        assert!(watcher.read_until("task_completed", WAIT).await);
    }
    for socket in &mut sockets {
        let completed = events_named(socket, "task_completed", WATCHES_PER_SOCKET).await;
        assert_eq!(completed, WATCHES_PER_SOCKET);
    }
    println!(
        "all {total} watchers saw their job complete within {:.1} s of the resume",
        ended.elapsed().as_secs_f64()
    );
}

async fn next_text(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).expect("JSON frame");
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended: {other:?}"),
        }
    }
}

/// Reads until `count` event frames named `event` came; errors fail the test.
async fn events_named(socket: &mut Socket, event: &str, count: usize) -> usize {
    let mut seen = 0;
    while seen < count {
        let frame = next_text(socket).await;
        match frame["type"].as_str() {
            Some("event") if frame["event"] == event => seen += 1,
            Some("event") => {}
            _ => panic!("unexpected frame: {frame}"),
        }
    }
    seen
}
