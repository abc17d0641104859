//! Expectations of a guest test and how a [`Report`] is checked against them.
//! Matching is by inclusion: an expected object names only the fields that
//! matter, so a fixture stays valid when a handler adds a field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Report;

/// What must hold after a run; every field is optional.
///
/// ```json
/// {"returned": {"ok": {"result": {"response": "Hello!"}}},
///  "failureKind": "panic", "eventTypes": ["task_progress", "text_delta"],
///  "modelCalls": 1, "state": {"outline": "..."}, "logContains": "answered"}
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Expectations {
    /// The report's `returned` includes this value (see [`includes`]).
    pub returned: Option<Value>,
    /// The call failed in the sandbox with this kind (`deadline`, `panic`, ...).
    pub failure_kind: Option<String>,
    /// The types of the events, exactly and in order.
    pub event_types: Option<Vec<String>>,
    /// How many model calls (chat + embed) were made.
    pub model_calls: Option<usize>,
    /// Each model request, in order, includes the matching value.
    pub model_requests: Option<Vec<Value>>,
    /// These keys have these values in the state afterwards.
    pub state: Option<BTreeMap<String, String>>,
    /// Some log message contains this text.
    pub log_contains: Option<String>,
}

/// One expectation and its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub expectation: String,
    pub pass: bool,
    /// What was found instead, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<String>,
}

impl Check {
    pub fn new(expectation: impl Into<String>, pass: bool, found: Option<String>) -> Self {
        Self {
            expectation: expectation.into(),
            pass,
            found: if pass { None } else { found },
        }
    }
}

impl Expectations {
    pub fn check(&self, report: &Report) -> Vec<Check> {
        let mut checks = Vec::new();
        let failure_kind = report.failure.as_ref().map(|f| f.kind.as_str());
        match &self.failure_kind {
            Some(kind) => checks.push(Check::new(
                format!("fails with kind {kind}"),
                failure_kind == Some(kind.as_str()),
                Some(format!("{:?}", report.failure)),
            )),
            None => checks.push(Check::new(
                "the hook returned normally",
                failure_kind.is_none(),
                report.failure.as_ref().map(|f| f.message.clone()),
            )),
        }
        if let Some(returned) = &self.returned {
            checks.push(Check::new(
                format!("returned includes {returned}"),
                includes(&report.returned, returned),
                Some(report.returned.to_string()),
            ));
        }
        if let Some(types) = &self.event_types {
            let found: Vec<&str> = report
                .events
                .iter()
                .map(|e| e["type"].as_str().unwrap_or_default())
                .collect();
            checks.push(Check::new(
                format!("event types are {types:?}"),
                found == *types,
                Some(format!("{found:?}")),
            ));
        }
        if let Some(count) = self.model_calls {
            let found = report.model_requests.len();
            checks.push(Check::new(
                format!("{count} model calls"),
                found == count,
                Some(found.to_string()),
            ));
        }
        if let Some(requests) = &self.model_requests {
            let pass = requests.len() == report.model_requests.len()
                && requests
                    .iter()
                    .zip(&report.model_requests)
                    .all(|(want, got)| includes(got, want));
            checks.push(Check::new(
                "model requests match",
                pass,
                Some(Value::Array(report.model_requests.clone()).to_string()),
            ));
        }
        if let Some(state) = &self.state {
            let pass = state
                .iter()
                .all(|(key, value)| report.state.get(key) == Some(value));
            checks.push(Check::new(
                format!("state includes {state:?}"),
                pass,
                Some(format!("{:?}", report.state)),
            ));
        }
        if let Some(text) = &self.log_contains {
            let pass = report.logs.iter().any(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text.as_str()))
            });
            checks.push(Check::new(
                format!("a log line contains {text:?}"),
                pass,
                Some(format!("{:?}", report.logs)),
            ));
        }
        checks
    }
}

/// True when `actual` includes `expected`: objects by the keys `expected`
/// names (recursively), arrays element by element with the same length,
/// anything else by equality.
pub fn includes(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => expected
            .iter()
            .all(|(key, want)| actual.get(key).is_some_and(|got| includes(got, want))),
        (Value::Array(actual), Value::Array(expected)) => {
            actual.len() == expected.len()
                && actual
                    .iter()
                    .zip(expected)
                    .all(|(got, want)| includes(got, want))
        }
        _ => actual == expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inclusion_ignores_extra_fields_but_not_extra_elements() {
        let actual = json!({"ok": {"result": {"response": "hi", "model": "m"}, "blocks": [{"type": "text", "text": "hi"}]}});
        assert!(includes(
            &actual,
            &json!({"ok": {"result": {"response": "hi"}}})
        ));
        assert!(includes(
            &actual,
            &json!({"ok": {"blocks": [{"type": "text"}]}})
        ));
        assert!(!includes(&actual, &json!({"ok": {"blocks": []}})));
        assert!(!includes(
            &actual,
            &json!({"ok": {"result": {"response": "bye"}}})
        ));
        assert!(!includes(&actual, &json!({"reject": "x"})));
    }
}
