//! `spool bench-chat`: design B's message latency across replicas. Starts its
//! own redis-server (temp dir, AOF everysec) and `--instances` instances
//! in-process on it (no workers, no bot: messages only), opens `--clients`
//! WebSockets to one conversation spread round robin over the instances,
//! then sends `--messages` messages from one more client on the first
//! instance and prints the delay from just before each send to the moment
//! each client has read it (p50/p99/max, overall and per receiving
//! instance), beside a Redis PING measured in the same run. Every client
//! must get every message exactly once and in order, or the run fails.
//! The clients run in this process too, on the same cores. Fixed counts,
//! loopback only; owns nothing but its temporary files.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use spool_core::config::{Config, Fsync};
use spool_core::embedded_redis::EmbeddedRedis;

#[derive(clap::Args, Debug)]
pub struct BenchChatArgs {
    /// WebSocket clients in the conversation.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Instances sharing the Redis (the clients are spread over them).
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// Messages sent, `--interval-ms` apart.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Room for one message to reach every client before the next.
    #[arg(long, default_value_t = 50)]
    pub interval_ms: u64,
}

pub async fn run(args: BenchChatArgs) -> Result<()> {
    if !(1..=10_000).contains(&args.clients)
        || !(1..=8).contains(&args.instances)
        || !(1..=10_000).contains(&args.messages)
    {
        bail!("--clients must be 1..=10000, --instances 1..=8 and --messages 1..=10000");
    }
    let dir = std::env::temp_dir().join(format!(
        "spool-bench-chat-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let redis = EmbeddedRedis::start(&dir, Fsync::Everysec).await?;
    let mut instances = Vec::new();
    let mut started = Ok(());
    for _ in 0..args.instances {
        let mut config = Config::default();
        config.redis.url = Some(redis.url().to_owned());
        config.listen = "127.0.0.1:0".parse()?;
        config.workers.concurrency = 0;
        config.conversations.bot_queue = String::new();
        config.conversations.max_clients = args.clients + 1;
        match crate::app::start(config).await {
            Ok(running) => instances.push(running),
            Err(error) => {
                started = Err(error);
                break;
            }
        }
    }
    let result = match started {
        Ok(()) => {
            let bases: Vec<String> = instances.iter().map(|r| r.addr.to_string()).collect();
            measure(&args, redis.url(), &bases).await
        }
        Err(error) => Err(error),
    };
    for running in instances {
        running.stop().await;
    }
    redis.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(authority: &str) -> Result<Socket> {
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{authority}/ws/bench"))
        .await
        .with_context(|| format!("a conversation socket on {authority}"))?;
    Ok(socket)
}

async fn measure(args: &BenchChatArgs, redis_url: &str, bases: &[String]) -> Result<()> {
    let client = redis::Client::open(redis_url)?;
    let mut redis = client.get_connection_manager().await?;
    let ready = Arc::new(AtomicUsize::new(0));
    let opened = Instant::now();
    let mut readers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let instance = i % bases.len();
        let socket = connect(&bases[instance]).await?;
        readers.push((
            instance,
            tokio::spawn(read_messages(socket, args.messages, ready.clone())),
        ));
    }
    let mut sender = connect(&bases[0]).await?;
    // Everyone is in the conversation once everyone has read the warm-up.
    sender.send(Message::Text("warm-up".into())).await?;
    wait_for(&ready, args.clients).await?;
    let opening = opened.elapsed();

    let mut ping = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let started = Instant::now();
        redis::cmd("PING").query_async::<()>(&mut redis).await?;
        ping.push(started.elapsed());
    }
    let mut sent = Vec::with_capacity(args.messages);
    for i in 0..args.messages {
        sent.push(Instant::now());
        sender.send(Message::Text(format!("m{i}").into())).await?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }

    let mut all = Vec::new();
    let mut per_instance = vec![Vec::new(); bases.len()];
    let deadline = Instant::now() + Duration::from_secs(30);
    for (instance, reader) in readers {
        let received = tokio::time::timeout_at(deadline.into(), reader)
            .await
            .context("clients still reading 30 s after the last message")???;
        for (number, at) in received.into_iter().enumerate() {
            let delay = at.saturating_duration_since(sent[number]);
            all.push(delay);
            per_instance[instance].push(delay);
        }
    }
    ping.sort();
    all.sort();
    println!(
        "spool bench-chat: {} WebSocket clients in one conversation over {} instances (round robin), {} messages {} ms apart from a client of instance 1; embedded redis-server, loopback; clients in-process",
        args.clients,
        bases.len(),
        args.messages,
        args.interval_ms
    );
    println!(
        "  clients joined in {:.1} s; every client got every message once, in order",
        opening.as_secs_f64()
    );
    println!(
        "{:<40} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "", "n", "p50 ms", "p99 ms", "max ms", "p50/PING"
    );
    let ping_p50 = percentile(&ping, 0.5);
    let mut rows = vec![
        ("baseline: Redis PING".to_owned(), ping),
        ("send -> read, every client".to_owned(), all),
    ];
    for (index, mut delays) in per_instance.into_iter().enumerate() {
        delays.sort();
        rows.push((format!("  clients of instance {}", index + 1), delays));
    }
    for (name, samples) in &rows {
        let p50 = percentile(samples, 0.5);
        println!(
            "{name:<40} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>8.1}x",
            samples.len(),
            p50,
            percentile(samples, 0.99),
            percentile(samples, 1.0),
            p50 / ping_p50.max(1e-9)
        );
    }
    Ok(())
}

/// Reads the warm-up (counting itself `ready`), then `expected` messages
/// `m0`, `m1`, ... in order; returns when each was read.
async fn read_messages(
    mut socket: Socket,
    expected: usize,
    ready: Arc<AtomicUsize>,
) -> Result<Vec<Instant>> {
    let mut received = Vec::with_capacity(expected);
    let mut warmed = false;
    while received.len() < expected {
        let frame = match socket.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            other => bail!("a conversation socket ended early: {other:?}"),
        };
        let at = Instant::now();
        let frame: Value = serde_json::from_str(frame.as_str())?;
        let text = frame["text"].as_str().unwrap_or_default();
        if !warmed {
            if text == "warm-up" {
                warmed = true;
                ready.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        let wanted = format!("m{}", received.len());
        if text != wanted {
            bail!("a client got `{text}` where `{wanted}` was due");
        }
        received.push(at);
    }
    Ok(received)
}

async fn wait_for(counter: &AtomicUsize, target: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while counter.load(Ordering::Relaxed) < target {
        if Instant::now() > deadline {
            bail!(
                "timed out waiting until every client read the warm-up ({} of {target})",
                counter.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
