//! Trust boundaries (issue 13): admin routes need the admin role, a key bound
//! to a user acts as that user and sees nothing of anyone else's, requests
//! from another site or naming another host change nothing, and spool will
//! not listen beyond loopback without keys.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Creates a key through the admin API; returns its secret.
async fn create_key(host: &Host, body: Value) -> String {
    let (status, created) = Api::default().post(&host.url("/admin/keys"), &body).await;
    assert_eq!(status, 201, "{created}");
    created["key"].as_str().expect("key").to_owned()
}

/// Every admin route, with a body that would be accepted.
fn admin_routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("POST", "/api/queues/chat/pause", Some(json!({}))),
        ("POST", "/api/queues/chat/resume", Some(json!({}))),
        ("GET", "/api/queues/chat/history", None),
        ("GET", "/api/queues/chat/dead", None),
        ("DELETE", "/api/queues/chat/dead", None),
        ("DELETE", "/api/queues/chat/dead/nope", None),
        ("POST", "/api/queues/chat/dead/nope/replay", Some(json!({}))),
        (
            "POST",
            "/api/queues/chat/jobs/nope/promote",
            Some(json!({})),
        ),
        ("GET", "/api/queues/chat/jobs/nope/payload", None),
        ("POST", "/api/v1/cleanup", Some(json!({}))),
        ("GET", "/admin/handlers", None),
        ("GET", "/admin/handlers/chat", None),
        ("POST", "/admin/handlers/chat/versions", Some(json!({}))),
        ("POST", "/admin/handlers/chat/rollback", Some(json!({}))),
        ("GET", "/admin/keys", None),
        ("POST", "/admin/keys", Some(json!({"role": "reader"}))),
        ("DELETE", "/admin/keys/nope", None),
    ]
}

