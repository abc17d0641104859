//! `spool bench-compare`'s latency figures for the no-op handler (issue #16):
//! jobs submitted one by one, paced at a fixed rate (or as fast as answered,
//! for the rate one-by-one submission reaches), with the time each waited
//! from its queuing (`created_at`) to its first claim (`first_started_at`);
//! and the Wasm cost of one job (admit + handle) measured one call at a time,
//! away from the contention of a loaded run. Loopback only; bounded by
//! [`MAX_SECONDS`], [`MAX_JOBS`] and `AS_ANSWERED_JOBS`. Owns nothing beyond
//! its run.

use spool_core::queue::{KeyLayout, QueueKeys};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use serde_json::json;
use tokio::task::JoinSet;

use spool_runtime::{Admitted, Job, JobHost, Limits, Runtime};

use super::budget::{Budget, Snapshot, process_cpu, thread_cpu};
use super::instance::{NOOP_QUEUE, flush, post_bulk, redis_url, start_spool, wait_completed};
use super::waits::{Waits, metrics_text};

/// The paced run lasts at most this long, or [`MAX_JOBS`] jobs.
pub const MAX_SECONDS: f64 = 10.0;
pub const MAX_JOBS: usize = 20_000;
/// Jobs of a run sent as fast as answered ([`Pace::AsAnswered`]).
const AS_ANSWERED_JOBS: usize = 10_000;
/// The first jobs of a paced run, sent at the same rate, are not in its
/// figures: a fresh instance touches its memory (buffers, connections, Wasm
/// slots) for the first time under them, which on a VM whose host reclaims
/// the guest's free pages held the worker thread for tens of ms. Their own
/// p99 is printed beside. At most a fifth of the run.
const WARM_UP_SECONDS: f64 = 0.5;
/// The run's jobs are also grouped by when they were submitted, in windows
/// this long: a run lasts a second or two, and a tenth of one is still a
/// thousand jobs at the rates measured.
const WINDOW_MS: u64 = 100;
/// The bound on a paced job's p99 submit -> start.
pub(super) const TARGET_P99_MS: u64 = 5;
/// Submissions in flight at most: past the instance's knee, an open-loop
/// client would open a connection per waiting request until the process ran
/// out of file descriptors. One that must wait for a slot is sent late, and
/// counted.
const MAX_IN_FLIGHT: usize = 256;
/// Jobs of one burst of [`burst_run`], and workers of its instance; bursts.
const BURST_JOBS: usize = 64;
const BURSTS: usize = 5;
/// How long the instance is left idle before each burst: long enough for
/// every worker to be waiting for a wake-up.
const IDLE_BEFORE_BURST: Duration = Duration::from_millis(300);
/// Calls per batch of [`wasm_per_job`], and batches per figure: each figure
/// is its fastest batch, so a batch another process preempted does not count.
const WASM_CALLS: u32 = 1000;
const WASM_BATCHES: usize = 5;

/// How the client of [`paced_run`] sends its POSTs.
#[derive(Clone, Copy)]
pub(super) enum Pace {
    /// This many jobs/s, open loop: the i-th at `i / rate` seconds.
    Rate(f64),
    /// Each as soon as one of [`MAX_IN_FLIGHT`] is answered: the rate at
    /// which the instance takes and runs jobs submitted one POST each, the
    /// maximum of that workload (a bulk-submitted queue's is higher).
    AsAnswered,
}

/// Queue waits of a paced run, in whole milliseconds (the job record's clock).
pub(super) struct Paced {
    /// The rate paced at, or for [`Pace::AsAnswered`] the one reached (jobs
    /// over the run's seconds).
    pub rate: f64,
    pub concurrency: usize,
    pub jobs: usize,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// The p99s of the jobs submitted in each [`WINDOW_MS`] of the run:
    /// a few windows far above the others are short stalls the queue then
    /// drained, most windows high an instance past its knee.
    pub windows: Windows,
    /// The warm-up's jobs, before those measured, and their p99.
    pub warm_up_jobs: usize,
    pub warm_up_p99_ms: u64,
    /// Submissions sent late, waiting for one of [`MAX_IN_FLIGHT`] to
    /// answer: the instance fell behind the rate, and a job's wait before
    /// its POST is not in its queue wait.
    pub held_back: usize,
    pub max_in_flight: usize,
    /// What a job cost over the run: Redis from `INFO`, the host CPU of this
    /// process (the instance and the client both).
    pub budget: Budget,
    /// The client's share of the budget's host CPU, per job (its thread's).
    pub client_cpu_us: f64,
    /// How long a POST took to be answered, as the client saw it.
    pub post_p50_ms: f64,
    pub post_p99_ms: f64,
    /// The instance's calls over the run (submissions, outcomes).
    pub waits: Waits,
    /// The run's length, from the first POST to the last completion.
    pub seconds: f64,
}

