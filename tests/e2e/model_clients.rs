//! The clients against the stub model server over loopback: both protocols, the
//! generate API, embeddings, and the classification of every injected failure.
//! Also checks that no client call ever reaches the server more than once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use spool::stub::{self, Fault, StubArgs, StubServer};
use spool_core::models::*;

async fn stub_server() -> StubServer {
    stub::start(&StubArgs::ephemeral())
        .await
        .expect("stub starts")
}

fn client(kind: BackendKind, url: String) -> ModelClient {
    ModelClient::new(BackendConfig {
        kind,
        url,
        api_key: Some("sk-test".into()),
        chat_model: "chat-m".into(),
        embed_model: "embed-m".into(),
        ollama_api: OllamaApi::Chat,
        request_timeout_ms: 5_000,
        forbidden_is_rate_limit: false,
    })
    .expect("client builds")
}

fn conversation() -> ChatRequest {
    ChatRequest {
        model: None,
        messages: vec![
            ChatMessage::new(Role::System, "be brief"),
            ChatMessage::new(Role::User, "héllo  there\nfriend"),
        ],
        params: Params {
            temperature: Some(0.1),
            max_tokens: Some(50),
            ..Params::default()
        },
    }
}

async fn chat_collecting(
    client: &ModelClient,
    request: &ChatRequest,
) -> (Result<ChatReply, ModelError>, Vec<String>) {
    let mut deltas = Vec::new();
    let reply = client
        .chat(request, &mut |piece| deltas.push(piece.to_owned()))
        .await;
    (reply, deltas)
}

async fn assert_streams_stub_answer(
    client: &ModelClient,
    expected_path: &str,
    server: &StubServer,
) {
    let request = conversation();
    let (reply, deltas) = chat_collecting(client, &request).await;
    let reply = reply.expect("chat succeeds");
    let expected = stub::answer("chat-m", &request.messages);
    assert_eq!(reply.text, expected);
    assert_eq!(
        deltas,
        stub::word_pieces(&expected),
        "one delta per streamed piece"
    );
    assert_eq!(reply.model, "chat-m");
    assert_eq!(reply.prompt_tokens, Some(5));
    assert_eq!(
        reply.completion_tokens,
        Some(expected.split_whitespace().count() as u32)
    );
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(server.stats().calls.get(expected_path), Some(&1));
}

#[tokio::test]
async fn ollama_chat_streams_the_stub_answer() {
    let server = stub_server().await;
    assert_streams_stub_answer(
        &client(BackendKind::Ollama, server.url()),
        "/api/chat",
        &server,
    )
    .await;
}

#[tokio::test]
async fn openai_chat_streams_the_stub_answer() {
    let server = stub_server().await;
    assert_streams_stub_answer(
        &client(BackendKind::Openai, server.url()),
        "/v1/chat/completions",
        &server,
    )
    .await;
}

#[tokio::test]
async fn ollama_generate_api_flattens_into_system_and_prompt() {
    let server = stub_server().await;
    let mut config = client(BackendKind::Ollama, server.url()).config().clone();
    config.ollama_api = OllamaApi::Generate;
    let client = ModelClient::new(config).unwrap();
    let mut request = conversation();
    request.model = Some("gen-m".into());
    let (reply, deltas) = chat_collecting(&client, &request).await;
    let reply = reply.expect("generate succeeds");
    assert_eq!(
        reply.text,
        "[gen-m] 2 messages; you said: héllo  there\nfriend"
    );
    assert_eq!(deltas.concat(), reply.text);
    assert_eq!(reply.model, "gen-m");
    assert_eq!(server.stats().calls.get("/api/generate"), Some(&1));
}

#[tokio::test]
async fn embeddings_come_back_in_input_order() {
    let server = stub_server().await;
    let texts: Vec<String> = ["alpha", "beta gamma", "ünïcode 🌍"]
        .map(String::from)
        .to_vec();
    let expected: Vec<Vec<f32>> = texts.iter().map(|text| stub::embedding(text)).collect();
    for (kind, path) in [
        (BackendKind::Ollama, "/api/embed"),
        (BackendKind::Openai, "/v1/embeddings"),
    ] {
        let client = client(kind, server.url());
        assert_eq!(
            client.embed(None, &texts).await,
            Ok(expected.clone()),
            "{kind}"
        );
        assert_eq!(
            client.embed(Some("other"), &texts[..1]).await,
            Ok(expected[..1].to_vec()),
            "{kind}"
        );
        assert_eq!(
            client.embed(None, &[]).await,
            Ok(Vec::new()),
            "{kind}: no inputs, no call"
        );
        let items: Vec<usize> = server
            .stats()
            .model_calls
            .iter()
            .filter(|call| call.path == path)
            .map(|call| call.items)
            .collect();
        assert_eq!(items, [3, 1], "{kind}");
    }
}

fn status_fault(status: u16) -> Fault {
    Fault {
        status: Some(status),
        ..Fault::default()
    }
}

