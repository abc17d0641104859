//! Configuration: a TOML file (`--config`), then command-line flags and `SPOOL_*`
//! environment variables on top. Owns the defaults the user expects to find;
//! touches nothing at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::models::BackendConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    pub redis: RedisConfig,
    /// The model backend. Absent: spool starts its built-in stub model server.
    pub model: Option<BackendConfig>,
    pub workers: WorkerConfig,
    pub sandbox: SandboxConfig,
    pub retention: RetentionConfig,
    /// Queue name -> how it is served.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Extra handler components by name, loaded from files. The built-in
    /// handlers `chat` and `pipeline` need no entry.
    pub handlers: BTreeMap<String, HandlerFile>,
    /// The session/message store (design D).
    pub sessions: crate::store::SessionsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port`, `redis+unix:///path/redis.sock`... Absent: spool starts
    /// and owns a local redis-server in `data_dir`.
    pub url: Option<String>,
    /// Where the embedded redis-server keeps its AOF and socket.
    pub data_dir: PathBuf,
    /// AOF fsync policy of the embedded server: `everysec` may lose the last
    /// ~1-2 s of acknowledged writes on a machine crash; `always` loses none.
    pub appendfsync: Fsync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Everysec,
    Always,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs this instance runs at once.
    pub concurrency: usize,
    /// Idle workers re-check their queues this often even without a wake-up
    /// message (Pub/Sub is at-most-once), in milliseconds.
    pub idle_poll_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Wall-clock limit of one hook call, model calls included.
    pub deadline_ms: u64,
    /// Linear memory one guest instance may use.
    pub memory_mb: usize,
    /// Guest instances alive at once (pool size); calls beyond wait.
    pub max_instances: u32,
    /// Model calls one job may make.
    pub max_model_calls: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// How long a completed job stays readable.
    pub completed_secs: u64,
    /// How long a failed job stays readable.
    pub failed_secs: u64,
    /// Finished jobs listed per queue in its history.
    pub history: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// The handler that runs this queue's jobs.
    pub handler: String,
    /// Runs of one job before it fails for good.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles on each further attempt (+-20 % jitter).
    pub backoff_ms: u64,
    /// Waiting jobs the queue holds before submissions get 429.
    pub max_waiting: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        let queue = |handler: &str| QueueConfig { handler: handler.into(), ..QueueConfig::default() };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            redis: RedisConfig::default(),
            model: None,
            workers: WorkerConfig::default(),
            sandbox: SandboxConfig::default(),
            retention: RetentionConfig::default(),
            queues: BTreeMap::from([("chat".into(), queue("chat")), ("documents".into(), queue("pipeline"))]),
            handlers: BTreeMap::new(),
            sessions: Default::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: None, data_dir: PathBuf::from("spool-data"), appendfsync: Fsync::Everysec }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { concurrency: 3, idle_poll_ms: 1000 }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self { deadline_ms: 120_000, memory_mb: 64, max_instances: 64, max_model_calls: 64 }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { completed_secs: 3600, failed_secs: 24 * 3600, history: 50 }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { handler: "chat".into(), max_attempts: 3, backoff_ms: 2000, max_waiting: 10_000 }
    }
}

impl Config {
    /// Reads a TOML file; a missing `path` means all defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {} is not valid", path.display()))
    }

    /// Checks what serde cannot: values in range, queues naming handlers that exist.
    pub fn validate(&self, known_handlers: &[String]) -> Result<()> {
        if self.workers.concurrency > self.sandbox.max_instances as usize {
            bail!(
                "workers.concurrency ({}) exceeds sandbox.max_instances ({}): raise max_instances",
                self.workers.concurrency,
                self.sandbox.max_instances
            );
        }
        if self.sandbox.max_instances == 0 || self.sandbox.memory_mb == 0 || self.sandbox.deadline_ms == 0 {
            bail!("sandbox.max_instances, memory_mb and deadline_ms must be above 0");
        }
        for (name, queue) in &self.queues {
            if !crate::queue::valid_queue_name(name) {
                bail!("queue name `{name}` must be 1-64 characters of a-z, 0-9, '-' or '_'");
            }
            if !known_handlers.contains(&queue.handler) {
                bail!("queue `{name}` uses handler `{}`, which is neither built in nor listed under [handlers]", queue.handler);
            }
            if queue.max_attempts == 0 {
                bail!("queue `{name}`: max_attempts must be at least 1");
            }
        }
        Ok(())
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.sandbox.deadline_ms)
    }
}
