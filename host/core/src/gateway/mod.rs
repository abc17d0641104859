//! The one way to the model backend: every chat and embedding call passes the
//! shared rate limiter, and failures go through the one retry loop (429, and a
//! 403 that says it is a rate limit, wait for the limiter, which honours the
//! server's `Retry-After`; 5xx and connection errors back off; 400, 401, other
//! 403s and exhausted quotas fail at once, without slowing anyone down).
//! Embeddings are also cached in Redis and coalesced into batches.
//!
//! Owns the retry policy and the embedding cache and batcher. The HTTP clients
//! (`models`) stay thin and never retry; pacing state lives in `limiter`.

mod batch;
mod cache;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use serde::Serialize;

use crate::limiter::{AcquireError, Grant, Limiter, LimiterSnapshot, LimitsConfig, Scope};
use crate::metrics::{self, ModelOperation};
use crate::models::{ChatReply, ChatRequest, ModelClient, ModelError};

/// Longest backoff between two tries after a 5xx or connection error.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Who is calling, and until when the answer is useful.
#[derive(Clone, Copy, Debug)]
pub struct CallContext<'a> {
    pub job_id: &'a str,
    /// Empty or `None`: no per-user limit applies.
    pub user_id: Option<&'a str>,
    /// The job's deadline: no wait or retry is started that would end after it.
    pub deadline: Instant,
}

impl CallContext<'_> {
    fn scope(&self) -> Scope<'_> {
        match self.user_id {
            Some(user) if !user.is_empty() => Scope::UserAndBackend(user),
            _ => Scope::Backend,
        }
    }
}

/// Rate limiter + retry loop + embedding cache and batching over one backend.
pub struct Gateway {
    core: Arc<Core>,
    batcher: batch::Batcher,
    cache: cache::EmbeddingCache,
}

/// What batches need after their callers have moved on.
struct Core {
    client: ModelClient,
    limiter: Limiter,
    stats: EmbedStats,
}

/// This instance's embedding figures (the limiter's are shared in Redis).
#[derive(Default)]
struct EmbedStats {
    requests: AtomicU64,
    texts: AtomicU64,
    cache_hits: AtomicU64,
    backend_calls: AtomicU64,
    texts_sent: AtomicU64,
}

/// The limiter's shared state and this instance's embedding figures.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GatewaySnapshot {
    pub limiter: LimiterSnapshot,
    pub max_call_attempts: u32,
    pub embeddings: EmbedSnapshot,
}

#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct EmbedSnapshot {
    /// Counted by this instance only.
    pub scope: &'static str,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub cache_ttl_secs: u64,
    pub requests: u64,
    pub texts: u64,
    pub cache_hits: u64,
    pub backend_calls: u64,
    pub texts_sent: u64,
}

impl Gateway {
    pub fn new(client: ModelClient, redis: RedisConnection, config: LimitsConfig) -> Self {
        let limiter = Limiter::new(redis.clone(), client.config(), config.clone());
        let cache =
            cache::EmbeddingCache::new(redis, limiter.backend_id(), config.embed_cache_ttl_secs);
        let core = Arc::new(Core {
            client,
            limiter,
            stats: EmbedStats::default(),
        });
        let batcher = batch::Batcher::new(
            core.clone(),
            config.embed_batch_size,
            Duration::from_millis(config.embed_batch_wait_ms),
        );
        Self {
            core,
            batcher,
            cache,
        }
    }

    pub fn client(&self) -> &ModelClient {
        &self.core.client
    }

    pub fn limiter(&self) -> &Limiter {
        &self.core.limiter
    }

