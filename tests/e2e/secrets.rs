//! Secrets stay out of what spool shows (issue 13): a host on a Redis that
//! requires a password and a model server URL with credentials and an API key
//! in its query string, plus a model API key, never writes any of them to its
//! log, `/health`, `/api/limits` or a job's error.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const REDIS_PASSWORD: &str = "redis-pass-7f3a9c";
const MODEL_USER: &str = "model-user-4d2e";
const MODEL_PASSWORD: &str = "model-pass-8b1c";
const MODEL_QUERY_KEY: &str = "model-key-5e6f";
const MODEL_API_KEY: &str = "sk-apikey-9a0b";
const SECRETS: [&str; 5] = [
    REDIS_PASSWORD,
    MODEL_USER,
    MODEL_PASSWORD,
    MODEL_QUERY_KEY,
    MODEL_API_KEY,
];

/// The model flags: `base` with userinfo and a key in the query string.
fn model_args(base: &str) -> Vec<String> {
    let authority = base.trim_start_matches("http://");
    vec![
        "--model-url".into(),
        format!("http://{MODEL_USER}:{MODEL_PASSWORD}@{authority}/?api_key={MODEL_QUERY_KEY}"),
        "--model-api-key".into(),
        MODEL_API_KEY.into(),
        "--chat-model".into(),
        "stub-chat".into(),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} shows the secret {secret:?}:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_key_shows_in_the_log_health_limits_or_errors() {
    let stub = stub().await;
    let mut redis = Redis::unstarted_with_password(REDIS_PASSWORD);
    let options = HostOptions {
        config: "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 1\n".into(),
        extra_args: model_args(&stub.url()),
        ..HostOptions::default()
    };
    // Redis comes up only after the host started trying: the host logs that
    // it is not reachable yet, the line that used to carry the URL.
    let (host, child) = std::thread::scope(|scope| {
        let launcher = scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(2500));
            redis.launch()
        });
        let host = Host::start(&redis, &stub, options);
        (host, launcher.join().expect("redis starts"))
    });
    redis.adopt(child);
    let api = Api::default();

    let (status, health) = api.get(&host.url("/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_no_secret("/health", &health.to_string());
    assert!(
        health["model"]
            .as_str()
            .unwrap_or_default()
            .contains("***@127.0.0.1"),
        "/health names the (masked) model URL: {health}"
    );
    let (status, limits) = api.get(&host.url("/api/limits")).await;
    assert_eq!(status, 200, "{limits}");
    assert_no_secret("/api/limits", &limits.to_string());

    // The credentials work: a chat job goes through the model URL.
    let (status, reply) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().expect("job id");
    let job = api.wait_terminal(&host, id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "completed", "{job}");

    let log = host.log_text();
    assert!(
        log.contains("Redis at redis://***@127.0.0.1"),
        "the host logged the (masked) Redis URL while it waited:\n{log}"
    );
    assert_no_secret("the log", &log);

    // A model server that is down: the job's error quotes the request URL,
    // masked. (Same secrets, another host on a Redis of its own.)
    let plain = Redis::start();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let down = Host::start(
        &plain,
        &stub,
        HostOptions {
            config: "[queues.chat]\nhandler = \"chat\"\nmax_attempts = 1\n".into(),
            extra_args: model_args(&dead),
            ..HostOptions::default()
        },
    );
    let (status, reply) = api
        .post(
            &down.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["jobId"].as_str().expect("job id");
    let job = api.wait_terminal(&down, id, Duration::from_secs(30)).await;
    assert_eq!(job["state"], "failed", "{job}");
    println!("a call to a model server that is down: {}", job["error"]);
    assert_no_secret("the failed job", &job.to_string());
    let (_, events) = api.get(&down.url(&format!("/api/job/{id}/events"))).await;
    assert_no_secret("the job's events", &events.to_string());
    assert_no_secret("the second host's log", &down.log_text());
}
