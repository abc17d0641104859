//! `spool bench-sessions`: latency of the session/message store (design D)
//! beside the figures that design claimed: create < 10 ms, append < 5 ms, task
//! update < 15 ms, load < 20 ms, SSE event delay < 100 ms.
//!
//! Starts its own redis-server (temp dir, AOF everysec) and one spool instance
//! on loopback (no workers; the stub model), then times the store's
//! operations as an instance performs them (one Lua call or read each) and
//! the delay from an append to its arrival at an SSE client of the instance.
//! Each figure is also given as a ratio to a Redis PING measured in the same
//! run. Fixed counts, loopback only; owns nothing but its temporary files.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};

use spool_core::config::{Config, Fsync};
use spool_core::embedded_redis::EmbeddedRedis;
use spool_core::store::{SessionsConfig, Store, TaskChange};

#[derive(clap::Args, Debug)]
pub struct BenchSessionsArgs {
    /// Timed calls per store operation.
    #[arg(long, default_value_t = 1000)]
    pub operations: usize,
    /// Events whose SSE delay is measured (sent 5 ms apart).
    #[arg(long, default_value_t = 300)]
    pub sse_events: usize,
}

/// One measured operation.
struct Row {
    name: &'static str,
    /// Design D's claim; infinite for the baseline, which has none.
    claim_ms: f64,
    samples: Vec<Duration>,
}

pub async fn run(args: BenchSessionsArgs) -> Result<()> {
    if args.operations == 0
        || args.sse_events == 0
        || args.operations > 100_000
        || args.sse_events > 10_000
    {
        bail!("--operations must be 1..=100000 and --sse-events 1..=10000");
    }
    let dir = tempfile_dir()?;
    let redis = EmbeddedRedis::start(&dir, Fsync::Everysec).await?;
    let mut config = Config::default();
    config.redis.url = Some(redis.url().to_owned());
    config.listen = "127.0.0.1:0".parse()?;
    config.workers.concurrency = 0;
    config.sessions.ping_interval_ms = 60_000;
    let running = crate::app::start(config).await?;
    let result = measure(&args, redis.url(), &format!("http://{}", running.addr)).await;
    running.stop().await;
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    print(&args, &rows);
    Ok(())
}

async fn measure(args: &BenchSessionsArgs, redis_url: &str, base: &str) -> Result<Vec<Row>> {
    let client = redis::Client::open(redis_url)?;
    let store = Store::new(
        client.get_connection_manager().await?.into(),
        SessionsConfig::default(),
        Default::default(),
    );
    let session = store
        .create_session(&json!({"bench": true}), None, None)
        .await?;
    let n = args.operations;

    // The baseline: one Redis round trip on the same kind of connection.
    let mut redis = client.get_connection_manager().await?;
    let mut ping = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        ping.push(started.elapsed());
    }

    let mut create = Vec::with_capacity(n);
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        messages.push(store.create_message(&session, "assistant", None).await?);
        create.push(started.elapsed());
    }

    let message = &messages[0];
    let mut append = Vec::with_capacity(n);
    for i in 0..n {
        let piece = format!("token {i} ");
        let started = Instant::now();
        store.append_text(&session, message, &piece).await?;
        append.push(started.elapsed());
    }

    // Task updates: progress reports, and completions that replace a placeholder.
    let mut update = Vec::with_capacity(n);
    let task = store.start_task(&session, message, "long task").await?;
    for i in 0..n / 2 {
        let change = TaskChange::Progress {
            progress: Some(i as f32 / n as f32),
            step: Some(format!("step {i}")),
        };
        let started = Instant::now();
        store.update_task(&session, message, &task, change).await?;
        update.push(started.elapsed());
    }
    let target = &messages[1];
    for i in 0..n - n / 2 {
        let task = store
            .start_task(&session, target, &format!("task {i}"))
            .await?;
        let result = Some(json!({"type": "markdown", "text": format!("result {i}")}));
        let started = Instant::now();
        store
            .update_task(&session, target, &task, TaskChange::Completed { result })
            .await?;
        update.push(started.elapsed());
    }

    // Loads: a message with text, 20 small blocks and one 50 KB image (left a reference).
    let loaded = &messages[2];
    store
        .append_text(&session, loaded, &"lorem ipsum ".repeat(200))
        .await?;
    for i in 0..20 {
        store
            .add_content(
                &session,
                loaded,
                &json!({"type": "code", "language": "rust", "code": format!("fn f{i}() {{}}")}),
            )
            .await?;
    }
    store
        .add_content(
            &session,
            loaded,
            &json!({"type": "image", "base64": "A".repeat(50 * 1024), "caption": "bench"}),
        )
        .await?;
    let mut load = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let snapshot = store.load(loaded, false).await?;
        load.push(started.elapsed());
        if snapshot.is_none() {
            bail!("the benchmark message vanished");
        }
    }
    let mut load_full = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        store.load(loaded, true).await?;
        load_full.push(started.elapsed());
    }

    let sse = sse_delays(&store, &session, &messages[3], base, args.sse_events).await?;
    Ok(vec![
        Row {
            name: "baseline: Redis PING",
            claim_ms: f64::INFINITY,
            samples: ping,
        },
        Row {
            name: "create message",
            claim_ms: 10.0,
            samples: create,
        },
        Row {
            name: "append text",
            claim_ms: 5.0,
            samples: append,
        },
        Row {
            name: "task update",
            claim_ms: 15.0,
            samples: update,
        },
        Row {
            name: "load snapshot",
            claim_ms: 20.0,
            samples: load,
        },
        Row {
            name: "load + 50 KB content",
            claim_ms: 20.0,
            samples: load_full,
        },
        Row {
            name: "SSE event delay",
            claim_ms: 100.0,
            samples: sse,
        },
    ])
}

