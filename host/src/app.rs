//! Wires one spool instance together: Redis (embedded or given), the model backend
//! (configured or the built-in stub), the runtime and its handlers, the workers
//! and the HTTP API, and takes them down in the right order: stop accepting,
//! drain jobs in flight, then stop what spool started (Redis last).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::http::{self, AppState};
use crate::stub::{self, StubArgs, StubServer};
use spool_core::config::Config;
use spool_core::connection::{self, PubSubNodes, RedisConnection};
use spool_core::embedded_redis::EmbeddedRedis;
use spool_core::gateway::Gateway;
use spool_core::handlers::{self, Handlers};
use spool_core::hub::Hub;
use spool_core::intake::Route;
use spool_core::models::{BackendConfig, BackendKind, ModelClient, OllamaApi};
use spool_core::queue::{Queue, QueueKeys, Retention};
use spool_core::worker::{DryQueues, RunningJobs, Wake, WorkerRestarts, Workers};
use spool_runtime::Runtime;
use {crate::BUILT_IN, spool_core::registry::Registry};

/// A started instance.
pub struct Running {
    pub addr: SocketAddr,
    pub instance: String,
    shutdown: CancellationToken,
    /// Stops the API; cancelled after the drain (see `stop`).
    http_stop: CancellationToken,
    http: JoinSet<()>,
    workers: JoinSet<()>,
    background: JoinSet<()>,
    handlers: Arc<Handlers>,
    stub: Option<StubServer>,
    redis: Option<EmbeddedRedis>,
    drain_timeout: Duration,
    /// To delete this instance's consumers once its workers stopped.
    queue: Queue,
    queues: Vec<QueueKeys>,
    visibility: Duration,
}

