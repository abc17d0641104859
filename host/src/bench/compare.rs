//! `spool bench-compare`: spool beside BullMQ on one redis-server (AOF
//! everysec, a unix socket: loopback only) in one run, as issue #16 asks.
//! Installs the pinned BullMQ (`bench/compare/package.json`) into a temp dir
//! with npm, then for each concurrency runs BullMQ's no-op worker, its
//! chat-shaped worker (spool's chat handler's events and model call, to the
//! same stub) and spool's no-op handler (`guest/fixtures/noop`) over the same
//! N jobs, then spool's chat path, and prints each figure with its ratio to
//! BullMQ's (no-op, and chat to chat), a per-job
//! budget (Redis round trips, commands and CPU from `INFO`, host CPU, Wasm)
//! and memory per queued job. Redis is flushed between runs; each spool run
//! is a fresh in-process instance. Owns nothing outside its temp dir.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use spool_core::config::Fsync;
use spool_core::embedded_redis::EmbeddedRedis;
use spool_core::queue::{KeyLayout, QueueKeys};

use super::budget::{Budget, Snapshot, process_cpu};
use super::instance::{
    BATCH, CHAT_QUEUE, NOOP_QUEUE, PATIENCE, bulk_submit, control_queue, flush, redis_url,
    start_spool, wait_completed,
};
use super::paced::{Pace, paced_run};
use super::paced_runs::{PacedAt, PacedRun, one_post_runs};
use super::waits::{Waits, metrics_text};
use crate::stub::{self, StubArgs, StubServer};

pub(super) const NOOP: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/noop.wasm"));
const PACKAGE_JSON: &str = include_str!("../../../bench/compare/package.json");
const BULLMQ_SCRIPT: &str = include_str!("../../../bench/compare/bullmq.mjs");

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Jobs per run (the same N for both systems).
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Worker concurrencies to compare, each a run of its own.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    concurrency: Vec<usize>,
    /// Jobs queued for the memory figures.
    #[arg(long, default_value_t = 100_000)]
    memory_jobs: usize,
    /// Rate of the paced run, in jobs/s (default: half the best no-op rate
    /// measured, run at the concurrency that reached it).
    #[arg(long)]
    paced_rate: Option<f64>,
    /// spool's figures only (no node or npm needed).
    #[arg(long)]
    no_bullmq: bool,
    /// BullMQ's no-op and chat runs and spool's chat run only, at the first
    /// concurrency (no spool no-op runs, no memory figures): the chat path's
    /// ratios.
    #[arg(long)]
    chat_only: bool,
    /// The paced runs alone, at the first concurrency (no throughput runs,
    /// no memory figures): at --paced-rate if given, else the one-POST
    /// maximum and half of it. The latency figure while tuning.
    #[arg(long, conflicts_with = "chat_only")]
    paced_only: bool,
}

