//! The paced runs of `spool bench-compare` and how each is printed: the
//! issue's, at half the best no-op rate (or `--paced-rate`), and the
//! one-POST maximum with a run at half of it. How a run submits and what it
//! measures is `paced`'s; this module only chooses rates and words.

use std::path::Path;

use anyhow::Result;
use redis::aio::MultiplexedConnection;

use super::paced::{Pace, Paced, TARGET_P99_MS, paced_run};

/// The maximum rate of jobs submitted one POST each, and a paced run at half
/// of it: the paced run is at half the best rate of a queue filled
/// in bulks, which single POSTs, each an HTTP request to answer, may not
/// reach at all; these show the queue's latency at half its load on the
/// workload the paced client sends.
pub(super) async fn one_post_runs(
    redis: &mut MultiplexedConnection,
    noop_path: &Path,
    concurrency: usize,
) -> Result<[PacedRun; 2]> {
    let max = paced_run(redis, noop_path, concurrency, Pace::AsAnswered).await?;
    let half = paced_run(redis, noop_path, concurrency, Pace::Rate(max.rate / 2.0)).await?;
    Ok([
        PacedRun::new(PacedAt::AsAnswered, max),
        PacedRun::new(PacedAt::HalfOnePostMax, half),
    ])
}

/// Why a paced run ran at its rate.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum PacedAt {
    Given,
    HalfNoopMax,
    AsAnswered,
    HalfOnePostMax,
}

pub(super) struct PacedRun {
    at: PacedAt,
    pub paced: Paced,
}

impl PacedRun {
    pub fn new(at: PacedAt, paced: Paced) -> Self {
        Self { at, paced }
    }

    /// Its row in the table of commands.
    pub fn system(&self) -> &'static str {
        match self.at {
            PacedAt::Given | PacedAt::HalfNoopMax => "spool paced",
            PacedAt::AsAnswered => "spool POST max",
            PacedAt::HalfOnePostMax => "spool paced/2",
        }
    }

    fn why(&self) -> &'static str {
        match self.at {
            PacedAt::Given => "--paced-rate",
            PacedAt::HalfNoopMax => "half the best no-op rate above",
            PacedAt::AsAnswered => "as fast as answered",
            PacedAt::HalfOnePostMax => "half the one-POST maximum above",
        }
    }

    /// One paced run's figures: what a job cost and how long a POST took;
    /// for a paced rate also the queue waits (a run sent as fast as answered
    /// keeps its queue full, so its waits say nothing of the queue).
    /// `noop_max`: the best no-op rate of the comparison, if it ran.
    pub fn print(&self, cores: usize, noop_max: Option<f64>) {
        let paced = &self.paced;
        if self.at == PacedAt::AsAnswered {
            println!(
                "\nOne POST per job, {} ({} in flight): {} no-op jobs, concurrency {}: {:.0} jobs/s{}",
                self.why(),
                paced.max_in_flight,
                paced.jobs,
                paced.concurrency,
                paced.rate,
                noop_max.map_or(String::new(), |max| format!(
                    ", {:.2}x the best no-op rate above (a queue filled in bulks)",
                    paced.rate / max
                ))
            );
        } else {
            println!(
                "\nPaced submissions: {} no-op jobs, one POST each (from this process) at {:.0} jobs/s ({}), concurrency {}",
                paced.jobs,
                paced.rate,
                self.why(),
                paced.concurrency
            );
            println!(
                "  submit -> start (created_at -> first claim, 1 ms clock): p50 {} ms, p99 {} ms, max {} ms    target p99 <= {} ms",
                paced.p50_ms, paced.p99_ms, paced.max_ms, TARGET_P99_MS
            );
            let windows = &paced.windows;
            println!(
                "  p99 of the jobs submitted in each 100 ms of the run: median {} ms, worst {} ms; {} of {} windows above {} ms (a few: short stalls the queue drained after; most: past the instance's knee)",
                windows.median_ms, windows.worst_ms, windows.above, windows.of, TARGET_P99_MS
            );
            println!(
                "  (the first {} jobs, sent at the same rate as the fresh instance warmed up, are not in these figures: their p99 was {} ms)",
                paced.warm_up_jobs, paced.warm_up_p99_ms
            );
        }
        let b = &paced.budget;
        println!(
            "  per job: Redis CPU {:.1} us ({:.0} % of a core over the run), {:.2} commands, {:.2} Redis reads; this process {:.1} us CPU (the instance {:.1}, the client {:.1}); together {:.2} of the {} cores",
            b.redis_cpu_us,
            b.redis_cpu_us * paced.jobs as f64 / paced.seconds / 1e4,
            b.commands,
            b.round_trips,
            b.host_cpu_us,
            b.host_cpu_us - paced.client_cpu_us,
            paced.client_cpu_us,
            (b.redis_cpu_us + b.host_cpu_us) * paced.jobs as f64 / paced.seconds / 1e6,
            cores
        );
        println!(
            "  a POST answered in p50 {:.2} ms, p99 {:.2} ms; {}",
            paced.post_p50_ms,
            paced.post_p99_ms,
            paced.waits.submitted_line()
        );
        println!("  AOF rewrites during the run: {}", b.aof_rewrites);
        if paced.held_back > 0 {
            println!(
                "  the instance fell behind the rate: {} POSTs waited for one of {} in flight to answer, and were sent late (a wait before its POST is not in a job's figure)",
                paced.held_back, paced.max_in_flight
            );
        }
    }
}
