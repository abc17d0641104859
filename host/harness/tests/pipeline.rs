//! The built-in `pipeline` guest (guest/pipeline) tested through the harness:
//! two model calls, custom events, and resuming from state on a retry.

use serde_json::json;
use spool::registry::BUILT_IN;
use spool_harness::{Harness, Reply};

fn pipeline() -> Harness {
    let (_, bytes) = BUILT_IN
        .iter()
        .find(|(name, _)| *name == "pipeline")
        .expect("pipeline is built in");
    Harness::from_bytes("pipeline", bytes).expect("pipeline loads")
}

#[test]
fn outline_then_document_with_their_events() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides", "sections": 2}))
        .reply(Reply::text("1. Moon\n2. Sun"))
        .reply(Reply::text("# Tides\nThe moon pulls."));
    let run = pipeline.handle(job);
    assert_eq!(run.failure_kind(), None, "{:?}", run.failure_message());
    assert!(
        run.result().to_string().contains("The moon pulls."),
        "{}",
        run.result()
    );
    let types = run.event_types();
    assert!(types.contains(&"outline_generated".to_owned()), "{types:?}");
    assert!(
        types.contains(&"document_generated".to_owned()),
        "{types:?}"
    );
    assert_eq!(run.chat_requests().len(), 2);
    assert_eq!(
        run.state().get("outline").map(String::as_str),
        Some("1. Moon\n2. Sun")
    );
}

#[test]
fn a_retry_resumes_from_the_saved_outline() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides"}))
        .attempt(2)
        .state("outline", "1. Moon")
        .reply(Reply::text("# Tides"));
    let run = pipeline.handle(job);
    assert_eq!(run.chat_requests().len(), 1, "only the document stage runs");
    assert!(!run.event_types().contains(&"outline_generated".to_owned()));
    assert_eq!(run.report().unused_replies, 0);
}

#[test]
fn a_rate_limit_in_the_second_stage_keeps_the_outline_for_the_retry() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides"}))
        .reply(Reply::text("1. Moon"))
        .reply(Reply::rate_limited(None));
    let run = pipeline.handle(job);
    assert!(run.retry().is_some(), "{:?}", run.returned());
    assert_eq!(
        run.state().get("outline").map(String::as_str),
        Some("1. Moon")
    );
}
