//! Metrics (issue 15, parts 1 and 2): `GET /metrics` counts a known workload
//! exactly and is valid Prometheus text; `GET /api/metrics` gives the designs'
//! figures as the test computes them from its own jobs, the same on every
//! instance. Real hosts, real Redis, real guests, the stub model server.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use prometheus_parse::{LineInfo, SampleType, Scrape, Value as Metric};
use serde_json::{Value, json};
use spool::stub::Fault;

use crate::reliability::WAIT;
use crate::sandbox::adversary_wasm;
use crate::support::*;

/// The adversary's queue (`evil`: retries once after 50 ms), the chat queue,
/// and in-call retries so that 429s are absorbed inside one model call.
fn workload_config() -> String {
    format!(
        r#"
[handlers.adversary]
path = "{}"

[queues.chat]
handler = "chat"

[queues.evil]
handler = "adversary"
max_attempts = 2
backoff_ms = 50

[sandbox.handlers.adversary]
deadline_ms = 5000
max_model_calls = 20

[limits]
rate_per_sec = 100000.0
capacity = 100000.0
max_call_attempts = 3
retry_backoff_ms = 20
"#,
        adversary_wasm().display()
    )
}

/// `GET /metrics` with `api`'s key: (status, content type, body).
async fn scrape_with(key: Option<&str>, host: &Host) -> (u16, String, String) {
    let mut request = reqwest::Client::new().get(host.url("/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("GET /metrics");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, content_type, response.text().await.expect("body"))
}

async fn scrape(host: &Host) -> Scrape {
    let (status, content_type, text) = scrape_with(Some(&admin_token()), host).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    parse_exposition(&text)
}

/// Parses Prometheus text with `prometheus-parse`, after checking what that
/// lenient parser lets through: every line is blank, a HELP or TYPE comment
/// or a sample with a number; each family is declared once, before its
/// samples, and its samples are not split by another family's.
fn parse_exposition(text: &str) -> Scrape {
    let mut types: HashMap<String, SampleType> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Empty | LineInfo::Doc { .. } => {}
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                assert!(
                    types.insert(family.clone(), sample_type).is_none(),
                    "family {family} is declared twice:\n{text}"
                );
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                let number = value.to_lowercase().parse::<f64>();
                assert!(number.is_ok(), "not a number in {line:?}");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|suffix| metric_name.strip_suffix(suffix))
                    .find(|stem| types.get(*stem) == Some(&SampleType::Histogram))
                    .unwrap_or(metric_name)
                    .to_owned();
                assert!(
                    types.contains_key(&family),
                    "sample of undeclared family: {line:?}"
                );
                if current.as_ref() != Some(&family) {
                    assert!(!done.contains(&family), "family {family} is split:\n{text}");
                    done.extend(current.replace(family));
                }
            }
            LineInfo::Ignored => panic!("not Prometheus text format: {line:?}"),
        }
    }
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("the text parses")
}

fn labels_are(sample: &prometheus_parse::Sample, labels: &[(&str, &str)]) -> bool {
    sample.labels.len() == labels.len()
        && labels
            .iter()
            .all(|(name, value)| sample.labels.get(name) == Some(*value))
}

/// The value of the one series `name{labels}` (exactly these labels).
fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels_are(s, labels))
        .filter_map(|s| match s.value {
            Metric::Counter(v) | Metric::Gauge(v) | Metric::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one series {name}{labels:?}; the scrape has {:?}",
        series_of(scrape, name)
    );
    found[0]
}

fn series_of(scrape: &Scrape, name: &str) -> Vec<String> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric.starts_with(name))
        .map(|s| format!("{}{} {:?}", s.metric, s.labels, s.value))
        .collect()
}