/// Submits jobs to the no-op queue one POST each, at `pace`, on a fresh
/// instance with `concurrency` workers; waits for all to complete and reads
/// each record's created -> first-claimed wait.
pub(super) async fn paced_run(
    redis: &mut MultiplexedConnection,
    noop_path: &Path,
    concurrency: usize,
    pace: Pace,
) -> Result<Paced> {
    let (jobs, interval) = match pace {
        Pace::Rate(rate) if rate.is_finite() && rate > 0.0 => (
            ((rate * MAX_SECONDS) as usize).clamp(1, MAX_JOBS),
            Some(Duration::from_secs_f64(1.0 / rate)),
        ),
        Pace::Rate(rate) => bail!("no rate to pace at (the no-op run measured {rate} jobs/s)"),
        Pace::AsAnswered => (AS_ANSWERED_JOBS, None),
    };
    flush(redis).await?;
    let url = redis_url(redis).await?;
    let running = start_spool(&url, noop_path, concurrency, jobs as u64 + 1).await?;
    let result = async {
        let base = format!("http://{}", running.addr);
        let submit_url = format!("{base}/api/queues/{NOOP_QUEUE}/jobs");
        let client = reqwest::Client::new();
        let metrics_before = metrics_text(&client, &base).await?;
        let before = Snapshot::take(redis).await?;
        let (cpu_before, started) = (process_cpu(), Instant::now());
        // The client runs on a thread and runtime of its own, as one in
        // another process would: on the instance's one worker thread its
        // POSTs cost more than the jobs and made the instance's latency.
        // Named, so that a per-thread view (top -H, perf) tells it apart.
        let (sent, submitted) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("paced-client".into())
            .spawn(move || {
                let submitted = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|client| client.block_on(submit_paced(submit_url, jobs, interval)))
                    .map(|submitted| (submitted, thread_cpu()));
                let _ = sent.send(submitted);
            })?;
        let ((ids, mut post_times, held_back), client_cpu) = submitted.await??;
        let polls = wait_completed(redis, NOOP_QUEUE, jobs).await?;
        let (host_cpu, seconds) = (process_cpu() - cpu_before, started.elapsed().as_secs_f64());
        let rate = match pace {
            Pace::Rate(rate) => rate,
            Pace::AsAnswered => jobs as f64 / seconds,
        };
        let after = Snapshot::take(redis).await?;
        let metrics_after = metrics_text(&client, &base).await?;
        post_times.sort_unstable();
        let post_ms = |q: f64| percentile(&post_times, q) as f64 / 1e3;
        let warm_up_jobs = ((rate * WARM_UP_SECONDS) as usize).min(jobs / 5);
        let (warm_up, measured) = ids.split_at(warm_up_jobs);
        let timed = queue_waits(redis, measured).await?;
        let windows = Windows::of(p99_by_window(&timed), TARGET_P99_MS);
        let waits = sorted_waits(timed);
        let at = |q: f64| percentile(&waits, q);
        let warm_up_waits = sorted_waits(queue_waits(redis, warm_up).await?);
        Ok::<_, anyhow::Error>(Paced {
            rate,
            concurrency,
            jobs,
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: waits.last().copied().unwrap_or(0),
            windows,
            warm_up_jobs,
            warm_up_p99_ms: percentile(&warm_up_waits, 0.99),
            held_back,
            max_in_flight: MAX_IN_FLIGHT,
            budget: Budget::new(&before, &after, jobs, polls, host_cpu.as_secs_f64() * 1e6),
            client_cpu_us: client_cpu.as_secs_f64() * 1e6 / jobs as f64,
            post_p50_ms: post_ms(0.50),
            post_p99_ms: post_ms(0.99),
            waits: Waits::between(&metrics_before, &metrics_after, jobs),
            seconds,
        })
    }
    .await;
    running.stop().await;
    result
}

/// Queue waits of jobs that arrive together at an idle instance.
pub(super) struct Burst {
    pub jobs: usize,
    pub bursts: usize,
    pub p50_ms: u64,
    pub max_ms: u64,
}

