//! The designs' monitoring figures of a queue: requests, success rate, average
//! response and processing times and throughput over sliding windows.
//!
//! The figures are written by the scripts that end a job, atomically with the
//! job's end (`monitor.lua`), into buckets of Redis time; this module only
//! reads them back (`monitor_read.lua`), so any instance answers the same. It
//! owns no other state.

use super::{Queue, QueueKeys};
use crate::metrics;

/// The length of a bucket, as `monitor.lua` has it: a window of n minutes is
/// the last n minutes to within this many seconds.
pub const MONITOR_BUCKET_SECS: u64 = 10;

/// The windows reported, in minutes, ascending.
pub const MONITOR_WINDOWS: [u64; 4] = [1, 5, 15, 60];

/// What one queue's requests added up to over one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowTotals {
    pub minutes: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Sum and count of submitted-to-finished times of completed and failed jobs.
    pub response_ms: u64,
    pub response_count: u64,
    /// Sum and count of the final attempt's start-to-finished times.
    pub processing_ms: u64,
    pub processing_count: u64,
}

impl WindowTotals {
    /// Requests that got an answer: completed or failed (a cancelled one did not).
    pub fn total_requests(&self) -> u64 {
        self.completed + self.failed
    }

    /// Completed of all answered requests; `None` when there were none.
    pub fn success_rate(&self) -> Option<f64> {
        let total = self.total_requests();
        (total > 0).then(|| self.completed as f64 / total as f64)
    }

    pub fn average_response_ms(&self) -> Option<f64> {
        average(self.response_ms, self.response_count)
    }

    pub fn average_processing_ms(&self) -> Option<f64> {
        average(self.processing_ms, self.processing_count)
    }

    /// Answered requests per minute over the window.
    pub fn throughput_per_minute(&self) -> f64 {
        self.total_requests() as f64 / self.minutes.max(1) as f64
    }
}

fn average(sum: u64, count: u64) -> Option<f64> {
    (count > 0).then(|| sum as f64 / count as f64)
}

/// A queue's figures, one per window of [`MONITOR_WINDOWS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueMonitoring {
    pub windows: Vec<WindowTotals>,
}

impl Queue {
    /// The queue's monitoring figures over each of [`MONITOR_WINDOWS`], in one
    /// round trip.
    pub async fn monitoring(&self, queue: &QueueKeys) -> redis::RedisResult<QueueMonitoring> {
        let mut invocation = self.monitor_read.prepare_invoke();
        invocation.key(&queue.monitor);
        for minutes in MONITOR_WINDOWS {
            invocation.arg(minutes);
        }
        let sums: Vec<Vec<u64>> = metrics::redis_timed(
            "monitoring",
            invocation.invoke_async(&mut self.redis.clone()),
        )
        .await?;
        let windows = MONITOR_WINDOWS
            .iter()
            .zip(sums)
            .map(|(&minutes, sums)| {
                let at = |i: usize| sums.get(i).copied().unwrap_or(0);
                WindowTotals {
                    minutes,
                    completed: at(0),
                    failed: at(1),
                    cancelled: at(2),
                    response_ms: at(3),
                    response_count: at(4),
                    processing_ms: at(5),
                    processing_count: at(6),
                }
            })
            .collect();
        Ok(QueueMonitoring { windows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_length_is_the_scripts() {
        let line = format!("local MONITOR_BUCKET_SECS = {MONITOR_BUCKET_SECS}\n");
        assert!(include_str!("monitor.lua").contains(&line));
    }

    #[test]
    fn figures_follow_from_the_sums_and_are_absent_without_requests() {
        let window = WindowTotals {
            minutes: 5,
            completed: 3,
            failed: 1,
            cancelled: 2,
            response_ms: 4000,
            response_count: 4,
            processing_ms: 1000,
            processing_count: 4,
        };
        assert_eq!(window.total_requests(), 4);
        assert_eq!(window.success_rate(), Some(0.75));
        assert_eq!(window.average_response_ms(), Some(1000.0));
        assert_eq!(window.average_processing_ms(), Some(250.0));
        assert_eq!(window.throughput_per_minute(), 0.8);
        let empty = WindowTotals {
            minutes: 1,
            cancelled: 1,
            ..WindowTotals::default()
        };
        assert_eq!(empty.success_rate(), None);
        assert_eq!(empty.average_response_ms(), None);
        assert_eq!(empty.throughput_per_minute(), 0.0);
    }
}
