//! Configuration: a TOML file (`--config`), then command-line flags and `SPOOL_*`
//! environment variables on top. Owns the defaults the user expects to find;
//! touches nothing at run time.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::limiter::LimitsConfig;
use crate::models::BackendConfig;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Most jobs one bulk submission may carry (`POST .../jobs/bulk`, `/api/chat/bulk`).
    pub bulk_max_jobs: usize,
    pub redis: RedisConfig,
    /// The model backend. Absent: spool starts its built-in stub model server.
    pub model: Option<BackendConfig>,
    pub workers: WorkerConfig,
    pub sandbox: SandboxConfig,
    pub retention: RetentionConfig,
    /// Pacing of model calls: shared rate limit, retries, embedding batches and cache.
    pub limits: LimitsConfig,
    /// Queue name -> how it is served.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Extra handler components by name, loaded from files. The built-in
    /// handlers `chat` and `pipeline` need no entry. Like the built-ins, a file
    /// is only the handler's first version: once the handler has an active
    /// version in Redis, new ones arrive by `spool deploy`.
    pub handlers: BTreeMap<String, HandlerFile>,
    /// The handler registry: compiled cache, upload limit, switch checks.
    pub registry: RegistryConfig,
    /// Dev loop: handler name -> component file, re-deployed when it changes
    /// (`spool serve --watch NAME=PATH`).
    pub watch: BTreeMap<String, PathBuf>,
    /// The session/message store (design D).
    pub sessions: crate::store::SessionsConfig,
    /// Who may call the API.
    pub auth: AuthConfig,
    /// Live delivery to SSE and WebSocket watchers: caps and buffers.
    pub hub: crate::hub::HubConfig,
    /// Conversations (design B): stream cap, bot queue, relay lease.
    pub conversations: crate::chat::ConversationsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Requests without a key may submit and read jobs. Honoured only while
    /// the API listens on a loopback address; elsewhere every request needs a key.
    pub anonymous: bool,
    /// The operator's admin token: read from here, created (mode 0600) if
    /// missing, and picked up by the CLI. `SPOOL_ADMIN_KEY` overrides it.
    /// Absent: `~/.spool/admin-token`.
    pub admin_token_file: Option<PathBuf>,
    /// Host names the API answers to besides loopback ones (`localhost`,
    /// `127.0.0.1`, `[::1]`); a request naming another host is refused, which
    /// defeats DNS rebinding. Checked on a loopback listener, and on any
    /// listener once this lists names (its own address is then added).
    pub allowed_hosts: Vec<String>,
    /// Serve the admin routes (deploys, keys, queue control, dead letters) on
    /// this address only, so the job API can be exposed without them.
    /// Absent: on the main listener.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            anonymous: true,
            admin_token_file: None,
            allowed_hosts: Vec::new(),
            admin_listen: None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Where compiled components are cached, keyed by content hash and engine
    /// fingerprint. Absent: `$XDG_CACHE_HOME/spool/compiled` (or ~/.cache/...).
    pub cache_dir: Option<PathBuf>,
    /// Largest component `spool deploy` accepts, in MiB.
    pub max_component_mb: usize,
    /// Each instance re-reads the active versions this often even without a
    /// change notification (Pub/Sub is at-most-once), in milliseconds.
    pub check_interval_ms: u64,
    /// Stored versions kept per handler after a deploy, newest first, besides
    /// the active one, the rollback target and pinned ones; the bytes of the
    /// rest are deleted from Redis. 0 keeps every version.
    pub keep_versions: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_component_mb: 32,
            check_interval_ms: 500,
            keep_versions: 10,
        }
    }
}

