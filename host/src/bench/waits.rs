//! Where a job's time went in a run, from the `/metrics` histograms taken
//! before and after it: the mean submission call (single POSTs' group
//! commit), model call, limiter check and outcome call (which also claims
//! the next job). A path whose CPU is not saturated is bound by these
//! waits, so the figures say which one to shorten. Fetches the instance's
//! `/metrics` text and reads it; nothing else.

/// Means over one run.
pub(super) struct Waits {
    pub submit_call_ms: Option<f64>,
    /// Jobs queued per submission call.
    pub submits_per_call: Option<f64>,
    pub model_call_ms: Option<f64>,
    pub limiter_ms: Option<f64>,
    pub outcome_call_ms: Option<f64>,
    /// Jobs recorded per outcome call.
    pub outcomes_per_call: Option<f64>,
}

impl Waits {
    /// From the `/metrics` text before and after a run of `jobs` jobs. The
    /// process keeps the series of every instance it ran: only the change counts.
    pub fn between(before: &str, after: &str, jobs: usize) -> Self {
        let change = |name: &str, label: &str| {
            Some(total(after, name, label)? - total(before, name, label).unwrap_or(0.0))
        };
        let mean = |name: &str, label: &str| {
            let sum = change(&format!("{name}_sum"), label)?;
            let count = change(&format!("{name}_count"), label)?;
            (count > 0.0).then(|| sum * 1e3 / count)
        };
        let per_call = |operation: &str| {
            change("spool_redis_roundtrip_seconds_count", operation)
                .filter(|calls| *calls > 0.0)
                .map(|calls| jobs as f64 / calls)
        };
        let (submit, settle) = ("operation=\"submit\"", "operation=\"settle\"");
        Self {
            submit_call_ms: mean("spool_redis_roundtrip_seconds", submit),
            submits_per_call: per_call(submit),
            model_call_ms: mean("spool_model_call_seconds", "operation=\"chat\""),
            limiter_ms: mean("spool_limiter_wait_seconds", ""),
            outcome_call_ms: mean("spool_redis_roundtrip_seconds", settle),
            outcomes_per_call: per_call(settle),
        }
    }

    /// One line: each mean, or `-` where the run made no such call.
    pub fn line(&self) -> String {
        format!(
            "model call {}, limiter check {}, outcome call (with the next claim) {} for {} jobs each",
            ms(self.model_call_ms),
            ms(self.limiter_ms),
            ms(self.outcome_call_ms),
            count(self.outcomes_per_call),
        )
    }

    /// The line of a run of single submissions: their calls first.
    pub fn submitted_line(&self) -> String {
        format!(
            "submission call {} for {} jobs each, {}",
            ms(self.submit_call_ms),
            count(self.submits_per_call),
            self.line()
        )
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.2} ms"))
}

fn count(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |n| format!("{n:.1}"))
}

/// The `/metrics` text: every instance this process ran, each its own series.
pub(super) async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?)
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
spool_redis_roundtrip_seconds_sum{operation="settle"} 0.25
spool_redis_roundtrip_seconds_count{operation="settle"} 250
spool_redis_roundtrip_seconds_sum{operation="submit"} 0.1
spool_redis_roundtrip_seconds_count{operation="submit"} 100
spool_redis_roundtrip_seconds_sum_other{operation="settle"} 99
"#;

    #[test]
    fn means_come_from_the_matching_series_and_the_run_only() {
        let before = "spool_redis_roundtrip_seconds_sum{operation=\"settle\"} 8\n\
                      spool_redis_roundtrip_seconds_count{operation=\"settle\"} 100\n";
        let after = format!(
            "{METRICS}spool_redis_roundtrip_seconds_sum{{instance=\"old\",operation=\"settle\"}} 8\n\
                             spool_redis_roundtrip_seconds_count{{instance=\"old\",operation=\"settle\"}} 100\n"
        );
        let waits = Waits::between(before, &after, 1000);
        assert_eq!(waits.model_call_ms, Some(2.5));
        assert_eq!(waits.limiter_ms, Some(0.5));
        assert_eq!(waits.outcome_call_ms, Some(1.0));
        assert_eq!(waits.outcomes_per_call, Some(4.0));
        assert_eq!(waits.submit_call_ms, Some(1.0));
        assert_eq!(waits.submits_per_call, Some(10.0));
    }

    #[test]
    fn a_run_without_model_calls_shows_dashes() {
        let waits = Waits::between("", "", 10);
        assert!(waits.line().starts_with("model call -, limiter check -"));
    }
}
