//! `spool bench-hub`: live delivery at scale. Starts its own redis-server (temp
//! dir, AOF everysec) and one instance in-process (no workers, so the watched
//! jobs wait), opens `--watchers` SSE streams on raw loopback connections
//! spread over `--jobs` jobs, then appends `--events` events to the jobs'
//! streams and prints the delay from just before each XADD to the moment each
//! client has read the event (p50/p99/max over every client and event), beside
//! a Redis PING measured in the same run, plus the Redis client count and RSS.
//! The clients run in this process too, so RSS and delays include theirs.
//! Fixed counts, loopback only; owns nothing but its temporary files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use spool_core::config::{Config, Fsync};
use spool_core::embedded_redis::EmbeddedRedis;

#[derive(clap::Args, Debug)]
pub struct BenchHubArgs {
    /// SSE clients watching at once.
    #[arg(long, default_value_t = 5000)]
    pub watchers: usize,
    /// Jobs they watch (clients are spread evenly).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Events appended, round robin over the jobs, `--interval-ms` apart.
    #[arg(long, default_value_t = 50)]
    pub events: usize,
    /// Room for one event to reach every client before the next (both ends
    /// share this machine's cores); a shorter interval measures the backlog.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
}

pub async fn run(args: BenchHubArgs) -> Result<()> {
    if !(1..=20_000).contains(&args.watchers)
        || !(1..=1000).contains(&args.jobs)
        || !(1..=10_000).contains(&args.events)
    {
        bail!("--watchers must be 1..=20000, --jobs 1..=1000 and --events 1..=10000");
    }
    let dir = std::env::temp_dir().join(format!(
        "spool-bench-hub-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let redis = EmbeddedRedis::start(&dir, Fsync::Everysec).await?;
    let mut config = Config::default();
    config.redis.url = Some(redis.url().to_owned());
    config.listen = "127.0.0.1:0".parse()?;
    config.workers.concurrency = 0;
    config.sessions.ping_interval_ms = 60_000;
    config.hub.max_watchers = args.watchers;
    config.hub.max_watchers_per_key = args.watchers;
    let running = crate::app::start(config).await?;
    let result = measure(&args, redis.url(), &running.addr.to_string()).await;
    running.stop().await;
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(args: &BenchHubArgs, redis_url: &str, authority: &str) -> Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut redis = client.get_connection_manager().await?;
    let jobs = submit_jobs(authority, args.jobs).await?;
    let clients_before = connected_clients(&mut redis).await?;

    let opened = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::with_capacity(args.watchers);
    for i in 0..args.watchers {
        let job = i % args.jobs;
        let stream = open_sse(authority, &format!("/stream/status/{}", jobs[job])).await?;
        // The events of this client's job: every `jobs`-th, from `job`.
        let expected = (job..args.events).step_by(args.jobs).count();
        readers.push((
            job,
            tokio::spawn(read_events(stream, expected, ready.clone())),
        ));
    }
    wait_for(&ready, args.watchers, "every client has its first event").await?;
    let opening = opened.elapsed();
    let clients_during = connected_clients(&mut redis).await?;

    let mut ping = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        ping.push(started.elapsed());
    }

    let mut sent = Vec::with_capacity(args.events);
    for i in 0..args.events {
        let data = json!({"percent": 0, "step": i.to_string()}).to_string();
        let started = Instant::now();
        redis::cmd("XADD")
            .arg(format!("job_events:{}", jobs[i % args.jobs]))
            .arg("*")
            .arg("event_type")
            .arg("task_progress")
            .arg("data")
            .arg(data)
            .arg("timestamp")
            .arg(spool_core::queue::now_ms())
            .query_async::<String>(&mut redis)
            .await?;
        sent.push(started);
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    let rss = rss_mib();

    // Each client stops after its job's share of the events.
    let mut delays = Vec::with_capacity(args.watchers * args.events / args.jobs);
    let deadline = Instant::now() + Duration::from_secs(30);
    for (job, reader) in readers {
        let expected: Vec<usize> = (job..args.events).step_by(args.jobs).collect();
        let received = tokio::time::timeout_at(deadline.into(), reader)
            .await
            .context("clients still reading 30 s after the last event")???;
        for step in &expected {
            let at = received
                .iter()
                .find(|(s, _)| s == step)
                .map(|(_, at)| *at)
                .with_context(|| format!("a client of job {job} missed event {step}"))?;
            delays.push(at.saturating_duration_since(sent[*step]));
        }
    }
    ping.sort();
    delays.sort();
    println!(
        "spool bench-hub: {} SSE watchers on {} job(s), {} events {} ms apart; one instance, embedded redis-server, loopback; clients in-process",
        args.watchers, args.jobs, args.events, args.interval_ms
    );
    println!(
        "  watchers opened in {:.1} s; Redis clients {clients_before} before, {clients_during} with all watchers; RSS (instance + clients) {rss} MiB",
        opening.as_secs_f64()
    );
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p99 ms", "max ms", "p50/PING"
    );
    let ping_p50 = percentile(&ping, 0.5);
    for (name, samples) in [
        ("baseline: Redis PING", &ping),
        ("XADD -> SSE client read", &delays),
    ] {
        let p50 = percentile(samples, 0.5);
        println!(
            "{name:<34} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>8.1}x",
            samples.len(),
            p50,
            percentile(samples, 0.99),
            percentile(samples, 1.0),
            p50 / ping_p50.max(1e-9)
        );
    }
    Ok(())
}

/// Jobs that wait (the instance has no workers), to be watched.
async fn submit_jobs(authority: &str, count: usize) -> Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut jobs = Vec::with_capacity(count);
    for i in 0..count {
        let body = json!({"userId": "bench", "prompt": format!("watched {i}")});
        let reply: Value = serde_json::from_str(
            &http
                .post(format!("http://{authority}/api/chat"))
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await?
                .text()
                .await?,
        )?;
        jobs.push(
            reply["jobId"]
                .as_str()
                .with_context(|| format!("submission refused: {reply}"))?
                .to_owned(),
        );
    }
    Ok(jobs)
}