/// Submits [`BURSTS`] bulks of [`BURST_JOBS`] no-op jobs, one at a time to
/// an idle instance with as many workers, each once the one before has
/// completed; reads each job's created -> first-claimed wait. It measures
/// how fast idle workers take up work that arrives at once.
pub(super) async fn burst_run(
    redis: &mut MultiplexedConnection,
    noop_path: &Path,
) -> Result<Burst> {
    flush(redis).await?;
    let url = redis_url(redis).await?;
    let total = BURST_JOBS * BURSTS;
    let running = start_spool(&url, noop_path, BURST_JOBS, total as u64).await?;
    let result = async {
        let client = reqwest::Client::new();
        let bulk_url = format!("http://{}/api/queues/{NOOP_QUEUE}/jobs/bulk", running.addr);
        let mut waits = Vec::with_capacity(total);
        for burst in 1..=BURSTS {
            tokio::time::sleep(IDLE_BEFORE_BURST).await;
            let jobs: Vec<_> = (0..BURST_JOBS)
                .map(|i| json!({ "payload": { "n": i } }))
                .collect();
            let answer = post_bulk(&client, &bulk_url, &jobs).await?.text().await?;
            let reply: serde_json::Value = serde_json::from_str(&answer)?;
            let ids = reply["jobs"]
                .as_array()
                .context("the burst's jobs in the reply")?
                .iter()
                .map(|job| job["jobId"].as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .context("a job id for each of the burst's jobs")?;
            wait_completed(redis, NOOP_QUEUE, burst * BURST_JOBS).await?;
            waits.extend(queue_waits(redis, &ids).await?);
        }
        let waits = sorted_waits(waits);
        Ok::<_, anyhow::Error>(Burst {
            jobs: BURST_JOBS,
            bursts: BURSTS,
            p50_ms: percentile(&waits, 0.50),
            max_ms: waits.last().copied().unwrap_or(0),
        })
    }
    .await;
    running.stop().await;
    result
}

/// The `q` quantile of sorted `values` (0 for none).
fn percentile(values: &[u64], q: f64) -> u64 {
    let last = values.len().saturating_sub(1);
    values
        .get((last as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0)
}

/// POSTs `jobs` no-op jobs, the i-th at `i` times `interval`, or as soon
/// after as one of [`MAX_IN_FLIGHT`] answers (without an interval, each as
/// soon as one answers); returns their ids in the order they were sent, how
/// long each POST took to be answered (in µs) and how many were sent late
/// for want of a slot.
async fn submit_paced(
    submit_url: String,
    jobs: usize,
    interval: Option<Duration>,
) -> Result<(Vec<String>, Vec<u64>, usize)> {
    let client = reqwest::Client::new();
    let started = tokio::time::Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut held_back = 0;
    let mut submissions = JoinSet::new();
    for i in 0..jobs {
        if let Some(interval) = interval {
            tokio::time::sleep_until(started + interval.mul_f64(i as f64)).await;
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if interval.is_none() => slots.clone().acquire_owned().await?,
            Err(_) => {
                held_back += 1;
                slots.clone().acquire_owned().await?
            }
        };
        let (client, submit_url) = (client.clone(), submit_url.clone());
        submissions.spawn(async move {
            let _slot = slot;
            let sent = Instant::now();
            let response = client
                .post(submit_url)
                .header("content-type", "application/json")
                .body(json!({ "payload": { "n": i } }).to_string())
                .send()
                .await?;
            if response.status() != reqwest::StatusCode::ACCEPTED {
                bail!("submission refused: {}", response.text().await?);
            }
            let reply: serde_json::Value = serde_json::from_str(&response.text().await?)?;
            let id = reply["jobId"]
                .as_str()
                .map(str::to_owned)
                .context("a job id in the reply")?;
            Ok((i, id, sent.elapsed().as_micros() as u64))
        });
    }
    let mut answered = Vec::with_capacity(jobs);
    while let Some(joined) = submissions.join_next().await {
        answered.push(joined??);
    }
    answered.sort_unstable();
    let post_times = answered.iter().map(|(_, _, took)| *took).collect();
    let ids = answered.into_iter().map(|(_, id, _)| id).collect();
    Ok((ids, post_times, held_back))
}

/// The waits of `(created_at, wait)` pairs, shortest first.
fn sorted_waits(timed: Vec<(u64, u64)>) -> Vec<u64> {
    let mut waits: Vec<u64> = timed.into_iter().map(|(_, wait)| wait).collect();
    waits.sort_unstable();
    waits
}

/// The p99 wait of the jobs created in each [`WINDOW_MS`] that had any, in
/// order, for `(created_at, wait)` pairs in ms.
fn p99_by_window(timed: &[(u64, u64)]) -> Vec<u64> {
    let mut windows: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for &(created, wait) in timed {
        windows.entry(created / WINDOW_MS).or_default().push(wait);
    }
    windows
        .into_values()
        .map(|mut waits| {
            waits.sort_unstable();
            percentile(&waits, 0.99)
        })
        .collect()
}

/// What the windows' p99s say: the median window's, the worst one's, and
/// how many windows were above `target_ms`, of how many.
#[derive(Debug, PartialEq)]
pub(super) struct Windows {
    pub median_ms: u64,
    pub worst_ms: u64,
    pub above: usize,
    pub of: usize,
}

impl Windows {
    fn of(mut p99s: Vec<u64>, target_ms: u64) -> Self {
        p99s.sort_unstable();
        Self {
            median_ms: p99s.get(p99s.len() / 2).copied().unwrap_or(0),
            worst_ms: p99s.last().copied().unwrap_or(0),
            above: p99s.iter().filter(|&&p99| p99 > target_ms).count(),
            of: p99s.len(),
        }
    }
}

/// Each job's `(created_at, first_started_at - created_at)`, in ms, read in
/// pipelined batches.
async fn queue_waits(redis: &mut MultiplexedConnection, ids: &[String]) -> Result<Vec<(u64, u64)>> {
    let mut waits = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("HMGET")
                .arg(
                    QueueKeys::new(NOOP_QUEUE, KeyLayout::SingleNode)
                        .job(id)
                        .record,
                )
                .arg("created_at")
                .arg("first_started_at");
        }
        let times: Vec<(Option<u64>, Option<u64>)> = pipe.query_async(redis).await?;
        for (created, started) in times {
            let (Some(created), Some(started)) = (created, started) else {
                bail!("a completed job's record lacks created_at or first_started_at");
            };
            waits.push((created, started.saturating_sub(created)));
        }
    }
    Ok(waits)
}

