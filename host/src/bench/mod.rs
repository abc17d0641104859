//! `spool bench`: drives short jobs through the whole path (HTTP submit -> Wasm
//! priority rule -> Redis stream -> worker -> Wasm handler -> stub model with zero
//! latency -> ack) on an instance started in-process with its own redis-server in
//! a temp dir, and prints throughput, per-job Wasm cost and submit->start latency,
//! beside baselines measured in the same run. Loopback only; bounded counts.

mod budget;
pub mod chat;
pub mod cluster;
pub mod compare;
pub mod hub;
mod instance;
pub mod limiter;
pub mod paced;
mod paced_runs;
pub mod sessions;
mod waits;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::future::BoxFuture;

use crate::BUILT_IN;
use spool_core::config::Config;
use spool_core::models::{ChatReply, ChatRequest, ModelError};
use spool_runtime::{Job, JobHost, Limits, Runtime};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Jobs to push through the whole path.
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// Workers of the benchmarked instance.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Concurrent HTTP clients submitting.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Calls per Wasm micro-benchmark.
    #[arg(long, default_value_t = 2000)]
    wasm_calls: usize,
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.jobs == 0 || args.clients == 0 || args.concurrency == 0 {
        bail!("--jobs, --clients and --concurrency must be above 0");
    }
    println!(
        "spool bench: {} jobs, {} workers, {} clients (loopback, stub model with zero latency)\n",
        args.jobs, args.concurrency, args.clients
    );
    wasm_costs(args.wasm_calls).await?;
    whole_path(&args).await
}

/// Instantiate + call + drop of each hook, in a fresh instance each time.
async fn wasm_costs(calls: usize) -> Result<()> {
    let runtime = Runtime::new(Limits {
        deadline: Duration::from_secs(10),
        memory_bytes: 64 << 20,
        max_instances: 16,
        max_model_calls: 8,
        ..Limits::default()
    })?;
    let (_, bytes) = BUILT_IN
        .iter()
        .find(|(name, _)| *name == "chat")
        .context("chat handler is built in")?;
    let compile_started = Instant::now();
    let handler = runtime.load("chat", bytes)?;
    let compile = compile_started.elapsed();
    let job = Job {
        id: "bench".into(),
        queue: "chat".into(),
        user_id: "u".into(),
        user_tier: String::new(),
        priority: 5,
        payload:
            r#"{"prompt":"hello there","conversationHistory":[{"role":"user","content":"hi"}]}"#
                .into(),
        attempt: 1,
    };
    let host: Arc<dyn JobHost> = Arc::new(CannedHost);
    // Warm up caches and the instance pool.
    for _ in 0..20 {
        let _ = runtime.admit(&handler, &job).await;
    }
    let started = Instant::now();
    for _ in 0..calls {
        let _ = runtime.admit(&handler, &job).await;
    }
    let admit = started.elapsed() / calls as u32;
    let started = Instant::now();
    for _ in 0..calls {
        let outcome = runtime.handle(&handler, &job, host.clone()).await;
        if !matches!(outcome, Ok(Ok(_))) {
            bail!("the chat handler failed in the benchmark");
        }
    }
    let handle = started.elapsed() / calls as u32;
    println!(
        "Wasm (chat handler, {} KB, fresh pooled instance per call, {calls} calls each)",
        bytes.len() / 1024
    );
    println!(
        "  compile component          {:>10.1} ms (once per version)",
        ms(compile)
    );
    println!(
        "  admit  (priority rule)     {:>10.1} us per call",
        us(admit)
    );
    println!(
        "  handle (whole job, canned model reply) {:>4.1} us per call",
        us(handle)
    );
    println!(
        "  per-job Wasm cost          {:>10.1} us (admit + handle)\n",
        us(admit + handle)
    );
    Ok(())
}

/// A model that answers at once, to measure the guest alone.
struct CannedHost;

