//! The `spool` command line: `serve` runs the host, `stub-model` runs the
//! built-in model server on its own, `bench` measures the whole job path,
//! `deploy` / `rollback` / `handlers` manage handler versions of a running cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use spool_core::config::{Config, Fsync};
use spool_core::models::{BackendConfig, BackendKind, OllamaApi};

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
}

/// Settings for `spool serve`. Each flag overrides the config file; each has an
/// environment variable of the same meaning.
#[derive(Args)]
struct ServeArgs {
    /// TOML config file (all keys optional; see README "Configuration").
    #[arg(long, env = "SPOOL_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "SPOOL_LISTEN")]
    listen: Option<SocketAddr>,
    /// Redis to use (redis://host:port, redis+unix:///path). Omitted: spool starts its own redis-server.
    #[arg(long, env = "SPOOL_REDIS_URL")]
    redis_url: Option<String>,
    /// Data directory of the embedded redis-server [default: spool-data].
    #[arg(long, env = "SPOOL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// AOF fsync policy of the embedded redis-server: everysec may lose ~1-2 s of writes on a crash, always none [default: everysec].
    #[arg(long, env = "SPOOL_FSYNC", value_parser = str::parse::<Fsync>)]
    fsync: Option<Fsync>,
    /// Jobs this instance runs at once [default: 3].
    #[arg(long, env = "SPOOL_CONCURRENCY")]
    concurrency: Option<usize>,
    /// Wall-clock limit of one handler call, in ms [default: 120000].
    #[arg(long, env = "SPOOL_DEADLINE_MS")]
    deadline_ms: Option<u64>,
    /// Model server base URL, e.g. http://127.0.0.1:11434. Omitted (and no [model] in the config): the built-in stub serves.
    #[arg(long, env = "SPOOL_MODEL_URL")]
    model_url: Option<String>,
    /// Protocol of --model-url [default: ollama].
    #[arg(long, env = "SPOOL_MODEL_KIND", value_enum)]
    model_kind: Option<ModelKindArg>,
    /// Bearer token for OpenAI-compatible servers.
    #[arg(long, env = "SPOOL_MODEL_API_KEY", hide_env_values = true)]
    model_api_key: Option<String>,
    /// Default chat model [default: qwen2.5:0.5b].
    #[arg(long, env = "SPOOL_CHAT_MODEL")]
    chat_model: Option<String>,
    /// Default embedding model [default: nomic-embed-text].
    #[arg(long, env = "SPOOL_EMBED_MODEL")]
    embed_model: Option<String>,
    /// Dev loop: re-deploy a handler whenever its component file changes (NAME=PATH, or PATH
    /// with the name taken from the file name). Repeatable.
    #[arg(long, value_name = "NAME=PATH", value_parser = spool_core::handlers::watch::parse_spec)]
    watch: Vec<(String, PathBuf)>,
    /// Model calls per second, shared by all instances using the same backend [default: 2].
    #[arg(long, env = "SPOOL_RATE_LIMIT")]
    rate_limit: Option<f64>,
    /// Burst capacity of the shared rate limit [default: 5].
    #[arg(long, env = "SPOOL_RATE_CAPACITY")]
    rate_capacity: Option<f64>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModelKindArg {
    Ollama,
    Openai,
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        config.watch.extend(self.watch);
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if self.redis_url.is_some() {
            config.redis.url = self.redis_url.filter(|url| !url.is_empty());
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
        if let Some(url) = self.model_url {
            let kind = match self.model_kind {
                Some(ModelKindArg::Openai) => BackendKind::Openai,
                _ => BackendKind::Ollama,
            };
            config.model = Some(BackendConfig {
                kind,
                url,
                api_key: None,
                chat_model: "qwen2.5:0.5b".into(),
                embed_model: "nomic-embed-text".into(),
                ollama_api: OllamaApi::Chat,
                request_timeout_ms: 120_000,
                forbidden_is_rate_limit: false,
            });
        }
        if let Some(model) = config.model.as_mut() {
            if let Some(kind) = self.model_kind {
                model.kind = match kind {
                    ModelKindArg::Ollama => BackendKind::Ollama,
                    ModelKindArg::Openai => BackendKind::Openai,
                };
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
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spool: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => spool::app::serve(args.into_config()?).await,
            Command::StubModel(args) => spool::stub::run(args).await,
            Command::Bench(args) => spool::bench::run(args).await,
            Command::Deploy(args) => spool::cli::admin::deploy(args).await,
            Command::Rollback(args) => spool::cli::admin::rollback(args).await,
            Command::Handlers(args) => spool::cli::admin::list(args).await,
            Command::BenchLimiter(args) => spool::bench::limiter::run(args).await,
            Command::Dead(args) => spool::cli::dead::run(args).await,
            Command::Keys(args) => spool::cli::keys::run(args).await,
            Command::Guest(args) => spool::cli::guest::run(args).await,
            Command::BenchSessions(args) => spool::bench::sessions::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spool: {error:#}");
            ExitCode::FAILURE
        }
    }
}
