//! The distributed rate limiter in front of the model backend: a token bucket per
//! backend (and optionally per user) kept in Redis, so every instance shares one
//! allowance and one clock (Redis `TIME`), plus the adaptive slow-down after
//! rate-limit answers (429, or a 403 that says it is one: `models` decides).
//! Each check is answered by one atomic script, shared with the checks
//! made at the same moment (`reservations`), with the exact wait; a caller
//! sleeps that long and never polls. On a fast backend a busy instance
//! spends a small allowance taken ahead instead (`reservations`).
//!
//! Owns the keys `spool:limit:{backend-id}` (bucket, adaptive state, counters),
//! `spool:limit:{backend-id}:user:{user}` (per-user buckets) and
//! `spool:limit:{backend-id}:set` (a rate an operator set at run time, design A's
//! `SetRate`: it replaces the configured rate and burst on every instance
//! until cleared, and never expires). It decides only *when* a call may go;
//! making the call and retrying it belong to `gateway`.

mod allowance;
mod config;
mod reservations;

use std::time::{Duration, Instant};

use crate::connection::RedisConnection;
use redis::Script;
use serde::Serialize;

pub use config::{LimitsConfig, UserLimit};
use reservations::{Answer, Check, Mode, Reservations, Verdict};

use crate::models::{BackendConfig, BackendKind};

/// Idle limiter state expires after a day; counters restart with it.
const STATE_TTL_MS: u64 = 24 * 3600 * 1000;
/// Re-reservations after cool-downs that started while a caller slept. Each one
/// needs a new 429/403, so this only guards against a pathological backend.
const MAX_RESERVATIONS: usize = 32;

/// A reserved call slot. `generation` says which rate-limit episode it belongs
/// to, so a 429 it runs into lowers the rate only once per episode.
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    pub generation: i64,
    /// Time spent waiting for this slot.
    pub waited: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// The next slot is later than the caller's deadline; nothing was taken.
    #[error("the rate limit allows the next call in {0:?}, beyond this job's deadline")]
    TooLong(Duration),
    #[error("the rate limiter's Redis is unavailable: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Which buckets a check takes from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scope<'a> {
    /// The backend's bucket only (embedding batches, users without a limit).
    Backend,
    /// The user's bucket, then the backend's.
    UserAndBackend(&'a str),
    /// The user's bucket only (an embedding request before it joins a batch).
    User(&'a str),
}

/// What a 429/403 did to the shared state.
#[derive(Clone, Copy, Debug)]
pub struct Slowdown {
    /// This report lowered the rate (the first of its episode).
    pub lowered: bool,
    pub rate: f64,
    /// No call goes to the backend before this has passed.
    pub cooldown: Duration,
}

/// The limiter's state as the API shows it.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct LimiterSnapshot {
    pub backend: String,
    pub backend_id: String,
    /// The rate the adaptive one recovers to: the operator's while set, else the configuration's.
    pub configured_rate_per_sec: f64,
    pub capacity: f64,
    /// `config`, or `operator` while a rate set at run time holds.
    pub rate_source: &'static str,
    /// Who set the operator's rate, and when (ms since the epoch).
    pub rate_set_by: Option<String>,
    pub rate_set_at: Option<u64>,
    pub min_rate_per_sec: f64,
    pub effective_rate_per_sec: f64,
    pub tokens_available: f64,
    pub cooldown_remaining_ms: u64,
    /// Bumped by every 429/403 that started or extended a cool-down.
    pub generation: i64,
    /// Calls granted by the limiter, all instances together.
    pub granted: u64,
    /// Grants that had to wait, and their total scheduled wait.
    pub waits: u64,
    pub waited_ms_total: f64,
    /// Rate-limit answers from the backend per status.
    pub rate_limited: std::collections::BTreeMap<String, u64>,
    pub retries: u64,
    pub failures_unavailable: u64,
    /// Calls that failed for good (4xx other than rate limits, exhausted quotas).
    pub failures_rejected: u64,
    /// Of those, 403s that were not rate limits (key, region, permission).
    pub failures_forbidden: u64,
    pub per_user: Option<UserLimit>,
}

pub struct Limiter {
    redis: RedisConnection,
    key: String,
    backend_id: String,
    name: String,
    kind: BackendKind,
    config: LimitsConfig,
    reservations: Reservations,
    limited: Script,
}