/// `Debug` is written by hand: the URL may carry a password (see `redact`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port`, `redis+unix:///path/redis.sock`... Absent: spool starts
    /// and owns a local redis-server in `data_dir`.
    pub url: Option<String>,
    /// For `rediss://`: a PEM file of the CA that signed the server's
    /// certificate (a private CA); absent: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// Where the embedded redis-server keeps its AOF and socket.
    pub data_dir: PathBuf,
    /// AOF fsync policy of the embedded server: `everysec` may lose the last
    /// ~1-2 s of acknowledged writes on a machine crash; `always` loses none.
    pub appendfsync: Fsync,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_deref().map(crate::redact::url))
            .field("data_dir", &self.data_dir)
            .field("appendfsync", &self.appendfsync)
            .finish()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Everysec,
    Always,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "everysec" => Ok(Fsync::Everysec),
            "always" => Ok(Fsync::Always),
            other => Err(format!(
                "`{other}` is not an fsync policy: use everysec or always"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Jobs this instance runs at once.
    pub concurrency: usize,
    /// Idle workers re-check their queues this often even without a wake-up
    /// message (Pub/Sub is at-most-once), in milliseconds.
    pub idle_poll_ms: u64,
    /// A job whose worker has not heart-beaten for this long is requeued for
    /// another worker (crash recovery), in milliseconds.
    pub visibility_timeout_ms: u64,
    /// On SIGTERM, how long jobs in flight get to finish before they are left
    /// for recovery by another instance, in milliseconds.
    pub drain_timeout_ms: u64,
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
    /// Model calls one job may make; one more fails the job (`call_cap_exceeded`).
    pub max_model_calls: u32,
    /// Other host calls (events, logging, state) one hook call may make.
    pub max_host_calls: u32,
    /// Bytes of result + content blocks one job may return (`output_too_large`).
    pub max_output_bytes: usize,
    /// One `state.set` value; a larger one fails the job (`quota_exceeded`).
    pub max_state_value_bytes: usize,
    /// Keys + values of a job's whole state (`quota_exceeded`).
    pub max_state_bytes: usize,
    /// Custom event data + progress steps of one job (`quota_exceeded`).
    pub max_event_bytes: usize,
    /// One `append-text` text or content block; a larger one is refused.
    pub max_message_write_bytes: usize,
    /// Text, blocks and task texts one job adds to its message (`quota_exceeded`).
    pub max_message_bytes: usize,
    /// One guest log line; a longer one is cut, with a marker.
    pub max_log_line_bytes: usize,
    /// Guest log output of one job; later lines are dropped, with a marker.
    pub max_log_bytes: usize,
    /// Per-handler overrides of the limits above, e.g.
    /// `[sandbox.handlers.chat] deadline_ms = 30000`.
    pub handlers: BTreeMap<String, HandlerSandbox>,
}

/// Limits one handler overrides; absent keys keep the `[sandbox]` value.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerSandbox {
    pub deadline_ms: Option<u64>,
    pub memory_mb: Option<usize>,
    pub max_model_calls: Option<u32>,
    pub max_host_calls: Option<u32>,
    pub max_output_bytes: Option<usize>,
    pub max_state_value_bytes: Option<usize>,
    pub max_state_bytes: Option<usize>,
    pub max_event_bytes: Option<usize>,
    pub max_message_write_bytes: Option<usize>,
    pub max_message_bytes: Option<usize>,
    pub max_log_line_bytes: Option<usize>,
    pub max_log_bytes: Option<usize>,
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
    /// Pins the queue to one version of its handler (a version id as `spool
    /// handlers` lists them); absent: the handler's active version.
    pub handler_version: Option<String>,
    /// Runs of one job before it fails for good.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles on each further attempt (+-20 % jitter).
    pub backoff_ms: u64,
    /// Waiting jobs the queue holds before submissions get 429.
    pub max_waiting: u64,
    /// Fairness: of every N claims, one tries the low class first and one
    /// the normal class first, so a flood of high jobs delays the others by
    /// at most ~N claims per job ahead of them. 0: strict priority.
    pub fair_every: u32,
    /// Dead letters the queue keeps (each holds a snapshot of its job); the
    /// oldest leave when a new one would exceed this.
    pub max_dead: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerFile {
    pub path: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        let queue = |handler: &str| QueueConfig {
            handler: handler.into(),
            ..QueueConfig::default()
        };
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 1024 * 1024,
            bulk_max_jobs: 1000,
            redis: RedisConfig::default(),
            model: None,
            workers: WorkerConfig::default(),
            sandbox: SandboxConfig::default(),
            retention: RetentionConfig::default(),
            limits: LimitsConfig::default(),
            queues: BTreeMap::from([
                ("chat".into(), queue("chat")),
                ("documents".into(), queue("pipeline")),
                ("embeddings".into(), queue("embed")),
            ]),
            handlers: BTreeMap::new(),
            registry: RegistryConfig::default(),
            watch: BTreeMap::new(),
            sessions: Default::default(),
            auth: AuthConfig::default(),
            hub: crate::hub::HubConfig::default(),
            conversations: crate::chat::ConversationsConfig::default(),
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: None,
            ca_file: None,
            data_dir: PathBuf::from("spool-data"),
            appendfsync: Fsync::Everysec,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 3,
            idle_poll_ms: 1000,
            visibility_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        // One source for the quotas' defaults: the runtime's.
        let quotas = spool_runtime::Quotas::default();
        Self {
            deadline_ms: 120_000,
            memory_mb: 64,
            max_instances: 64,
            max_model_calls: 64,
            max_host_calls: 10_000,
            max_output_bytes: 1 << 20,
            max_state_value_bytes: quotas.max_state_value_bytes,
            max_state_bytes: quotas.max_state_bytes,
            max_event_bytes: quotas.max_event_bytes,
            max_message_write_bytes: quotas.max_message_write_bytes,
            max_message_bytes: quotas.max_message_bytes,
            max_log_line_bytes: quotas.max_log_line_bytes,
            max_log_bytes: quotas.max_log_bytes,
            handlers: BTreeMap::new(),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            completed_secs: 3600,
            failed_secs: 24 * 3600,
            history: 50,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            handler: "chat".into(),
            handler_version: None,
            max_attempts: 3,
            backoff_ms: 2000,
            max_waiting: 10_000,
            fair_every: 10,
            max_dead: 10_000,
        }
    }
}

