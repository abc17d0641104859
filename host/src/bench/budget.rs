//! What a benchmark run cost, from the outside: Redis' own counters
//! (`INFO`: commands, CPU, reads, AOF rewrites) before and after a run,
//! turned into a per-job budget, and this process' CPU time. Shared by the
//! comparison, paced and cluster runs; owns no state.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use redis::aio::MultiplexedConnection;

/// CPU time (user + system) of this process so far.
pub(super) fn process_cpu() -> Duration {
    // SAFETY: getrusage of this process into a zeroed struct it owns.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time (user + system) of the calling thread so far.
pub(super) fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime of this thread's CPU clock into a zeroed struct it owns.
    let time = unsafe {
        let mut time: libc::timespec = std::mem::zeroed();
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time);
        time
    };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// Redis' own counters at one moment (`INFO`).
#[derive(Clone, Default)]
pub(super) struct Snapshot {
    calls: BTreeMap<String, u64>,
    pub(super) usec: BTreeMap<String, u64>,
    reads: u64,
    pub(super) cpu_secs: f64,
    /// CPU of Redis' forked children: the AOF rewrites, with `--save ""`.
    child_cpu_secs: f64,
    aof_rewrites: u64,
    pub(super) used_memory: u64,
}

impl Snapshot {
    pub(super) async fn take(redis: &mut MultiplexedConnection) -> Result<Self> {
        let text: String = redis::cmd("INFO")
            .arg("everything")
            .query_async(redis)
            .await?;
        let mut snapshot = Snapshot::default();
        for line in text.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            if let Some(command) = name.strip_prefix("cmdstat_") {
                let field = |key: &str| {
                    value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                snapshot.calls.insert(command.to_owned(), field("calls"));
                snapshot.usec.insert(command.to_owned(), field("usec"));
            }
            match name {
                "total_reads_processed" => snapshot.reads = value.parse().unwrap_or(0),
                "used_cpu_sys" | "used_cpu_user" => {
                    snapshot.cpu_secs += value.parse::<f64>().unwrap_or(0.0)
                }
                "used_cpu_sys_children" | "used_cpu_user_children" => {
                    snapshot.child_cpu_secs += value.parse::<f64>().unwrap_or(0.0)
                }
                "aof_rewrites" => snapshot.aof_rewrites = value.parse().unwrap_or(0),
                "used_memory" => snapshot.used_memory = value.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok(snapshot)
    }
}

/// What one job cost, on average, over a processing run.
#[derive(Clone, Default)]
pub(super) struct Budget {
    /// Read events Redis processed: each is one request or pipeline (a round trip).
    pub(super) round_trips: f64,
    /// Commands Redis ran, a script's own commands included.
    pub(super) commands: f64,
    /// Every command called: calls and µs inside them, per job, most
    /// called first (a script's µs include its commands').
    pub(super) top: Vec<(String, f64, f64)>,
    /// Redis process CPU (`used_cpu_user + used_cpu_sys`).
    pub(super) redis_cpu_us: f64,
    /// Time inside commands (`INFO commandstats`; a script counts with its commands).
    pub(super) redis_command_us: f64,
    /// AOF rewrites Redis started in the run (each forks a child that writes
    /// the whole dataset: its CPU is taken from the queue and Redis on 2 cores).
    pub(super) aof_rewrites: u64,
    /// The rewrites' CPU (Redis' children), per job.
    pub(super) rewrite_cpu_us: f64,
    /// The queue's own process (spool's instance, BullMQ's worker).
    pub(super) host_cpu_us: f64,
}

impl Budget {
    /// `polls`: the benchmark's own GETs and INFOs, taken out.
    pub(super) fn new(
        before: &Snapshot,
        after: &Snapshot,
        jobs: usize,
        polls: u64,
        host_cpu_us: f64,
    ) -> Self {
        let jobs = jobs as f64;
        let delta = |map_after: &BTreeMap<String, u64>,
                     map_before: &BTreeMap<String, u64>,
                     command: &str| {
            map_after
                .get(command)
                .copied()
                .unwrap_or(0)
                .saturating_sub(map_before.get(command).copied().unwrap_or(0))
        };
        let mut calls: Vec<(String, u64)> = after
            .calls
            .keys()
            .map(|command| {
                let mut n = delta(&after.calls, &before.calls, command);
                match command.as_str() {
                    "get" => n = n.saturating_sub(polls),
                    "info" => n = n.saturating_sub(1),
                    _ => {}
                }
                (command.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let commands: u64 = calls.iter().map(|(_, n)| n).sum();
        let usec: u64 = after
            .usec
            .keys()
            .map(|command| delta(&after.usec, &before.usec, command))
            .sum();
        Budget {
            round_trips: after
                .reads
                .saturating_sub(before.reads)
                .saturating_sub(polls + 1) as f64
                / jobs,
            commands: commands as f64 / jobs,
            top: calls
                .into_iter()
                .map(|(command, n)| {
                    let usec = delta(&after.usec, &before.usec, &command);
                    (command, n as f64 / jobs, usec as f64 / jobs)
                })
                .collect(),
            redis_cpu_us: (after.cpu_secs - before.cpu_secs) * 1e6 / jobs,
            redis_command_us: usec as f64 / jobs,
            aof_rewrites: after.aof_rewrites.saturating_sub(before.aof_rewrites),
            rewrite_cpu_us: (after.child_cpu_secs - before.child_cpu_secs).max(0.0) * 1e6 / jobs,
            host_cpu_us: host_cpu_us / jobs,
        }
    }
}