impl JobHost for CannedHost {
    fn chat(&self, request: ChatRequest) -> BoxFuture<'_, Result<ChatReply, ModelError>> {
        Box::pin(async move {
            Ok(ChatReply {
                text: format!("{} messages", request.messages.len()),
                model: "canned".into(),
                prompt_tokens: None,
                completion_tokens: None,
                finish_reason: Some("stop".into()),
            })
        })
    }
    fn embed(
        &self,
        _model: Option<String>,
        texts: Vec<String>,
    ) -> BoxFuture<'_, Result<Vec<Vec<f32>>, ModelError>> {
        Box::pin(async move { Ok(texts.iter().map(|_| vec![0.0; 8]).collect()) })
    }
    fn progress(&self, _percent: u8, _step: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn emit(&self, _event_type: String, _data: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn state_get(&self, _key: String) -> BoxFuture<'_, Option<String>> {
        Box::pin(async { None })
    }
    fn state_set(&self, _key: String, _value: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
    fn state_delete(&self, _key: String) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

async fn whole_path(args: &BenchArgs) -> Result<()> {
    let data = std::env::temp_dir().join(format!("spool-bench-{}", std::process::id()));
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    config.redis.data_dir = data.clone();
    config.workers.concurrency = args.concurrency;
    // This bench measures the job path, not the pacing (see `spool bench-limiter`).
    config.limits = spool_core::limiter::LimitsConfig::unpaced();
    config
        .queues
        .get_mut("chat")
        .context("chat queue")?
        .max_waiting = args.jobs as u64 + 1;
    let running = crate::app::start(config).await?;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let result = drive(&client, &base, args).await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&data);
    result
}

async fn drive(client: &reqwest::Client, base: &str, args: &BenchArgs) -> Result<()> {
    // Baseline: the same clients hitting GET /health (HTTP + one Redis PING).
    let baseline_requests = args.jobs;
    let started = Instant::now();
    fan_out(args.clients, baseline_requests, |_| {
        let request = client.get(format!("{base}/health"));
        async move {
            request
                .send()
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        }
    })
    .await?;
    let baseline_rate = baseline_requests as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let ids = fan_out(args.clients, args.jobs, |i| {
        let body = serde_json::json!({ "userId": format!("user-{i}"), "prompt": format!("job {i}"), "priority": 1 + i % 10 });
        let request = client.post(format!("{base}/api/chat")).json_body(&body);
        async move {
            let response = request.send().await?;
            let reply: serde_json::Value = serde_json::from_str(&response.text().await?)?;
            reply["jobId"].as_str().map(str::to_owned).context("submission refused")
        }
    })
    .await?;
    let submitted = started.elapsed();
    loop {
        let stats: serde_json::Value = serde_json::from_str(
            &client
                .get(format!("{base}/api/queue/stats"))
                .send()
                .await?
                .text()
                .await?,
        )?;
        let done = stats["completed"].as_u64().unwrap_or(0) + stats["failed"].as_u64().unwrap_or(0);
        if done >= args.jobs as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("jobs did not finish within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let total = started.elapsed();

    let records = fan_out(args.clients, ids.len(), |i| {
        let request = client.get(format!("{base}/api/job/{}", ids[i]));
        async move {
            Ok(serde_json::from_str::<serde_json::Value>(
                &request.send().await?.text().await?,
            )?)
        }
    })
    .await?;
    let failed = records.iter().filter(|r| r["state"] != "completed").count();
    let mut waits: Vec<u64> = records
        .iter()
        .filter_map(|r| {
            Some(
                r["startedAt"]
                    .as_u64()?
                    .saturating_sub(r["createdAt"].as_u64()?),
            )
        })
        .collect();
    waits.sort_unstable();
    let percentile = |p: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let jobs_per_sec = args.jobs as f64 / total.as_secs_f64();

    println!("Whole path ({} jobs, {failed} failed)", args.jobs);
    println!(
        "  submit rate (HTTP + Wasm admit + XADD) {:>8.0} jobs/s",
        args.jobs as f64 / submitted.as_secs_f64()
    );
    println!(
        "  throughput, submit to last ack         {:>8.0} jobs/s",
        jobs_per_sec
    );
    println!(
        "  baseline GET /health (HTTP + PING)     {:>8.0} req/s  -> whole path = {:.2}x baseline",
        baseline_rate,
        jobs_per_sec / baseline_rate
    );
    println!(
        "  submit -> start latency (queued burst) p50 {} ms, p99 {} ms",
        percentile(0.50),
        percentile(0.99)
    );
    println!("  (all jobs are submitted at once, so latency includes waiting behind the burst)");
    if failed > 0 {
        bail!("{failed} jobs failed");
    }
    Ok(())
}

/// Runs `count` requests through `clients` concurrent tasks, keeping results in order.
async fn fan_out<T, F, Fut>(clients: usize, count: usize, make: F) -> Result<Vec<T>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    use futures_util::StreamExt;
    let results: Vec<Result<T>> = futures_util::stream::iter((0..count).map(make))
        .buffered(clients)
        .collect()
        .await;
    results.into_iter().collect()
}

trait JsonBody {
    fn json_body(self, body: &serde_json::Value) -> Self;
}

impl JsonBody for reqwest::RequestBuilder {
    fn json_body(self, body: &serde_json::Value) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_string())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