impl Config {
    /// Reads a TOML file; a missing `path` means all defaults.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| {
                format!(
                    "config file {} is not valid: fix the key named below (README \"Configuration\" lists every key)",
                    path.display()
                )
            })
    }

    /// Checks what serde cannot: values in range, queues naming handlers that exist.
    pub fn validate(&self, known_handlers: &[String]) -> Result<()> {
        self.limits.validate()?;
        if self.workers.concurrency > self.sandbox.max_instances as usize {
            bail!(
                "workers.concurrency ({}) exceeds sandbox.max_instances ({}): raise max_instances",
                self.workers.concurrency,
                self.sandbox.max_instances
            );
        }
        if self.workers.visibility_timeout_ms < 300 {
            bail!(
                "workers.visibility_timeout_ms must be at least 300 (heartbeats run three times per timeout)"
            );
        }
        self.sandbox.validate()?;
        self.hub.validate()?;
        self.conversations.validate()?;
        if self.registry.max_component_mb == 0 || self.registry.check_interval_ms == 0 {
            bail!("registry.max_component_mb and check_interval_ms must be above 0");
        }
        for (name, queue) in &self.queues {
            if !crate::queue::valid_queue_name(name) {
                bail!("queue name `{name}` must be 1-64 characters of a-z, 0-9, '-' or '_'");
            }
            if !known_handlers.contains(&queue.handler) {
                bail!(
                    "queue `{name}` uses handler `{}`, which is not built in, not listed under [handlers] and was never deployed (spool deploy)",
                    queue.handler
                );
            }
            if let Some(version) = &queue.handler_version
                && !spool_runtime::valid_version(version)
            {
                bail!(
                    "queue `{name}`: handler_version `{version}` is not a version id (12 hex digits, as `spool handlers` lists them)"
                );
            }
            if queue.max_attempts == 0 {
                bail!("queue `{name}`: max_attempts must be at least 1");
            }
            if queue.max_dead == 0 {
                bail!(
                    "queue `{name}`: max_dead must be at least 1 (a dead letter is how a failed job is replayed)"
                );
            }
        }
        Ok(())
    }

    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.sandbox.deadline_ms)
    }
}

impl SandboxConfig {
    /// The runtime's limits: these defaults plus each handler's overrides.
    pub fn limits(&self) -> spool_runtime::Limits {
        let handler_limits = |o: &HandlerSandbox| spool_runtime::HandlerLimits {
            deadline: o.deadline_ms.map(Duration::from_millis),
            memory_bytes: o.memory_mb.map(|mb| mb << 20),
            max_model_calls: o.max_model_calls,
            max_host_calls: o.max_host_calls,
            max_output_bytes: o.max_output_bytes,
            quotas: spool_runtime::QuotaOverrides {
                max_state_value_bytes: o.max_state_value_bytes,
                max_state_bytes: o.max_state_bytes,
                max_event_bytes: o.max_event_bytes,
                max_message_write_bytes: o.max_message_write_bytes,
                max_message_bytes: o.max_message_bytes,
                max_log_line_bytes: o.max_log_line_bytes,
                max_log_bytes: o.max_log_bytes,
            },
        };
        spool_runtime::Limits {
            deadline: Duration::from_millis(self.deadline_ms),
            memory_bytes: self.memory_mb << 20,
            max_instances: self.max_instances,
            max_model_calls: self.max_model_calls,
            max_host_calls: self.max_host_calls,
            max_output_bytes: self.max_output_bytes,
            quotas: spool_runtime::Quotas {
                max_state_value_bytes: self.max_state_value_bytes,
                max_state_bytes: self.max_state_bytes,
                max_event_bytes: self.max_event_bytes,
                max_message_write_bytes: self.max_message_write_bytes,
                max_message_bytes: self.max_message_bytes,
                max_log_line_bytes: self.max_log_line_bytes,
                max_log_bytes: self.max_log_bytes,
            },
            per_handler: self
                .handlers
                .iter()
                .map(|(name, o)| (name.clone(), handler_limits(o)))
                .collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.max_instances == 0 || self.memory_mb == 0 || self.deadline_ms == 0 {
            bail!("sandbox.max_instances, memory_mb and deadline_ms must be above 0");
        }
        for (name, o) in &self.handlers {
            if o.deadline_ms == Some(0) || o.memory_mb == Some(0) {
                bail!("sandbox.handlers.{name}: deadline_ms and memory_mb must be above 0");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's "Configuration" block is what a user copies: it must parse
    /// and say exactly what the defaults are.
    #[test]
    fn the_readme_configuration_block_is_the_defaults() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Configuration").expect("section")..];
        let start = section.find("```toml\n").expect("toml block") + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").expect("block end")];
        let parsed: Config = toml::from_str(block).expect("the README block parses");
        assert_eq!(
            serde_json::to_value(&parsed).expect("json"),
            serde_json::to_value(Config::default()).expect("json")
        );
    }

    /// The replicas' config in `deploy/` (not run in CI) must at least load.
    #[test]
    fn the_deploy_config_loads() {
        let text = include_str!("../../../deploy/spool.toml");
        let parsed: Config = toml::from_str(text).expect("deploy/spool.toml parses");
        parsed.conversations.validate().expect("valid");
        assert!(
            Config::default()
                .queues
                .contains_key(&parsed.conversations.bot_queue)
        );
    }
}
