//! `spool bench-cluster`: spool's no-op throughput on a Redis Cluster of 1, 2
//! and 3 masters (issue #17). A queue's keys share its hash tag, so a queue
//! lives on one master and load spreads over masters only through several
//! queues: the queues' names are picked so that their slots are spread evenly
//! over the slot space, hence over the masters. Each size gets a fresh
//! [`LocalCluster`] (AOF everysec, no replicas) and fresh in-process
//! instances; jobs are bulk-submitted while the queues are paused, then timed
//! from the resume to the last completion, with each master's `INFO` around
//! it. Owns its clusters and temp dir; never changes how spool talks to Redis.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use redis::cluster_routing::Slot;
use serde_json::json;

use spool_core::queue::{KeyLayout, Queue, QueueKeys};

use super::budget::{Snapshot, process_cpu};
use super::compare::NOOP;
use super::instance::{
    PATIENCE, bulk_submit, counter_key, start_spool_with_queues, wait_completed,
};
use crate::app::Running;
use crate::local_cluster::{AppendFsync, ClusterOptions, LocalCluster, Master, SLOTS, slot_share};

#[derive(clap::Args, Clone, Debug)]
pub struct ClusterBenchArgs {
    /// Jobs per cluster size, spread evenly over the queues.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// spool instances (in this process), the same number for every size.
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    /// No-op queues, each served by every instance.
    #[arg(long, default_value_t = 6)]
    pub queues: usize,
    /// Workers per instance.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Cluster sizes (masters), each a run of its own.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub masters: Vec<usize>,
}

/// One cluster size's run.
#[derive(Clone, Debug)]
pub struct SizeRun {
    pub masters: usize,
    pub jobs_per_sec: f64,
    /// Sum of the queues' completed counters after the run.
    pub completed: u64,
    pub failed: u64,
    /// In the order of their first slot.
    pub nodes: Vec<MasterLoad>,
    /// This process (every instance and the benchmark's client), per job.
    pub host_cpu_us: f64,
}

/// What one master held and spent during a run.
#[derive(Clone, Debug)]
pub struct MasterLoad {
    pub addr: SocketAddr,
    pub queues: Vec<String>,
    pub jobs: usize,
    /// `used_cpu_user + used_cpu_sys` delta over the jobs this master held.
    pub cpu_us_per_job: f64,
    /// `INFO commandstats` µs delta (a script counts with its commands), likewise.
    pub command_us_per_job: f64,
    cpu_us: f64,
}

#[derive(Clone, Debug)]
pub struct ClusterReport {
    pub args: ClusterBenchArgs,
    pub cores: usize,
    pub queues: Vec<String>,
    pub runs: Vec<SizeRun>,
}

pub async fn run(args: ClusterBenchArgs) -> Result<()> {
    let report = measure(&args).await?;
    print!("{}", report.render());
    Ok(())
}

