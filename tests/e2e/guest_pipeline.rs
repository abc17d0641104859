//! The built-in `pipeline` guest (guest/pipeline) tested through the harness:
//! each stage one job, the next stage queued as a follow-up carrying what it
//! needs, custom events, retries.

use crate::support::built_in_harness;
use serde_json::json;
use spool_harness::{Harness, Reply};

fn pipeline() -> Harness {
    built_in_harness("pipeline")
}

#[test]
fn the_outline_stage_queues_the_document_stage_as_a_follow_up() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides", "sections": 2}))
        .reply(Reply::text("1. Moon\n2. Sun"));
    let run = pipeline.handle(job);
    assert_eq!(run.failure_kind(), None, "{:?}", run.failure_message());
    assert_eq!(run.chat_requests().len(), 1, "one stage, one model call");
    assert_eq!(run.result()["outline"], "1. Moon\n2. Sun");
    assert!(run.event_types().contains(&"outline_generated".to_owned()));
    let [follow_up] = run.follow_ups() else {
        panic!("one follow-up: {:?}", run.follow_ups());
    };
    assert_eq!(follow_up["id"], run.result()["next"]);
    assert_eq!(follow_up["queue"], "test");
    assert_eq!(follow_up["payload"]["stage"], "document");
    assert_eq!(follow_up["payload"]["outline"], "1. Moon\n2. Sun");
    assert_eq!(follow_up["payload"]["sections"], 2);
}

#[test]
fn the_document_stage_writes_from_the_outline_in_its_payload() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides", "stage": "document", "outline": "1. Moon"}))
        .reply(Reply::text("# Tides\nThe moon pulls."));
    let run = pipeline.handle(job);
    assert_eq!(run.failure_kind(), None, "{:?}", run.failure_message());
    assert_eq!(run.result()["document"], "# Tides\nThe moon pulls.");
    assert_eq!(run.result()["outline"], "1. Moon");
    let prompt = run.chat_requests()[0]["messages"][1]["content"].to_string();
    assert!(prompt.contains("1. Moon"), "{prompt}");
    assert!(run.event_types().contains(&"document_generated".to_owned()));
    assert!(run.follow_ups().is_empty(), "the last stage");
}

#[test]
fn a_rate_limit_in_a_stage_asks_for_a_retry_and_queues_nothing() {
    let pipeline = pipeline();
    let job = pipeline
        .job(json!({"topic": "tides"}))
        .reply(Reply::rate_limited(Some(1500)));
    let run = pipeline.handle(job);
    assert_eq!(run.retry().map(|(_, after)| after), Some(Some(1500)));
    assert!(!run.event_types().contains(&"outline_generated".to_owned()));
}

#[test]
fn a_critic_round_queues_the_next_round_until_the_last() {
    let pipeline = pipeline();
    let review = |round: u8| json!({"topic": "t", "workflow": "critic", "maxIterations": 2, "stage": "review", "draft": "d", "round": round});
    let first = pipeline.handle(
        pipeline
            .job(review(1))
            .reply(Reply::text("too short"))
            .reply(Reply::text("d, longer")),
    );
    assert_eq!(first.follow_ups().len(), 1, "{:?}", first.returned());
    assert_eq!(first.follow_ups()[0]["payload"]["round"], 2);
    assert_eq!(first.follow_ups()[0]["payload"]["draft"], "d, longer");
    let last = pipeline.handle(
        pipeline
            .job(review(2))
            .reply(Reply::text("still short"))
            .reply(Reply::text("d, longest")),
    );
    assert!(last.follow_ups().is_empty());
    assert_eq!(last.result()["draft"], "d, longest");
}
