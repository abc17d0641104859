//! Testing guests in isolation: runs one hook of a handler component against a
//! fixture (a job, a conversation history, scripted model replies, initial
//! state) with no Redis and no model server, and reports everything the guest
//! did as JSON: what it returned or how it failed, its events, its model
//! requests, its logs and output, and its state afterwards. Optional
//! expectations in the fixture turn the report into a pass/fail verdict.
//!
//! The engine behind `spool guest test` and the `spool-harness` crate. Owns the
//! fixture and report formats and the scripted [`JobHost`]; sandboxing is the
//! runtime's, and nothing here touches Redis or the network.

mod expect;
mod host;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::content::{block_to_json, blocks_to_json};
use crate::{
    ChatMessage, HandlerComponent, Hook, HookReturn, Job, JobError, PriorityClass, Role, Runtime,
};
pub use expect::{Check, Expectations};
pub use host::{ScriptedHost, ScriptedReply};

/// Which hook a fixture runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    Admit,
    ShapePrompt,
    ParseContent,
    #[default]
    Handle,
}

/// The job as a fixture gives it; every field has a default.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct JobFixture {
    pub id: String,
    pub queue: String,
    pub user_id: String,
    pub user_tier: String,
    pub priority: u8,
    /// The job body: any JSON value (passed to the guest as JSON text).
    pub payload: Value,
    pub attempt: u32,
}

impl Default for JobFixture {
    fn default() -> Self {
        Self {
            id: "test-job".into(),
            queue: "test".into(),
            user_id: String::new(),
            user_tier: String::new(),
            priority: 5,
            payload: json!({}),
            attempt: 1,
        }
    }
}

/// One message of a conversation history, as clients send it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryMessage {
    pub role: crate::model::Role,
    pub content: String,
}

/// Everything one test run needs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    pub hook: HookName,
    pub job: JobFixture,
    /// For `shape_prompt`: the conversation so far, oldest first.
    pub history: Vec<HistoryMessage>,
    /// For `parse_content`: the model answer to split.
    pub text: String,
    /// Model replies (and errors), consumed in order by `chat` and `embed`.
    pub replies: Vec<ScriptedReply>,
    /// The job's state before the run.
    pub state: BTreeMap<String, String>,
    /// What must be true afterwards; absent: the hook must return normally.
    pub expect: Option<Expectations>,
}

/// What a run did, as `spool guest test` prints it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub hook: HookName,
    /// The hook's return value in the API's JSON shapes, `null` on a failure.
    /// `handle`: `{"ok": {"result", "blocks"}}`, `{"retry": {"reason", "afterMs"}}`
    /// or `{"reject": reason}`; `admit`: `{"ok": {"class", "score"}}` or
    /// `{"refused": reason}`; `shape_prompt`: the model request;
    /// `parse_content`: the blocks.
    pub returned: Value,
    /// How the call failed in the sandbox: `{"kind", "message"}`, else `null`.
    pub failure: Option<Failure>,
    /// Events in order: `task_progress`, `text_delta` and the guest's own.
    pub events: Vec<Value>,
    /// Model calls in order: `{"kind": "chat", "request": …}` or `{"kind": "embed", …}`.
    pub model_requests: Vec<Value>,
    /// `{"level", "message"}` for each `logging.log` call.
    pub logs: Vec<Value>,
    /// What the guest wrote to stdout/stderr (bounded).
    pub output: String,
    /// The job's state after the run.
    pub state: BTreeMap<String, String>,
    /// `{"id", "queue", "payload"}` for each follow-up job `handle` asked
    /// for (recorded, not queued).
    pub follow_ups: Vec<Value>,
    /// Scripted replies the guest never asked for.
    pub unused_replies: usize,
    /// Each expectation and whether it held.
    pub checks: Vec<Check>,
    /// True when every expectation held (or, without any, the hook returned).
    pub pass: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: String,
    pub message: String,
}

impl Fixture {
    fn job(&self) -> Job {
        let payload = match &self.job.payload {
            // A string payload is taken as the JSON text itself.
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        Job {
            id: self.job.id.clone(),
            queue: self.job.queue.clone(),
            user_id: self.job.user_id.clone(),
            user_tier: self.job.user_tier.clone(),
            priority: self.job.priority,
            payload,
            attempt: if self.hook == HookName::Admit {
                0
            } else {
                self.job.attempt
            },
        }
    }
}

/// Runs the fixture's hook once in a fresh instance.
pub async fn run(runtime: &Runtime, handler: &HandlerComponent, fixture: &Fixture) -> Report {
    let host = Arc::new(ScriptedHost::new(
        &fixture.job.id,
        fixture.replies.clone(),
        fixture.state.clone(),
    ));
    let job = fixture.job();
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
    report.checks = match &fixture.expect {
        Some(expectations) => expectations.check(&report),
        None => vec![Check::new(
            "the hook returned normally",
            report.failure.is_none(),
            report.failure.as_ref().map(|f| f.message.clone()),
        )],
    };
    report.pass = report.checks.iter().all(|c| c.pass);
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

fn wit_role(role: crate::model::Role) -> Role {
    match role {
        crate::model::Role::System => Role::System,
        crate::model::Role::User => Role::User,
        crate::model::Role::Assistant => Role::Assistant,
        crate::model::Role::Tool => Role::Tool,
    }
}
