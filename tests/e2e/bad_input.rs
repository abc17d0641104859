//! Bad input (issue 13): every route, fed oversized fields, wrong types, bad
//! ids, huge headers, truncated bodies and wrong content types, answers a
//! 4xx whose JSON body names the problem, never a 5xx, and keeps serving.

use serde_json::{Value, json};

use crate::support::*;

/// One bad request: method, path (`{sid}`: a real session), content type,
/// body, extra headers.
struct Bad {
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn json_body(method: &'static str, path: &str, body: Value) -> Bad {
    raw(
        method,
        path,
        "application/json",
        body.to_string().into_bytes(),
    )
}

fn raw(method: &'static str, path: &str, content_type: &'static str, body: Vec<u8>) -> Bad {
    Bad {
        method,
        path: path.to_owned(),
        content_type,
        body,
        headers: Vec::new(),
    }
}

fn get(path: &str) -> Bad {
    raw("GET", path, "", Vec::new())
}

fn cases() -> Vec<Bad> {
    let long = |n: usize| "x".repeat(n);
    let chat = |body: Value| json_body("POST", "/api/chat", body);
    let mut cases = vec![
        chat(json!({"userId": long(100_000), "prompt": "hi"})),
        chat(json!({"userId": "u\u{0}", "prompt": "hi"})),
        chat(json!({"userId": "u", "prompt": "hi", "userTier": long(1000)})),
        chat(json!({"userId": 5, "prompt": "hi"})),
        chat(json!([])),
        chat(json!("a string")),
        chat(json!({"userId": "u", "prompt": "hi", "priority": 0})),
        chat(json!({"userId": "u", "prompt": "hi", "priority": 11})),
        chat(json!({"userId": "u", "prompt": "hi", "priority": "high"})),
        chat(json!({"userId": "u", "prompt": "hi", "priority": 1.5})),
        chat(json!({"userId": "u", "prompt": "hi", "jobId": "a:b"})),
        chat(json!({"userId": "u", "prompt": "hi", "jobId": long(200)})),
        chat(json!({"userId": "u", "prompt": long(5 << 20)})),
        raw(
            "POST",
            "/api/chat",
            "application/json",
            b"{\"userId\": ".to_vec(),
        ),
        raw("POST", "/api/chat", "application/json", Vec::new()),
        raw(
            "POST",
            "/api/chat",
            "application/json",
            vec![0xff, 0xfe, b'{'],
        ),
        raw(
            "POST",
            "/api/chat",
            "text/plain",
            b"{\"userId\":\"u\",\"prompt\":\"hi\"}".to_vec(),
        ),
        Bad {
            headers: vec![("idempotency-key", "bad key!".into())],
            ..chat(json!({"userId": "u", "prompt": "hi"}))
        },
        json_body("POST", "/api/queues/nope/jobs", json!({"payload": {}})),
        json_body(
            "POST",
            "/api/queues/chat/jobs",
            json!({"payload": {}, "extra": 1}),
        ),
        json_body("POST", "/api/queues/chat/jobs", json!({"priority": 5})),
        get("/api/job/{job}:attempts"),
        get("/api/job/{job}:state/events"),
        get(&format!("/api/job/{}", long(300))),
        raw("DELETE", "/api/job/a%2Fb", "", Vec::new()),
        get("/api/job/some-job/events?last_id=garbage"),
        get("/stream/status/nope"),
        get("/api/v1/jobs/X:state/stream"),
        json_body("POST", "/api/v1/sessions", json!({"metadata": 5})),
        json_body("POST", "/api/v1/sessions", json!({"metadata": {}, "x": 1})),
        json_body(
            "POST",
            "/api/v1/sessions",
            json!({"metadata": {"blob": long(2 << 20)}}),
        ),
        get("/api/v1/sessions/bad!id"),
        json_body(
            "POST",
            "/api/v1/sessions/{sid}/messages",
            json!({"role": "wizard", "content": "x"}),
        ),
        json_body(
            "POST",
            "/api/v1/sessions/{sid}/messages",
            json!({"role": "user"}),
        ),
        json_body(
            "POST",
            "/api/v1/sessions/{sid}/messages",
            json!({"role": "user", "blocks": [{"type": "nope"}]}),
        ),
        get("/api/v1/sessions/{sid}/messages?limit=0"),
        get("/api/v1/sessions/{sid}/messages?limit=abc"),
        get("/api/v1/messages/does-not-exist"),
        get("/api/v1/content/bad!id"),
        json_body("POST", "/api/v1/sessions/does-not-exist/tasks", json!({})),
        raw(
            "POST",
            "/api/v1/sessions/{sid}/tasks",
            "application/json",
            b"[]".to_vec(),
        ),
        get("/api/queues/chat/dead?limit=-1"),
        json_body("POST", "/api/queues/chat/dead/bad:id/replay", json!({})),
        raw(
            "DELETE",
            "/api/queues/chat/dead/no-such-job",
            "",
            Vec::new(),
        ),
        raw(
            "POST",
            "/admin/handlers/Bad%20Name/versions",
            "application/wasm",
            b"\0asm".to_vec(),
        ),
        raw(
            "POST",
            "/admin/handlers/chat/versions",
            "text/plain",
            b"\0asm".to_vec(),
        ),
        raw(
            "POST",
            "/admin/handlers/chat/versions",
            "application/wasm",
            b"not wasm".to_vec(),
        ),
        json_body("POST", "/admin/handlers/chat/rollback", json!({"to": 5})),
        json_body("POST", "/admin/keys", json!({"role": "god"})),
        json_body(
            "POST",
            "/admin/keys",
            json!({"role": "submitter", "userId": long(1000)}),
        ),
        json_body("POST", "/api/login", json!({})),
        get("/no/such/route"),
        raw("PUT", "/api/chat", "application/json", b"{}".to_vec()),
    ];
    cases.push(Bad {
        headers: vec![("x-filler", long(100_000))],
        ..get("/api/queue/stats")
    });
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_naming_the_problem_and_the_host_keeps_serving() {
    let stack = Stack::start(HostOptions::default()).await;
    let host = &stack.host;
    let api = Api::default();
    let (_, session) = api.post(&host.url("/api/v1/sessions"), &json!({})).await;
    let sid = session["id"].as_str().expect("session").to_owned();
    let (_, job) = api
        .post(
            &host.url("/api/chat"),
            &json!({"userId": "u", "prompt": "hi"}),
        )
        .await;
    let job = job["jobId"].as_str().expect("job").to_owned();
    api.wait_terminal(host, &job, std::time::Duration::from_secs(60))
        .await;
    let client = reqwest::Client::new();
    let token = admin_token();
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in cases {
        let path = case.path.replace("{sid}", &sid).replace("{job}", &job);
        let method = reqwest::Method::from_bytes(case.method.as_bytes()).expect("method");
        let mut request = client
            .request(method, host.url(&path))
            .header("authorization", format!("Bearer {token}"));
        if !case.content_type.is_empty() {
            request = request.header("content-type", case.content_type);
        }
        for (name, value) in &case.headers {
            request = request.header(*name, value);
        }
        let size = case.body.len();
        let response = match request.body(case.body).send().await {
            Ok(response) => response,
            Err(error) => {
                wrong.push(format!(
                    "{} {path} ({size} B): no answer: {error}",
                    case.method
                ));
                continue;
            }
        };
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("");
        let message = body["error"]["message"].as_str().unwrap_or("");
        if !(400..500).contains(&status) || code.is_empty() || message.is_empty() {
            let shown: String = text.chars().take(200).collect();
            wrong.push(format!(
                "{} {path} ({size} B): {status} {shown}",
                case.method
            ));
        }
    }
    let (status, _) = api.get(&host.url("/health")).await;
    assert_eq!(status, 200, "the host keeps serving");
    assert!(
        wrong.is_empty(),
        "{} bad answers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