/// Runs every size of `args.masters` in turn and returns the figures.
pub async fn measure(args: &ClusterBenchArgs) -> Result<ClusterReport> {
    if args.jobs == 0 || args.instances == 0 || args.concurrency == 0 {
        bail!("--jobs, --instances and --concurrency must be above 0");
    }
    if args.queues == 0 || args.queues > 256 {
        bail!("--queues must be 1..=256, not {}", args.queues);
    }
    if args.masters.is_empty() || args.masters.iter().any(|&m| m == 0 || m > 16) {
        bail!("--masters must list sizes of 1..=16 masters");
    }
    let dir = tempfile::Builder::new()
        .prefix("spool-bench-cluster-")
        .tempdir()
        .context("creating the benchmark's temp dir")?;
    let noop_path = dir.path().join("noop.wasm");
    std::fs::write(&noop_path, NOOP)?;
    let queues = queue_names(args.queues)?;
    let mut runs = Vec::new();
    for &masters in &args.masters {
        let run = measure_size(args, &queues, masters, &noop_path)
            .await
            .with_context(|| format!("the run on {masters} master(s)"))?;
        runs.push(run);
    }
    Ok(ClusterReport {
        args: args.clone(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        queues,
        runs,
    })
}

/// Queue names whose slots fall one in each of `count` equal slices of the
/// slot space. `LocalCluster` gives its masters equal shares cut the same
/// way, so a size that divides `count` gets `count / masters` queues on each
/// master (6 queues: 2 on each of 3 masters, 3 on each of 2).
pub fn queue_names(count: usize) -> Result<Vec<String>> {
    (0..count)
        .map(|index| {
            let slice = slot_share(index, count);
            (0u32..)
                .map(|n| format!("noop-{index}-{n}"))
                .find(|name| slice.contains(&queue_slot(name)))
                .with_context(|| format!("no queue name falls in slots {slice:?}"))
        })
        .collect()
}

/// The slot of every key of the queue `name` (its jobs' keys included).
pub fn queue_slot(name: &str) -> u16 {
    let slot = Slot::for_key(QueueKeys::new(name, KeyLayout::Cluster).job("any").record);
    // redis-rs keeps a slot's number private, but `Slot::new` makes one to compare.
    (0..SLOTS)
        .find(|&n| Slot::new(n) == Some(slot))
        .unwrap_or(0)
}

/// Jobs of the queue at `index`: N spread evenly, the remainder on the first ones.
fn share(jobs: usize, queues: usize, index: usize) -> usize {
    jobs / queues + usize::from(index < jobs % queues)
}

async fn measure_size(
    args: &ClusterBenchArgs,
    queues: &[String],
    masters: usize,
    noop_path: &Path,
) -> Result<SizeRun> {
    // LocalCluster blocks while it starts, forms and stops its servers.
    let (cluster, nodes) = tokio::task::spawn_blocking(move || {
        let cluster = LocalCluster::start(ClusterOptions {
            masters,
            replicas_per_master: 0,
            appendfsync: AppendFsync::Everysec,
        })?;
        let nodes = cluster.masters()?;
        Ok::<_, anyhow::Error>((cluster, nodes))
    })
    .await??;
    let result = on_cluster(args, queues, &cluster, &nodes, noop_path).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    result
}

async fn on_cluster(
    args: &ClusterBenchArgs,
    queues: &[String],
    cluster: &LocalCluster,
    nodes: &[Master],
    noop_path: &Path,
) -> Result<SizeRun> {
    let owners = queues
        .iter()
        .map(|queue| {
            let slot = queue_slot(queue);
            nodes
                .iter()
                .position(|m| m.slots.iter().any(|range| range.contains(&slot)))
                .with_context(|| format!("no master serves slot {slot} of {queue}"))
        })
        .collect::<Result<Vec<usize>>>()?;
    // The benchmark's own calls go straight to each master, not through spool.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(Some(PATIENCE));
    let mut direct = Vec::new();
    for node in nodes {
        direct.push(
            cluster
                .client(node.addr)?
                .get_multiplexed_async_connection_with_config(&patient)
                .await?,
        );
    }
    for queue in queues {
        let key = QueueKeys::new(queue, KeyLayout::Cluster).job("any").record;
        let served: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&key)
            .query_async(&mut direct[0])
            .await?;
        if served != queue_slot(queue) {
            bail!("{key} is in slot {served}, not {}", queue_slot(queue));
        }
    }
    let url = cluster.seeds_url();
    let mut instances = Vec::new();
    for _ in 0..args.instances {
        let max_waiting = args.jobs as u64 + 1;
        match start_spool_with_queues(&url, noop_path, args.concurrency, max_waiting, queues)
            .await
            .context("starting a spool instance on the cluster")
        {
            Ok(running) => instances.push(running),
            Err(error) => {
                stop_all(instances).await;
                return Err(error);
            }
        }
    }
    let timed = timed_run(args, queues, &owners, &url, &instances, &mut direct).await;
    stop_all(instances).await;
    let timed = timed?;
    let loads: Vec<MasterLoad> = nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let held: Vec<usize> = (0..queues.len()).filter(|&q| owners[q] == index).collect();
            let jobs: usize = held
                .iter()
                .map(|&q| share(args.jobs, queues.len(), q))
                .sum();
            let (before, after) = (&timed.before[index], &timed.after[index]);
            let cpu_us = (after.cpu_secs - before.cpu_secs) * 1e6;
            let command_us: u64 = after
                .usec
                .iter()
                .map(|(command, usec)| {
                    usec.saturating_sub(before.usec.get(command).copied().unwrap_or(0))
                })
                .sum();
            let per_job = |us: f64| if jobs == 0 { 0.0 } else { us / jobs as f64 };
            MasterLoad {
                addr: node.addr,
                queues: held.iter().map(|&q| queues[q].clone()).collect(),
                jobs,
                cpu_us_per_job: per_job(cpu_us),
                command_us_per_job: per_job(command_us as f64),
                cpu_us,
            }
        })
        .collect();
    Ok(SizeRun {
        masters: nodes.len(),
        jobs_per_sec: args.jobs as f64 / timed.elapsed.as_secs_f64(),
        completed: timed.completed,
        failed: timed.failed,
        nodes: loads,
        host_cpu_us: timed.host_cpu.as_secs_f64() * 1e6 / args.jobs as f64,
    })
}

struct Timed {
    elapsed: Duration,
    host_cpu: Duration,
    before: Vec<Snapshot>,
    after: Vec<Snapshot>,
    completed: u64,
    failed: u64,
}