/// The no-op handler's Wasm cost per job, one call at a time in this
/// process: `admit` called, `admit` reused (its rule declares `priority`),
/// and `handle`, each a fresh pooled instance as in production; each the
/// fastest of [`WASM_BATCHES`] batches.
pub struct WasmPerJob {
    pub admit_called_us: f64,
    pub admit_reused_us: f64,
    pub handle_us: f64,
}

pub async fn wasm_per_job(noop: &[u8]) -> Result<WasmPerJob> {
    let runtime = Runtime::new(Limits {
        max_instances: 16,
        ..Limits::default()
    })?;
    let handler = runtime.load("noop", noop)?;
    let job = Job {
        id: "bench".into(),
        queue: NOOP_QUEUE.into(),
        user_id: "u".into(),
        user_tier: String::new(),
        priority: 5,
        payload: "{}".into(),
        attempt: 0,
    };
    let host: Arc<dyn JobHost> = Arc::new(super::CannedHost);
    // Warm the pool's slots and make the first (kept) decision.
    for _ in 0..100 {
        let _ = runtime.admit_or_reuse(&handler, &job).await;
        let _ = runtime.handle(&handler, &job, host.clone()).await;
    }
    if !matches!(
        runtime.admit_or_reuse(&handler, &job).await,
        Admitted::Reused(Ok(_))
    ) {
        bail!(
            "the no-op handler's decision was not reused: does its rule still declare what it reads?"
        );
    }
    let per_call = |started: Instant| started.elapsed().as_secs_f64() * 1e6 / WASM_CALLS as f64;
    let (mut admit_called_us, mut admit_reused_us, mut handle_us) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..WASM_BATCHES {
        let started = Instant::now();
        for _ in 0..WASM_CALLS {
            let _ = runtime.admit(&handler, &job).await;
        }
        admit_called_us = admit_called_us.min(per_call(started));
        let started = Instant::now();
        for _ in 0..WASM_CALLS {
            let _ = runtime.admit_or_reuse(&handler, &job).await;
        }
        admit_reused_us = admit_reused_us.min(per_call(started));
        let started = Instant::now();
        for _ in 0..WASM_CALLS {
            if !matches!(
                runtime.handle(&handler, &job, host.clone()).await,
                Ok(Ok(_))
            ) {
                bail!("the no-op handler failed in the benchmark");
            }
        }
        handle_us = handle_us.min(per_call(started));
    }
    Ok(WasmPerJob {
        admit_called_us,
        admit_reused_us,
        handle_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_by_window_groups_jobs_by_the_window_they_were_created_in() {
        // Window 0: 100 jobs waiting 1 ms but the two slowest 40 ms (the
        // p99 of 100 values is the 99th); window 1 empty, so not listed;
        // window 2: 5 and 3.
        let mut timed: Vec<(u64, u64)> = (0..100).map(|i| (10_000 + i, 1)).collect();
        timed[99].1 = 40;
        timed[98].1 = 40;
        timed.extend([(10_000 + 2 * WINDOW_MS, 5), (10_000 + 3 * WINDOW_MS - 1, 3)]);
        let p99s = p99_by_window(&timed);
        assert_eq!(p99s, vec![40, 5]);
        assert!(p99_by_window(&[]).is_empty());

        let windows = |median_ms, worst_ms, above, of| Windows {
            median_ms,
            worst_ms,
            above,
            of,
        };
        assert_eq!(Windows::of(p99s, 5), windows(40, 40, 1, 2));
        let p99s = vec![2, 3, 9, 4, 3];
        assert_eq!(Windows::of(p99s, 5), windows(3, 9, 1, 5));
    }
}