/// The observation count of histogram `name{labels}`, checked against its
/// buckets: they only grow, and the `+Inf` one holds every observation.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let buckets: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels_are(s, labels))
        .filter_map(|s| match &s.value {
            Metric::Histogram(buckets) => Some(buckets.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        buckets.len(),
        1,
        "one histogram {name}{labels:?}: {:?}",
        series_of(scrape, name)
    );
    let count = value(scrape, &format!("{name}_count"), labels);
    let buckets = &buckets[0];
    assert!(
        buckets
            .windows(2)
            .all(|pair| pair[0].count <= pair[1].count && pair[0].less_than < pair[1].less_than),
        "cumulative buckets: {buckets:?}"
    );
    let last = buckets.last().expect("buckets");
    assert!(last.less_than.is_infinite(), "{buckets:?}");
    assert_eq!(last.count, count, "+Inf bucket of {name}{labels:?}");
    count
}

async fn submit(api: &Api, host: &Host, queue: &str, payload: Value) -> (String, String) {
    let (status, reply) = api
        .post(
            &host.url(&format!("/api/queues/{queue}/jobs")),
            &json!({ "userId": "u", "payload": payload }),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    (
        reply["jobId"].as_str().expect("job id").to_owned(),
        reply["class"].as_str().expect("class").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload_exactly_as_valid_prometheus_text() {
    let stack = Stack::start(HostOptions {
        concurrency: 4,
        config: workload_config(),
        ..Default::default()
    })
    .await;
    let Stack {
        host, api, stub, ..
    } = &stack;
    let (_, health) = api.get(&host.url("/health")).await;
    let instance = health["instance"].as_str().expect("instance").to_owned();
    let me = ("instance", instance.as_str());

    // A chat whose model call is answered 429 twice, then normally.
    stub.inject([Fault {
        status: Some(429),
        retry_after_ms: Some(50),
        times: 2,
        ..Default::default()
    }])
    .expect("fault");
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "through two 429s"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let chat_class = reply["class"].as_str().expect("class").to_owned();
    let chat = api
        .wait_terminal(host, reply["jobId"].as_str().expect("id"), WAIT)
        .await;
    assert_eq!(chat["state"], "completed", "{chat}");
    assert_eq!(stub.stats().total, 3, "two 429s and one answer");

    // N complete, M are rejected (failed for good), K fail once and retry.
    let (n, m, k) = (4, 2, 2);
    let mut jobs = Vec::new();
    for _ in 0..n {
        jobs.push(submit(api, host, "evil", json!({"mode": "ok"})).await);
    }
    for _ in 0..m {
        jobs.push(submit(api, host, "evil", json!({"mode": "no-such-mode"})).await);
    }
    for _ in 0..k {
        jobs.push(submit(api, host, "evil", json!({"mode": "flaky", "ticks": 1})).await);
    }
    let mut evil_version = String::new();
    let mut states: HashMap<String, usize> = HashMap::new();
    for (id, class) in &jobs {
        assert_eq!(class, "normal");
        let job = api.wait_terminal(host, id, WAIT).await;
        *states
            .entry(job["state"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
        evil_version = job["handlerVersion"].as_str().expect("version").to_owned();
    }
    assert_eq!(
        states,
        HashMap::from([("completed".to_owned(), n + k), ("failed".to_owned(), m)])
    );
    assert_eq!(
        stub.stats().total,
        3 + k as u64,
        "each retried job called the model once"
    );

    // A job cancelled while it waits, watched by one SSE client meanwhile.
    let (status, _) = api
        .post(&host.url("/api/queues/evil/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (waiting, _) = submit(api, host, "evil", json!({"mode": "ok"})).await;
    let watcher = reqwest::Client::new()
        .get(host.url(&format!("/api/v1/jobs/{waiting}/stream")))
        .bearer_auth(admin_token())
        .send()
        .await
        .expect("SSE stream opens");
    assert_eq!(watcher.status(), 200);
    let during = scrape(host).await;
    assert_eq!(value(&during, "spool_watchers", &[me]), 1.0);
    assert_eq!(
        value(
            &during,
            "spool_queue_waiting",
            &[("queue", "evil"), ("class", "normal")]
        ),
        1.0
    );
    assert_eq!(
        value(&during, "spool_queue_paused", &[("queue", "evil")]),
        1.0
    );
    let (status, reply) = api.delete(&host.url(&format!("/api/job/{waiting}"))).await;
    assert_eq!(status, 200, "{reply}");
    let events = tokio::time::timeout(WAIT, watcher.text())
        .await
        .expect("the stream ends with the job")
        .expect("SSE body");
    assert!(events.contains("task_cancelled"), "{events}");
    let (status, _) = api
        .post(&host.url("/api/queues/evil/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);

    let started = Instant::now();
    let metrics = loop {
        let metrics = scrape(host).await;
        if value(&metrics, "spool_watchers", &[me]) == 0.0 {
            break metrics;
        }
        assert!(started.elapsed() < WAIT, "the watcher was never let go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let evil = ("queue", "evil");
    let normal = ("class", "normal");
    let count = |name: &str, labels: &[(&str, &str)]| value(&metrics, name, labels);
    let (nf, mf, kf) = (n as f64, m as f64, k as f64);
    // Jobs: every submission, outcome and retry, by queue and class.
    assert_eq!(
        count("spool_jobs_submitted_total", &[me, evil, normal]),
        nf + mf + kf + 1.0
    );
    assert_eq!(
        count("spool_jobs_completed_total", &[me, evil, normal]),
        nf + kf
    );
    assert_eq!(
        count(
            "spool_jobs_failed_total",
            &[me, evil, normal, ("kind", "rejected")]
        ),
        mf
    );
    assert_eq!(
        count(
            "spool_jobs_retried_total",
            &[me, evil, normal, ("kind", "retry_requested")]
        ),
        kf
    );
    assert_eq!(
        count("spool_jobs_cancelled_total", &[me, evil, normal]),
        1.0
    );
    let chat_labels = [me, ("queue", "chat"), ("class", chat_class.as_str())];
    assert_eq!(count("spool_jobs_submitted_total", &chat_labels), 1.0);
    assert_eq!(count("spool_jobs_completed_total", &chat_labels), 1.0);
    // One duration per recorded attempt, one queue wait per first claim.
    for (outcome, expected) in [("completed", nf + kf), ("failed", mf), ("retry", kf)] {
        assert_eq!(
            histogram_count(
                &metrics,
                "spool_job_duration_seconds",
                &[me, evil, normal, ("outcome", outcome)]
            ),
            expected,
            "{outcome} attempts"
        );
    }
    assert_eq!(
        histogram_count(
            &metrics,
            "spool_job_queue_wait_seconds",
            &[me, evil, normal]
        ),
        nf + mf + kf
    );
    // Handler calls per version and hook, failures by kind.
    let adversary = [
        me,
        ("handler", "adversary"),
        ("version", evil_version.as_str()),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = adversary.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    assert_eq!(
        count("spool_handler_calls_total", &with(&[("hook", "handle")])),
        nf + mf + 2.0 * kf
    );
    assert_eq!(
        count("spool_handler_calls_total", &with(&[("hook", "admit")])),
        nf + mf + kf + 1.0
    );
    assert_eq!(
        histogram_count(
            &metrics,
            "spool_handler_wasm_seconds",
            &with(&[("hook", "handle")])
        ),
        nf + mf + 2.0 * kf
    );
    assert_eq!(
        count(
            "spool_handler_failures_total",
            &with(&[("hook", "handle"), ("kind", "rejected")])
        ),
        mf
    );
    assert_eq!(
        count(
            "spool_handler_failures_total",
            &with(&[("hook", "handle"), ("kind", "retry_requested")])
        ),
        kf
    );
    let chat_version = chat["handlerVersion"].as_str().expect("version");
    assert_eq!(
        count(
            "spool_handler_calls_total",
            &[
                me,
                ("handler", "chat"),
                ("version", chat_version),
                ("hook", "handle")
            ]
        ),
        1.0
    );
    // Model calls: each try, by outcome and status; the 429s the stub injected.
    let ollama = ("backend", "ollama");
    let chat_op = ("operation", "chat");
    assert_eq!(
        count(
            "spool_model_calls_total",
            &[
                me,
                ollama,
                chat_op,
                ("outcome", "rate_limited"),
                ("status", "429")
            ]
        ),
        2.0
    );
    assert_eq!(
        count(
            "spool_model_calls_total",
            &[me, ollama, chat_op, ("outcome", "ok"), ("status", "200")]
        ),
        1.0 + kf
    );
    assert_eq!(
        histogram_count(
            &metrics,
            "spool_model_call_seconds",
            &[me, ollama, chat_op, ("outcome", "rate_limited")]
        ),
        2.0
    );
    assert_eq!(
        histogram_count(
            &metrics,
            "spool_model_call_seconds",
            &[me, ollama, chat_op, ("outcome", "ok")]
        ),
        1.0 + kf
    );
    assert!(
        count(
            "spool_model_tokens_total",
            &[me, ollama, ("kind", "completion")]
        ) > 0.0
    );
    // One limiter grant per try; the shared limiter's own counts, unlabelled.
    assert_eq!(
        histogram_count(&metrics, "spool_limiter_wait_seconds", &[me, ollama]),
        stub.stats().total as f64
    );
    assert_eq!(
        count(
            "spool_limiter_rate_limited_total",
            &[ollama, ("status", "429")]
        ),
        2.0
    );
    assert_eq!(
        count("spool_limiter_configured_rate_per_second", &[ollama]),
        100000.0
    );
    // Queue lengths from Redis, with no instance label.
    assert_eq!(count("spool_queue_dead", &[evil]), mf);
    assert_eq!(count("spool_queue_delayed", &[evil]), 0.0);
    assert_eq!(count("spool_queue_paused", &[evil]), 0.0);
    for class in ["high", "normal", "low"] {
        assert_eq!(count("spool_queue_waiting", &[evil, ("class", class)]), 0.0);
        assert_eq!(count("spool_queue_active", &[evil, ("class", class)]), 0.0);
    }
    // Outcomes that land together share one call (`finish`, or `settle`
    // when it also claims the workers' next jobs), so the round trips that
    // record them are at least one and at most one per recorded outcome.
    let outcomes = nf + mf + 2.0 * kf + 1.0;
    let finishes: f64 = ["finish", "settle"]
        .into_iter()
        .filter(|operation| {
            // Either may not have happened at all in this run.
            metrics.samples.iter().any(|s| {
                s.metric == "spool_redis_roundtrip_seconds"
                    && labels_are(s, &[me, ("operation", operation)])
            })
        })
        .map(|operation| {
            histogram_count(
                &metrics,
                "spool_redis_roundtrip_seconds",
                &[me, ("operation", operation)],
            )
        })
        .sum();
    assert!(
        (1.0..=outcomes).contains(&finishes),
        "{finishes} finish or settle calls for {outcomes} outcomes"
    );
    // Per-instance series carry this instance; cluster-wide ones none.
    for sample in &metrics.samples {
        let cluster = sample.metric.starts_with("spool_queue_")
            || (sample.metric.starts_with("spool_limiter_")
                && !sample.metric.starts_with("spool_limiter_wait_seconds"));
        let label = sample.labels.get("instance");
        if cluster {
            assert_eq!(label, None, "{} is cluster-wide", sample.metric);
        } else {
            assert_eq!(label, Some(instance.as_str()), "{}", sample.metric);
        }
    }

    // Readers may scrape; a wrong key may not.
    let (status, created) = api
        .post(&host.url("/admin/keys"), &json!({"role": "reader"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, _, _) = scrape_with(created["key"].as_str(), host).await;
    assert_eq!(status, 200);
    let (status, _, _) = scrape_with(Some("spool_not-a-key"), host).await;
    assert_eq!(status, 401);
}

/// How far the server's average response time may lie below the one the
/// test measures around it: the test's time also holds the submit request
/// and up to one 25 ms poll plus a status request after the job ended.
const RESPONSE_TOLERANCE_MS: f64 = 250.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_figures_match_the_tests_own_timings_and_every_instance_answers_the_same() {
    let redis = Redis::start();
    let stub = stub().await;
    // Every model call takes at least this long: processing time has a floor.
    let latency_ms = 120;
    stub.set_timing(latency_ms, 0);
    let options = HostOptions {
        concurrency: 2,
        ..Default::default()
    };
    let hosts = [
        Host::start(&redis, &stub, options.clone()),
        Host::start(&redis, &stub, options),
    ];
    let api = Api::default();

    // One request cancelled while it waits: counted apart from the answered ones.
    let (status, _) = api
        .post(&hosts[0].url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, reply) = api
        .post(
            &hosts[1].url("/api/chat"),
            &json!({"userId": "u", "prompt": "never answered"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let (status, cancelled) = api
        .delete(&hosts[1].url(&format!(
            "/api/job/{}",
            reply["jobId"].as_str().unwrap_or("")
        )))
        .await;
    assert_eq!(status, 200, "{cancelled}");
    let (status, _) = api
        .post(&hosts[0].url("/api/queues/chat/resume"), &json!({}))
        .await;
    assert_eq!(status, 200);

    // Eight requests over both instances. Two model calls answer 401, which
    // fails their jobs at once; then one answers 503, which fails an attempt
    // that is retried: that job ends once, completed.
    let (answered, unauthorised) = (8usize, 2usize);
    stub.inject([
        Fault {
            status: Some(401),
            times: unauthorised as u32,
            ..Default::default()
        },
        Fault {
            status: Some(503),
            ..Default::default()
        },
    ])
    .expect("fault");
    let workload_started = Instant::now();
    let timings = futures_util::future::join_all((0..answered).map(|i| {
        let (api, host) = (&api, &hosts[i % 2]);
        async move {
            let sent = Instant::now();
            let (status, reply) = api
                .post(
                    &host.url("/api/chat"),
                    &json!({"userId": "u", "prompt": format!("request {i}")}),
                )
                .await;
            assert_eq!(status, 202, "{reply}");
            let job = api
                .wait_terminal(host, reply["jobId"].as_str().unwrap_or(""), WAIT)
                .await;
            (sent.elapsed().as_secs_f64() * 1000.0, job)
        }
    }))
    .await;
    let workload = workload_started.elapsed();
    let records: Vec<&Value> = timings.iter().map(|(_, job)| job).collect();
    let completed = records.iter().filter(|j| j["state"] == "completed").count();
    assert_eq!(completed, answered - unauthorised, "{records:?}");
    let retried = records.iter().filter(|j| j["attempts"] == 2).count();
    assert_eq!(retried, 1, "{records:?}");
    let mean = |values: Vec<f64>| values.iter().sum::<f64>() / values.len() as f64;
    let field = |job: &Value, name: &str| job[name].as_u64().expect(name) as f64;
    let response_ms = mean(
        records
            .iter()
            .map(|j| field(j, "finishedAt") - field(j, "createdAt"))
            .collect(),
    );
    let processing_ms = mean(
        records
            .iter()
            .map(|j| field(j, "finishedAt") - field(j, "startedAt"))
            .collect(),
    );
    let measured_ms = mean(timings.iter().map(|(ms, _)| *ms).collect());

    eprintln!(
        "monitoring: average response {response_ms:.1} ms by the records, {measured_ms:.1} ms by the test's clock; processing {processing_ms:.1} ms"
    );
    let mut answers = Vec::new();
    for host in &hosts {
        let (status, body) = api.get(&host.url("/api/metrics")).await;
        assert_eq!(status, 200, "{body}");
        answers.push(body);
    }
    assert_eq!(answers[0], answers[1], "both instances answer the same");
    let body = &answers[0];
    let bucket_secs = body["bucketSeconds"].as_u64().expect("bucketSeconds");
    // Every request ended within the shortest window (less one bucket).
    assert!(
        workload.as_secs() + bucket_secs < 60,
        "the workload took {workload:?}"
    );
    let windows = body["queues"]["chat"]["windows"]
        .as_array()
        .expect("windows");
    let minutes: Vec<u64> = windows
        .iter()
        .filter_map(|w| w["minutes"].as_u64())
        .collect();
    assert_eq!(minutes, [1, 5, 15, 60]);
    let close = |actual: &Value, expected: f64, tolerance: f64| {
        actual
            .as_f64()
            .is_some_and(|actual| (actual - expected).abs() <= tolerance)
    };
    for window in windows {
        let minutes = window["minutes"].as_u64().unwrap_or(0) as f64;
        assert_eq!(window["totalRequests"], answered, "{window}");
        assert_eq!(window["completed"], completed, "{window}");
        assert_eq!(window["failed"], unauthorised, "{window}");
        assert_eq!(window["cancelled"], 1, "{window}");
        let rate = completed as f64 / answered as f64;
        assert!(close(&window["successRate"], rate, 1e-9), "{window}");
        assert!(
            close(
                &window["throughputPerMinute"],
                answered as f64 / minutes,
                1e-9
            ),
            "{window}"
        );
        // The same arithmetic on the same millisecond stamps as the records.
        assert!(
            close(&window["averageResponseTimeMs"], response_ms, 1e-6),
            "{window}: {response_ms} from the records"
        );
        assert!(
            close(&window["averageProcessingTimeMs"], processing_ms, 1e-6),
            "{window}: {processing_ms} from the records"
        );
        // Against the test's own clock: what the client waited, bounded.
        let server_ms = window["averageResponseTimeMs"].as_f64().unwrap_or(0.0);
        assert!(
            server_ms <= measured_ms + 1.0 && measured_ms - server_ms <= RESPONSE_TOLERANCE_MS,
            "server {server_ms} ms, measured {measured_ms} ms"
        );
        assert!(
            window["averageProcessingTimeMs"].as_f64().unwrap_or(0.0) >= latency_ms as f64 * 0.75,
            "each answered request waited for the model: {window}"
        );
    }
    // A queue without requests has no rates, not zeros.
    for window in body["queues"]["documents"]["windows"]
        .as_array()
        .expect("windows")
    {
        assert_eq!(window["totalRequests"], 0, "{window}");
        assert_eq!(window["successRate"], Value::Null, "{window}");
        assert_eq!(window["averageResponseTimeMs"], Value::Null, "{window}");
        assert_eq!(window["throughputPerMinute"], 0.0, "{window}");
    }
}
