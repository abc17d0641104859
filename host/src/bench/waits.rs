//! Where a job's time went in a run, from the instance's own `/metrics`
//! histograms: the mean model call, limiter check and outcome call (which
//! also claims the next job). A path whose CPU is not saturated is bound by
//! these waits, so the figures say which one to shorten. Reads text only.

/// Means over one instance's life (a run starts a fresh instance).
pub(super) struct Waits {
    pub model_call_ms: Option<f64>,
    pub limiter_ms: Option<f64>,
    pub outcome_call_ms: Option<f64>,
    /// Jobs recorded per outcome call.
    pub outcomes_per_call: Option<f64>,
}

impl Waits {
    pub fn from_metrics(text: &str, jobs: usize) -> Self {
        let mean = |name: &str, label: &str| {
            let sum = total(text, &format!("{name}_sum"), label)?;
            let count = total(text, &format!("{name}_count"), label)?;
            (count > 0.0).then(|| sum * 1e3 / count)
        };
        let outcome_calls = total(
            text,
            "spool_redis_roundtrip_seconds_count",
            "operation=\"settle\"",
        );
        Self {
            model_call_ms: mean("spool_model_call_seconds", "operation=\"chat\""),
            limiter_ms: mean("spool_limiter_wait_seconds", ""),
            outcome_call_ms: mean("spool_redis_roundtrip_seconds", "operation=\"settle\""),
            outcomes_per_call: outcome_calls
                .filter(|calls| *calls > 0.0)
                .map(|calls| jobs as f64 / calls),
        }
    }

    /// One line: each mean, or `-` where the run made no such call.
    pub fn line(&self) -> String {
        let ms = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2} ms"));
        format!(
            "model call {}, limiter check {}, outcome call (with the next claim) {} for {} jobs each",
            ms(self.model_call_ms),
            ms(self.limiter_ms),
            ms(self.outcome_call_ms),
            self.outcomes_per_call
                .map_or("-".to_owned(), |n| format!("{n:.1}")),
        )
    }
}

/// The sum of a metric's samples whose labels contain `label`.
fn total(text: &str, name: &str, label: &str) -> Option<f64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"
spool_model_call_seconds_sum{backend="ollama",operation="chat",outcome="ok"} 2.5
spool_model_call_seconds_count{backend="ollama",operation="chat",outcome="ok"} 1000
spool_model_call_seconds_sum{backend="ollama",operation="embed",outcome="ok"} 9
spool_model_call_seconds_count{backend="ollama",operation="embed",outcome="ok"} 1
spool_limiter_wait_seconds_sum{backend="ollama"} 0.5
spool_limiter_wait_seconds_count{backend="ollama"} 1000
spool_redis_roundtrip_seconds_sum{operation="settle"} 0.2
spool_redis_roundtrip_seconds_count{operation="settle"} 200
spool_redis_roundtrip_seconds_sum_other{operation="settle"} 99
"#;

    #[test]
    fn means_come_from_the_matching_series_only() {
        let waits = Waits::from_metrics(METRICS, 1000);
        assert_eq!(waits.model_call_ms, Some(2.5));
        assert_eq!(waits.limiter_ms, Some(0.5));
        assert_eq!(waits.outcome_call_ms, Some(1.0));
        assert_eq!(waits.outcomes_per_call, Some(5.0));
    }

    #[test]
    fn a_run_without_model_calls_shows_dashes() {
        let waits = Waits::from_metrics("", 10);
        assert!(waits.line().starts_with("model call -, limiter check -"));
    }
}
