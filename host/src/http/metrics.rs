//! `GET /metrics` (Prometheus text) and `GET /api/metrics` (the designs'
//! monitoring figures as JSON), and the process's metrics recorder behind them.
//!
//! Per-instance metrics are what `spool-core` emits through the `metrics`
//! facade as things happen; [`install`] gives them a Prometheus recorder with
//! real histogram buckets and an `instance` label. Cluster-wide figures (queue
//! lengths, the shared limiter) are read from Redis at each scrape into a
//! recorder of their own, without an `instance` label, and appended: any
//! instance reports the same values. Neither endpoint changes anything.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use ::metrics::{counter, gauge};
use spool_core::limiter::LimiterSnapshot;
use spool_core::metrics::names;
use spool_core::models::BackendKind;
use spool_core::queue::{QueueStats, WindowTotals};

/// The Prometheus text format version `/metrics` speaks.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds of every histogram, in seconds: from a Redis round trip
/// (sub-millisecond) to a long model call or job (minutes).
const BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// How often histogram samples are folded in when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder, labelling everything it records with
/// `instance`. The recorder is process-wide: a second instance started in the
/// same process (a benchmark) shares the first one's, and its label.
pub fn install(instance: &str) -> anyhow::Result<()> {
    if RECORDER.get().is_some() {
        tracing::warn!(
            instance,
            "the metrics recorder was installed by an earlier instance in this process; its instance label stays"
        );
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(&BUCKETS)?
        .add_global_label("instance", instance)
        .install_recorder()?;
    spool_core::metrics::install();
    let _ = RECORDER.set(handle);
    Ok(())
}

/// Folds histogram samples in now and then, so they do not pile up between
/// scrapes; ends with `shutdown`.
pub async fn upkeep(shutdown: CancellationToken) {
    let Some(handle) = RECORDER.get() else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(UPKEEP_INTERVAL) => handle.run_upkeep(),
        }
    }
}

/// `GET /metrics`: this instance's metrics, then the cluster-wide ones.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200,
    description = "Prometheus text exposition format 0.0.4 (see the README's metric list)",
    content_type = "text/plain", body = String)))]
pub async fn prometheus(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let mut text = RECORDER
        .get()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    text.push_str(&cluster_wide(&state).await?);
    Ok(([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], text).into_response())
}

/// Queue lengths and the shared limiter as Redis has them now, rendered by a
/// recorder of their own: no `instance` label, and no family the global
/// recorder also renders.
async fn cluster_wide(state: &AppState) -> Result<String, ApiError> {
    let mut queues = Vec::with_capacity(state.intake.routes.len());
    for (name, route) in state.intake.routes.iter() {
        queues.push((name, state.queue.stats(&route.keys).await?));
    }
    let limiter = state.gateway.limiter().snapshot().await?;
    let backend = state.gateway.client().config().kind;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::with_local_recorder(&recorder, || {
        spool_core::metrics::describe();
        for (name, stats) in &queues {
            queue_state(name, stats);
        }
        limiter_state(backend, &limiter);
    });
    Ok(handle.render())
}

/// A queue's lengths as every instance sees them (set at scrape time).
fn queue_state(queue: &str, stats: &QueueStats) {
    for (class, figures) in &stats.by_priority {
        let labels = [("queue", queue.to_owned()), ("class", (*class).to_owned())];
        gauge!(names::QUEUE_WAITING, &labels).set(figures.waiting as f64);
        gauge!(names::QUEUE_ACTIVE, &labels).set(figures.active as f64);
    }
    let queue = queue.to_owned();
    gauge!(names::QUEUE_DELAYED, "queue" => queue.clone()).set(stats.delayed as f64);
    gauge!(names::QUEUE_DEAD, "queue" => queue.clone()).set(stats.dead as f64);
    gauge!(names::QUEUE_PAUSED, "queue" => queue).set(if stats.paused { 1.0 } else { 0.0 });
}