/// An SSE request on a raw HTTP/1.0 connection (the body runs to the close,
/// unchunked), past its response head.
async fn open_sse(authority: &str, path: &str) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            bail!("the connection closed before the response head");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.0 200") && !head.starts_with(b"HTTP/1.1 200") {
        bail!(
            "SSE stream refused: {}",
            String::from_utf8_lossy(&head).lines().next().unwrap_or("")
        );
    }
    Ok(stream)
}

/// Reads `expected` `task_progress` events; returns each one's step number
/// with the moment its bytes were read. Counts itself `ready` at its first
/// event (the job's `task_queued`).
async fn read_events(
    mut stream: TcpStream,
    expected: usize,
    ready: Arc<AtomicUsize>,
) -> Result<Vec<(usize, Instant)>> {
    let mut received = Vec::new();
    let mut text = String::new();
    let mut buffer = [0u8; 4096];
    let mut counted = false;
    while received.len() < expected || !counted {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            bail!("the server ended an SSE stream early: {text}");
        }
        let at = Instant::now();
        text.push_str(&String::from_utf8_lossy(&buffer[..read]));
        while let Some(end) = text.find("\n\n") {
            let frame: String = text.drain(..end + 2).collect();
            if !counted && frame.contains("task_queued") {
                counted = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            let step = frame
                .lines()
                .find_map(|line| line.strip_prefix("data:"))
                .and_then(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .filter(|event| event["type"] == "task_progress")
                .and_then(|event| event["data"]["step"].as_str()?.parse().ok());
            if let Some(step) = step {
                received.push((step, at));
            }
        }
    }
    Ok(received)
}

async fn wait_for(counter: &AtomicUsize, target: usize, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            bail!(
                "timed out waiting until {what} ({} of {target})",
                counter.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn connected_clients(redis: &mut (impl redis::aio::ConnectionLike + Send)) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("clients").query_async(redis).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("connected_clients:"))
        .and_then(|value| value.trim().parse().ok())
        .context("connected_clients in INFO clients")
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib / 1024)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
