//! Keeps an instance's workers alive: a worker that panics (a bug on one job's
//! path) is restarted with backoff instead of being lost for good, and every
//! restart is counted so `/health` can say the instance is degraded. The job
//! it was running is left to recovery, like one of a crashed instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Workers;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Worker restarts of this instance since it started.
#[derive(Default)]
pub struct WorkerRestarts(AtomicU64);

impl WorkerRestarts {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Workers {
    /// Runs worker `index` until `shutdown`, restarting it after a panic.
    pub async fn supervise(
        self: Arc<Self>,
        consumer: String,
        index: usize,
        shutdown: CancellationToken,
    ) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let run = tokio::spawn(self.clone().run(consumer.clone(), index, shutdown.clone()));
            match run.await {
                Err(error) if error.is_panic() => {
                    let restarts = self.restarts.0.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::error!(%consumer, restarts, ?backoff, "worker panicked; restarting it");
                }
                // Stopped by `shutdown`, or cancelled with the runtime.
                _ => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Test-only fault injection, compiled into debug builds alone: a worker
/// panics on the first attempt at the job named by `SPOOL_FAULT_PANIC_ON_JOB`,
/// so the supervision above can be tested with a real panic.
#[cfg(debug_assertions)]
pub(super) fn injected_panic(job_id: &str, attempt: u32) {
    static JOB: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("SPOOL_FAULT_PANIC_ON_JOB").ok());
    if attempt == 1 && JOB.as_deref() == Some(job_id) {
        panic!("injected panic on job {job_id} (SPOOL_FAULT_PANIC_ON_JOB)");
    }
}

#[cfg(not(debug_assertions))]
pub(super) fn injected_panic(_job_id: &str, _attempt: u32) {}