pub async fn run(args: CompareArgs) -> Result<()> {
    if args.jobs == 0 || args.memory_jobs == 0 || args.concurrency.contains(&0) {
        bail!("--jobs, --memory-jobs and every --concurrency must be above 0");
    }
    let dir = std::env::temp_dir().join(format!("spool-bench-compare-{}", std::process::id()));
    let result = compare(&args, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn compare(args: &CompareArgs, dir: &Path) -> Result<()> {
    let redis_dir = dir.join("redis");
    let server = EmbeddedRedis::start(&redis_dir, Fsync::Everysec).await?;
    let socket = redis_dir.canonicalize()?.join("redis.sock");
    // A FLUSHALL of 100,000 jobs takes longer than redis-rs' default 500 ms.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(PATIENCE));
    let mut redis = redis::Client::open(server.url())?
        .get_multiplexed_async_connection_with_config(&patient)
        .await?;
    let bullmq = if args.no_bullmq {
        None
    } else {
        Some(Bullmq::install(&dir.join("bullmq"), &socket).await?)
    };
    // The model of BullMQ's chat-shaped worker: the stub spool's chat runs
    // call, on a thread of its own in this process, idle until then.
    let stub = match &bullmq {
        Some(_) => Some(stub::start_apart(&StubArgs::ephemeral()).await?),
        None => None,
    };
    let noop_path = dir.join("noop.wasm");
    std::fs::write(&noop_path, NOOP)?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "spool bench-compare: N = {} jobs, concurrency {:?}, redis-server 7 with AOF everysec on a unix socket, {cores} cores (shared with whatever else runs)\n",
        args.jobs, args.concurrency
    );

    let mut report = Report {
        cores,
        ..Report::default()
    };
    if args.paced_only {
        let concurrency = args.concurrency.first().copied().unwrap_or(16);
        if let Some(rate) = args.paced_rate {
            let paced = paced_run(&mut redis, &noop_path, concurrency, Pace::Rate(rate));
            report
                .paced
                .push(PacedRun::new(PacedAt::Given, paced.await?));
        }
        report
            .paced
            .extend(one_post_runs(&mut redis, &noop_path, concurrency).await?);
        report.print(None);
        return Ok(());
    }
    let concurrencies = if args.chat_only {
        &args.concurrency[..1]
    } else {
        &args.concurrency[..]
    };
    for &concurrency in concurrencies {
        if let Some(bullmq) = &bullmq {
            flush(&mut redis).await?;
            let submit = bullmq.run(&["submit", &args.jobs.to_string()]).await?;
            let before = Snapshot::take(&mut redis).await?;
            let processed = bullmq
                .run(&["process", &args.jobs.to_string(), &concurrency.to_string()])
                .await?;
            let after = Snapshot::take(&mut redis).await?;
            report.bullmq_submit.get_or_insert(number(&submit, "rate"));
            report.rows.push(Row {
                system: "BullMQ no-op",
                concurrency,
                rate: number(&processed, "rate"),
                budget: Budget::new(&before, &after, args.jobs, 0, number(&processed, "cpu_us")),
                wasm_us: None,
                waits: None,
            });
            if let Some(stub) = &stub {
                let row = bullmq.chat_run(&mut redis, args.jobs, concurrency, stub);
                report.rows.push(row.await?);
            }
        }
        if !args.chat_only {
            let run = spool_run(
                &mut redis,
                &noop_path,
                NOOP_QUEUE,
                concurrency,
                args.jobs,
                |i| json!({ "payload": { "n": i } }),
            )
            .await?;
            report.spool_submit.get_or_insert(run.submit_rate);
            report.rows.push(run.row("spool no-op"));
        }
        let chat = spool_run(
            &mut redis,
            &noop_path,
            CHAT_QUEUE,
            concurrency,
            args.jobs,
            |i| json!({ "userId": format!("user-{}", i % 100), "prompt": format!("job {i}") }),
        )
        .await?;
        report.rows.push(chat.row("spool chat"));
    }

    if !args.chat_only {
        // Paced at half spool's no-op maximum: the best rate of the
        // concurrencies run above, with the workers that reached it.
        let (concurrency, noop_max) = report
            .rows
            .iter()
            .filter(|r| r.system == "spool no-op")
            .max_by(|a, b| a.rate.total_cmp(&b.rate))
            .map_or((16, 0.0), |r| (r.concurrency, r.rate));
        let at = match args.paced_rate {
            Some(rate) => (PacedAt::Given, rate),
            None => (PacedAt::HalfNoopMax, noop_max / 2.0),
        };
        let paced = paced_run(&mut redis, &noop_path, concurrency, Pace::Rate(at.1));
        report.paced.push(PacedRun::new(at.0, paced.await?));
        report
            .paced
            .extend(one_post_runs(&mut redis, &noop_path, concurrency).await?);
        report.burst = Some(super::paced::burst_run(&mut redis, &noop_path).await?);
        report.wasm = Some(super::paced::wasm_per_job(NOOP).await?);
    }
    let memory = if args.chat_only {
        None
    } else {
        Some(memory(&mut redis, bullmq.as_ref(), &noop_path, args.memory_jobs).await?)
    };
    report.print(memory.as_ref());
    if let Some(stub) = stub {
        stub.shutdown().await;
    }
    drop(server);
    Ok(())
}

/// BullMQ installed in a temp dir, run one phase per `node` process.
struct Bullmq {
    dir: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Bullmq {
    async fn install(dir: &Path, socket: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("package.json"), PACKAGE_JSON)?;
        std::fs::write(dir.join("bullmq.mjs"), BULLMQ_SCRIPT)?;
        println!("installing BullMQ (bench/compare/package.json) with npm ...");
        let status = tokio::process::Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .status()
            .await
            .context("running npm (node and npm are needed; --no-bullmq skips BullMQ)")?;
        if !status.success() {
            bail!("npm install failed in {}", dir.display());
        }
        Ok(Self {
            dir: dir.to_owned(),
            socket: socket.to_owned(),
        })
    }

    async fn run(&self, args: &[&str]) -> Result<Value> {
        let output = tokio::process::Command::new("node")
            .arg("bullmq.mjs")
            .args(args)
            .env("REDIS_SOCKET", &self.socket)
            .current_dir(&self.dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .context("running node")?;
        if !output.status.success() {
            bail!("BullMQ phase {args:?} failed");
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().last().unwrap_or_default();
        serde_json::from_str(line).with_context(|| format!("BullMQ phase {args:?} printed {text}"))
    }

    /// BullMQ's chat-shaped worker over N queued jobs: per job, spool's chat
    /// handler's events and its model call to `stub`, which must have
    /// answered N. Its host CPU is node's and the stub's (this process'), as
    /// spool's chat run counts its instance's and the stub's.
    async fn chat_run(
        &self,
        redis: &mut MultiplexedConnection,
        jobs: usize,
        concurrency: usize,
        stub: &StubServer,
    ) -> Result<Row> {
        flush(redis).await?;
        self.run(&["add", &jobs.to_string()]).await?;
        stub.reset();
        let before = Snapshot::take(redis).await?;
        let cpu_before = process_cpu();
        let processed = self
            .run(&[
                "process-chat",
                &jobs.to_string(),
                &concurrency.to_string(),
                &stub.url(),
            ])
            .await?;
        let stub_cpu_us = (process_cpu() - cpu_before).as_secs_f64() * 1e6;
        let after = Snapshot::take(redis).await?;
        let answered = stub.stats().calls.get("/api/chat").copied().unwrap_or(0);
        if answered != jobs as u64 {
            bail!("BullMQ's chat worker made {answered} model calls for {jobs} jobs");
        }
        let host_cpu_us = number(&processed, "cpu_us") + stub_cpu_us;
        Ok(Row {
            system: "BullMQ chat",
            concurrency,
            rate: number(&processed, "rate"),
            budget: Budget::new(&before, &after, jobs, 0, host_cpu_us),
            wasm_us: None,
            waits: None,
        })
    }
}

fn number(value: &Value, field: &str) -> f64 {
    value[field].as_f64().unwrap_or(0.0)
}

struct SpoolRun {
    submit_rate: f64,
    rate: f64,
    budget: Budget,
    concurrency: usize,
    wasm_us: f64,
    waits: Waits,
}

impl SpoolRun {
    fn row(self, system: &'static str) -> Row {
        Row {
            system,
            concurrency: self.concurrency,
            rate: self.rate,
            budget: self.budget,
            wasm_us: Some(self.wasm_us),
            waits: Some(self.waits),
        }
    }
}

/// Flush, start, pause the queue, bulk-submit N (timed), then resume and
/// time until N jobs completed, with INFO, rusage and Wasm figures around it.
async fn spool_run(
    redis: &mut MultiplexedConnection,
    noop_path: &Path,
    queue_name: &str,
    concurrency: usize,
    jobs: usize,
    item: impl Fn(usize) -> Value,
) -> Result<SpoolRun> {
    flush(redis).await?;
    let url = redis_url(redis).await?;
    let running = start_spool(&url, noop_path, concurrency, jobs as u64 + 1).await?;
    let result = async {
        let base = format!("http://{}", running.addr);
        let client = reqwest::Client::new();
        let queue = control_queue(&url).await?;
        let keys = QueueKeys::new(queue_name, KeyLayout::SingleNode);
        queue.set_paused(&keys, true).await?;
        // From before the submission: Wasm counts admit (at submission) + handle.
        let metrics_before = metrics_text(&client, &base).await?;
        let submitted = Instant::now();
        bulk_submit(&client, &base, queue_name, jobs, &item).await?;
        let submit_rate = jobs as f64 / submitted.elapsed().as_secs_f64();
        let before = Snapshot::take(redis).await?;
        let cpu_before = process_cpu();
        let started = Instant::now();
        queue.set_paused(&keys, false).await?;
        let polls = wait_completed(redis, queue_name, jobs).await?;
        let elapsed = started.elapsed();
        let host_cpu = process_cpu() - cpu_before;
        let after = Snapshot::take(redis).await?;
        let metrics_after = metrics_text(&client, &base).await?;
        let wasm = wasm_seconds(&metrics_after) - wasm_seconds(&metrics_before);
        let waits = Waits::between(&metrics_before, &metrics_after, jobs);
        Ok::<_, anyhow::Error>(SpoolRun {
            submit_rate,
            rate: jobs as f64 / elapsed.as_secs_f64(),
            budget: Budget::new(&before, &after, jobs, polls, host_cpu.as_secs_f64() * 1e6),
            concurrency,
            wasm_us: wasm * 1e6 / jobs as f64,
            waits,
        })
    }
    .await;
    running.stop().await;
    result
}

/// Seconds spent in Wasm (every hook) so far, from the `/metrics` text.
fn wasm_seconds(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with("spool_handler_wasm_seconds_sum"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// This process's resident memory, in bytes.
fn process_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

struct Row {
    system: &'static str,
    concurrency: usize,
    rate: f64,
    budget: Budget,
    wasm_us: Option<f64>,
    /// spool's: where a job's time went.
    waits: Option<Waits>,
}

struct Memory {
    spool_bytes_per_job: f64,
    spool_rss: u64,
    bullmq_bytes_per_job: Option<f64>,
    bullmq_rss: Option<u64>,
    /// `MEMORY USAGE` of each key of one queued spool job.
    spool_keys: Vec<(String, u64)>,
    jobs: usize,
}

/// Bytes of Redis memory per queued job, and the queue process' RSS, with `jobs` waiting.
async fn memory(
    redis: &mut MultiplexedConnection,
    bullmq: Option<&Bullmq>,
    noop_path: &Path,
    jobs: usize,
) -> Result<Memory> {
    let (mut bullmq_bytes_per_job, mut bullmq_rss) = (None, None);
    if let Some(bullmq) = bullmq {
        flush(redis).await?;
        let before = Snapshot::take(redis).await?;
        let added = bullmq.run(&["add", &jobs.to_string()]).await?;
        let after = Snapshot::take(redis).await?;
        bullmq_bytes_per_job =
            Some(after.used_memory.saturating_sub(before.used_memory) as f64 / jobs as f64);
        bullmq_rss = Some(number(&added, "rss") as u64);
    }
    flush(redis).await?;
    let url = redis_url(redis).await?;
    let running = start_spool(&url, noop_path, 1, jobs as u64 + 1).await?;
    let measured = async {
        let queue = control_queue(&url).await?;
        let keys = QueueKeys::new(NOOP_QUEUE, KeyLayout::SingleNode);
        queue.set_paused(&keys, true).await?;
        let before = Snapshot::take(redis).await?;
        let client = reqwest::Client::new();
        let base = format!("http://{}", running.addr);
        bulk_submit(
            &client,
            &base,
            NOOP_QUEUE,
            jobs,
            &|i| json!({ "payload": { "n": i } }),
        )
        .await?;
        let after = Snapshot::take(redis).await?;
        let rss = process_rss();
        Ok::<_, anyhow::Error>((
            after.used_memory.saturating_sub(before.used_memory) as f64 / jobs as f64,
            rss,
            sample_job_keys(redis).await?,
        ))
    }
    .await;
    running.stop().await;
    let (spool_bytes_per_job, spool_rss, spool_keys) = measured?;
    Ok(Memory {
        spool_bytes_per_job,
        spool_rss,
        bullmq_bytes_per_job,
        bullmq_rss,
        spool_keys,
        jobs,
    })
}

/// The memory of each key one queued job owns (its record and its event stream).
async fn sample_job_keys(redis: &mut MultiplexedConnection) -> Result<Vec<(String, u64)>> {
    let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
        .arg(0)
        .arg("MATCH")
        .arg("spool:job:*")
        .arg("COUNT")
        .arg(1000)
        .query_async(redis)
        .await?;
    let Some(record) = keys.first() else {
        return Ok(Vec::new());
    };
    let queue = QueueKeys::new(NOOP_QUEUE, KeyLayout::SingleNode);
    let id = record.trim_start_matches(&queue.job("").record);
    let mut sizes = Vec::new();
    for key in [record.clone(), queue.job(id).events] {
        let bytes: Option<u64> = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(redis)
            .await?;
        let shown = key.replace(id, "{id}");
        sizes.push((shown, bytes.unwrap_or(0)));
    }
    Ok(sizes)
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    paced: Vec<PacedRun>,
    burst: Option<super::paced::Burst>,
    wasm: Option<super::paced::WasmPerJob>,
    bullmq_submit: Option<f64>,
    spool_submit: Option<f64>,
    /// The machine's cores, for each run's CPU ceiling.
    cores: usize,
}

impl Report {
    /// The rate of `system`'s run at `concurrency`, if it ran.
    fn rate(&self, system: &str, concurrency: usize) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.system == system && r.concurrency == concurrency)
            .map(|r| r.rate)
    }

    fn print(&self, memory: Option<&Memory>) {
        let ratio = |ours: f64, theirs: Option<f64>| {
            theirs.map_or("-".to_owned(), |t| format!("{:.2}x", ours / t))
        };
        println!(
            "Submission ({BATCH} jobs per call: BullMQ addBulk, spool POST .../jobs/bulk over HTTP)"
        );
        let rate = |rate: Option<f64>| rate.map_or("-".to_owned(), |r| format!("{r:.0}"));
        println!(
            "  BullMQ {:>9} jobs/s    spool {:>9} jobs/s    spool/BullMQ {}",
            rate(self.bullmq_submit),
            rate(self.spool_submit),
            self.spool_submit
                .map_or("-".to_owned(), |ours| ratio(ours, self.bullmq_submit))
        );
        println!(
            "\nProcessing (all N queued first, then timed from the worker's start to the Nth completion)"
        );
        println!(
            "  {:<14} {:>5} {:>10} {:>8} {:>13} {:>14}",
            "system", "conc", "jobs/s", "/BullMQ", "CPU us/job", "CPU ceiling"
        );
        for row in &self.rows {
            // Redis and the queue's process together; the ceiling is the
            // rate at which they would keep every core busy.
            let cpu_us = row.budget.redis_cpu_us + row.budget.host_cpu_us;
            let ceiling = self.cores as f64 * 1e6 / cpu_us;
            println!(
                "  {:<14} {:>5} {:>10.0} {:>8} {:>13.1} {:>8.0} ({:>3.0} %)",
                row.system,
                row.concurrency,
                row.rate,
                ratio(row.rate, self.rate("BullMQ no-op", row.concurrency)),
                cpu_us,
                ceiling,
                100.0 * row.rate / ceiling
            );
        }
        println!(
            "  (CPU us/job: Redis' and the queue process' CPU per job, from the budget below; CPU ceiling: the jobs/s at which they would keep all {} cores busy, and how much of it the run reached)",
            self.cores
        );
        for row in self.rows.iter().filter(|r| r.system == "spool chat") {
            if let Some(theirs) = self.rate("BullMQ chat", row.concurrency) {
                println!(
                    "  spool chat / BullMQ chat at concurrency {}: {} (the same work: the same model call to the same stub, the same events)",
                    row.concurrency,
                    ratio(row.rate, Some(theirs))
                );
            }
        }
        println!(
            "\nPer-job budget while processing (Redis INFO deltas / N; host CPU = the queue's process)"
        );
        println!(
            "  {:<14} {:>5} {:>11} {:>9} {:>12} {:>13} {:>12} {:>9} {:>13}",
            "system",
            "conc",
            "Redis reads",
            "commands",
            "Redis CPU us",
            "Redis cmd us",
            "host CPU us",
            "Wasm us",
            "AOF rewrites"
        );
        for row in &self.rows {
            let b = &row.budget;
            println!(
                "  {:<14} {:>5} {:>11.2} {:>9.2} {:>12.1} {:>13.1} {:>12.1} {:>9} {:>13}",
                row.system,
                row.concurrency,
                b.round_trips,
                b.commands,
                b.redis_cpu_us,
                b.redis_command_us,
                b.host_cpu_us,
                row.wasm_us.map_or("-".to_owned(), |w| format!("{w:.1}")),
                format!("{} ({:.1} us)", b.aof_rewrites, b.rewrite_cpu_us)
            );
        }
        println!(
            "\nWhere a spool job's time went (means over the run, from the instance's /metrics)"
        );
        for row in &self.rows {
            if let Some(waits) = &row.waits {
                println!(
                    "  {:<14} {:>5}: {}",
                    row.system,
                    row.concurrency,
                    waits.line()
                );
            }
        }
        if let Some(wasm) = &self.wasm {
            println!(
                "\nWasm per no-op job, one call at a time (fresh pooled instance per call; nothing else runs in this process; fastest of 5 batches)"
            );
            println!(
                "  admit {:.1} us when called, {:.1} us when its decision is reused; handle {:.1} us",
                wasm.admit_called_us, wasm.admit_reused_us, wasm.handle_us
            );
            println!(
                "  per job (admit reused + handle) {:.1} us    target <= 30 us",
                wasm.admit_reused_us + wasm.handle_us
            );
        }
        let noop_max = self
            .rows
            .iter()
            .filter(|r| r.system == "spool no-op")
            .map(|r| r.rate)
            .max_by(f64::total_cmp);
        for run in &self.paced {
            run.print(self.cores, noop_max);
        }
        if let Some(burst) = &self.burst {
            println!(
                "\nBursts: {} bulks of {} no-op jobs, each to an idle instance with {} workers, once the one before completed",
                burst.bursts, burst.jobs, burst.jobs
            );
            println!(
                "  submit -> start (created_at -> first claim, 1 ms clock): p50 {} ms, max {} ms",
                burst.p50_ms, burst.max_ms
            );
        }
        println!("\nCommands per job, most called first, with the µs inside them per job");
        let paced = self
            .paced
            .iter()
            .map(|run| (run.system(), run.paced.concurrency, &run.paced.budget));
        let rows = self
            .rows
            .iter()
            .map(|r| (r.system, r.concurrency, &r.budget));
        for (system, concurrency, budget) in rows.chain(paced) {
            let top: Vec<String> = budget
                .top
                .iter()
                // Calls of fewer than one job in 200 (the instance's own
                // housekeeping) would print as 0.00.
                .filter(|(_, n, _)| *n >= 0.005)
                .map(|(command, n, us)| format!("{command} {n:.2} ({us:.1} us)"))
                .collect();
            println!("  {system:<14} {concurrency:>3}: {}", top.join(", "));
        }
        if let Some(memory) = memory {
            println!("\nMemory with {} jobs queued", memory.jobs);
            println!(
                "  Redis bytes per queued job: BullMQ {}, spool {:.0} ({})",
                memory
                    .bullmq_bytes_per_job
                    .map_or("-".to_owned(), |b| format!("{b:.0}")),
                memory.spool_bytes_per_job,
                ratio(memory.spool_bytes_per_job, memory.bullmq_bytes_per_job)
            );
            println!(
                "  RSS: spool's instance (this process, with the bench client) {:.1} MB; BullMQ's producer (node) {}",
                memory.spool_rss as f64 / 1e6,
                memory
                    .bullmq_rss
                    .map_or("-".to_owned(), |r| format!("{:.1} MB", r as f64 / 1e6))
            );
            if !memory.spool_keys.is_empty() {
                let keys: Vec<String> = memory
                    .spool_keys
                    .iter()
                    .map(|(key, bytes)| format!("{key} {bytes} B"))
                    .collect();
                println!(
                    "  spool, one queued job's keys (MEMORY USAGE): {}",
                    keys.join(", ")
                );
            }
        }
        println!(
            "\nNotes: `Redis reads` are Redis' read events (total_reads_processed): one per request, or per batch of requests a client pipelines (ioredis and redis-rs both do), so fewer than round trips under load. A script's own commands count in `commands` and `Redis cmd us`. Wasm us: time inside the guest per job, every hook (admit at submission, handle while processing; a reused decision costs no Wasm), as the instance's metrics saw it under the run's load (for chat it includes the wait on the model call). AOF rewrites: those Redis started during the run (it forks one each time its append-only file doubles, from 512 MB in spool's embedded Redis), with their CPU per job beside: a rewrite's child takes a core from Redis and the queue's process while it runs."
        );
    }
}