    /// A chat completion, paced and retried. Deltas go to `on_delta` as they
    /// arrive; once one has been delivered the call is not retried (the client
    /// would see the text twice), and a later failure is final.
    pub async fn chat(
        &self,
        context: &CallContext<'_>,
        request: &ChatRequest,
        on_delta: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatReply, ModelError> {
        let delivered = AtomicBool::new(false);
        let mut forward = |piece: &str| {
            delivered.store(true, Ordering::Relaxed);
            on_delta(piece);
        };
        let mut tries = Tries::new(&self.core, context, context.scope(), None);
        loop {
            let grant = tries.slot().await?;
            let started = Instant::now();
            let result = self.core.client.chat(request, &mut forward).await;
            self.core
                .observe(ModelOperation::Chat, started, result.as_ref().map(|_| ()));
            if let Ok(reply) = &result {
                metrics::model_tokens(
                    self.core.client.config().kind,
                    reply.prompt_tokens,
                    reply.completion_tokens,
                );
            }
            let retry_allowed = !delivered.load(Ordering::Relaxed);
            if let Some(done) = tries.settle(grant, result, retry_allowed).await {
                return done;
            }
        }
    }

    /// One vector per text, in order: from the cache where present, the rest
    /// from the backend in batches shared with concurrent callers.
    pub async fn embed(
        &self,
        context: &CallContext<'_>,
        model: Option<&str>,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let stats = &self.core.stats;
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.texts.fetch_add(texts.len() as u64, Ordering::Relaxed);
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = model
            .unwrap_or(&self.core.client.config().embed_model)
            .to_owned();
        let mut vectors = self.cache.get_many(&model, texts).await;
        let missing: Vec<String> = vectors
            .iter()
            .zip(texts)
            .filter(|(vector, _)| vector.is_none())
            .map(|(_, text)| text.clone())
            .collect();
        stats
            .cache_hits
            .fetch_add((texts.len() - missing.len()) as u64, Ordering::Relaxed);
        if !missing.is_empty() {
            if let Some(user) = context.user_id.filter(|user| !user.is_empty()) {
                self.core
                    .limiter
                    .acquire(Scope::User(user), context.deadline)
                    .await
                    .map_err(|error| limiter_error(context.job_id, error))?;
            }
            let computed = self
                .batcher
                .embed(&model, missing.clone(), context.deadline)
                .await?;
            self.cache.put_many(&model, &missing, &computed).await;
            let mut computed = computed.into_iter();
            for slot in vectors.iter_mut().filter(|slot| slot.is_none()) {
                *slot = computed.next();
            }
        }
        vectors
            .into_iter()
            .map(|vector| {
                vector.ok_or_else(|| ModelError::Rejected {
                    status: 200,
                    message: "the backend returned fewer embeddings than texts".into(),
                })
            })
            .collect()
    }

    pub async fn snapshot(&self) -> Result<GatewaySnapshot, redis::RedisError> {
        let config = self.core.limiter.config();
        let stats = &self.core.stats;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Ok(GatewaySnapshot {
            limiter: self.core.limiter.snapshot().await?,
            max_call_attempts: config.max_call_attempts,
            embeddings: EmbedSnapshot {
                scope: "instance",
                batch_size: config.embed_batch_size,
                batch_wait_ms: config.embed_batch_wait_ms,
                cache_ttl_secs: config.embed_cache_ttl_secs,
                requests: read(&stats.requests),
                texts: read(&stats.texts),
                cache_hits: read(&stats.cache_hits),
                backend_calls: read(&stats.backend_calls),
                texts_sent: read(&stats.texts_sent),
            },
        })
    }
}

impl Core {
    /// Records one try of a model call in the metrics.
    fn observe(
        &self,
        operation: ModelOperation,
        started: Instant,
        result: Result<(), &ModelError>,
    ) {
        metrics::model_called(
            self.client.config().kind,
            operation,
            result,
            started.elapsed(),
        );
    }
}

/// The one retry loop, driven by its caller so that each try can borrow what it
/// needs (a delta sink, the batch's texts):
/// `loop { let slot = tries.slot().await?; let result = ..; if let Some(done) = tries.settle(slot, result, ..).await { return done } }`.
struct Tries<'a> {
    core: &'a Core,
    context: &'a CallContext<'a>,
    scope: Scope<'a>,
    /// A slot the caller already holds (an embedding batch takes its token
    /// before it closes).
    granted: Option<Grant>,
    count: u32,
}