pub async fn start(config: Config) -> Result<Running> {
    let instance = format!(
        "spool-{}-{:06x}",
        std::process::id(),
        fastrand::u32(..0x100_0000)
    );

    // Before anything that emits a metric.
    http::metrics::install(&instance)?;

    let (pubsub, redis, embedded) = open_redis(&config).await?;

    let (models, stub) = model_backend(&config).await?;

    let gateway = Arc::new(Gateway::new(
        models.clone(),
        redis.clone(),
        config.limits.clone(),
    ));
    tracing::info!(rate_per_sec = config.limits.rate_per_sec, capacity = config.limits.capacity, per_user = ?config.limits.per_user, "model calls paced by the shared rate limiter");

    let runtime = Arc::new(Runtime::new(config.sandbox.limits())?);
    let registry = Arc::new(Registry::new(runtime.clone()));
    let handlers = load_handlers(
        &config,
        runtime.clone(),
        registry.clone(),
        &redis,
        &instance,
    )
    .await?;

    let queue = Queue::new(redis.clone())
        .with_max_dead(
            config
                .queues
                .iter()
                .map(|(name, queue)| (name.clone(), queue.max_dead)),
        )
        .with_queues(config.queues.keys().cloned());
    let sessions = spool_core::store::Store::new(
        redis.clone(),
        config.sessions.clone(),
        spool_core::store::StoreKeys::of(&queue.keys(&config.sessions.task_queue)),
    );
    let routes = open_queues(&config, &queue).await?;
    let idle = Arc::new(Notify::new());
    let idle_poll = Duration::from_millis(config.workers.idle_poll_ms.max(10));
    let dry = Arc::new(DryQueues::new(routes.keys().cloned(), idle_poll));
    let wake = Arc::new(Wake::new(
        dry.clone(),
        idle.clone(),
        config.workers.concurrency,
    ));
    let intake = spool_core::intake::Intake::new(
        queue.clone(),
        runtime.clone(),
        registry.clone(),
        routes,
        wake.clone(),
    );

    let retention = Retention {
        completed_secs: config.retention.completed_secs,
        failed_secs: config.retention.failed_secs,
        history: config.retention.history,
        message_secs: config.sessions.message_ttl_secs,
        message_events: config.sessions.max_events,
    };
    let shutdown = CancellationToken::new();
    let running = Arc::new(RunningJobs::default());
    let restarts = Arc::new(WorkerRestarts::default());
    let mut background = JoinSet::new();
    background.spawn(listen_for_signals(
        pubsub.clone(),
        intake.routes.values().map(|r| r.keys.clone()).collect(),
        wake,
        running.clone(),
        shutdown.clone(),
    ));
    background.spawn(handlers.clone().run_sync(pubsub.clone(), shutdown.clone()));
    if !config.watch.is_empty() {
        background.spawn(spool_core::handlers::watch::run(
            handlers.clone(),
            config.watch.clone(),
            shutdown.clone(),
        ));
    }
    background.spawn(http::metrics::upkeep(shutdown.clone()));
    background.spawn(spool_core::store::periodic_cleanup(
        sessions.clone(),
        shutdown.clone(),
    ));

    let workers = Arc::new(Workers {
        intake: intake.clone(),
        gateway: gateway.clone(),
        retention,
        idle_poll,
        visibility: Duration::from_millis(config.workers.visibility_timeout_ms),
        wake: idle,
        sessions: sessions.clone(),
        running,
        restarts: restarts.clone(),
        dispatch: spool_core::worker::Dispatch::start(&intake, dry),
    });
    background.spawn(recover_abandoned_jobs(
        workers.clone(),
        format!("{instance}-recovery"),
        shutdown.clone(),
    ));
    let worker_stop = CancellationToken::new();
    let mut worker_set = JoinSet::new();
    for index in 0..config.workers.concurrency {
        worker_set.spawn(workers.clone().supervise(
            format!("{instance}-w{index}"),
            index,
            worker_stop.clone(),
        ));
    }
    // Workers stop when the instance does; kept separate so HTTP can stop first.
    let stop_workers = worker_stop.clone();
    let instance_shutdown = shutdown.clone();
    background.spawn(async move {
        instance_shutdown.cancelled().await;
        stop_workers.cancel();
    });

    let hub = Hub::new(redis.clone(), &instance, config.hub.clone());
    background.spawn(hub.clone().run(pubsub.clone()));
    raise_open_file_limit(config.hub.max_watchers + config.conversations.max_clients);
    let bot_queue = &config.conversations.bot_queue;
    if !bot_queue.is_empty() && !intake.routes.contains_key(bot_queue) {
        // A config with queues of its own need not keep the default bot's.
        tracing::warn!(
            bot_queue,
            "conversations.bot_queue names no configured queue: conversations run without a bot"
        );
    }
    let conversations =
        spool_core::chat::Conversations::new(redis.clone(), config.conversations.clone());
    background.spawn(conversations.fanout.clone().run(pubsub.clone()));
    let relays = spool_core::chat::relay::Relays::new(
        conversations.clone(),
        hub.clone(),
        queue.clone(),
        &instance,
        std::time::Duration::from_millis(config.sessions.ping_interval_ms.clamp(50, 60_000)),
    );
    background.spawn(relays.clone().run(shutdown.clone()));

    let consumers_queue = queue.clone();
    let consumers_of: Vec<QueueKeys> = intake.routes.values().map(|r| r.keys.clone()).collect();
    let state = Arc::new(AppState {
        queue,
        sessions,
        intake,
        handlers: handlers.clone(),
        hub,
        conversations,
        relays,
        body_limit_bytes: config.body_limit_bytes,
        bulk_max_jobs: config.bulk_max_jobs,
        instance: instance.clone(),
        model: models.describe(),
        started: Instant::now(),
        retention,
        restarts,
        gateway,
        gate: open_gate(&config, &redis).await?,
        draining: shutdown.clone(),
    });
    // With an admin listener of its own, the public one serves no admin route.
    let (public, admin_listener) = match config.auth.admin_listen {
        Some(admin) => (http::Routes::Public, Some(admin)),
        None => (http::Routes::All, None),
    };
    // The API outlives the instance's shutdown signal: it stops only once jobs
    // in flight have drained, so `/health/ready` can say "draining" meanwhile
    // and clients watching those jobs see them end.
    let http_stop = CancellationToken::new();
    let mut http = JoinSet::new();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let app = http::router(state.clone(), config.body_limit_bytes, public);
    http.spawn(serve_http(listener, app, http_stop.clone()));
    if let Some(admin) = admin_listener {
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("cannot listen on {admin} (the admin listener)"))?;
        tracing::info!(addr = %listener.local_addr()?, "admin routes are served here only");
        let app = http::router(state, config.body_limit_bytes, http::Routes::Admin);
        http.spawn(serve_http(listener, app, http_stop.clone()));
    }
    tracing::info!(%addr, %instance, workers = config.workers.concurrency, queues = ?config.queues.keys().collect::<Vec<_>>(), "spool is serving");
    let drain_timeout = Duration::from_millis(config.workers.drain_timeout_ms);
    Ok(Running {
        addr,
        instance,
        shutdown,
        http_stop,
        http,
        workers: worker_set,
        background,
        handlers,
        stub,
        redis: embedded,
        drain_timeout,
        queue: consumers_queue,
        queues: consumers_of,
        visibility: workers.visibility,
    })
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "HTTP server stopped");
    }
}