/// Pause, bulk-submit each queue's share, then resume all and time until
/// every queue has completed its share (as `bench-compare`'s no-op run).
async fn timed_run(
    args: &ClusterBenchArgs,
    queues: &[String],
    owners: &[usize],
    url: &str,
    instances: &[Running],
    direct: &mut [MultiplexedConnection],
) -> Result<Timed> {
    let (connection, _) = spool_core::connection::open(url, None).await?;
    let control = Queue::new(connection);
    let keys: Vec<QueueKeys> = queues
        .iter()
        .map(|queue| QueueKeys::new(queue, KeyLayout::Cluster))
        .collect();
    for queue in &keys {
        control
            .set_paused(queue, true)
            .await
            .with_context(|| format!("pausing {}", queue.name))?;
    }
    let client = reqwest::Client::new();
    for (index, queue) in queues.iter().enumerate() {
        // Each instance takes a turn at submitting, as a load balancer would.
        let base = format!("http://{}", instances[index % instances.len()].addr);
        let jobs = share(args.jobs, queues.len(), index);
        bulk_submit(
            &client,
            &base,
            queue,
            jobs,
            &|i| json!({ "payload": { "n": i } }),
        )
        .await
        .with_context(|| format!("submitting to {queue}"))?;
    }
    let before = snapshots(direct).await?;
    let cpu_before = process_cpu();
    let started = Instant::now();
    for queue in &keys {
        control
            .set_paused(queue, false)
            .await
            .with_context(|| format!("resuming {}", queue.name))?;
    }
    for (index, queue) in queues.iter().enumerate() {
        let jobs = share(args.jobs, queues.len(), index);
        wait_completed(&mut direct[owners[index]], queue, jobs).await?;
    }
    let elapsed = started.elapsed();
    let host_cpu = process_cpu() - cpu_before;
    let after = snapshots(direct).await?;
    let (mut completed, mut failed) = (0, 0);
    for (index, queue) in queues.iter().enumerate() {
        let connection = &mut direct[owners[index]];
        completed += counter(connection, queue, "completed").await?;
        failed += counter(connection, queue, "failed").await?;
    }
    Ok(Timed {
        elapsed,
        host_cpu,
        before,
        after,
        completed,
        failed,
    })
}

async fn snapshots(direct: &mut [MultiplexedConnection]) -> Result<Vec<Snapshot>> {
    let mut taken = Vec::with_capacity(direct.len());
    for connection in direct {
        taken.push(Snapshot::take(connection).await?);
    }
    Ok(taken)
}

async fn counter(redis: &mut MultiplexedConnection, queue: &str, state: &str) -> Result<u64> {
    let value: Option<u64> = redis::cmd("GET")
        .arg(counter_key(queue, state))
        .query_async(redis)
        .await?;
    Ok(value.unwrap_or(0))
}

async fn stop_all(instances: Vec<Running>) {
    futures_util::future::join_all(instances.into_iter().map(Running::stop)).await;
}

impl ClusterReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let args = &self.args;
        let _ = writeln!(
            out,
            "spool bench-cluster: N = {} no-op jobs per size over {} queues, {} in-process instances x {} workers, Redis Cluster with AOF everysec and no replicas, {} cores",
            args.jobs,
            self.queues.len(),
            args.instances,
            args.concurrency,
            self.cores
        );
        let _ = writeln!(
            out,
            "(all instances and every redis-server share these {} cores, so the ratio to 1 master is bounded by the cores, not by Redis alone)\n",
            self.cores
        );
        let _ = writeln!(out, "Which master holds which queue");
        for run in &self.runs {
            let _ = writeln!(out, "  {} master(s):", run.masters);
            for node in &run.nodes {
                let _ = writeln!(
                    out,
                    "    {:<21} {:>6} jobs  {}",
                    node.addr.to_string(),
                    node.jobs,
                    node.queues.join(", ")
                );
            }
        }
        let _ = writeln!(
            out,
            "\nProcessing (all N queued while paused, timed from the resume to the Nth completion)"
        );
        let _ = writeln!(
            out,
            "  {:>7} {:>9} {:>9} {:>10} {:>10}  per master: Redis CPU us / command us, per job it held",
            "masters", "jobs/s", "/1 master", "Redis CPU", "host CPU"
        );
        let one = self.runs.iter().find(|r| r.masters == 1);
        for run in &self.runs {
            let total_redis: f64 = run.nodes.iter().map(|n| n.cpu_us).sum();
            let per_master: Vec<String> = run
                .nodes
                .iter()
                .map(|n| format!("{:.1} / {:.1}", n.cpu_us_per_job, n.command_us_per_job))
                .collect();
            let _ = writeln!(
                out,
                "  {:>7} {:>9.0} {:>9} {:>7.1} us {:>7.1} us  {}",
                run.masters,
                run.jobs_per_sec,
                one.map_or("-".to_owned(), |o| format!(
                    "{:.2}x",
                    run.jobs_per_sec / o.jobs_per_sec
                )),
                total_redis / args.jobs as f64,
                run.host_cpu_us,
                per_master.join("  |  ")
            );
        }
        let three = self.runs.iter().find(|r| r.masters == 3);
        if let (Some(first), Some(three)) = (one, three) {
            let _ = writeln!(
                out,
                "\nscaling 1 -> 3 masters: {:.2}x",
                three.jobs_per_sec / first.jobs_per_sec
            );
        }
        let _ = writeln!(
            out,
            "\nRedis CPU: every master's used_cpu_user + used_cpu_sys, summed, per job of N. host CPU: this process (all instances and the submitting client), per job. Per master: its own CPU and time inside commands (INFO commandstats; a script counts with its commands) over the jobs its queues held."
        );
        out
    }
}
