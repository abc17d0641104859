//! Hot-swappable handlers: deploy a new component version, validate it, make it
//! active on every instance of the cluster, roll back, without a restart.
//!
//! Owns the deployment pipeline (validate -> store -> activate -> switch), the
//! start-up seeding of built-in and configured handlers, and loading versions
//! from Redis into this instance's [`Registry`]. The Redis layout is `store`'s,
//! the rules `validate`'s, compiled artifacts `cache`'s, keeping every instance
//! current `sync`'s, the dev loop `watch`'s. It never touches queues or jobs:
//! workers pick up a switch by resolving the handler when they claim a job.

pub mod store;
pub mod sync;
pub mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::Serialize;
use wasmtime::component::Component;

use crate::config::Config;
use crate::queue::now_ms;
use crate::registry::Registry;
use spool_runtime::cache::{CompiledCache, Source};
use spool_runtime::validate::{self, Contract, Rejection};
use spool_runtime::{HandlerComponent, Runtime};
use store::{Activated, ActivationRequest, HandlerStore, VersionMeta};

/// A version that failed to load on this instance (Redis away, a compile
/// error) is tried again after this long.
const RETRY_BROKEN: Duration = Duration::from_secs(30);

/// How this instance takes part in the handler registry.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cache_dir: PathBuf,
    pub max_component_bytes: usize,
    /// How often the active versions are re-read even without a notification.
    pub check_interval: Duration,
    /// Stored versions kept per handler besides the active, rollback and
    /// pinned ones; 0 keeps every version.
    pub keep_versions: usize,
}

/// Handler components shipped inside the binary, by name: seeded as each
/// handler's first version when the registry has none. The first one also
/// defines the contract's hook types uploads are checked against.
pub type BuiltIn = &'static [(&'static str, &'static [u8])];

/// The handler registry of one instance: local compiled versions plus the
/// cluster-wide state in Redis.
pub struct Handlers {
    built_in: BuiltIn,
    pub registry: Arc<Registry>,
    runtime: Arc<Runtime>,
    store: HandlerStore,
    cache: Arc<CompiledCache>,
    contract: tokio::sync::OnceCell<Arc<Contract>>,
    instance: String,
    settings: Settings,
    sync: sync::SyncState,
    /// `name@version` that failed to load here, and when: retried only after
    /// [`RETRY_BROKEN`], not on every check (a compile costs CPU).
    broken: Mutex<HashMap<String, Instant>>,
}

/// A validated version, compiled and linked, not yet active.
pub struct Prepared {
    pub handler: HandlerComponent,
    pub sha256: String,
    pub compiled_from: Source,
    pub compile_ms: u64,
    pub smoke_ms: u64,
}

/// The answer to a deploy or rollback.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    pub handler: String,
    pub version: String,
    /// The version active before, if any.
    pub previous: Option<String>,
    /// False when the version was already active.
    pub changed: bool,
    /// The registry generation of this activation; an instance that reports it
    /// (or a later one) has switched.
    pub generation: u64,
    /// When the activation was committed (ms since the epoch, this instance's clock).
    pub activated_at: u64,
    pub size: usize,
    /// `cache` or `compiled`.
    pub compiled_from: &'static str,
    pub compile_ms: u64,
    pub smoke_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("handler `{0}` has no stored versions")]
    UnknownHandler(String),
    #[error("handler `{name}` has no version `{version}`; stored versions: {}", known.join(", "))]
    UnknownVersion {
        name: String,
        version: String,
        known: Vec<String>,
    },
    #[error("handler `{name}` has nothing to roll back to: `{active}` is the first version it ran")]
    NothingToRollBack { name: String, active: String },
    #[error("the handler registry in Redis is unavailable: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Internal(String),
}