/// Who may call this instance's API. Keyless access is for a loopback
/// listener only; a listener others can reach must have keys to check (one in
/// Redis, or `SPOOL_ADMIN_KEY`), or spool refuses to start.
async fn open_gate(config: &Config, redis: &RedisConnection) -> Result<http::auth::Gate> {
    let keys = spool_core::access::Keys::new(redis.clone());
    let loopback = config.listen.ip().is_loopback();
    if !loopback {
        let explicit_admin =
            std::env::var(crate::admin_token::ENV).is_ok_and(|k| !k.trim().is_empty());
        if !explicit_admin && !keys.any().await.context("reading API keys")? {
            bail!(
                "refusing to serve {} without API keys: anyone who can reach it could submit jobs and deploy handlers. \
                 Create a key first (start spool on 127.0.0.1, then `spool keys create --role admin`), \
                 or set {} to an admin key of your choice",
                config.listen,
                crate::admin_token::ENV
            );
        }
    }
    let token = crate::admin_token::load_or_create(config.auth.admin_token_file.as_deref())?;
    let mut allowed_hosts = config.auth.allowed_hosts.clone();
    if !loopback && !config.listen.ip().is_unspecified() {
        allowed_hosts.push(config.listen.ip().to_string());
    }
    Ok(http::auth::Gate {
        keys,
        admin_token_hash: spool_core::access::key_hash(&token),
        anonymous: config.auth.anonymous && loopback,
        check_host: loopback || !config.auth.allowed_hosts.is_empty(),
        allowed_hosts,
    })
}

/// Every watcher holds a socket: a soft limit of open files left at a
/// default 1,024 would stop the instance (workers included) near 1,000
/// watchers. Raises it to the hard limit, and says so if that is still
/// below what `[hub] max_watchers` needs.
fn raise_open_file_limit(max_watchers: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit of this process, with a valid struct.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    // Room for the listener, Redis, the model server and the workers too.
    let needed = max_watchers as libc::rlim_t + 1024;
    if !raised || limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            needed,
            "the open-file limit is below hub.max_watchers + 1024: raise it (ulimit -n, LimitNOFILE=) or lower hub.max_watchers"
        );
    }
}

/// The Redis this instance uses: the configured one (a server or a
/// cluster), or a redis-server of its own (then kept alive as long as the
/// instance).
async fn open_redis(
    config: &Config,
) -> Result<(PubSubNodes, RedisConnection, Option<EmbeddedRedis>)> {
    let (redis_url, embedded) = match &config.redis.url {
        Some(url) => (url.clone(), None),
        None => {
            let server =
                EmbeddedRedis::start(&config.redis.data_dir, config.redis.appendfsync).await?;
            tracing::info!(dir = %config.redis.data_dir.display(), fsync = ?config.redis.appendfsync, "started embedded redis-server (AOF on)");
            (server.url().to_owned(), Some(server))
        }
    };
    let (mut redis, pubsub) = connection::open(&redis_url, config.redis.ca_file.as_deref()).await?;
    spool_core::server_check::check(&mut redis).await?;
    Ok((pubsub, redis, embedded))
}