/// Appends `count` events 5 ms apart while an SSE client of the instance
/// reads them; each delay runs from just before the append to the moment the
/// client has parsed the event.
async fn sse_delays(
    store: &Store,
    session: &str,
    message: &str,
    base: &str,
    count: usize,
) -> Result<Vec<Duration>> {
    let url = format!("{base}/api/v1/sessions/{session}/messages/{message}/stream");
    let response = reqwest::Client::new()
        .get(&url)
        .send()
        .await
        .context("opening the SSE stream")?;
    if !response.status().is_success() {
        bail!("SSE stream answered {}", response.status());
    }
    let received: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                let now = Instant::now();
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let data = frame
                        .lines()
                        .find_map(|line| line.strip_prefix("data:"))
                        .map(str::trim);
                    let seq = data
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .and_then(|v| v["seq"].as_u64());
                    if let Some(seq) = seq {
                        received
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(seq, now);
                    }
                }
            }
        })
    };
    // The stream starts with message_start (seq 1); wait until the client has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&1)
    {
        if Instant::now() > deadline {
            bail!("the SSE client never received message_start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let started = Instant::now();
        let seq = store
            .append_text(session, message, &format!("delta {i} "))
            .await?;
        sent.push((seq, started));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.complete(session, message).await?;
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    let received = received.lock().unwrap_or_else(|p| p.into_inner());
    let delays: Vec<Duration> = sent
        .iter()
        .filter_map(|(seq, started)| {
            received
                .get(seq)
                .map(|at| at.saturating_duration_since(*started))
        })
        .collect();
    if delays.len() != count {
        bail!("the SSE client received {} of {count} events", delays.len());
    }
    Ok(delays)
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn print(args: &BenchSessionsArgs, rows: &[Row]) {
    println!(
        "spool bench-sessions: {} calls per store operation, {} SSE events; one instance, embedded redis-server (AOF everysec), loopback",
        args.operations, args.sse_events
    );
    println!(
        "{:<22} {:>6} {:>9} {:>9} {:>9} {:>9}  {:<16} p99 within",
        "operation", "n", "p50 ms", "p99 ms", "max ms", "p50/PING", "design D claim"
    );
    let baseline_p50 = rows.first().map_or(0.0, |row| {
        let mut sorted = row.samples.clone();
        sorted.sort();
        percentile(&sorted, 0.5)
    });
    for row in rows {
        let mut sorted = row.samples.clone();
        sorted.sort();
        let (p50, p99, max) = (
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99),
            percentile(&sorted, 1.0),
        );
        let (claim, within) = if row.claim_ms.is_finite() {
            let within = if p99 < row.claim_ms { "yes" } else { "NO" };
            (format!("< {} ms", row.claim_ms), within)
        } else {
            ("-".to_owned(), "-")
        };
        println!(
            "{:<22} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>8.1}x  {:<16} {}",
            row.name,
            sorted.len(),
            p50,
            p99,
            max,
            p50 / baseline_p50.max(1e-9),
            claim,
            within
        );
    }
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "spool-bench-sessions-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
