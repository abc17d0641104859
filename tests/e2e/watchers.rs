//! Live delivery (issue 12, parts 1 and 4): every watcher of an instance, SSE
//! or WebSocket, is served by the instance's event hub over a bounded number
//! of Redis connections; watchers are capped per socket, per key and per
//! instance with clear refusals; a slow watcher is dropped with the id to
//! resume from; a WebSocket cannot deadlock on its own backlog and refuses
//! messages over the body limit. Real redis-server, real `spool serve`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Queues of these tests: `chat` runs jobs; `held` is paused, so its jobs
/// wait (and stay watchable) until the test resumes it.
const QUEUES: &str = "[queues.chat]\nhandler = \"chat\"\n\n[queues.held]\nhandler = \"chat\"\n";

pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on our own process with a valid struct.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `INFO clients`'s `connected_clients`: every connection to the Redis,
/// this probe's own included.
pub fn connected_clients(redis: &Redis) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query(&mut redis.connection())
        .expect("INFO clients");
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|value| value.trim().parse().ok())
        .expect("connected_clients in INFO clients")
}

/// The resident memory of a process, from /proc, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub fn held_stack_options(hub: &str, concurrency: usize) -> HostOptions {
    HostOptions {
        concurrency,
        config: format!("{hub}\n{QUEUES}"),
        ..Default::default()
    }
}

/// Pauses `held` and submits `count` jobs to it: they wait, watchable.
pub async fn held_jobs(api: &Api, host: &Host, count: usize) -> Vec<String> {
    let (status, paused) = api
        .post(&host.url("/api/queues/held/pause"), &json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let (status, accepted) = api
            .post(
                &host.url("/api/queues/held/jobs"),
                &json!({"userId": "watched", "payload": {"prompt": format!("watched {i}")}}),
            )
            .await;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["jobId"].as_str().expect("jobId").to_owned());
    }
    ids
}

/// Appends `count` progress events of about `pad` bytes each to a job's
/// event stream, as a long job's handler would.
pub fn add_events(redis: &Redis, job: &str, count: usize, pad: usize) {
    let mut pipe = redis::pipe();
    for i in 0..count {
        pipe.cmd("XADD")
            .arg(format!("job_events:{job}"))
            .arg("*")
            .arg("event_type")
            .arg("task_progress")
            .arg("data")
            .arg(json!({"percent": 50, "step": format!("{i} {}", "x".repeat(pad))}).to_string())
            .arg("timestamp")
            .arg(0)
            .ignore();
    }
    pipe.query::<()>(&mut redis.connection()).expect("XADD");
}

/// One SSE watcher on a raw HTTP/1.0 connection (the body runs until the
/// server closes it, with no chunking): thousands of them stay cheap.
pub struct RawSse {
    stream: TcpStream,
    pub text: String,
}

/// Opens `path` as an SSE stream; a refusal comes back as (status, JSON body).
pub async fn raw_sse(
    base: &str,
    path: &str,
    token: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<RawSse, (u16, Value)> {
    let authority = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(id) = last_event_id {
        request.push_str(&format!("Last-Event-ID: {id}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(read == 1, "connection closed before the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    if status != 200 {
        let mut body = String::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut body)).await;
        return Err((
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        ));
    }
    Ok(RawSse {
        stream,
        text: String::new(),
    })
}

impl RawSse {
    /// Reads until the body contains `needle`; false if the stream ended first.
    pub async fn read_until(&mut self, needle: &str, timeout: Duration) -> bool {
        let mut buffer = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.text.contains(needle) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return self.text.contains(needle),
                Ok(Ok(n)) => self.text.push_str(&String::from_utf8_lossy(&buffer[..n])),
                Err(_) => panic!(
                    "no `{needle}` within {timeout:?}; got {} bytes ending {:?}",
                    self.text.len(),
                    &self.text[self.text.len().saturating_sub(300)..]
                ),
            }
        }
    }

    /// Reads to the end of the stream (the server closed it).
    pub async fn read_to_end(&mut self, timeout: Duration) {
        let mut rest = Vec::new();
        tokio::time::timeout(timeout, self.stream.read_to_end(&mut rest))
            .await
            .expect("the SSE stream ends by itself")
            .expect("read");
        self.text.push_str(&String::from_utf8_lossy(&rest));
    }

    /// Reads until `count` events with an id have come.
    pub async fn read_ids(&mut self, count: usize, timeout: Duration) {
        let mut buffer = vec![0u8; 64 << 10];
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut seen, mut scanned) = (0, 0);
        loop {
            // Whole frames only; each id line follows a newline (the first
            // frame is the state snapshot, which has none).
            if let Some(end) = self.text.rfind("\n\n")
                && end > scanned
            {
                seen += self.text[scanned..end].matches("\nid:").count();
                scanned = end;
            }
            if seen >= count {
                return;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buffer)).await {
                Ok(Ok(n)) if n > 0 => self.text.push_str(&String::from_utf8_lossy(&buffer[..n])),
                other => {
                    panic!("the stream ended or stalled after {seen} of {count} events: {other:?}")
                }
            }
        }
    }

    pub fn frames(&self) -> Vec<(Option<String>, String, Value)> {
        parse_sse(&self.text)
    }
}