/// The model backend: the configured server, or the built-in stub.
async fn model_backend(config: &Config) -> Result<(ModelClient, Option<StubServer>)> {
    let (backend, stub) = match &config.model {
        Some(backend) => (backend.clone(), None),
        None => {
            let server = stub::start_apart(&StubArgs {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                latency_ms: 0,
                chunk_delay_ms: 0,
            })
            .await?;
            let backend = BackendConfig {
                kind: BackendKind::Ollama,
                url: server.url(),
                api_key: None,
                chat_model: "stub-chat".into(),
                embed_model: "stub-embed".into(),
                ollama_api: OllamaApi::Chat,
                request_timeout_ms: 60_000,
                forbidden_is_rate_limit: false,
            };
            (backend, Some(server))
        }
    };
    let models = ModelClient::new(backend)?;
    if stub.is_some() {
        tracing::info!(
            "model backend: the built-in STUB model server ({}); configure [model] or SPOOL_MODEL_URL for Ollama/OpenAI",
            models.describe()
        );
    } else {
        tracing::info!("model backend: {}", models.describe());
    }
    Ok((models, stub))
}

/// The handler registry, seeded and loaded: built-in and configured handlers,
/// then every active or pinned version. Checks the config's queues against the
/// handlers that exist.
async fn load_handlers(
    config: &Config,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    redis: &RedisConnection,
    instance: &str,
) -> Result<Arc<Handlers>> {
    let handlers = Arc::new(Handlers::new(
        runtime,
        registry,
        redis.clone(),
        instance.to_owned(),
        handler_settings(config),
        BUILT_IN,
    ));
    let mut handler_names: Vec<String> =
        BUILT_IN.iter().map(|(name, _)| name.to_string()).collect();
    handler_names.extend(config.handlers.keys().chain(config.watch.keys()).cloned());
    handler_names.extend(
        handlers
            .store()
            .active_all()
            .await
            .context("reading the handler registry")?
            .0
            .into_keys(),
    );
    config.validate(&handler_names)?;
    handlers.bootstrap(config).await?;
    Ok(handlers)
}

/// Every configured queue with its keys, its consumer groups created.
async fn open_queues(config: &Config, queue: &Queue) -> Result<BTreeMap<String, Route>> {
    let routes: BTreeMap<String, Route> = config
        .queues
        .iter()
        .map(|(name, q)| {
            (
                name.clone(),
                Route {
                    keys: queue.keys(name),
                    config: q.clone(),
                },
            )
        })
        .collect();
    for route in routes.values() {
        queue.ensure_groups(&route.keys).await.with_context(|| {
            format!(
                "creating the consumer groups of queue `{}`",
                route.keys.name
            )
        })?;
        queue
            .tidy_dead_letters(&route.keys)
            .await
            .with_context(|| format!("tidying the dead letters of queue `{}`", route.keys.name))?;
    }
    Ok(routes)
}

impl Running {
    /// Reports not-ready and stops claiming jobs, lets jobs in flight finish
    /// (up to the drain timeout), stops the API, then the stub model and the
    /// embedded Redis.
    pub async fn stop(mut self) {
        tracing::info!("shutting down: draining jobs in flight");
        self.shutdown.cancel();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "drain timeout reached; unfinished jobs stay pending for another instance"
            );
            self.workers.abort_all();
        }
        self.http_stop.cancel();
        // Streaming responses (SSE) hold the server open; do not wait for them.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while self.http.join_next().await.is_some() {}
        })
        .await;
        self.http.abort_all();
        self.background.abort_all();
        self.forget_consumers().await;
        self.handlers.leave().await;
        if let Some(stub) = self.stub.take() {
            stub.shutdown().await;
        }
        if let Some(redis) = self.redis.take() {
            redis.stop().await;
        }
        tracing::info!("stopped");
    }

    /// Deletes this instance's consumers from the groups, but only those with
    /// nothing pending: the entries of jobs left unfinished must stay in the
    /// pending list for another instance's recovery. A dead instance cannot do
    /// this; the sweep of the others deletes its consumers later.
    async fn forget_consumers(&self) {
        let pruned = tokio::time::timeout(Duration::from_secs(2), async {
            let mut deleted = 0;
            for keys in &self.queues {
                deleted += self
                    .queue
                    .prune_consumers(
                        keys,
                        consumer_idle_limit(self.visibility),
                        Some(&self.instance),
                    )
                    .await?;
            }
            redis::RedisResult::Ok(deleted)
        })
        .await;
        match pruned {
            Ok(Ok(deleted)) => tracing::debug!(deleted, "deleted this instance's idle consumers"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not delete this instance's consumers; other instances will")
            }
            Err(_) => tracing::warn!(
                "Redis too slow to delete this instance's consumers; other instances will"
            ),
        }
    }
}

