//! `spool bench-limiter`: what one limiter check costs (p50/p99, beside a Redis
//! PING measured in the same run) and how closely a run of concurrent callers
//! follows the configured rate. Uses its own redis-server in a temp dir unless
//! `--redis-url` is given (then it writes only under a random backend id).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use spool_core::config::Fsync;
use spool_core::embedded_redis::EmbeddedRedis;
use spool_core::limiter::{Limiter, LimitsConfig, Scope};
use spool_core::models::{BackendConfig, BackendKind, OllamaApi};

#[derive(clap::Args, Debug)]
pub struct LimiterBenchArgs {
    /// Redis to use; omitted: a redis-server of its own in a temp dir.
    #[arg(long)]
    redis_url: Option<String>,
    /// Sequential checks for the cost measurement (and as many PINGs).
    #[arg(long, default_value_t = 5000)]
    checks: usize,
    /// Configured rate of the pacing run, calls per second.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Bucket capacity of the pacing run.
    #[arg(long, default_value_t = 5.0)]
    capacity: f64,
    /// Length of the pacing run in seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Concurrent callers in the pacing run.
    #[arg(long, default_value_t = 16)]
    callers: usize,
}

impl LimiterBenchArgs {
    /// Whether the run starts a redis-server of its own (no `--redis-url`).
    pub fn starts_redis(&self) -> bool {
        self.redis_url.is_none()
    }
}

pub async fn run(args: LimiterBenchArgs) -> Result<()> {
    if args.checks == 0
        || args.callers == 0
        || args.rate.is_nan()
        || args.rate <= 0.0
        || args.seconds.is_nan()
        || args.seconds <= 0.0
        || args.capacity < 1.0
    {
        bail!(
            "--checks, --callers, --rate and --seconds must be above 0 and --capacity at least 1"
        );
    }
    let dir = tempfile_dir()?;
    let (url, embedded) = match &args.redis_url {
        Some(url) => (url.clone(), None),
        None => {
            let server = EmbeddedRedis::start(&dir, Fsync::Everysec).await?;
            (server.url().to_owned(), Some(server))
        }
    };
    let result = measure(&args, &url).await;
    if let Some(server) = embedded {
        server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "spool-limiter-bench-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A backend no real instance uses, so the bench never touches real state.
fn bench_backend() -> BackendConfig {
    BackendConfig {
        kind: BackendKind::Ollama,
        url: format!("http://bench.invalid/{:016x}", fastrand::u64(..)),
        api_key: None,
        chat_model: "bench".into(),
        embed_model: "bench".into(),
        ollama_api: OllamaApi::Chat,
        request_timeout_ms: 0,
        forbidden_is_rate_limit: false,
    }
}

async fn measure(args: &LimiterBenchArgs, url: &str) -> Result<()> {
    let client = redis::Client::open(url)?;
    let mut redis = client.get_connection_manager().await?;
    println!("spool bench-limiter (Redis at {url})\n");

    // 1. Cost of one check, beside the cheapest possible round trip.
    let mut pings = Vec::with_capacity(args.checks);
    for _ in 0..args.checks {
        let started = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        pings.push(started.elapsed());
    }
    // A backend this slow gets no allowance (under 2 tokens per 10 ms): every
    // check is a call; a burst this large never makes one wait.
    let called = LimitsConfig {
        rate_per_sec: 100.0,
        capacity: 1e9,
        ..LimitsConfig::unpaced()
    };
    let (check50, check99) = check_times(&mut redis, called, args.checks).await?;
    let (spent50, spent99) = check_times(&mut redis, LimitsConfig::unpaced(), args.checks).await?;
    let (ping50, ping99) = percentiles(&mut pings);
    println!(
        "one limiter check ({} sequential, never waiting):",
        args.checks
    );
    println!(
        "  limiter check   p50 {:>7.1} us   p99 {:>7.1} us   (a script call each: a slow backend)",
        check50, check99
    );
    println!(
        "  fast backend    p50 {:>7.1} us   p99 {:>7.1} us   (most served by the allowance taken ahead)",
        spent50, spent99
    );
    println!(
        "  Redis PING      p50 {:>7.1} us   p99 {:>7.1} us   (baseline, same connection)",
        ping50, ping99
    );
    println!(
        "  check / PING    {:.2}x at p50\n",
        check50 / ping50.max(0.001)
    );

    // 2. Pacing: callers take slots as fast as the limiter hands them out.
    let config = LimitsConfig {
        rate_per_sec: args.rate,
        capacity: args.capacity,
        ..LimitsConfig::default()
    };
    let limiter = Arc::new(Limiter::new(redis.clone().into(), &bench_backend(), config));
    let started = Instant::now();
    let stop_at = started + Duration::from_secs_f64(args.seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.callers {
        let limiter = limiter.clone();
        tasks.spawn(async move {
            let mut times = Vec::new();
            // A slot beyond the end of the run is refused (not taken).
            while limiter.acquire(Scope::Backend, stop_at).await.is_ok() {
                times.push(started.elapsed().as_secs_f64());
            }
            times
        });
    }
    let mut times = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        times.extend(joined?);
    }
    times.sort_by(f64::total_cmp);
    let calls = times.len();
    let span = match (times.first(), times.last()) {
        (Some(first), Some(last)) if calls > 1 => last - first,
        _ => 0.0,
    };
    let steady = if span > 0.0 {
        (calls as f64 - args.capacity) / span
    } else {
        0.0
    };
    let window_max = max_in_window(&times, 1.0);
    println!(
        "pacing: {} callers, configured {} calls/s, capacity {}, {} s run:",
        args.callers, args.rate, args.capacity, args.seconds
    );
    println!("  calls granted        {calls}");
    println!(
        "  observed rate        {steady:.3} calls/s after the initial burst of {}",
        args.capacity
    );
    println!("  observed/configured  {:.4}", steady / args.rate);
    println!(
        "  most calls in any 1 s window: {window_max} (allowed: capacity + rate x 1 s = {})",
        args.capacity + args.rate
    );
    Ok(())
}

/// p50 and p99 of `checks` sequential checks of a fresh limiter under `config`.
async fn check_times(
    redis: &mut redis::aio::ConnectionManager,
    config: LimitsConfig,
    checks: usize,
) -> Result<(f64, f64)> {
    let limiter = Limiter::new(redis.clone().into(), &bench_backend(), config);
    // From a full bucket, whatever ran before.
    redis::cmd("DEL")
        .arg(limiter.key())
        .query_async::<()>(redis)
        .await?;
    let far = Instant::now() + Duration::from_secs(3600);
    let mut times = Vec::with_capacity(checks);
    for _ in 0..checks {
        let started = Instant::now();
        limiter.acquire(Scope::Backend, far).await?;
        times.push(started.elapsed());
    }
    Ok(percentiles(&mut times))
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |fraction: f64| {
        let index = ((samples.len() as f64 - 1.0) * fraction).round() as usize;
        samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    (at(0.5), at(0.99))
}

/// The most entries of sorted `times` within any window of `width` seconds.
pub fn max_in_window(times: &[f64], width: f64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] > width {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}
