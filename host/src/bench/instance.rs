//! A spool instance for the comparison runs (`compare`, `paced`, `cluster`): started
//! in-process over the benchmark's own redis-server with the no-op handler,
//! and the few calls the runs make around it (flush, pause, bulk submission
//! over HTTP, wait for the Nth completion). Owns no state of its own.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

use spool_core::config::{Config, HandlerFile, QueueConfig};
use spool_core::queue::{KeyLayout, Queue, QueueKeys};

pub(super) const NOOP_QUEUE: &str = "noop";
pub(super) const CHAT_QUEUE: &str = "chat";
/// Jobs per bulk call, for both systems (BullMQ's `addBulk` and spool's bulk route).
pub(super) const BATCH: usize = 1000;
/// How long the benchmark's own Redis calls may take.
pub(super) const PATIENCE: Duration = Duration::from_secs(60);

/// Empties the benchmark's Redis and compacts its append-only file, so that
/// each run starts from nothing and pays for its own writes only. The file
/// still held every earlier run's commands: Redis rewrites it (a forked child
/// writes the whole dataset, taking a core for up to a second) once it has
/// doubled, so a run was charged for a rewrite its predecessors had made due.
/// A run's own rewrites still happen, and the budget counts them.
pub(super) async fn flush(redis: &mut MultiplexedConnection) -> Result<()> {
    redis::cmd("FLUSHALL")
        .arg("SYNC")
        .query_async::<()>(redis)
        .await?;
    // Scheduled, not refused, while a rewrite runs.
    redis::cmd("BGREWRITEAOF").query_async::<()>(redis).await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let persistence = Persistence::read(redis).await?;
        if persistence.field("aof_rewrite_in_progress") == 0
            && persistence.field("aof_rewrite_scheduled") == 0
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Redis' AOF rewrite did not end within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis' `INFO persistence` at one moment.
pub(super) struct Persistence(String);

impl Persistence {
    pub(super) async fn read(redis: &mut MultiplexedConnection) -> Result<Self> {
        Ok(Self(
            redis::cmd("INFO")
                .arg("persistence")
                .query_async(redis)
                .await?,
        ))
    }

    /// A numeric field's value; 0 when Redis does not report it.
    pub(super) fn field(&self, name: &str) -> u64 {
        self.0
            .lines()
            .find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    }
}

/// An in-process instance over the benchmark's Redis, with the no-op handler.
pub(super) async fn start_spool(
    redis_url: &str,
    noop_path: &Path,
    concurrency: usize,
    max_waiting: u64,
) -> Result<crate::app::Running> {
    start_spool_with_queues(
        redis_url,
        noop_path,
        concurrency,
        max_waiting,
        &[NOOP_QUEUE.to_owned()],
    )
    .await
}

/// As [`start_spool`], with each of `noop_queues` served by the no-op handler.
pub(super) async fn start_spool_with_queues(
    redis_url: &str,
    noop_path: &Path,
    concurrency: usize,
    max_waiting: u64,
    noop_queues: &[String],
) -> Result<crate::app::Running> {
    let mut config = Config {
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    config.redis.url = Some(redis_url.to_owned());
    config.workers.concurrency = concurrency;
    config.sandbox.max_instances = config.sandbox.max_instances.max(concurrency as u32 * 2);
    config.limits = spool_core::limiter::LimitsConfig::unpaced();
    config.handlers.insert(
        "noop".into(),
        HandlerFile {
            path: noop_path.to_owned(),
        },
    );
    for queue in noop_queues {
        config.queues.insert(
            queue.clone(),
            QueueConfig {
                handler: "noop".into(),
                max_waiting,
                ..QueueConfig::default()
            },
        );
    }
    config
        .queues
        .get_mut(CHAT_QUEUE)
        .context("chat queue")?
        .max_waiting = max_waiting;
    crate::app::start(config).await
}

/// A queue handle for pausing and resuming, on a connection of its own.
pub(super) async fn control_queue(url: &str) -> Result<Queue> {
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(PATIENCE));
    let connection = redis::Client::open(url)?
        .get_connection_manager_with_config(config)
        .await?;
    Ok(Queue::new(connection.into()))
}

pub(super) async fn redis_url(redis: &mut MultiplexedConnection) -> Result<String> {
    let dir: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("unixsocket")
        .query_async(redis)
        .await?;
    let socket = dir.get(1).context("redis-server has a unix socket")?;
    Ok(format!("redis+unix://{socket}"))
}

/// The key of a queue's `state` total (`completed`, `failed`): the same
/// in both key layouts.
pub(super) fn counter_key(queue: &str, state: &str) -> String {
    QueueKeys::new(queue, KeyLayout::SingleNode).counter(state)
}

/// Polls the queue's completed counter (one GET a poll, subtracted from the
/// budget) until `jobs` finished; fails on any failed job. Returns the polls.
pub(super) async fn wait_completed(
    redis: &mut MultiplexedConnection,
    queue: &str,
    jobs: usize,
) -> Result<u64> {
    let key = |state: &str| counter_key(queue, state);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut polls = 0;
    loop {
        polls += 1;
        let done: Option<u64> = redis::cmd("GET")
            .arg(key("completed"))
            .query_async(redis)
            .await?;
        if done.unwrap_or(0) >= jobs as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{queue}: jobs did not finish within 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failed: Option<u64> = redis::cmd("GET")
        .arg(key("failed"))
        .query_async(redis)
        .await?;
    if failed.unwrap_or(0) > 0 {
        bail!("{queue}: {} jobs failed", failed.unwrap_or(0));
    }
    Ok(polls + 1)
}

/// Submits `jobs` to `queue` over HTTP in bulks of [`BATCH`], `item(i)` being
/// the i-th job.
pub(super) async fn bulk_submit(
    client: &reqwest::Client,
    base: &str,
    queue: &str,
    jobs: usize,
    item: &impl Fn(usize) -> Value,
) -> Result<()> {
    let url = if queue == CHAT_QUEUE {
        format!("{base}/api/chat/bulk")
    } else {
        format!("{base}/api/queues/{queue}/jobs/bulk")
    };
    for start in (0..jobs).step_by(BATCH) {
        let batch: Vec<Value> = (start..jobs.min(start + BATCH)).map(item).collect();
        post_bulk(client, &url, &batch).await?;
    }
    Ok(())
}

/// POSTs one bulk of `jobs` to `url`; the answer, once it says they were
/// accepted (its body unread).
pub(super) async fn post_bulk(
    client: &reqwest::Client,
    url: &str,
    jobs: &[Value],
) -> Result<reqwest::Response> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(json!({ "jobs": jobs }).to_string())
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        bail!("bulk submission refused: {}", response.text().await?);
    }
    Ok(response)
}