/// A stream id as its two numbers, which is how Redis orders them.
fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().expect("ms"), seq.parse().expect("seq"))
}

pub fn ws_url(host: &Host) -> String {
    host.url("/ws").replace("http://", "ws://")
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON text frame, within `timeout`; None if the socket closed.
async fn next_frame(socket: &mut Socket, timeout: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(timeout, socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(text))) => {
                return Some(serde_json::from_str(text.as_str()).expect("JSON frame"));
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_watchers_share_the_instances_redis_connections() {
    let stack = Stack::start(held_stack_options("", 1)).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let jobs = held_jobs(api, host, 2).await;
    let token = admin_token();
    let before = connected_clients(redis);
    let mut watchers = Vec::new();
    for i in 0..200 {
        let path = format!("/stream/status/{}", jobs[i % 2]);
        let mut watcher = raw_sse(&host.base, &path, Some(&token), None)
            .await
            .expect("watching is accepted");
        assert!(watcher.read_until("task_queued", WAIT).await);
        watchers.push(watcher);
    }
    let during = connected_clients(redis);
    println!("Redis clients: {before} before, {during} with 200 SSE watchers");
    assert!(
        during <= before + 1,
        "Redis clients grew with watchers: {before} before, {during} with 200"
    );
    // Every watcher still gets the jobs' ends.
    let (status, _) = api
        .post(&host.url("/api/queues/held/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);
    for watcher in &mut watchers {
        assert!(watcher.read_until("task_completed", WAIT).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watching_an_unknown_job_is_refused_over_sse_and_websocket() {
    let stack = Stack::start(held_stack_options("", 0)).await;
    let Stack { host, .. } = &stack;
    let refused = raw_sse(&host.base, "/stream/status/no-such-job", None, None).await;
    let Err((status, body)) = refused else {
        panic!("an SSE stream of an unknown job was opened");
    };
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "job_not_found", "{body}");

    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    send(
        &mut socket,
        json!({"type": "watch", "jobId": "no-such-job"}),
    )
    .await;
    let frame = next_frame(&mut socket, WAIT).await.expect("a reply");
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "job_not_found", "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_whose_events_back_up_still_answers_its_next_frame() {
    // Five watches of a job with 20 MB of events, none read: the socket's
    // buffers fill and the server's backlog with them. Then one more frame.
    let stack = Stack::start(held_stack_options("", 0)).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let job = held_jobs(api, host, 1).await.remove(0);
    add_events(redis, &job, 4000, 1000);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    for _ in 0..5 {
        send(&mut socket, json!({"type": "watch", "jobId": job})).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(&mut socket, json!({"type": "dance"})).await;
    send(
        &mut socket,
        json!({"type": "watch", "jobId": "no-such-job"}),
    )
    .await;

    // The socket keeps answering: both replies arrive, among the events or
    // after watches that fell behind were dropped with the id to resume from.
    let mut codes = Vec::new();
    let mut events = 0;
    while codes.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(30), next_frame(&mut socket, WAIT))
            .await
            .expect("the socket answers within 30 s (no deadlock)")
            .expect("the socket stays open");
        match frame["type"].as_str() {
            Some("event") => events += 1,
            Some("error") if frame["code"] == "slow_consumer" => {
                assert_eq!(frame["jobId"], job.as_str(), "{frame}");
                assert!(frame["lastId"].is_string(), "{frame}");
            }
            Some("error") => codes.push(frame["code"].as_str().unwrap_or_default().to_owned()),
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
    assert_eq!(
        codes,
        ["invalid_field", "job_not_found"],
        "after {events} events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_message_over_the_body_limit_is_refused() {
    let stack = Stack::start(held_stack_options("", 0)).await;
    let Stack { host, .. } = &stack;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    let huge = json!({"type": "dance", "pad": "x".repeat(10 << 20)});
    // The server may stop reading mid-message, so the send itself may fail.
    let _ = socket.send(Message::Text(huge.to_string().into())).await;
    let mut refusal = None;
    loop {
        match tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("the server acts in time")
        {
            Some(Ok(Message::Text(text))) => panic!("the 10 MB message was read: {text}"),
            Some(Ok(Message::Close(frame))) => {
                refusal = frame;
                break;
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => break,
        }
    }
    let refusal = refusal.expect("a close frame saying why");
    assert_eq!(u16::from(refusal.code), 1009, "{refusal:?}");
    assert!(refusal.reason.contains("1048576"), "{refusal:?}");

    // A message within the limit is still answered on a new socket.
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    let fine = json!({"type": "dance", "pad": "x".repeat(500 << 10)});
    send(&mut socket, fine).await;
    let frame = next_frame(&mut socket, WAIT).await.expect("a reply");
    assert_eq!(frame["code"], "invalid_field", "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_over_the_caps_are_refused_and_closed_ones_free_their_slots() {
    let hub = "[hub]\nmax_watchers = 5\nmax_watchers_per_key = 3\nmax_watches_per_socket = 2\n\n[sessions]\nping_interval_ms = 100\n";
    let stack = Stack::start(held_stack_options(hub, 0)).await;
    let Stack { host, api, .. } = &stack;
    let jobs = held_jobs(api, host, 4).await;
    let token = admin_token();
    let status_path = |i: usize| format!("/stream/status/{}", jobs[i]);

    // Per key: the admin token may hold 3.
    let mut admin_watchers = Vec::new();
    for i in 0..3 {
        admin_watchers.push(
            raw_sse(&host.base, &status_path(i), Some(&token), None)
                .await
                .expect("within the key's cap"),
        );
    }
    let Err((status, body)) = raw_sse(&host.base, &status_path(3), Some(&token), None).await else {
        panic!("a 4th watcher of one key was accepted");
    };
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_watchers_for_key", "{body}");

    // Per socket: an anonymous WebSocket may follow 2 jobs.
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    for job in &jobs[..3] {
        send(&mut socket, json!({"type": "watch", "jobId": job})).await;
    }
    let mut refusals = Vec::new();
    while refusals.is_empty() {
        let frame = next_frame(&mut socket, WAIT).await.expect("open");
        if frame["type"] == "error" {
            refusals.push(frame);
        }
    }
    assert_eq!(
        refusals[0]["code"], "too_many_watches_on_socket",
        "{refusals:?}"
    );

    // Per instance: 3 + 2 = 5 watchers; a 6th from anyone is a 503.
    let Err((status, body)) = raw_sse(&host.base, &status_path(3), None, None).await else {
        panic!("a watcher over the instance's cap was accepted");
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_watchers", "{body}");

    // Closed sockets give their slots back (nothing outlives its socket).
    drop(socket);
    admin_watchers.truncate(1);
    let mut reopened = None;
    for _ in 0..100 {
        match raw_sse(&host.base, &status_path(3), Some(&token), None).await {
            Ok(watcher) => {
                reopened = Some(watcher);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    reopened.expect("a slot came free after its watcher left");
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url(host))
        .await
        .expect("websocket connects");
    send(&mut socket, json!({"type": "watch", "jobId": jobs[0]})).await;
    let frame = next_frame(&mut socket, WAIT).await.expect("open");
    assert_eq!(frame["type"], "event", "{frame}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_client_is_dropped_with_the_id_to_resume_from() {
    let hub = "[hub]\nbuffer_events = 16\n";
    let stack = Stack::start(held_stack_options(hub, 0)).await;
    let Stack {
        host, api, redis, ..
    } = &stack;
    let job = held_jobs(api, host, 1).await.remove(0);
    let path = format!("/stream/status/{job}");
    let mut slow = raw_sse(&host.base, &path, None, None)
        .await
        .expect("accepted");
    assert!(slow.read_until("task_queued", WAIT).await);
    // 20 MB of events, not read: more than the socket buffers plus 16 events.
    add_events(redis, &job, 4000, 5000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    slow.read_to_end(WAIT).await;
    let frames = slow.frames();
    let (_, last_event, last_data) = frames.last().expect("frames");
    assert_eq!(last_event, "stream_error", "{last_data}");
    assert_eq!(last_data["code"], "slow_consumer", "{last_data}");
    let resume_from = last_data["lastId"].as_str().expect("lastId").to_owned();
    let delivered = frames.iter().filter(|(id, ..)| id.is_some()).count();
    assert!(
        delivered < 4001,
        "the slow client was dropped early: {delivered}"
    );
    assert_eq!(
        frames
            .iter()
            .rev()
            .find_map(|(id, ..)| id.clone())
            .as_deref(),
        Some(resume_from.as_str()),
        "lastId is the last event the client got"
    );

    // Resuming from it gives exactly the rest.
    let mut resumed = raw_sse(&host.base, &path, None, Some(&resume_from))
        .await
        .expect("accepted");
    let all = stream_events(&mut redis.connection(), &format!("job_events:{job}"));
    let rest = all.len() - delivered;
    resumed.read_ids(rest, WAIT).await;
    let ids: Vec<String> = resumed
        .frames()
        .into_iter()
        .filter_map(|(id, ..)| id)
        .collect();
    assert_eq!(ids.len(), rest);
    assert!(ids.iter().all(|id| stream_id(id) > stream_id(&resume_from)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_cut_off_by_a_redis_restart_resume_from_their_last_id() {
    let mut stack = Stack::start(held_stack_options("", 0)).await;
    let job = held_jobs(&stack.api, &stack.host, 1).await.remove(0);
    let path = format!("/stream/status/{job}");
    let mut watcher = raw_sse(&stack.host.base, &path, None, None)
        .await
        .expect("accepted");
    assert!(watcher.read_until("task_queued", WAIT).await);
    // Past the AOF's once-a-second fsync, so the job survives the kill.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stack.redis.kill_and_restart();

    watcher.read_to_end(WAIT).await;
    let frames = watcher.frames();
    let (_, last_event, last_data) = frames.last().expect("frames");
    assert_eq!(last_event, "stream_error", "{frames:?}");
    assert_eq!(last_data["code"], "store_unavailable", "{last_data}");
    let queued_id = frames
        .iter()
        .find(|(_, event, _)| event == "task_queued")
        .and_then(|(id, ..)| id.clone())
        .expect("task_queued has an id");
    assert_eq!(last_data["lastId"], queued_id.as_str());

    // The hub reconnects by itself: resuming gets what came meanwhile, then
    // live events.
    add_events(&stack.redis, &job, 3, 10);
    let mut resumed = None;
    for _ in 0..100 {
        match raw_sse(&stack.host.base, &path, None, Some(&queued_id)).await {
            Ok(stream) => {
                resumed = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let mut resumed = resumed.expect("watching works again after the restart");
    resumed.read_ids(3, WAIT).await;
    add_events(&stack.redis, &job, 1, 10);
    resumed.read_ids(4, WAIT).await;
    let ids = resumed
        .frames()
        .iter()
        .filter(|(id, ..)| id.is_some())
        .count();
    assert_eq!(ids, 4, "{:?}", resumed.frames());
}