/// Stable id of a backend: instances configured with the same kind, URL and
/// API key share one bucket, whatever else differs in their configuration.
pub fn backend_id(backend: &BackendConfig) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(backend.kind.to_string());
    hasher.update([0]);
    hasher.update(backend.url.trim_end_matches('/'));
    hasher.update([0]);
    hasher.update(backend.api_key.as_deref().unwrap_or(""));
    hasher
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Limiter {
    pub fn new(redis: RedisConnection, backend: &BackendConfig, config: LimitsConfig) -> Self {
        let backend_id = backend_id(backend);
        let key = format!("spool:limit:{{{backend_id}}}");
        // Shown in /api/limits, the log and Redis: never the URL's credentials.
        let name = format!("{} at {}", backend.kind, crate::redact::url(&backend.url));
        let reservations = Reservations::new(
            redis.clone(),
            key.clone(),
            config.clone(),
            name.clone(),
            STATE_TTL_MS,
        );
        Self {
            redis,
            key,
            name,
            backend_id,
            kind: backend.kind,
            config,
            reservations,
            limited: Script::new(include_str!("limited.lua")),
        }
    }

    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    /// The backend's state key (counters live there too).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// See [`backend_id`].
    pub fn backend_id(&self) -> &str {
        &self.backend_id
    }

    /// Waits for a call slot within `deadline`. A slot that cannot come in time
    /// is not taken, so a job that gives up wastes nothing of the allowance.
    pub async fn acquire(
        &self,
        scope: Scope<'_>,
        deadline: Instant,
    ) -> Result<Grant, AcquireError> {
        let started = Instant::now();
        let granted = |generation| {
            let waited = started.elapsed();
            crate::metrics::limiter_granted(self.kind, waited);
            Grant { generation, waited }
        };
        let (mut mode, user) = match scope {
            Scope::Backend => (Mode::Backend, None),
            Scope::UserAndBackend(user) => (Mode::Both, Some(user)),
            Scope::User(user) => (Mode::User, Some(user)),
        };
        if self.config.per_user.is_none() {
            // No per-user limit configured: a user scope takes from the backend only.
            if mode == Mode::User {
                return Ok(Grant {
                    generation: -1,
                    waited: Duration::ZERO,
                });
            }
            mode = Mode::Backend;
        }
        let mut expected_generation = -1;
        for _ in 0..MAX_RESERVATIONS {
            let check = Check {
                mode,
                user: user.map(str::to_owned),
                deadline,
                expected_generation,
            };
            let reply = self.reservations.check(check).await?;
            if reply.rate_changed {
                self.log_recovery(reply.rate);
            }
            match reply.verdict {
                Verdict::Refused => return Err(AcquireError::TooLong(reply.wait)),
                Verdict::Confirmed | Verdict::Peeked => return Ok(granted(reply.generation)),
                Verdict::Reserved if reply.wait.is_zero() => return Ok(granted(reply.generation)),
                Verdict::Reserved if mode == Mode::User => {
                    wait_for_user_token(user, reply.wait).await;
                    return Ok(granted(reply.generation));
                }
                Verdict::Reserved => {
                    tracing::info!(backend = %self.name, rate = reply.rate, wait_ms = reply.wait.as_millis() as u64, "waiting for a token (available: {:.2})", reply.tokens);
                    tokio::time::sleep(reply.wait).await;
                    // A 429 elsewhere while we slept voids the slot; confirming
                    // costs one round trip and re-reserves if so.
                    mode = Mode::Backend;
                    expected_generation = reply.generation;
                }
                Verdict::UserReserved => {
                    wait_for_user_token(user, reply.wait).await;
                    mode = Mode::Backend;
                    expected_generation = -1;
                }
            }
        }
        Err(AcquireError::TooLong(
            deadline.saturating_duration_since(Instant::now()),
        ))
    }

    fn log_recovery(&self, rate: f64) {
        tracing::info!(backend = %self.name, rate, configured = self.config.rate_per_sec, "model rate recovering after a quiet period");
    }

    /// Records a 429/403 answered to a call granted under `generation`. Every
    /// instance stops calling until the cool-down (the server's wait, else the
    /// default) has passed; the first report of an episode lowers the rate.
    pub async fn record_rate_limited(
        &self,
        generation: i64,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Result<Slowdown, redis::RedisError> {
        self.reservations.void_allowance();
        let cooldown = retry_after
            .unwrap_or(Duration::from_millis(self.config.default_cooldown_ms))
            .min(Duration::from_millis(self.config.max_cooldown_ms));
        let (lowered, rate, cooldown_us, _generation): (i64, f64, i64, i64) = self
            .limited
            .key(&self.key)
            .key(self.set_key())
            .arg(generation)
            .arg(u64::try_from(cooldown.as_micros()).unwrap_or(u64::MAX))
            .arg(status)
            .arg(self.config.rate_per_sec)
            .arg(self.config.decrease_factor)
            .arg(self.config.min_rate_per_sec)
            .arg(STATE_TTL_MS)
            .arg(&self.name)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let slowdown = Slowdown {
            lowered: lowered == 1,
            rate,
            cooldown: Duration::from_micros(cooldown_us.max(0) as u64),
        };
        if slowdown.lowered {
            tracing::warn!(backend = %self.name, status, rate, cooldown_ms = slowdown.cooldown.as_millis() as u64, "model backend rate-limited us: effective rate lowered for every instance");
        } else {
            tracing::info!(backend = %self.name, status, cooldown_ms = slowdown.cooldown.as_millis() as u64, "model backend rate-limited a call of an episode already handled");
        }
        Ok(slowdown)
    }

    fn set_key(&self) -> String {
        format!("{}:set", self.key)
    }

    /// Design A's `SetRate`: from now on every instance paces this backend at
    /// `rate` calls per second (bursts of `capacity`, else the configured
    /// one), until [`Limiter::clear_rate`]. The adaptive slow-down still
    /// lowers it after a 429/403 and recovers to it.
    pub async fn set_rate(
        &self,
        rate: f64,
        capacity: Option<f64>,
        by: &str,
        now_ms: u64,
    ) -> Result<(), redis::RedisError> {
        let capacity = capacity.unwrap_or(self.config.capacity);
        redis::cmd("HSET")
            .arg(self.set_key())
            .arg("rate")
            .arg(rate)
            .arg("capacity")
            .arg(capacity)
            .arg("by")
            .arg(by)
            .arg("at")
            .arg(now_ms)
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        tracing::info!(backend = %self.name, rate, capacity, by, "model rate set for every instance");
        Ok(())
    }

    /// Back to the configured rate; false when no rate was set.
    pub async fn clear_rate(&self) -> Result<bool, redis::RedisError> {
        let removed: u64 = redis::cmd("DEL")
            .arg(self.set_key())
            .query_async(&mut self.redis.clone())
            .await?;
        if removed > 0 {
            tracing::info!(backend = %self.name, rate = self.config.rate_per_sec, "model rate back to the configured one");
        }
        Ok(removed > 0)
    }

    /// Adds 1 to a counter of the backend's state (`retries`, `unavailable`,
    /// `rejected`, `forbidden`). Counting is best effort: a failure is only logged.
    pub async fn count(&self, counter: &str) {
        let result: redis::RedisResult<i64> = redis::cmd("HINCRBY")
            .arg(&self.key)
            .arg(counter)
            .arg(1)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(error) = result {
            tracing::debug!(%error, counter, "could not count a model call outcome");
        }
    }

    /// The current state, recovery applied, without taking anything.
    pub async fn snapshot(&self) -> Result<LimiterSnapshot, redis::RedisError> {
        let peek = Check {
            mode: Mode::Peek,
            user: None,
            deadline: Instant::now(),
            expected_generation: -1,
        };
        let Answer {
            tokens,
            rate,
            generation,
            rate_changed,
            cooldown,
            ..
        } = self.reservations.check(peek).await?;
        if rate_changed {
            self.log_recovery(rate);
        }
        let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query_async(&mut self.redis.clone())
            .await?;
        let set: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.set_key())
            .query_async(&mut self.redis.clone())
            .await?;
        let set_number = |name: &str| set.get(name).and_then(|v| v.parse::<f64>().ok());
        let number = |name: &str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let rate_limited = fields
            .iter()
            .filter_map(|(name, value)| {
                let status = name.strip_prefix("limited_")?;
                Some((status.to_owned(), value.parse().unwrap_or(0)))
            })
            .collect();
        Ok(LimiterSnapshot {
            backend: self.name.clone(),
            backend_id: self.backend_id.clone(),
            configured_rate_per_sec: set_number("rate").unwrap_or(self.config.rate_per_sec),
            capacity: set_number("capacity").unwrap_or(self.config.capacity),
            rate_source: if set.is_empty() { "config" } else { "operator" },
            rate_set_by: set.get("by").cloned(),
            rate_set_at: set.get("at").and_then(|v| v.parse().ok()),
            min_rate_per_sec: self.config.min_rate_per_sec,
            effective_rate_per_sec: rate,
            tokens_available: tokens,
            cooldown_remaining_ms: cooldown.as_millis() as u64,
            generation,
            granted: number("granted"),
            waits: number("waits"),
            waited_ms_total: number("waited_us") as f64 / 1000.0,
            rate_limited,
            retries: number("retries"),
            failures_unavailable: number("unavailable"),
            failures_rejected: number("rejected"),
            failures_forbidden: number("forbidden"),
            per_user: self.config.per_user.clone(),
        })
    }
}

async fn wait_for_user_token(user: Option<&str>, wait: Duration) {
    tracing::info!(
        user = user.unwrap_or(""),
        wait_ms = wait.as_millis() as u64,
        "user waiting for a token of its per-user limit"
    );
    tokio::time::sleep(wait).await;
}