async fn call(
    api: &Api,
    host: &Host,
    method: &str,
    path: &str,
    body: &Option<Value>,
) -> (u16, Value) {
    let url = host.url(path);
    match (method, body) {
        ("GET", _) => api.get(&url).await,
        ("DELETE", _) => api.send_delete(&url).await,
        (_, Some(body)) => api.post(&url, body).await,
        (_, None) => api.post(&url, &json!({})).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_answer_401_without_a_key_403_to_a_submitter_and_work_for_the_admin() {
    let stack = Stack::start(HostOptions::default()).await;
    let host = &stack.host;
    let submitter = Api::with_key(Some(&create_key(host, json!({"role": "submitter"})).await));
    let reader = Api::with_key(Some(&create_key(host, json!({"role": "reader"})).await));
    let nobody = Api::with_key(None);
    let admin = Api::default();
    for (method, path, body) in admin_routes() {
        let (status, reply) = call(&nobody, host, method, path, &body).await;
        assert_eq!(status, 401, "{method} {path} without a key: {reply}");
        assert_eq!(reply["error"]["code"], "unauthenticated", "{reply}");
        let (status, reply) = call(&submitter, host, method, path, &body).await;
        assert_eq!(status, 403, "{method} {path} with a submitter key: {reply}");
        let (status, reply) = call(&admin, host, method, path, &body).await;
        assert!(
            status != 401 && status != 403 && status < 500,
            "{method} {path} with the admin token: {status} {reply}"
        );
    }
    // Statistics need a reader; submitting is anonymous on loopback.
    let (status, _) = nobody.get(&host.url("/api/queue/stats")).await;
    assert_eq!(status, 200, "anonymous acts as a submitter on loopback");
    let (status, _) = reader.get(&host.url("/api/limits")).await;
    assert_eq!(status, 200);
    let (status, _) = reader
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    assert_eq!(status, 403, "a reader may not submit");
    let (status, reply) = Api::with_key(Some("spool_not-a-key"))
        .get(&host.url("/api/queue/stats"))
        .await;
    assert_eq!(status, 401, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_key");

    // A revoked key stops working.
    let (_, keys) = admin.get(&host.url("/admin/keys")).await;
    let reader_id = keys["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["role"] == "reader"))
        .and_then(|k| k["id"].as_str())
        .expect("the reader key is listed")
        .to_owned();
    assert!(
        !keys.to_string().contains("spool_"),
        "no secret is listed: {keys}"
    );
    let (status, _) = admin
        .send_delete(&host.url(&format!("/admin/keys/{reader_id}")))
        .await;
    assert_eq!(status, 204);
    let (status, _) = reader.get(&host.url("/api/limits")).await;
    assert_eq!(status, 401, "a revoked key is refused");
}

/// A web page the operator opens can send a no-cors POST of a component to
/// the loopback API; a rebinding DNS name can reach it too. Neither deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_upload_or_a_rebound_host_deploys_nothing() {
    let stack = Stack::start(HostOptions::default()).await;
    let host = &stack.host;
    let versions = || async {
        let (_, status) = Api::default().get(&host.url("/admin/handlers/chat")).await;
        status["versions"].as_array().map(Vec::len).unwrap_or(0)
    };
    let before = versions().await;
    let component = built_in("chat").to_vec();
    let url = host.url("/admin/handlers/chat/versions");
    let client = reqwest::Client::new();
    let browser = |request: reqwest::RequestBuilder| {
        request
            .header("origin", "https://evil.example")
            .header("sec-fetch-site", "cross-site")
            .header("content-type", "text/plain")
    };
    for key in [None, Some(admin_token())] {
        let mut request = browser(client.post(&url)).body(component.clone());
        if let Some(key) = &key {
            // Even a browser that holds the operator's credentials.
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), 403, "with key: {}", key.is_some());
        let body: Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("json error");
        assert_eq!(body["error"]["code"], "cross_origin", "{body}");
    }
    let rebound = client
        .post(&url)
        .header("host", "attacker.example:80")
        .header("authorization", format!("Bearer {}", admin_token()))
        .body(component)
        .send()
        .await
        .expect("request");
    assert_eq!(
        rebound.status(),
        421,
        "a request naming another host is refused"
    );
    assert_eq!(versions().await, before, "nothing was deployed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_bound_to_a_user_acts_as_that_user_and_sees_nothing_of_anyone_else() {
    let stack = Stack::start(HostOptions::default()).await;
    let host = &stack.host;
    let ada = Api::with_key(Some(
        &create_key(
            host,
            json!({"role": "submitter", "userId": "ada", "userTier": "standard"}),
        )
        .await,
    ));
    let bob = Api::with_key(Some(
        &create_key(host, json!({"role": "submitter", "userId": "bob"})).await,
    ));

    // The body claims to be someone else, and a VIP: the key decides.
    let (status, reply) = ada
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "mallory", "userTier": "vip", "prompt": "hello"}),
        )
        .await;
    assert_eq!(status, 202, "{reply}");
    let job = reply["jobId"].as_str().expect("job").to_owned();
    let (status, record) = ada.get(&host.url(&format!("/api/job/{job}"))).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["userId"], "ada", "{record}");
    assert_ne!(
        record["class"], "high",
        "no VIP class from a body's claim: {record}"
    );

    for (method, path) in [
        ("GET", format!("/api/job/{job}")),
        ("GET", format!("/api/job/{job}/events")),
        ("GET", format!("/stream/status/{job}")),
        ("GET", format!("/api/v1/jobs/{job}/events")),
        ("DELETE", format!("/api/job/{job}")),
    ] {
        let (status, reply) = call(&bob, host, method, &path, &None).await;
        assert_eq!(status, 404, "bob {method} {path}: {reply}");
    }

    let (status, session) = ada
        .post(&host.url("/api/v1/sessions"), &json!({"metadata": {}}))
        .await;
    assert_eq!(status, 201, "{session}");
    let sid = session["id"].as_str().expect("sid").to_owned();
    let (status, task) = ada
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/tasks")),
            &json!({"task_description": "Tides", "workflow": "simple"}),
        )
        .await;
    assert_eq!(status, 202, "{task}");
    let mid = task["messageId"].as_str().expect("mid").to_owned();
    for (method, path) in [
        ("GET", format!("/api/v1/sessions/{sid}")),
        ("GET", format!("/api/v1/sessions/{sid}/messages")),
        ("GET", format!("/api/v1/messages/{mid}")),
        (
            "GET",
            format!("/api/v1/sessions/{sid}/messages/{mid}/stream"),
        ),
        ("DELETE", format!("/api/v1/sessions/{sid}")),
    ] {
        let (status, reply) = call(&bob, host, method, &path, &None).await;
        assert_eq!(status, 404, "bob {method} {path}: {reply}");
    }
    let (status, reply) = bob
        .post(
            &host.url(&format!("/api/v1/sessions/{sid}/tasks")),
            &json!({"task_description": "Tides", "workflow": "simple"}),
        )
        .await;
    assert_eq!(
        status, 404,
        "bob cannot start a task in ada's session: {reply}"
    );
    let (status, _) = ada.get(&host.url(&format!("/api/v1/sessions/{sid}"))).await;
    assert_eq!(status, 200, "ada still sees her own session");
}

