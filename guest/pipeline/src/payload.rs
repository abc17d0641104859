//! The document job body: `{"topic": string, "sections"?: 1..=10,
//! "workflow"?: "simple" | "planner" | "critic", "maxIterations"?: 1..=10}`, and
//! how it is checked. Other fields are ignored.
//!
//! A session task (POST /api/v1/sessions/{sid}/tasks) arrives here as the
//! client sent it (`task_description` is the topic, `max_iterations` the
//! rounds), and `admit` is the only check its fields get before the job is
//! queued: the refusals below are what the client sees.
//!
//! Each stage of a workflow is a job of its own. A client submits the first
//! stage; the job of each later stage is a follow-up queued by the previous
//! one, with the same fields plus `"stage"` and what the stage works from:
//! `{"stage": "document", "outline": …}` (planner) or
//! `{"stage": "review", "draft": …, "round": 1..=maxIterations}` (critic).
//!
//! Owns [`Payload`], its limits and its refusals. It must not call the host.

use serde_json::{Map, Value, json};
use spool_sdk::PayloadError;

/// The longest topic accepted, in characters (a session task's description
/// included).
pub const MAX_TOPIC_CHARS: usize = 10_000;

/// Sections in the outline when the payload does not say.
pub const DEFAULT_SECTIONS: u8 = 3;

/// The most sections a document may ask for.
pub const MAX_SECTIONS: u8 = 10;

/// Critique/revise rounds of the `critic` workflow when the payload does not say.
pub const DEFAULT_ITERATIONS: u8 = 2;

/// The most critique/revise rounds a payload may ask for.
pub const MAX_ITERATIONS: u8 = 10;

/// How the job answers its topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workflow {
    /// One model call answers the topic.
    Simple,
    /// Two stages: an outline, then a document written from it.
    Planner,
    /// A draft, then up to `max_iterations` rounds of critique and revision.
    Critic,
}

impl Workflow {
    const ALL: [Workflow; 3] = [Workflow::Simple, Workflow::Planner, Workflow::Critic];

    /// The name a payload gives it.
    pub fn name(self) -> &'static str {
        match self {
            Workflow::Simple => "simple",
            Workflow::Planner => "planner",
            Workflow::Critic => "critic",
        }
    }
}

/// Which stage of its workflow a job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The first: the answer (simple), the outline (planner), the draft (critic).
    First,
    /// Planner, stage 2: the document, written from the outline.
    Document { outline: String },
    /// Critic: one round of critique (and revision, unless approved).
    Review { draft: String, round: u8 },
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::First => "first",
            Stage::Document { .. } => "document",
            Stage::Review { .. } => "review",
        }
    }
}

/// A checked document payload, e.g. `{"topic": "Rust error handling", "sections": 4}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// What the document is about: a non-blank string of at most
    /// [`MAX_TOPIC_CHARS`], trimmed.
    pub topic: String,
    /// How many sections the outline has: 1..=[`MAX_SECTIONS`], by default
    /// [`DEFAULT_SECTIONS`].
    pub sections: u8,
    /// [`Workflow::Planner`] unless the payload says otherwise.
    pub workflow: Workflow,
    /// Rounds of the critic workflow: 1..=[`MAX_ITERATIONS`], by default
    /// [`DEFAULT_ITERATIONS`].
    pub max_iterations: u8,
    pub stage: Stage,
    /// Design D's task the caller started with the message
    /// (POST /api/v1/sessions/{sid}/tasks with `task_id` or `task_type`): the
    /// final answer completes it. Carried from stage to stage.
    pub task_id: Option<String>,
}