#[tokio::test]
async fn injected_failures_are_classified_and_never_retried() {
    let server = stub_server().await;
    let rate_limited = |status: u16, wait: Option<Duration>| ModelError::RateLimited {
        status,
        retry_after: wait,
        message: format!("stub: injected HTTP {status}"),
    };
    let reset_in_6m =
        BTreeMap::from([("x-ratelimit-reset-requests".to_owned(), "6m0s".to_owned())]);
    // A redirect is not followed: a 301 would have come back as a GET without
    // the body, a 307 as the same POST a second time.
    let redirect = |status: u16, path: &str| {
        let location = format!("{}{path}", server.url());
        let fault = Fault {
            headers: BTreeMap::from([("location".to_owned(), location.clone())]),
            ..status_fault(status)
        };
        let refused = ModelError::Rejected {
            status,
            message: format!(
                "the model server redirected the call to {location} (not followed): set the model URL to where it points"
            ),
        };
        (fault, refused)
    };
    let (moved, moved_refused) = redirect(301, "/api/chat");
    let (temporary, temporary_refused) = redirect(307, "/v1/chat/completions");
    let cases: Vec<(BackendKind, Fault, ModelError)> = vec![
        (BackendKind::Ollama, moved, moved_refused),
        (BackendKind::Openai, temporary, temporary_refused),
        (
            BackendKind::Ollama,
            Fault {
                retry_after_secs: Some(2),
                ..status_fault(429)
            },
            rate_limited(429, Some(Duration::from_secs(2))),
        ),
        (
            BackendKind::Openai,
            Fault {
                retry_after_ms: Some(1500),
                ..status_fault(429)
            },
            rate_limited(429, Some(Duration::from_millis(1500))),
        ),
        (
            BackendKind::Openai,
            Fault {
                headers: reset_in_6m,
                ..status_fault(429)
            },
            rate_limited(429, Some(Duration::from_secs(360))),
        ),
        // A 403 is a rate limit when its body says so ...
        (
            BackendKind::Openai,
            Fault {
                code: Some("rate_limit_exceeded".into()),
                ..status_fault(403)
            },
            rate_limited(403, None),
        ),
        // ... and otherwise a refusal that no wait fixes.
        (
            BackendKind::Ollama,
            status_fault(403),
            ModelError::Rejected {
                status: 403,
                message: "forbidden: the model server refused access (not a rate limit, not retried): stub: injected HTTP 403".into(),
            },
        ),
        (
            BackendKind::Openai,
            status_fault(401),
            ModelError::Rejected {
                status: 401,
                message: "stub: injected HTTP 401".into(),
            },
        ),
        (
            BackendKind::Ollama,
            status_fault(500),
            ModelError::Unavailable("HTTP 500: stub: injected HTTP 500".into()),
        ),
        (
            BackendKind::Openai,
            Fault {
                code: Some("insufficient_quota".into()),
                ..status_fault(429)
            },
            ModelError::Rejected {
                status: 429,
                message: "stub: injected HTTP 429".into(),
            },
        ),
        (
            BackendKind::Ollama,
            Fault {
                midstream_error: Some("boom".into()),
                ..Fault::default()
            },
            ModelError::Unavailable("failed mid-stream: boom".into()),
        ),
        (
            BackendKind::Openai,
            Fault {
                midstream_error: Some("boom".into()),
                ..Fault::default()
            },
            ModelError::Unavailable("failed mid-stream: boom".into()),
        ),
    ];
    let calls = cases.len() as u64;
    for (kind, fault, expected) in cases {
        server.inject([fault.clone()]).unwrap();
        let (reply, deltas) = chat_collecting(&client(kind, server.url()), &conversation()).await;
        assert_eq!(reply, Err(expected), "{kind} {fault:?}");
        if fault.midstream_error.is_some() {
            assert_eq!(deltas.len(), 1, "one piece arrives before the failure");
        }
    }
    let stats = server.stats();
    assert_eq!(
        stats.total, calls,
        "each failure reached the server exactly once"
    );
    assert!(
        stats.model_calls.iter().all(|call| call.status.is_some()),
        "every call met its fault"
    );

    // A backend configured with `forbidden_is_rate_limit` takes a bare 403 for
    // a rate limit (a proxy that answers bursts that way).
    let mut config = client(BackendKind::Ollama, server.url()).config().clone();
    config.forbidden_is_rate_limit = true;
    let lenient = ModelClient::new(config).expect("client builds");
    server.inject([status_fault(403)]).unwrap();
    let (reply, _) = chat_collecting(&lenient, &conversation()).await;
    assert_eq!(reply, Err(rate_limited(403, None)));
}

#[tokio::test]
async fn embed_cut_short_is_unavailable() {
    let server = stub_server().await;
    for kind in [BackendKind::Ollama, BackendKind::Openai] {
        server
            .inject([Fault {
                midstream_error: Some("cut".into()),
                ..Fault::default()
            }])
            .unwrap();
        let result = client(kind, server.url())
            .embed(None, &["x".to_owned()])
            .await;
        assert!(
            matches!(result, Err(ModelError::Unavailable(_))),
            "{kind}: {result:?}"
        );
    }
}

#[tokio::test]
async fn whole_call_timeout_is_unavailable() {
    let server = stub_server().await;
    server.set_timing(0, 400);
    let mut config = client(BackendKind::Ollama, server.url()).config().clone();
    config.request_timeout_ms = 150;
    let client = ModelClient::new(config).unwrap();
    let started = Instant::now();
    // The head and first piece arrive at once; only the whole-call bound stops the slow stream.
    let (reply, deltas) = chat_collecting(&client, &conversation()).await;
    assert_eq!(
        reply,
        Err(ModelError::Unavailable(
            "no complete answer within 150 ms".into()
        ))
    );
    assert_eq!(deltas.len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unreachable_server_is_unavailable() {
    let server = stub_server().await;
    let url = server.url();
    server.shutdown().await;
    let (reply, _) = chat_collecting(&client(BackendKind::Openai, url), &conversation()).await;
    assert!(
        matches!(&reply, Err(ModelError::Unavailable(message)) if message.contains("onnect")),
        "{reply:?}"
    );
}
