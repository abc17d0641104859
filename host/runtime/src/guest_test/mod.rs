//! Testing guests in isolation: runs one hook of a handler component against a
//! fixture (a job, a conversation history, scripted model replies, initial
//! state) with no Redis and no model server, and reports everything the guest
//! did as JSON: what it returned or how it failed, its events, its model
//! requests, its logs and output, and its state afterwards. Optional
//! expectations in the fixture turn the report into a pass/fail verdict.
//!
//! The engine behind `spool guest test` (which `spool-harness` drives). Owns
//! the scripted [`JobHost`](crate::JobHost) and the mapping between fixtures
//! and the runtime's types; the fixture and report formats are
//! `spool-fixture`'s, sandboxing is the runtime's, and nothing here touches
//! Redis or the network.

mod host;

use std::sync::Arc;

use serde_json::{Value, json};
use spool_fixture::{Failure, Fixture, HookName, Report};

use crate::content::{block_to_json, blocks_to_json};
use crate::{
    ChatMessage, HandlerComponent, Hook, HookReturn, Job, JobError, PriorityClass, Role, Runtime,
};
pub use host::ScriptedHost;

fn job_of(fixture: &Fixture) -> Job {
    Job {
        id: fixture.job.id.clone(),
        queue: fixture.job.queue.clone(),
        user_id: fixture.job.user_id.clone(),
        user_tier: fixture.job.user_tier.clone(),
        priority: fixture.job.priority,
        payload: fixture.payload_text(),
        attempt: fixture.attempt(),
    }
}

/// Runs the fixture's hook once in a fresh instance.
pub async fn run(runtime: &Runtime, handler: &HandlerComponent, fixture: &Fixture) -> Report {
    let host = Arc::new(ScriptedHost::new(
        &fixture.job.id,
        fixture.replies.clone(),
        fixture.state.clone(),
    ));
    let job = job_of(fixture);
    let history: Vec<ChatMessage> = fixture
        .history
        .iter()
        .map(|m| ChatMessage {
            role: wit_role(m.role),
            content: m.content.clone(),
        })
        .collect();
    let hook = match fixture.hook {
        HookName::Admit => Hook::Admit,
        HookName::ShapePrompt => Hook::ShapePrompt(&history),
        HookName::ParseContent => Hook::ParseContent(&fixture.text),
        HookName::Handle => Hook::Handle,
    };
    let outcome = runtime.call_hook(handler, &job, hook, host.clone()).await;
    let (returned, failure) = match outcome {
        Ok(value) => (returned_json(value), None),
        Err(failure) => (
            Value::Null,
            Some(Failure {
                kind: failure.kind().as_str().into(),
                message: failure.to_string(),
            }),
        ),
    };
    let recorded = host.take_record();
    let mut report = Report {
        hook: fixture.hook,
        returned,
        failure,
        events: recorded.events,
        model_requests: recorded.model_requests,
        logs: recorded.logs,
        output: recorded.output,
        state: recorded.state,
        follow_ups: recorded.follow_ups,
        unused_replies: recorded.unused_replies,
        checks: Vec::new(),
        pass: false,
    };
    report.judge(fixture.expect.as_ref());
    report
}

fn returned_json(value: HookReturn) -> Value {
    match value {
        HookReturn::Admit(Ok(decision)) => {
            json!({"ok": {"class": class_name(decision.class), "score": decision.score}})
        }
        HookReturn::Admit(Err(reason)) => json!({ "refused": reason }),
        HookReturn::ShapePrompt(request) => {
            let request = crate::chat_request(request);
            json!({"model": request.model, "messages": request.messages, "params": request.params})
        }
        HookReturn::ParseContent(blocks) => blocks_to_json(&blocks),
        HookReturn::Handle(Ok(output)) => {
            // A result that is not JSON is kept as text: the worker would refuse it.
            let result =
                serde_json::from_str(&output.result).unwrap_or(Value::String(output.result));
            json!({"ok": {"result": result, "blocks": output.blocks.iter().map(block_to_json).collect::<Vec<_>>()}})
        }
        HookReturn::Handle(Err(JobError::Retry(hint))) => {
            json!({"retry": {"reason": hint.reason, "afterMs": hint.after_ms}})
        }
        HookReturn::Handle(Err(JobError::Reject(reason))) => json!({ "reject": reason }),
    }
}

fn class_name(class: PriorityClass) -> &'static str {
    class.name()
}

fn wit_role(role: spool_fixture::Role) -> Role {
    match role {
        spool_fixture::Role::System => Role::System,
        spool_fixture::Role::User => Role::User,
        spool_fixture::Role::Assistant => Role::Assistant,
        spool_fixture::Role::Tool => Role::Tool,
    }
}