/// A consumer silent for this long, with nothing pending, belongs to an
/// instance that is gone (or to a worker busy elsewhere, which simply creates
/// it again on its next read): a few visibility timeouts, so the groups hold
/// the consumers of the instances alive plus those gone within that time.
fn consumer_idle_limit(visibility: Duration) -> Duration {
    visibility * 4
}

/// Serves until SIGINT or SIGTERM, then stops cleanly. The signal handlers are
/// installed before anything starts, so a signal during start-up still leads
/// to a clean stop (including the embedded Redis) instead of a dead process.
pub async fn serve(config: Config) -> Result<()> {
    let stop_requested = shutdown_signal()?;
    let running = start(config).await?;
    stop_requested.await;
    running.stop().await;
    Ok(())
}

fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}

fn handler_settings(config: &Config) -> handlers::Settings {
    handlers::Settings {
        cache_dir: config
            .registry
            .cache_dir
            .clone()
            .unwrap_or_else(spool_runtime::cache::default_dir),
        max_component_bytes: config.registry.max_component_mb * 1024 * 1024,
        check_interval: Duration::from_millis(config.registry.check_interval_ms),
        keep_versions: config.registry.keep_versions,
    }
}

/// Every instance sweeps for abandoned jobs, twice per visibility timeout; the
/// sweep is atomic per entry, so instances sweeping at once requeue each job once.
async fn recover_abandoned_jobs(
    workers: Arc<Workers>,
    consumer: String,
    shutdown: CancellationToken,
) {
    let mut sweep = tokio::time::interval(workers.visibility / 2);
    loop {
        tokio::select! {
            _ = sweep.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        for route in workers.intake.routes.values() {
            match workers
                .intake
                .queue
                .recover(
                    &route.keys,
                    &consumer,
                    workers.visibility,
                    workers.retention,
                )
                .await
            {
                Ok(0) => {}
                Ok(requeued) => {
                    tracing::warn!(queue = %route.keys.name, requeued, "requeued jobs of workers that stopped responding")
                }
                Err(error) => tracing::debug!(%error, "recovery sweep failed; will retry"),
            }
            // Consumers of instances that are gone, once recovery emptied
            // their pending lists (the first sweep runs at start).
            match workers
                .intake
                .queue
                .prune_consumers(&route.keys, consumer_idle_limit(workers.visibility), None)
                .await
            {
                Ok(0) => {}
                // Also idle consumers of live workers, which come back on
                // their next delivery: not worth more than a debug line.
                Ok(deleted) => {
                    tracing::debug!(queue = %route.keys.name, deleted, "deleted idle consumers without pending entries")
                }
                Err(error) => tracing::debug!(%error, "pruning consumers failed; will retry"),
            }
        }
    }
}

/// Follows the instance's Pub/Sub signals: work announced for a queue (it
/// is no longer dry, and an idle worker wakes), and cancels of jobs that may
/// be running here. Pub/Sub is at-most-once: idle polling and heartbeats
/// catch what is missed.
async fn listen_for_signals(
    pubsub: PubSubNodes,
    queues: Vec<QueueKeys>,
    wake: Arc<Wake>,
    running: Arc<RunningJobs>,
    shutdown: CancellationToken,
) {
    use futures_util::StreamExt;
    // One server: two channels for every queue; a cluster: each queue's own.
    let cancels: BTreeSet<String> = queues.iter().map(|q| q.cancel_channel.clone()).collect();
    let channels: Vec<String> = queues
        .iter()
        .map(|q| q.wake_channel.clone())
        .chain(cancels.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    loop {
        if let Ok(mut messages) = pubsub.subscribe(&channels).await {
            // What was announced while unsubscribed is lost.
            wake.announced_everywhere();
            loop {
                tokio::select! {
                    message = messages.next() => match message {
                        Some((channel, job)) if cancels.contains(&channel) => {
                            running.cancel(&job);
                        }
                        Some((_, queue)) => wake.announced(&queue),
                        None => break,
                    },
                    _ = shutdown.cancelled() => return,
                }
            }
            tracing::warn!("lost the Pub/Sub subscription; reconnecting");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
