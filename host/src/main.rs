//! The `spool` command line: `serve` runs the host, `stub-model` runs the
//! built-in model server on its own, `bench` measures the whole job path,
//! `deploy` / `rollback` / `handlers` manage handler versions of a running cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use spool_core::config::{Config, Fsync};
use spool_core::models::{BackendConfig, BackendKind};

#[derive(Parser)]
#[command(
    name = "spool",
    version,
    about = "Runs AI jobs from Redis Streams through WebAssembly handlers, paced for rate-limited model APIs"
)]
struct Cli {
    /// Log line format on stderr: text (for people) or json (one object per
    /// line, for log collectors) [default: text].
    #[arg(long, global = true, env = "SPOOL_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr as text or JSON. Colour only on a terminal (and not
/// with NO_COLOR): escape codes in a log file or a collector are noise.
fn init_logging(format: Option<LogFormat>) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format.unwrap_or(LogFormat::Text) {
        // The current span (a job's id, queue, handler version) and its
        // parents ride on every line as `span` / `spans`.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
            .init(),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the host: HTTP API, workers, and (unless --redis-url is given) its own redis-server.
    Serve(ServeArgs),
    #[command(flatten)]
    Other(Other),
}

/// The commands besides `serve`.
#[derive(Subcommand)]
enum Other {
    /// Run the stub model server alone (speaks the Ollama and OpenAI protocols).
    StubModel(spool::stub::StubArgs),
    /// Drive short jobs through the whole path and print throughput and latency.
    Bench(spool::bench::BenchArgs),
    /// Validate a handler component and make it the active version on every instance.
    Deploy(spool::cli::admin::DeployArgs),
    /// Make an earlier version of a handler active again on every instance.
    Rollback(spool::cli::admin::RollbackArgs),
    /// List handlers, or one handler's versions, history and instances.
    Handlers(spool::cli::admin::HandlersArgs),
    /// Measure one rate-limiter check (vs a Redis PING) and the observed/configured rate of a run.
    BenchLimiter(spool::bench::limiter::LimiterBenchArgs),
    /// Inspect, replay or purge dead jobs of a running instance.
    Dead(spool::cli::dead::DeadArgs),
    /// Create, list or revoke API keys of a running instance.
    Keys(spool::cli::keys::KeysArgs),
    /// Test a handler component in isolation, or scaffold a new one.
    Guest(spool::cli::guest::GuestArgs),
    /// Time the session/message store (create, append, task update, load, SSE delay) against design D's claims.
    BenchSessions(spool::bench::sessions::BenchSessionsArgs),
    /// Time the delay from a job event's XADD to thousands of SSE clients (vs a Redis PING); print Redis clients and RSS.
    BenchHub(spool::bench::hub::BenchHubArgs),
    /// spool beside BullMQ on one Redis (AOF everysec): no-op and chat throughput, bulk submission, per-job budget and memory, with ratios.
    BenchCompare(spool::bench::compare::CompareArgs),
    /// Time a conversation message from one client to 1,000 WebSocket clients on three instances (vs a Redis PING).
    BenchChat(spool::bench::chat::BenchChatArgs),
    /// No-op jobs/s on a local Redis Cluster of 1, 2 and 3 masters (queues spread over the masters), with each master's Redis CPU per job.
    BenchCluster(spool::bench::cluster::ClusterBenchArgs),
}

/// Settings for `spool serve`. Each setting is merged field by field: a flag
/// beats its environment variable (named in the help), which beats the config
/// file, which beats the default. The environment is read by `into_config`
/// from a map, not by clap, so the merge is one tested function.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (all keys optional; see README "Configuration") [env: SPOOL_CONFIG].
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// The settings a flag or an environment variable can give; `None`: not given.
#[derive(Args, Default)]
struct Settings {
    /// Address of the HTTP API [env: SPOOL_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Redis to use (redis://[user:pass@]host:port, rediss://... for TLS, redis+unix:///path, redis+cluster://h1:p1,h2:p2 for a Redis Cluster).
    /// Omitted or empty: spool starts its own redis-server [env: SPOOL_REDIS_URL].
    #[arg(long)]
    redis_url: Option<String>,
    /// For rediss://: PEM file of the CA that signed the Redis server's certificate
    /// (absent: the system's roots) [env: SPOOL_REDIS_CA_FILE].
    #[arg(long)]
    redis_ca_file: Option<PathBuf>,
    /// Data directory of the embedded redis-server [env: SPOOL_DATA_DIR] [default: spool-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// AOF fsync policy of the embedded redis-server: everysec may lose ~1-2 s of writes on a
    /// crash, always none [env: SPOOL_FSYNC] [default: everysec].
    #[arg(long, value_parser = str::parse::<Fsync>)]
    fsync: Option<Fsync>,
    /// Jobs this instance runs at once [env: SPOOL_CONCURRENCY] [default: 3].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Wall-clock limit of one handler call, in ms [env: SPOOL_DEADLINE_MS] [default: 120000].
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Model server base URL, e.g. http://127.0.0.1:11434 (sets [model] url). No URL anywhere:
    /// the built-in stub serves [env: SPOOL_MODEL_URL].
    #[arg(long)]
    model_url: Option<String>,
    /// Protocol of the model server [env: SPOOL_MODEL_KIND] [default: ollama].
    #[arg(long, value_enum)]
    model_kind: Option<ModelKindArg>,
    /// Bearer token for OpenAI-compatible servers [env: SPOOL_MODEL_API_KEY].
    #[arg(long)]
    model_api_key: Option<String>,
    /// Default chat model [env: SPOOL_CHAT_MODEL] [default: qwen2.5:0.5b].
    #[arg(long)]
    chat_model: Option<String>,
    /// Default embedding model [env: SPOOL_EMBED_MODEL] [default: nomic-embed-text].
    #[arg(long)]
    embed_model: Option<String>,
    /// Dev loop: re-deploy a handler whenever its component file changes (NAME=PATH, or PATH
    /// with the name taken from the file name). Repeatable [env: SPOOL_WATCH, comma separated].
    #[arg(long, value_name = "NAME=PATH", value_parser = spool_core::handlers::watch::parse_spec)]
    watch: Vec<(String, PathBuf)>,
    /// Model calls per second, shared by all instances using the same backend
    /// [env: SPOOL_RATE_LIMIT] [default: 2].
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Burst capacity of the shared rate limit [env: SPOOL_RATE_CAPACITY] [default: 5].
    #[arg(long)]
    rate_capacity: Option<f64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModelKindArg {
    Ollama,
    Openai,
}

impl From<ModelKindArg> for BackendKind {
    fn from(kind: ModelKindArg) -> Self {
        match kind {
            ModelKindArg::Ollama => BackendKind::Ollama,
            ModelKindArg::Openai => BackendKind::Openai,
        }
    }
}

/// The process environment as `spool serve` reads it: the `SPOOL_*` variables.
type Env = BTreeMap<String, String>;

fn process_env() -> Env {
    std::env::vars_os()
        .filter_map(|(key, value)| Some((key.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(key, _)| key.starts_with("SPOOL_"))
        .collect()
}

/// `SPOOL_<name>` parsed, or an error naming the variable and its value.
fn env_value<T>(
    env: &Env,
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    let Some(text) = env.get(key) else {
        return Ok(None);
    };
    parse(text).map(Some).map_err(|error| {
        anyhow::anyhow!("{key}=`{text}` is not valid: {error}. Fix or unset {key}")
    })
}

fn parsed<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.trim().parse::<T>().map_err(|error| error.to_string())
}

impl Settings {
    /// The settings the environment gives.
    fn from_env(env: &Env) -> anyhow::Result<Self> {
        let text = |text: &str| Ok::<_, String>(text.to_owned());
        let watch = env_value(env, "SPOOL_WATCH", |list| {
            list.split(',')
                .map(str::trim)
                .filter(|spec| !spec.is_empty())
                .map(spool_core::handlers::watch::parse_spec)
                .collect::<Result<Vec<_>, String>>()
        })?;
        Ok(Self {
            listen: env_value(env, "SPOOL_LISTEN", parsed)?,
            redis_url: env_value(env, "SPOOL_REDIS_URL", text)?,
            redis_ca_file: env_value(env, "SPOOL_REDIS_CA_FILE", |t| Ok(PathBuf::from(t)))?,
            data_dir: env_value(env, "SPOOL_DATA_DIR", |t| Ok(PathBuf::from(t)))?,
            fsync: env_value(env, "SPOOL_FSYNC", parsed)?,
            concurrency: env_value(env, "SPOOL_CONCURRENCY", parsed)?,
            deadline_ms: env_value(env, "SPOOL_DEADLINE_MS", parsed)?,
            model_url: env_value(env, "SPOOL_MODEL_URL", text)?,
            model_kind: env_value(env, "SPOOL_MODEL_KIND", |t| {
                <ModelKindArg as clap::ValueEnum>::from_str(t.trim(), true)
                    .map_err(|_| "use ollama or openai".to_owned())
            })?,
            model_api_key: env_value(env, "SPOOL_MODEL_API_KEY", text)?,
            chat_model: env_value(env, "SPOOL_CHAT_MODEL", text)?,
            embed_model: env_value(env, "SPOOL_EMBED_MODEL", text)?,
            watch: watch.unwrap_or_default(),
            rate_limit: env_value(env, "SPOOL_RATE_LIMIT", parsed)?,
            rate_capacity: env_value(env, "SPOOL_RATE_CAPACITY", parsed)?,
        })
    }
}

impl ServeArgs {
    /// The effective configuration: defaults, then the file (`--config` or
    /// `SPOOL_CONFIG`), then the environment, then the flags, field by field.
    fn into_config(self, env: &Env) -> anyhow::Result<Config> {
        let path = self.config.or_else(|| {
            env.get("SPOOL_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let mut config = Config::load(path.as_deref())?;
        Settings::from_env(env)?.apply(&mut config);
        self.settings.apply(&mut config);
        // A file's [model] without url, or a model flag or variable with no
        // model server anywhere: say so rather than quietly use the stub.
        if let Some(model) = &config.model
            && model.url.trim().is_empty()
        {
            anyhow::bail!(
                "model settings are given but no model server URL: set [model] url in the config file, \
                 --model-url or SPOOL_MODEL_URL (or drop the model settings to use the built-in stub)"
            );
        }
        Ok(config)
    }
}

impl Settings {
    /// Lays these settings over `config`: each one given replaces that field
    /// alone (a model URL keeps the file's key and models; a watched name
    /// replaces that name's path).
    fn apply(self, config: &mut Config) {
        config.watch.extend(self.watch);
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(url) = self.redis_url {
            // Empty: the embedded redis-server, whatever the file says.
            config.redis.url = Some(url).filter(|url| !url.is_empty());
        }
        if let Some(file) = self.redis_ca_file {
            config.redis.ca_file = Some(file).filter(|f| !f.as_os_str().is_empty());
        }
        if let Some(dir) = self.data_dir {
            config.redis.data_dir = dir;
        }
        if let Some(fsync) = self.fsync {
            config.redis.appendfsync = fsync;
        }
        if let Some(concurrency) = self.concurrency {
            config.workers.concurrency = concurrency;
        }
        if let Some(rate) = self.rate_limit {
            config.limits.rate_per_sec = rate;
        }
        if let Some(capacity) = self.rate_capacity {
            config.limits.capacity = capacity;
        }
        if let Some(deadline) = self.deadline_ms {
            config.sandbox.deadline_ms = deadline;
        }
        match self.model_url {
            // Empty: the built-in stub, whatever the file says.
            Some(url) if url.is_empty() => config.model = None,
            Some(url) => config.model.get_or_insert_with(BackendConfig::default).url = url,
            None => {}
        }
        let model_fields = self.model_kind.is_some()
            || self.model_api_key.is_some()
            || self.chat_model.is_some()
            || self.embed_model.is_some();
        if model_fields {
            let model = config.model.get_or_insert_with(BackendConfig::default);
            if let Some(kind) = self.model_kind {
                model.kind = kind.into();
            }
            if self.model_api_key.is_some() {
                model.api_key = self.model_api_key;
            }
            if let Some(chat) = self.chat_model {
                model.chat_model = chat;
            }
            if let Some(embed) = self.embed_model {
                model.embed_model = embed;
            }
        }
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spool: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        // `serve` reads its configuration first: whether it starts its own
        // redis-server decides the runtime's threads.
        Command::Serve(args) => {
            let config = args.into_config(&process_env())?;
            async_runtime(config.redis.url.is_none())?.block_on(spool::app::serve(config))
        }
        Command::Other(command) => {
            async_runtime(command.starts_redis_here())?.block_on(command.run())
        }
    }
}

/// Transparent huge pages off for this process. mimalloc asks the kernel
/// for them on its arenas (`MADV_HUGEPAGE`), and the kernel then zeroes
/// 2 MiB at the first touch of each, again after every purge, on the
/// thread that touched it: in `bench-compare --paced-only` runs that held
/// the one worker thread for 10-50 ms at a time, a few times a second, and
/// paced p99 submit -> start read 95 ms against 3-20 ms without them, with
/// no loss of throughput. Pooled Wasm memories stay on small pages too on
/// kernels that give huge pages unasked. A kernel without the option (before
/// 3.15) keeps its default.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: an integer option that sets a flag of this process only.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// The async runtime. A process that starts redis-server on this machine
/// leaves it a core: one worker thread less than the cores, at least one.
/// Redis runs a script on one thread, and every job waits on its replies; a
/// worker thread that preempts it delays them all. On 2 cores one thread
/// moved ~30 % more no-op and chat jobs/s than two in interleaved
/// `bench-compare` runs, and cost ~25 % less host CPU per job (fewer wake-ups
/// across threads). `TOKIO_WORKER_THREADS` overrides it.
fn async_runtime(local_redis: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if local_redis && std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(cores.saturating_sub(1).max(1));
    }
    builder
        .build()
        .map_err(|error| anyhow::anyhow!("cannot start the async runtime: {error}"))
}

impl Other {
    /// Whether the command starts a redis-server of its own on this machine.
    fn starts_redis_here(&self) -> bool {
        match self {
            Other::BenchCompare(_)
            | Other::BenchChat(_)
            | Other::BenchSessions(_)
            | Other::BenchHub(_)
            | Other::BenchCluster(_) => true,
            Other::BenchLimiter(args) => args.starts_redis(),
            _ => false,
        }
    }

    async fn run(self) -> anyhow::Result<()> {
        match self {
            Other::StubModel(args) => spool::stub::run(args).await,
            Other::Bench(args) => spool::bench::run(args).await,
            Other::Deploy(args) => spool::cli::admin::deploy(args).await,
            Other::Rollback(args) => spool::cli::admin::rollback(args).await,
            Other::Handlers(args) => spool::cli::admin::list(args).await,
            Other::BenchLimiter(args) => spool::bench::limiter::run(args).await,
            Other::Dead(args) => spool::cli::dead::run(args).await,
            Other::Keys(args) => spool::cli::keys::run(args).await,
            Other::Guest(args) => spool::cli::guest::run(args).await,
            Other::BenchSessions(args) => spool::bench::sessions::run(args).await,
            Other::BenchHub(args) => spool::bench::hub::run(args).await,
            Other::BenchCompare(args) => spool::bench::compare::run(args).await,
            Other::BenchChat(args) => spool::bench::chat::run(args).await,
            Other::BenchCluster(args) => spool::bench::cluster::run(args).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// `spool serve` with this config file, environment and flags; the
    /// effective config as JSON, or the error's text.
    fn build(file: Option<&str>, env: &[(&str, &str)], flags: &[&str]) -> Result<Value, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("spool.toml");
        let mut args: Vec<String> = vec!["spool".into(), "serve".into()];
        if let Some(text) = file {
            std::fs::write(&path, text).map_err(|e| e.to_string())?;
            args.extend(["--config".into(), path.display().to_string()]);
        }
        args.extend(flags.iter().map(|f| f.to_string()));
        let cli = Cli::try_parse_from(&args).map_err(|e| e.to_string())?;
        let Command::Serve(serve) = cli.command else {
            return Err("not serve".into());
        };
        let env: Env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = serve.into_config(&env).map_err(|e| format!("{e:#}"))?;
        serde_json::to_value(&config).map_err(|e| e.to_string())
    }

    /// The value at a JSON pointer of the effective config.
    fn at(config: &Value, pointer: &str) -> Value {
        config.pointer(pointer).cloned().unwrap_or(Value::Null)
    }

    enum Expect {
        /// Each pointer has this value.
        Values(Vec<(&'static str, Value)>),
        /// An error whose text contains each of these.
        Error(&'static [&'static str]),
    }

    /// Name, config file, environment, flags, what must come out.
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        Vec<(&'a str, &'a str)>,
        Vec<&'a str>,
        Expect,
    );

    #[test]
    fn flags_beat_env_beat_the_file_beat_defaults_field_by_field() {
        use Expect::*;
        // Complete [model] tables (every key the old code required), so each
        // case below shows its own finding.
        let full = "kind = \"ollama\"\nembed_model = \"e\"\nrequest_timeout_ms = 1000\n";
        let model_file = &*format!(
            "[model]\nurl = \"http://file:1\"\napi_key = \"file-key\"\nchat_model = \"file-chat\"\n{full}"
        );
        let typo_file = &*format!(
            "[model]\nurl = \"http://m:1\"\nchat_model = \"c\"\nchat_modle = \"x\"\n{full}"
        );
        let cases: Vec<Case> = vec![
            (
                "a [model] url alone takes every other model key's default",
                Some("[model]\nurl = \"http://m:1\"\n"),
                vec![],
                vec![],
                Values(vec![
                    ("/model/kind", json!("ollama")),
                    ("/model/url", json!("http://m:1")),
                    ("/model/chat_model", json!("qwen2.5:0.5b")),
                    ("/model/embed_model", json!("nomic-embed-text")),
                    ("/model/request_timeout_ms", json!(120000)),
                ]),
            ),
            (
                "SPOOL_MODEL_URL replaces the url only, not the file's key and models",
                Some(model_file),
                vec![("SPOOL_MODEL_URL", "http://env:2")],
                vec![],
                Values(vec![
                    ("/model/url", json!("http://env:2")),
                    ("/model/api_key", json!("file-key")),
                    ("/model/chat_model", json!("file-chat")),
                ]),
            ),
            (
                "a flag beats the env var, which beats the file",
                Some(model_file),
                vec![
                    ("SPOOL_CHAT_MODEL", "env-chat"),
                    ("SPOOL_MODEL_URL", "http://env:2"),
                ],
                vec!["--chat-model", "flag-chat"],
                Values(vec![
                    ("/model/url", json!("http://env:2")),
                    ("/model/chat_model", json!("flag-chat")),
                    ("/model/api_key", json!("file-key")),
                ]),
            ),
            (
                "an unknown key in [model] is refused, by name",
                Some(typo_file),
                vec![],
                vec![],
                Error(&["chat_modle"]),
            ),
            (
                "an unknown top-level key is refused, by name",
                Some("lisen = \"127.0.0.1:1\"\n"),
                vec![],
                vec![],
                Error(&["lisen"]),
            ),
            (
                "[model] without a url says which key is missing",
                Some("[model]\nchat_model = \"x\"\n"),
                vec![],
                vec![],
                Error(&["url", "SPOOL_MODEL_URL"]),
            ),
            (
                "a model setting with no model server anywhere is an error, not ignored",
                None,
                vec![("SPOOL_CHAT_MODEL", "x")],
                vec![],
                Error(&["url", "SPOOL_MODEL_URL"]),
            ),
            (
                "the model kind from the file yields to the flag",
                Some("[model]\nkind = \"openai\"\nurl = \"http://m:1\"\n"),
                vec![("SPOOL_MODEL_KIND", "openai")],
                vec!["--model-kind", "ollama"],
                Values(vec![("/model/kind", json!("ollama"))]),
            ),
            (
                "a model from the environment alone",
                None,
                vec![
                    ("SPOOL_MODEL_URL", "https://api.example"),
                    ("SPOOL_MODEL_KIND", "openai"),
                    ("SPOOL_MODEL_API_KEY", "sk-1"),
                ],
                vec![],
                Values(vec![
                    ("/model/kind", json!("openai")),
                    ("/model/api_key", json!("sk-1")),
                    ("/model/chat_model", json!("qwen2.5:0.5b")),
                ]),
            ),
            (
                "no model anywhere: the stub (model absent)",
                Some("[workers]\nconcurrency = 2\n"),
                vec![],
                vec![],
                Values(vec![("/model", Value::Null)]),
            ),
            (
                "concurrency: env beats file, flag beats env",
                Some("[workers]\nconcurrency = 5\nidle_poll_ms = 7\n"),
                vec![("SPOOL_CONCURRENCY", "7")],
                vec![],
                Values(vec![
                    ("/workers/concurrency", json!(7)),
                    ("/workers/idle_poll_ms", json!(7)),
                ]),
            ),
            (
                "concurrency flag",
                Some("[workers]\nconcurrency = 5\n"),
                vec![("SPOOL_CONCURRENCY", "7")],
                vec!["--concurrency", "9"],
                Values(vec![("/workers/concurrency", json!(9))]),
            ),
            (
                "a malformed env value names the variable",
                None,
                vec![("SPOOL_CONCURRENCY", "lots")],
                vec![],
                Error(&["SPOOL_CONCURRENCY", "lots"]),
            ),
            (
                "SPOOL_WATCH: comma separated, merged with the file's [watch] by name",
                Some("[watch]\nold = \"old.wasm\"\nchat = \"file.wasm\"\n"),
                vec![("SPOOL_WATCH", "chat=env.wasm, guest/my_handler.wasm")],
                vec![],
                Values(vec![
                    ("/watch/chat", json!("env.wasm")),
                    ("/watch/my-handler", json!("guest/my_handler.wasm")),
                    ("/watch/old", json!("old.wasm")),
                ]),
            ),
            (
                "--watch beats SPOOL_WATCH for the same name",
                None,
                vec![("SPOOL_WATCH", "chat=env.wasm,pipeline=p.wasm")],
                vec!["--watch", "chat=flag.wasm"],
                Values(vec![
                    ("/watch/chat", json!("flag.wasm")),
                    ("/watch/pipeline", json!("p.wasm")),
                ]),
            ),
            (
                "an empty SPOOL_REDIS_URL means the embedded redis-server, over the file",
                Some("[redis]\nurl = \"redis://file:6379\"\n"),
                vec![("SPOOL_REDIS_URL", "")],
                vec![],
                Values(vec![("/redis/url", Value::Null)]),
            ),
            (
                "--redis-url beats SPOOL_REDIS_URL beats the file",
                Some("[redis]\nurl = \"redis://file:6379\"\n"),
                vec![("SPOOL_REDIS_URL", "redis://env:6379")],
                vec!["--redis-url", "rediss://u:p@flag:6380"],
                Values(vec![("/redis/url", json!("rediss://u:p@flag:6380"))]),
            ),
            (
                "the Redis CA file: flag over env over file",
                Some("[redis]\nca_file = \"file.pem\"\n"),
                vec![("SPOOL_REDIS_CA_FILE", "env.pem")],
                vec![],
                Values(vec![("/redis/ca_file", json!("env.pem"))]),
            ),
            (
                "listen and rate: env over defaults",
                None,
                vec![
                    ("SPOOL_LISTEN", "0.0.0.0:9000"),
                    ("SPOOL_RATE_LIMIT", "0.5"),
                ],
                vec![],
                Values(vec![
                    ("/listen", json!("0.0.0.0:9000")),
                    ("/limits/rate_per_sec", json!(0.5)),
                    ("/limits/capacity", json!(5.0)),
                ]),
            ),
        ];
        let mut failures = Vec::new();
        for (name, file, env, flags, expect) in cases {
            let result = build(file, &env, &flags);
            match (&expect, &result) {
                (Values(values), Ok(config)) => {
                    for (pointer, want) in values.iter() {
                        let got = at(config, pointer);
                        if &got != want {
                            failures.push(format!("{name}: {pointer} is {got}, want {want}"));
                        }
                    }
                }
                (Values(_), Err(error)) => failures.push(format!("{name}: error {error}")),
                (Error(words), Err(error)) => {
                    for word in words.iter() {
                        if !error.contains(word) {
                            failures.push(format!("{name}: error `{error}` does not name {word}"));
                        }
                    }
                }
                (Error(_), Ok(_)) => failures.push(format!("{name}: accepted, want an error")),
            }
        }
        assert!(
            failures.is_empty(),
            "{} failing cases:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn spool_config_names_the_file_and_the_flag_beats_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env_file = dir.path().join("env.toml");
        std::fs::write(&env_file, "[workers]\nconcurrency = 4\n").expect("write");
        let env = [("SPOOL_CONFIG", env_file.to_str().unwrap_or_default())];
        let config = build(None, &env, &[]).expect("config");
        assert_eq!(at(&config, "/workers/concurrency"), json!(4));
        let config = build(Some("[workers]\nconcurrency = 6\n"), &env, &[]).expect("config");
        assert_eq!(
            at(&config, "/workers/concurrency"),
            json!(6),
            "--config beats SPOOL_CONFIG"
        );
    }

    #[test]
    fn every_cli_names_the_server_with_server_and_url_still_works() {
        for args in [
            vec!["spool", "dead", "--server", "http://x:1", "list", "chat"],
            vec!["spool", "dead", "list", "chat", "--url", "http://x:1"],
            vec![
                "spool",
                "deploy",
                "--server",
                "http://x:1",
                "a.wasm",
                "--handler",
                "chat",
            ],
            vec!["spool", "keys", "--server", "http://x:1", "list"],
        ] {
            assert!(Cli::try_parse_from(&args).is_ok(), "{args:?} parses");
        }
    }
}
