//! Test-only fault injection for the worker loop, compiled into debug builds
//! alone (release builds get no-ops): lets end-to-end tests stretch a moment
//! that is too short to hit on purpose.

/// Holds a worker after it claimed a job, before the job runs, until the file
/// named by `SPOOL_FAULT_HOLD_CLAIMED_JOBS` exists: a claim that takes long
/// (a busy machine), stretched so a version switch can land inside it.
#[cfg(debug_assertions)]
pub(super) async fn hold_after_claim(job_id: &str) {
    static GATE: std::sync::LazyLock<Option<std::path::PathBuf>> = std::sync::LazyLock::new(|| {
        std::env::var_os("SPOOL_FAULT_HOLD_CLAIMED_JOBS").map(std::path::PathBuf::from)
    });
    let Some(gate) = GATE.as_deref() else {
        return;
    };
    tracing::info!(job = %job_id, gate = %gate.display(), "holding the claimed job until the gate file exists (SPOOL_FAULT_HOLD_CLAIMED_JOBS)");
    // Bounded, so a test that forgets its gate still ends.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !gate.exists() && std::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(not(debug_assertions))]
pub(super) async fn hold_after_claim(_job_id: &str) {}