impl Payload {
    /// Parses and checks a payload, or says what is wrong with it (the reason
    /// the client gets back when `admit` refuses the job).
    pub fn parse(json: &str) -> Result<Self, PayloadError> {
        let mut fields = spool_sdk::payload::object(json)?;
        // A session task's body (POST /api/v1/sessions/{sid}/tasks) arrives as
        // the client sent it, with two fields spelt its own way.
        for (task_name, name) in [("task_description", "topic"), ("max_iterations", "maxIterations")] {
            if let Some(value) = fields.remove(task_name) {
                fields.entry(name).or_insert(value);
            }
        }

        let topic = match fields.get("topic").and_then(Value::as_str) {
            Some(topic) if !topic.trim().is_empty() => topic,
            _ => return Err(PayloadError::new("payload.topic must be a non-empty string")),
        };
        let length = topic.chars().count();
        if length > MAX_TOPIC_CHARS {
            return Err(PayloadError::new(format!(
                "payload.topic is {length} characters long; the limit is {MAX_TOPIC_CHARS}"
            )));
        }
        let topic = topic.trim().to_owned();

        let sections = count(&fields, "sections", MAX_SECTIONS, Some(DEFAULT_SECTIONS))?;

        let workflow = match present(&fields, "workflow") {
            None => Workflow::Planner,
            Some(name) => Workflow::ALL
                .into_iter()
                .find(|workflow| name.as_str() == Some(workflow.name()))
                .ok_or_else(|| {
                    PayloadError::new(format!(
                        "payload.workflow must be \"simple\", \"planner\" or \"critic\", not {name}"
                    ))
                })?,
        };

        let max_iterations = count(&fields, "maxIterations", MAX_ITERATIONS, Some(DEFAULT_ITERATIONS))?;

        let text = |name: &str| match fields.get(name).and_then(Value::as_str) {
            Some(text) if !text.trim().is_empty() => Ok(text.to_owned()),
            _ => Err(PayloadError::new(format!("payload.{name} must be a non-empty string"))),
        };
        let stage = match (fields.get("stage").and_then(Value::as_str), workflow) {
            (None, _) => Stage::First,
            (Some("document"), Workflow::Planner) => Stage::Document {
                outline: text("outline")?,
            },
            (Some("review"), Workflow::Critic) => Stage::Review {
                draft: text("draft")?,
                round: count(&fields, "round", max_iterations, None)?,
            },
            (Some(stage), workflow) => {
                return Err(PayloadError::new(format!(
                    "payload.stage `{stage}` is not a stage of the {} workflow",
                    workflow.name()
                )));
            }
        };

        let task_id = match present(&fields, "task_id") {
            None => None,
            Some(Value::String(id)) if !id.is_empty() => Some(id.clone()),
            Some(other) => {
                return Err(PayloadError::new(format!(
                    "payload.task_id must be a non-empty string, not {other}"
                )));
            }
        };

        Ok(Self {
            topic,
            sections,
            workflow,
            max_iterations,
            stage,
            task_id,
        })
    }

    /// The payload of the job that runs `stage` next: this one's fields with
    /// the stage's own.
    pub fn next(&self, stage: Stage) -> String {
        let mut next = json!({
            "topic": self.topic,
            "sections": self.sections,
            "workflow": self.workflow.name(),
            "maxIterations": self.max_iterations,
        });
        if let Some(task_id) = &self.task_id {
            next["task_id"] = task_id.as_str().into();
        }
        match stage {
            Stage::First => {}
            Stage::Document { outline } => {
                next["stage"] = "document".into();
                next["outline"] = outline.into();
            }
            Stage::Review { draft, round } => {
                next["stage"] = "review".into();
                next["draft"] = draft.into();
                next["round"] = round.into();
            }
        }
        next.to_string()
    }
}

/// The field `name`, unless it is absent or `null` (both mean "the default").
fn present<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).filter(|value| !value.is_null())
}

