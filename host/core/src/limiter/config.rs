//! The `[limits]` table of the configuration: how fast model calls may go, how
//! the rate adapts to 429/403 answers, how calls are retried, and how embeddings
//! are batched and cached. Only data and its validation; nothing runs here.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// Pacing of the model backend, shared by every instance that uses the same
/// backend (same kind, URL and API key): the bucket lives in Redis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Model calls per second the backend may receive, summed over all
    /// instances. Also the ceiling the adaptive rate recovers to.
    pub rate_per_sec: f64,
    /// Token-bucket capacity: calls allowed in a burst after a quiet spell.
    pub capacity: f64,
    /// The adaptive rate never drops below this (calls per second).
    pub min_rate_per_sec: f64,
    /// A 429/403 multiplies the effective rate by this (0 < factor < 1).
    pub decrease_factor: f64,
    /// How long a 429/403 without `Retry-After` (or a reset header) stops all
    /// calls to the backend, in milliseconds.
    pub default_cooldown_ms: u64,
    /// The longest a server's Retry-After (or reset header) may stop calls,
    /// in milliseconds: a reset of hours would stop every instance for hours.
    pub max_cooldown_ms: u64,
    /// After this long without a 429/403 (counted from the end of the last
    /// cool-down) the rate starts to recover, in milliseconds.
    pub recovery_quiet_ms: u64,
    /// While recovering, the rate rises by `recovery_step` times the configured
    /// rate once per this many milliseconds, up to `rate_per_sec`.
    pub recovery_interval_ms: u64,
    /// Fraction of `rate_per_sec` regained per recovery interval (0 < step <= 1).
    pub recovery_step: f64,
    /// Tries of one model call (first try included) on 429, 5xx or a
    /// connection error, all within the job's deadline. 1 = no retries.
    pub max_call_attempts: u32,
    /// Backoff before the second try after a 5xx or connection error; doubles
    /// per further try (+-20 % jitter), capped at 10 s. 429/403 wait for the
    /// limiter instead, which honours the server's `Retry-After`.
    pub retry_backoff_ms: u64,
    /// Optional per-user limit (fairness between tenants), e.g. design E's
    /// `{ calls = 10, per_secs = 60 }`. Applies to jobs that carry a user id.
    pub per_user: Option<UserLimit>,
    /// Texts coalesced into one embedding call at most (concurrent requests
    /// for the same model share one call and one token).
    pub embed_batch_size: usize,
    /// How long a partly filled embedding batch waits for more texts before it
    /// is sent, in milliseconds.
    pub embed_batch_wait_ms: u64,
    /// How long a computed embedding is kept in Redis (keyed by backend, model
    /// and a hash of the text); 0 turns the cache off.
    pub embed_cache_ttl_secs: u64,
}

/// `calls` per `per_secs` seconds, with bursts of up to `calls`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UserLimit {
    pub calls: f64,
    pub per_secs: f64,
}

impl UserLimit {
    pub fn rate_per_sec(&self) -> f64 {
        self.calls / self.per_secs
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            rate_per_sec: 2.0,
            capacity: 5.0,
            min_rate_per_sec: 0.1,
            decrease_factor: 0.5,
            default_cooldown_ms: 1000,
            max_cooldown_ms: 300_000,
            recovery_quiet_ms: 10_000,
            recovery_interval_ms: 5000,
            recovery_step: 0.25,
            max_call_attempts: 5,
            retry_backoff_ms: 500,
            per_user: None,
            embed_batch_size: 5,
            embed_batch_wait_ms: 20,
            embed_cache_ttl_secs: 86_400,
        }
    }
}

impl LimitsConfig {
    /// Limits so high they never make a call wait (benchmarks of other paths).
    pub fn unpaced() -> Self {
        Self {
            rate_per_sec: 1_000_000.0,
            capacity: 1_000_000.0,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                bail!("limits.{name} must be a number above 0 (got {value})")
            }
        };
        positive("rate_per_sec", self.rate_per_sec)?;
        positive("min_rate_per_sec", self.min_rate_per_sec)?;
        if !(self.capacity.is_finite() && self.capacity >= 1.0) {
            bail!("limits.capacity must be at least 1 (got {})", self.capacity);
        }
        if self.min_rate_per_sec > self.rate_per_sec {
            bail!("limits.min_rate_per_sec must not exceed limits.rate_per_sec");
        }
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            bail!("limits.decrease_factor must be between 0 and 1 (exclusive)");
        }
        if !(self.recovery_step > 0.0 && self.recovery_step <= 1.0) {
            bail!("limits.recovery_step must be above 0 and at most 1");
        }
        if self.recovery_interval_ms == 0 {
            bail!("limits.recovery_interval_ms must be above 0");
        }
        if self.max_call_attempts == 0 {
            bail!("limits.max_call_attempts must be at least 1");
        }
        if self.embed_batch_size == 0 {
            bail!("limits.embed_batch_size must be at least 1");
        }
        if let Some(user) = &self.per_user {
            positive("per_user.per_secs", user.per_secs)?;
            if !(user.calls.is_finite() && user.calls >= 1.0) {
                bail!("limits.per_user.calls must be at least 1");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_design_a_and_valid() {
        let config = LimitsConfig::default();
        assert_eq!((config.rate_per_sec, config.capacity), (2.0, 5.0));
        assert_eq!(config.embed_batch_size, 5);
        config.validate().expect("defaults validate");
    }

    #[test]
    fn nonsense_is_refused_with_the_key_named() {
        let mut config = LimitsConfig {
            rate_per_sec: 0.0,
            ..LimitsConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("limits.rate_per_sec"), "{error}");
        config = LimitsConfig {
            per_user: Some(UserLimit {
                calls: 10.0,
                per_secs: 0.0,
            }),
            ..LimitsConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("per_user.per_secs"), "{error}");
        let parsed: LimitsConfig =
            toml::from_str("rate_per_sec = 20.0\nper_user = { calls = 10, per_secs = 60 }\n")
                .expect("toml");
        assert_eq!(parsed.per_user.map(|u| u.rate_per_sec()), Some(10.0 / 60.0));
    }
}