impl<'a> Tries<'a> {
    fn new(
        core: &'a Core,
        context: &'a CallContext<'a>,
        scope: Scope<'a>,
        granted: Option<Grant>,
    ) -> Self {
        Self {
            core,
            context,
            scope,
            granted,
            count: 0,
        }
    }

    /// Waits for the limiter's slot for the next try.
    async fn slot(&mut self) -> Result<Grant, ModelError> {
        self.count += 1;
        match self.granted.take() {
            Some(grant) => Ok(grant),
            None => self
                .core
                .limiter
                .acquire(self.scope, self.context.deadline)
                .await
                .map_err(|error| limiter_error(self.context.job_id, error)),
        }
    }

    /// `Some`: the call's final result. `None`: try again (any backoff has
    /// been slept). `retry_allowed` is false once output was delivered.
    async fn settle<T>(
        &mut self,
        grant: Grant,
        result: Result<T, ModelError>,
        retry_allowed: bool,
    ) -> Option<Result<T, ModelError>> {
        let error = match result {
            Ok(value) => return Some(Ok(value)),
            Err(error) => error,
        };
        let (limiter, job) = (&self.core.limiter, self.context.job_id);
        let backoff = match &error {
            ModelError::RateLimited {
                status,
                retry_after,
                ..
            } => {
                if let Err(redis_error) = limiter
                    .record_rate_limited(grant.generation, *status, *retry_after)
                    .await
                {
                    tracing::warn!(%redis_error, "could not record a 429/403 in the shared limiter");
                }
                // The next slot comes after the cool-down: nothing more to wait.
                Duration::ZERO
            }
            ModelError::Unavailable(_) => {
                limiter.count("unavailable").await;
                backoff(limiter.config().retry_backoff_ms, self.count)
            }
            ModelError::Rejected { status, .. } => {
                limiter.count("rejected").await;
                if *status == 403 {
                    // Counted apart: a bad key or an unserved region fails every
                    // call, and /api/limits is where an operator looks first.
                    limiter.count("forbidden").await;
                    tracing::warn!(job, %error, "the model server refused access (HTTP 403, not a rate limit): check the API key, region and permissions; not retried");
                } else {
                    tracing::warn!(job, %error, "model call failed for good: not retryable");
                }
                return Some(Err(error));
            }
        };
        if !retry_allowed {
            tracing::warn!(job, %error, "model call failed after part of its answer was streamed; not retried");
            return Some(Err(error));
        }
        if self.count >= limiter.config().max_call_attempts {
            tracing::warn!(job, %error, tries = self.count, "model call failed at its last try");
            return Some(Err(error));
        }
        if Instant::now() + backoff >= self.context.deadline {
            tracing::warn!(job, %error, "model call failed; no time left to retry before the job's deadline");
            return Some(Err(error));
        }
        tracing::info!(job, %error, tries = self.count, backoff_ms = backoff.as_millis() as u64, "model call failed; retrying");
        limiter.count("retries").await;
        tokio::time::sleep(backoff).await;
        None
    }
}

/// Exponential from `base_ms`, doubling per try, +-20 % jitter, capped.
fn backoff(base_ms: u64, tries: u32) -> Duration {
    let exponential = base_ms.saturating_mul(1 << tries.saturating_sub(1).min(16));
    let jittered = exponential as f64 * (0.8 + 0.4 * fastrand::f64());
    Duration::from_millis(jittered as u64).min(MAX_BACKOFF)
}

/// A slot that cannot come in time looks to the guest like a rate limit with
/// the wait attached (it usually retries the job later); a Redis outage like
/// an unavailable backend. The guest only hears "rate-limited", so the log
/// names the limiter's wait against the job.
fn limiter_error(job: &str, error: AcquireError) -> ModelError {
    match error {
        AcquireError::TooLong(wait) => {
            tracing::info!(
                job,
                wait_ms = wait.as_millis() as u64,
                "model call not made: the rate limiter's next slot is beyond the job's deadline; the handler is told to wait that long"
            );
            ModelError::RateLimited {
                status: 429,
                retry_after: Some(wait),
                message: error.to_string(),
            }
        }
        AcquireError::Redis(_) => ModelError::Unavailable(error.to_string()),
    }
}