/// A browser cannot set headers on EventSource: it logs in once, and the
/// HttpOnly cookie carries the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_with_a_cookie_that_carries_its_key() {
    let stack = Stack::start(HostOptions::default()).await;
    let host = &stack.host;
    let key = create_key(host, json!({"role": "reader"})).await;
    let client = reqwest::Client::new();
    let response = client
        .post(host.url("/api/login"))
        .header("content-type", "application/json")
        .body(json!({ "key": key }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().expect("name=value").to_owned();
    let (status, _) = (
        client
            .get(host.url("/api/limits"))
            .header("cookie", &pair)
            .send()
            .await
            .expect("request")
            .status(),
        (),
    );
    assert_eq!(status, 200, "the cookie authenticates");
    let refused = client
        .post(host.url("/api/login"))
        .header("content-type", "application/json")
        .body(json!({ "key": "spool_wrong" }).to_string())
        .send()
        .await
        .expect("login");
    assert_eq!(refused.status(), 401);
}

#[test]
fn listening_beyond_loopback_without_keys_refuses_to_start_and_says_what_to_do() {
    let redis = Redis::start();
    let port = free_port();
    let mut child = Command::new(SPOOL)
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--redis-url",
            &redis.url(),
        ])
        .args(["--model-url", "http://127.0.0.1:9"])
        .env_remove("SPOOL_ADMIN_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spool");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("spool started on 0.0.0.0 without keys");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success());
    assert!(stderr.contains("without API keys"), "{stderr}");
    assert!(stderr.contains("spool keys create"), "{stderr}");
}