/// The field `name` as an integer in 1..=`max`; `default` when it is absent,
/// and refused when there is no default.
fn count(fields: &Map<String, Value>, name: &str, max: u8, default: Option<u8>) -> Result<u8, PayloadError> {
    let value = present(fields, name);
    if let (None, Some(default)) = (value, default) {
        return Ok(default);
    }
    value
        .and_then(spool_sdk::payload::whole_number)
        .and_then(|n| u8::try_from(n).ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            let given = value.map(|value| format!(", not {value}")).unwrap_or_default();
            PayloadError::new(format!("payload.{name} must be an integer from 1 to {max}{given}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(topic: &str, sections: u8) -> Payload {
        Payload {
            topic: topic.to_owned(),
            sections,
            workflow: Workflow::Planner,
            max_iterations: DEFAULT_ITERATIONS,
            stage: Stage::First,
            task_id: None,
        }
    }

    fn reason(json: &str) -> String {
        Payload::parse(json).expect_err("payload should be refused").into()
    }

    #[test]
    fn the_next_stage_keeps_the_fields() {
        let first = Payload::parse(r#"{"topic": "Tides", "sections": 2}"#).unwrap();
        let next = first.next(Stage::Document {
            outline: "1. Moon".into(),
        });
        let second = Payload::parse(&next).unwrap();
        assert_eq!(
            second.stage,
            Stage::Document {
                outline: "1. Moon".into()
            }
        );
        assert_eq!((second.topic.as_str(), second.sections), ("Tides", 2));
        let critic = Payload::parse(r#"{"topic": "Tides", "workflow": "critic", "maxIterations": 3}"#).unwrap();
        let review = Payload::parse(&critic.next(Stage::Review {
            draft: "d".into(),
            round: 3,
        }))
        .unwrap();
        assert_eq!(
            review.stage,
            Stage::Review {
                draft: "d".into(),
                round: 3
            }
        );
    }

    #[test]
    fn the_next_stage_carries_no_message() {
        let session_task = r#"{"topic": "T", "message": {"sessionId": "s", "messageId": "m"}}"#;
        let next = Payload::parse(session_task)
            .unwrap()
            .next(Stage::Document { outline: "o".into() });
        assert!(serde_json::from_str::<Value>(&next).unwrap().get("message").is_none());
    }

    #[test]
    fn refuses_a_stage_that_does_not_fit() {
        for (json, problem) in [
            (r#"{"topic": "T", "stage": "document"}"#, "payload.outline"),
            (r#"{"topic": "T", "stage": "review"}"#, "not a stage of the planner"),
            (
                r#"{"topic": "T", "workflow": "critic", "stage": "review", "draft": "d", "round": 3}"#,
                "payload.round must be an integer from 1 to 2, not 3",
            ),
            (
                r#"{"topic": "T", "workflow": "critic", "stage": "review", "draft": "d"}"#,
                "payload.round must be an integer from 1 to 2",
            ),
            (r#"{"topic": "T", "stage": "lunch"}"#, "`lunch`"),
        ] {
            assert!(reason(json).contains(problem), "{json}: {}", reason(json));
        }
    }

    #[test]
    fn reads_workflow_and_rounds() {
        let parsed = Payload::parse(r#"{"topic": "Tides", "workflow": "critic", "maxIterations": 4, "message": {}}"#);
        assert_eq!(
            parsed.map(|p| (p.workflow, p.max_iterations)),
            Ok((Workflow::Critic, 4))
        );
        for workflow in Workflow::ALL {
            let json = format!(r#"{{"topic": "Tides", "workflow": "{}"}}"#, workflow.name());
            assert_eq!(Payload::parse(&json).map(|p| p.workflow), Ok(workflow));
        }
        for rounds in [1, 10] {
            let json = format!(r#"{{"topic": "Tides", "maxIterations": {rounds}}}"#);
            assert_eq!(Payload::parse(&json).map(|p| p.max_iterations), Ok(rounds));
        }
    }

    /// What the session task route refused before the guest checked it alone.
    #[test]
    fn refuses_an_unknown_workflow() {
        for name in [r#""chaos""#, r#""""#, r#""Planner""#, "3", "[]"] {
            assert_eq!(
                reason(&format!(r#"{{"topic": "T", "workflow": {name}}}"#)),
                format!(r#"payload.workflow must be "simple", "planner" or "critic", not {name}"#)
            );
        }
    }

    #[test]
    fn refuses_rounds_out_of_range() {
        for rounds in ["0", "11", "-1", "2.5", "\"3\"", "4294967297"] {
            assert_eq!(
                reason(&format!(r#"{{"topic": "T", "maxIterations": {rounds}}}"#)),
                format!("payload.maxIterations must be an integer from 1 to 10, not {rounds}")
            );
        }
    }

    #[test]
    fn reads_topic_and_sections() {
        assert_eq!(
            Payload::parse(r#"{"topic": " Tides ", "sections": 5}"#),
            Ok(payload("Tides", 5))
        );
        assert_eq!(
            Payload::parse(r#"{"topic": "Tides", "sections": 10}"#),
            Ok(payload("Tides", 10))
        );
    }

    #[test]
    fn sections_default_to_three() {
        assert_eq!(Payload::parse(r#"{"topic": "Tides"}"#), Ok(payload("Tides", 3)));
        assert_eq!(
            Payload::parse(r#"{"topic": "Tides", "sections": null}"#),
            Ok(payload("Tides", 3))
        );
    }

    #[test]
    fn refuses_a_missing_or_blank_topic() {
        for json in [
            r#"{}"#,
            r#"{"topic": ""}"#,
            r#"{"topic": " \t"}"#,
            r#"{"topic": ["x"]}"#,
        ] {
            assert_eq!(reason(json), "payload.topic must be a non-empty string", "{json}");
        }
    }

    #[test]
    fn refuses_an_overlong_topic() {
        let at_limit = format!(r#"{{"topic": " {} "}}"#, "é".repeat(MAX_TOPIC_CHARS - 2));
        assert!(Payload::parse(&at_limit).is_ok());

        // Counted as sent: blanks around the topic count too.
        let over = format!(r#"{{"topic": " {} "}}"#, "é".repeat(MAX_TOPIC_CHARS - 1));
        assert_eq!(
            reason(&over),
            "payload.topic is 10001 characters long; the limit is 10000"
        );
    }

    #[test]
    fn refuses_sections_out_of_range() {
        for sections in ["0", "11", "-1", "2.5", "\"3\"", "300", "11.0"] {
            let json = format!(r#"{{"topic": "Tides", "sections": {sections}}}"#);
            assert_eq!(
                reason(&json),
                format!("payload.sections must be an integer from 1 to 10, not {sections}"),
                "{json}"
            );
        }
    }

    #[test]
    fn a_whole_number_may_be_written_as_a_float() {
        let payload = Payload::parse(r#"{"topic": "Tides", "sections": 4.0}"#).unwrap();
        assert_eq!(payload.sections, 4);
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        assert!(reason("{").starts_with("payload is not valid JSON"));
        assert_eq!(reason("[]"), "payload must be a JSON object");
    }
}