/// The shared limiter's state and counters, all instances together (set at
/// scrape time).
fn limiter_state(backend: BackendKind, limiter: &LimiterSnapshot) {
    let backend = backend.to_string();
    let labels = [("backend", backend.clone())];
    gauge!(names::LIMITER_CONFIGURED_RATE, &labels).set(limiter.configured_rate_per_sec);
    gauge!(names::LIMITER_EFFECTIVE_RATE, &labels).set(limiter.effective_rate_per_sec);
    gauge!(names::LIMITER_TOKENS, &labels).set(limiter.tokens_available);
    gauge!(names::LIMITER_COOLDOWN, &labels).set(limiter.cooldown_remaining_ms as f64 / 1000.0);
    counter!(names::LIMITER_GRANTED, &labels).absolute(limiter.granted);
    counter!(names::LIMITER_WAITS, &labels).absolute(limiter.waits);
    counter!(names::LIMITER_RETRIES, &labels).absolute(limiter.retries);
    // 429 and 403 always show, so that a dashboard has a series before the first.
    let mut rate_limited = limiter.rate_limited.clone();
    for status in ["403", "429"] {
        rate_limited.entry(status.to_owned()).or_insert(0);
    }
    for (status, count) in rate_limited {
        counter!(names::LIMITER_RATE_LIMITED, "backend" => backend.clone(), "status" => status)
            .absolute(count);
    }
    for (reason, count) in [
        ("unavailable", limiter.failures_unavailable),
        ("rejected", limiter.failures_rejected),
        ("forbidden", limiter.failures_forbidden),
    ] {
        counter!(names::LIMITER_FAILURES, "backend" => backend.clone(), "reason" => reason)
            .absolute(count);
    }
}

/// `GET /api/metrics`: per queue, the designs' figures over each window.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// The figures' granularity: a window of n minutes is the last n minutes
    /// to within this many seconds.
    pub bucket_seconds: u64,
    pub queues: BTreeMap<String, QueueMonitoring>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueMonitoring {
    /// One per window, shortest first (1, 5, 15, 60 minutes).
    pub windows: Vec<WindowFigures>,
}

/// A queue's requests that ended within one window. A request is a job that
/// ended for good; a retried attempt is not one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowFigures {
    pub minutes: u64,
    /// Completed plus failed: requests that got an answer.
    pub total_requests: u64,
    pub completed: u64,
    /// Failed for good (dead-lettered).
    pub failed: u64,
    /// Cancelled by a client; not part of the other figures.
    pub cancelled: u64,
    /// Completed of total requests, 0..1; null with no requests.
    pub success_rate: Option<f64>,
    /// Submission to end, what the client waits (queueing and retries
    /// included); null with no requests.
    pub average_response_time_ms: Option<f64>,
    /// Start to end of the attempt that ended the job; null with no requests.
    pub average_processing_time_ms: Option<f64>,
    /// Total requests per minute over the window.
    pub throughput_per_minute: f64,
}

impl From<&WindowTotals> for WindowFigures {
    fn from(totals: &WindowTotals) -> Self {
        Self {
            minutes: totals.minutes,
            total_requests: totals.total_requests(),
            completed: totals.completed,
            failed: totals.failed,
            cancelled: totals.cancelled,
            success_rate: totals.success_rate(),
            average_response_time_ms: totals.average_response_ms(),
            average_processing_time_ms: totals.average_processing_ms(),
            throughput_per_minute: totals.throughput_per_minute(),
        }
    }
}

/// The designs' monitoring: per queue, average response time, total requests,
/// success rate and throughput per minute over sliding windows, from Redis.
#[utoipa::path(get, path = "/api/metrics", tag = "operations", responses((status = 200, body = Monitoring)))]
pub async fn monitoring(State(state): State<Arc<AppState>>) -> Result<Json<Monitoring>, ApiError> {
    let mut queues = BTreeMap::new();
    for (name, route) in state.intake.routes.iter() {
        let figures = state.queue.monitoring(&route.keys).await?;
        queues.insert(
            name.clone(),
            QueueMonitoring {
                windows: figures.windows.iter().map(WindowFigures::from).collect(),
            },
        );
    }
    Ok(Json(Monitoring {
        bucket_seconds: spool_core::queue::MONITOR_BUCKET_SECS,
        queues,
    }))
}