/// 10,000 high jobs queued ahead of 10 low ones, three workers: with the
/// default fairness (`fair_every = 10`) the k-th low job starts within 10k
/// claims, so all ten start among the first 100 jobs; strict priority would
/// run all 10,000 high jobs first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_high_jobs_delays_low_ones_by_a_bounded_number_of_claims() {
    use spool_core::queue::{NewJob, Queue};
    use spool_runtime::PriorityClass;

    const HIGH: usize = 10_000;
    const LOW: usize = 10;
    const FAIR_EVERY: usize = 10;
    let redis = Redis::start();
    let stub = stub().await;
    let connection = redis::Client::open(redis.url())
        .expect("url")
        .get_connection_manager()
        .await
        .expect("redis");
    let queue = Queue::new(connection.into());
    let keys = queue.keys("mixed");
    queue.ensure_groups(&keys).await.expect("groups");
    let submit = |id: String, class| {
        let queue = queue.clone();
        let keys = keys.clone();
        async move {
            queue
                .submit(NewJob {
                    id: &id,
                    queue: &keys,
                    class,
                    score: 5,
                    priority: 5,
                    user_id: "u",
                    user_tier: "",
                    payload: r#"{"mode": "ok"}"#,
                    message: None,
                    handler: "adversary",
                    max_waiting: 100_000,
                    parent: None,
                })
                .await
                .expect("submit");
        }
    };
    for i in 0..HIGH {
        submit(format!("high-{i}"), PriorityClass::High).await;
    }
    for i in 0..LOW {
        submit(format!("low-{i}"), PriorityClass::Low).await;
    }
    let config = format!(
        "[handlers.adversary]\npath = \"{}\"\n\n[queues.mixed]\nhandler = \"adversary\"\n",
        crate::sandbox::adversary_wasm().display()
    );
    let host = Host::start(
        &redis,
        &stub,
        HostOptions {
            config,
            ..HostOptions::default()
        },
    );
    let started = |id: &str| -> Option<u64> {
        redis::cmd("HGET")
            .arg(format!("spool:job:{id}"))
            .arg("first_started_at")
            .query(&mut redis.connection())
            .expect("HGET")
    };
    let mut last_low = 0;
    wait_until("every low job started", Duration::from_secs(120), || {
        let starts: Vec<Option<u64>> = (0..LOW).map(|i| started(&format!("low-{i}"))).collect();
        last_low = starts.iter().flatten().copied().max().unwrap_or(0);
        starts.iter().all(Option::is_some)
    });
    host.signal(libc::SIGSTOP);
    let mut pipe = redis::pipe();
    for i in 0..HIGH {
        pipe.cmd("HGET")
            .arg(format!("spool:job:high-{i}"))
            .arg("first_started_at");
    }
    let highs: Vec<Option<u64>> = pipe.query(&mut redis.connection()).expect("pipeline");
    let before = highs.iter().flatten().filter(|&&at| at < last_low).count();
    host.signal(libc::SIGCONT);
    println!("{before} high jobs started before the last of {LOW} low ones");
    assert!(
        before <= LOW * FAIR_EVERY,
        "{before} high jobs ran before the last low one; the bound is {}",
        LOW * FAIR_EVERY
    );
}

/// With `[auth] admin_listen`, the job API can be exposed without the admin
/// routes: they answer on the admin listener only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_can_live_on_a_listener_of_their_own() {
    let admin_port = free_port();
    let stack = Stack::start(HostOptions {
        config: format!("[auth]\nadmin_listen = \"127.0.0.1:{admin_port}\"\n"),
        ..HostOptions::default()
    })
    .await;
    let host = &stack.host;
    let api = Api::default();
    let admin = |path: &str| format!("http://127.0.0.1:{admin_port}{path}");
    let (status, _) = api
        .post(&host.url("/api/queues/chat/pause"), &json!({}))
        .await;
    assert_eq!(status, 404, "no admin route on the public listener");
    let (status, _) = api.get(&host.url("/admin/handlers")).await;
    assert_eq!(status, 404);
    let (status, reply) = api.post(&admin("/api/queues/chat/pause"), &json!({})).await;
    assert_eq!(status, 200, "{reply}");
    let (status, _) = Api::with_key(None).get(&admin("/admin/handlers")).await;
    assert_eq!(status, 401, "the admin listener still needs the admin key");
    let (status, _) = api
        .post(&admin("/api/chat"), &json!({"userId": "u", "prompt": "hi"}))
        .await;
    assert_eq!(status, 404, "no job API on the admin listener");
    let (status, _) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    assert_eq!(status, 202);
}

/// WebSockets are not bound by CORS: a page elsewhere must not open one to
/// the loopback API and submit or watch jobs as the local user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_another_site_is_refused() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let stack = Stack::start(HostOptions::default()).await;
    let url = stack.host.url("/ws").replace("http://", "ws://");
    let mut request = url.as_str().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        Err(other) => panic!("refused, but not with 403: {other}"),
        Ok(_) => panic!("a cross-site WebSocket was accepted"),
    }
    let (same_site, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("a WebSocket without a foreign origin opens");
    drop(same_site);
}