pub fn valid_handler_name(name: &str) -> bool {
    crate::queue::valid_queue_name(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Handlers {
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        redis: RedisConnection,
        instance: String,
        settings: Settings,
        built_in: BuiltIn,
    ) -> Self {
        let cache = Arc::new(CompiledCache::new(
            settings.cache_dir.clone(),
            runtime.engine_fingerprint(),
        ));
        Self {
            built_in,
            registry,
            runtime,
            store: HandlerStore::new(redis),
            cache,
            contract: tokio::sync::OnceCell::new(),
            instance,
            settings,
            sync: sync::SyncState::default(),
            broken: Mutex::new(HashMap::new()),
        }
    }

    pub fn store(&self) -> &HandlerStore {
        &self.store
    }

    pub fn cache(&self) -> &CompiledCache {
        &self.cache
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn max_component_bytes(&self) -> usize {
        self.settings.max_component_bytes
    }

    /// Compiles off the async threads, through the compiled cache.
    async fn compile(&self, sha256: &str, bytes: Bytes) -> Result<(Component, Source, u64)> {
        let engine = self.runtime.engine().clone();
        let cache = self.cache.clone();
        let sha256 = sha256.to_owned();
        let started = Instant::now();
        let (component, source) =
            tokio::task::spawn_blocking(move || cache.load(&engine, &sha256, &bytes))
                .await
                .context("the compile task panicked")??;
        Ok((component, source, started.elapsed().as_millis() as u64))
    }

    /// The contract's hook types, from the first built-in handler.
    async fn contract(&self) -> Result<Arc<Contract>> {
        let contract = self
            .contract
            .get_or_try_init(|| async {
                let (_, bytes) = self
                    .built_in
                    .first()
                    .context("no built-in handler defines the contract")?;
                let (component, ..) = self
                    .compile(&sha256_hex(bytes), Bytes::from_static(bytes))
                    .await?;
                Contract::from_component(self.runtime.engine(), &component).map(Arc::new)
            })
            .await?;
        Ok(contract.clone())
    }

    /// Every check a version passes before it may become active. A rejected
    /// upload leaves no compiled artifact behind: nothing will load it, and
    /// uploads are the one input to the cache an API client controls.
    pub async fn prepare(&self, name: &str, bytes: &Bytes) -> Result<Prepared, Rejection> {
        validate::check_header(bytes, self.settings.max_component_bytes)?;
        let sha256 = sha256_hex(bytes);
        let (component, compiled_from, compile_ms) =
            self.compile(&sha256, bytes.clone()).await.map_err(|e| {
                Rejection::new(
                    "compile_failed",
                    format!("the component does not compile: {e:#}"),
                )
            })?;
        let checked = self.check_compiled(name, &sha256, &component).await;
        let (handler, smoke_ms) = match checked {
            Ok(checked) => checked,
            Err(rejection) => {
                let cache = self.cache.clone();
                let sha256 = sha256.clone();
                // An unlink: cheap, but still file I/O off the async threads.
                let _ = tokio::task::spawn_blocking(move || cache.remove(&sha256)).await;
                return Err(rejection);
            }
        };
        Ok(Prepared {
            handler,
            sha256,
            compiled_from,
            compile_ms,
            smoke_ms,
        })
    }

    /// The checks after compiling: the world, linking, a smoke run.
    async fn check_compiled(
        &self,
        name: &str,
        sha256: &str,
        component: &Component,
    ) -> Result<(HandlerComponent, u64), Rejection> {
        let version = sha256[..12].to_owned();
        let contract = self
            .contract()
            .await
            .map_err(|e| Rejection::new("validator_unavailable", format!("{e:#}")))?;
        validate::check_world(self.runtime.engine(), component, &contract)?;
        let handler = self
            .runtime
            .link(name, &version, component)
            .map_err(|e| Rejection::new("wrong_world", format!("{e:#}")))?;
        let started = Instant::now();
        validate::smoke_run(&self.runtime, &handler).await?;
        Ok((handler, started.elapsed().as_millis() as u64))
    }

    /// Validates, stores and activates a new version. A rejected upload
    /// changes nothing: the active version keeps serving.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Bytes,
        by: &str,
        action: &str,
    ) -> Result<Deployed, DeployError> {
        if !valid_handler_name(name) {
            return Err(DeployError::Rejected(Rejection::new(
                "invalid_handler_name",
                format!("handler name `{name}` must be 1-64 characters of a-z, 0-9, '-' or '_'"),
            )));
        }
        let prepared = match self.prepare(name, &bytes).await {
            Ok(prepared) => prepared,
            Err(rejection) => {
                tracing::warn!(handler = name, by, code = rejection.code, reason = %rejection.message, "upload rejected; the active version keeps serving");
                return Err(DeployError::Rejected(rejection));
            }
        };
        let meta = VersionMeta {
            version: prepared.handler.version.clone(),
            sha256: prepared.sha256.clone(),
            size: bytes.len(),
            uploaded_at: now_ms(),
            uploaded_by: by.to_owned(),
            world: validate::WORLD.to_owned(),
        };
        self.store.store_version(name, &meta, &bytes).await?;
        let deployed = self.activate(prepared, bytes.len(), by, action).await?;
        self.prune(name).await;
        Ok(deployed)
    }

    /// Deletes old versions of `name` from Redis (see `store::prune`) and
    /// their artifacts from this machine's compiled cache. Best effort: a
    /// failure leaves them for the next deploy and fails nothing.
    async fn prune(&self, name: &str) {
        let pruned = match self
            .store
            .prune(name, self.settings.keep_versions, now_ms())
            .await
        {
            Ok(pruned) => pruned,
            Err(error) => {
                tracing::warn!(handler = name, %error, "could not prune old handler versions; the next deploy tries again");
                return;
            }
        };
        if pruned.is_empty() {
            return;
        }
        let versions: Vec<&str> = pruned.iter().map(|p| p.version.as_str()).collect();
        tracing::info!(handler = name, pruned = ?versions, kept = self.settings.keep_versions, "pruned old handler versions");
        let cache = self.cache.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for version in &pruned {
                // Only a full hash names an artifact (and a file name made
                // of anything else read from Redis could point elsewhere).
                let sha256 = &version.sha256;
                if sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    cache.remove(&version.sha256);
                }
            }
        })
        .await;
    }

    /// Activates a stored version again: the one active before the current
    /// one, or `to` (a version id or a unique prefix of one).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
        by: &str,
    ) -> Result<Deployed, DeployError> {
        let versions = self.store.versions(name).await?;
        if versions.is_empty() {
            return Err(DeployError::UnknownHandler(name.to_owned()));
        }
        let target = match to {
            Some(wanted) => pick_version(name, &versions, wanted)?,
            None => self.previous_version(name, &versions).await?,
        };
        let bytes = self.stored_bytes(name, &target).await?;
        // Validated when uploaded; checked again because this engine may differ.
        let prepared = self
            .prepare(name, &bytes)
            .await
            .map_err(DeployError::Rejected)?;
        self.activate(prepared, bytes.len(), by, "rollback").await
    }

    /// The version that was active before the current one.
    async fn previous_version(
        &self,
        name: &str,
        versions: &[VersionMeta],
    ) -> Result<VersionMeta, DeployError> {
        let latest = self.store.history(name, 1).await?.into_iter().next();
        let active = self.store.active(name).await?.unwrap_or_default();
        let previous =
            latest
                .and_then(|a| a.previous)
                .ok_or_else(|| DeployError::NothingToRollBack {
                    name: name.into(),
                    active,
                })?;
        versions
            .iter()
            .find(|v| v.version == previous)
            .cloned()
            .ok_or_else(|| DeployError::UnknownVersion {
                name: name.into(),
                version: previous,
                known: version_ids(versions),
            })
    }

    /// A stored version's bytes, checked against the hash recorded at upload.
    async fn stored_bytes(&self, name: &str, target: &VersionMeta) -> Result<Bytes, DeployError> {
        let bytes = self
            .store
            .component(name, &target.version)
            .await?
            .ok_or_else(|| {
                DeployError::Internal(format!(
                    "the bytes of `{name}` version `{}` are missing from Redis",
                    target.version
                ))
            })?;
        if sha256_hex(&bytes) != target.sha256 {
            return Err(DeployError::Internal(format!(
                "the stored bytes of `{name}` version `{}` do not match its hash",
                target.version
            )));
        }
        Ok(Bytes::from(bytes))
    }

    async fn activate(
        &self,
        prepared: Prepared,
        size: usize,
        by: &str,
        action: &str,
    ) -> Result<Deployed, DeployError> {
        let handler = prepared.handler.clone();
        self.registry.insert(prepared.handler);
        let activated_at = now_ms();
        let request = ActivationRequest {
            name: &handler.name,
            version: &handler.version,
            now_ms: activated_at,
            by,
            action,
            only_if_none: false,
        };
        let (previous, changed, generation) = match self.store.activate(request).await? {
            Activated::Activated {
                previous,
                generation,
            } => (previous, true, generation),
            Activated::Unchanged { generation } | Activated::Kept { generation, .. } => {
                (Some(handler.version.clone()), false, generation)
            }
            Activated::Missing => {
                return Err(DeployError::Internal(format!(
                    "version `{}` vanished from Redis before activation",
                    handler.version
                )));
            }
        };
        if changed {
            tracing::info!(
                handler = %handler.name, version = %handler.version, previous = previous.as_deref().unwrap_or("none"),
                action, by, generation, "handler version activated"
            );
        } else {
            tracing::info!(handler = %handler.name, version = %handler.version, action, by, "version already active; nothing to switch");
        }
        // Switch here at once; other instances follow on the notification.
        if let Err(error) = self.sync().await {
            tracing::warn!(error = %format!("{error:#}"), "could not switch this instance yet; the periodic check will");
        }
        Ok(Deployed {
            handler: handler.name.clone(),
            version: handler.version.clone(),
            previous,
            changed,
            generation,
            activated_at,
            size,
            compiled_from: prepared.compiled_from.as_str(),
            compile_ms: prepared.compile_ms,
            smoke_ms: prepared.smoke_ms,
        })
    }

    /// A stored version, compiled (or taken from the cache) and linked.
    pub async fn load_version(&self, name: &str, version: &str) -> Result<HandlerComponent> {
        if let Some(handler) = self.registry.loaded(name, version) {
            return Ok(handler);
        }
        let bytes = self
            .store
            .component(name, version)
            .await?
            .with_context(|| {
                format!("version `{version}` of handler `{name}` is not stored in Redis")
            })?;
        let sha256 = sha256_hex(&bytes);
        if !sha256.starts_with(version) {
            bail!("the stored bytes of `{name}` version `{version}` do not match its hash");
        }
        let (component, source, ms) = self.compile(&sha256, Bytes::from(bytes)).await?;
        let handler = self.runtime.link(name, version, &component)?;
        tracing::info!(
            handler = name,
            version,
            from = source.as_str(),
            ms,
            "handler version loaded"
        );
        self.registry.insert(handler.clone());
        Ok(handler)
    }

    /// Stores and activates `bytes` as the first version of `name`, unless the
    /// handler already has an active version (then nothing is compiled).
    pub async fn seed(&self, name: &str, bytes: Bytes, by: &str) -> Result<()> {
        if self.store.active(name).await?.is_some() {
            return Ok(());
        }
        let prepared = self
            .prepare(name, &bytes)
            .await
            .with_context(|| format!("handler `{name}` ({by}) is not valid"))?;
        let version = prepared.handler.version.clone();
        let meta = VersionMeta {
            version: version.clone(),
            sha256: prepared.sha256.clone(),
            size: bytes.len(),
            uploaded_at: now_ms(),
            uploaded_by: by.to_owned(),
            world: validate::WORLD.to_owned(),
        };
        self.store.store_version(name, &meta, &bytes).await?;
        self.registry.insert(prepared.handler);
        let request = ActivationRequest {
            name,
            version: &version,
            now_ms: now_ms(),
            by,
            action: "seed",
            only_if_none: true,
        };
        if let Activated::Activated { .. } = self.store.activate(request).await? {
            tracing::info!(handler = name, %version, by, "seeded the handler's first version");
        }
        Ok(())
    }

    /// Start-up: seed built-in and configured handlers, deploy watched files,
    /// load every active version and every version a queue pins.
    pub async fn bootstrap(&self, config: &Config) -> Result<()> {
        for (name, bytes) in self.built_in {
            self.seed(name, Bytes::from_static(bytes), "built-in")
                .await?;
        }
        for (name, file) in &config.handlers {
            let bytes = std::fs::read(&file.path).with_context(|| {
                format!("reading handler `{name}` from {}", file.path.display())
            })?;
            self.seed(
                name,
                Bytes::from(bytes),
                &format!("config:{}", file.path.display()),
            )
            .await?;
        }
        for (name, path) in &config.watch {
            if let Err(error) = watch::deploy_file(self, name, path).await {
                if self.store.active(name).await?.is_none() {
                    bail!(
                        "watched handler `{name}` ({}) cannot be deployed and has no active version: {error:#}",
                        path.display()
                    );
                }
                tracing::warn!(handler = %name, error = %format!("{error:#}"), "watched file not deployed; the active version keeps serving");
            }
        }
        self.sync()
            .await
            .context("loading the active handler versions")?;
        let pins: Vec<(String, String)> = config
            .queues
            .values()
            .filter_map(|route| Some((route.handler.clone(), route.handler_version.clone()?)))
            .collect();
        // Held before loading: a deploy elsewhere must not prune them meanwhile.
        self.store
            .hold_pins(&pins, now_ms())
            .await
            .context("recording the versions this instance's queues pin")?;
        for (queue, route) in &config.queues {
            let Some(version) = &route.handler_version else {
                continue;
            };
            self.load_version(&route.handler, version)
                .await
                .with_context(|| {
                    format!(
                        "queue `{queue}` pins version `{version}` of handler `{}`",
                        route.handler
                    )
                })?;
            self.registry.pin(&route.handler, version);
        }
        Ok(())
    }

    fn is_broken(&self, name: &str, version: &str) -> bool {
        let broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        broken
            .get(&format!("{name}@{version}"))
            .is_some_and(|since| since.elapsed() < RETRY_BROKEN)
    }

    /// Records a failed load; true when it is news (worth logging).
    fn mark_broken(&self, name: &str, version: &str) -> bool {
        let mut broken = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        let previous = broken.insert(format!("{name}@{version}"), Instant::now());
        previous.is_none_or(|since| since.elapsed() >= RETRY_BROKEN)
    }
}

/// The one version whose id starts with `wanted`.
fn pick_version(
    name: &str,
    versions: &[VersionMeta],
    wanted: &str,
) -> Result<VersionMeta, DeployError> {
    let matches: Vec<&VersionMeta> = versions
        .iter()
        .filter(|v| !wanted.is_empty() && v.version.starts_with(wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(DeployError::UnknownVersion {
            name: name.into(),
            version: wanted.into(),
            known: version_ids(versions),
        }),
        _ => Err(DeployError::Rejected(Rejection::new(
            "ambiguous_version",
            format!(
                "`{wanted}` matches several versions of `{name}`: {}",
                matches
                    .iter()
                    .map(|v| v.version.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))),
    }
}

fn version_ids(versions: &[VersionMeta]) -> Vec<String> {
    versions.iter().map(|v| v.version.clone()).collect()
}
