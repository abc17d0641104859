//! The document job body: `{"topic": string, "sections"?: 1..=10,
//! "workflow"?: "simple" | "planner" | "critic", "maxIterations"?: 1..=10}`, and
//! how it is checked. Other fields are ignored.
//!
//! Each stage of a workflow is a job of its own. A client submits the first
//! stage; the job of each later stage is a follow-up queued by the previous
//! one, with the same fields plus `"stage"` and what the stage works from:
//! `{"stage": "document", "outline": …}` (planner) or
//! `{"stage": "review", "draft": …, "round": 1..=maxIterations}` (critic).

use serde_json::Value;

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
    /// Design C's two stages: an outline, then a document written from it.
    Planner,
    /// A draft, then up to `max_iterations` rounds of critique and revision.
    Critic,
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
    /// What the document is about: a non-blank string, trimmed.
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
}

impl Payload {
    /// Parses and checks a payload, or says what is wrong with it (the reason
    /// the client gets back when `admit` refuses the job).
    pub fn parse(json: &str) -> Result<Self, String> {
        let value: Value = serde_json::from_str(json).map_err(|err| format!("payload is not valid JSON: {err}"))?;
        let Value::Object(fields) = value else {
            return Err("payload must be a JSON object".to_owned());
        };

        let topic = match fields.get("topic").and_then(Value::as_str).map(str::trim) {
            Some(topic) if !topic.is_empty() => topic.to_owned(),
            _ => return Err("payload.topic must be a non-empty string".to_owned()),
        };

        let sections = match fields.get("sections") {
            None | Some(Value::Null) => DEFAULT_SECTIONS,
            Some(sections) => sections
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .filter(|n| (1..=MAX_SECTIONS).contains(n))
                .ok_or_else(|| format!("payload.sections must be an integer from 1 to {MAX_SECTIONS}"))?,
        };

        let workflow = match fields.get("workflow") {
            None | Some(Value::Null) => Workflow::Planner,
            Some(Value::String(name)) if name == "simple" => Workflow::Simple,
            Some(Value::String(name)) if name == "planner" => Workflow::Planner,
            Some(Value::String(name)) if name == "critic" => Workflow::Critic,
            Some(_) => return Err("payload.workflow must be \"simple\", \"planner\" or \"critic\"".to_owned()),
        };

        let max_iterations = match fields.get("maxIterations") {
            None | Some(Value::Null) => DEFAULT_ITERATIONS,
            Some(rounds) => rounds
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .filter(|n| (1..=MAX_ITERATIONS).contains(n))
                .ok_or_else(|| format!("payload.maxIterations must be an integer from 1 to {MAX_ITERATIONS}"))?,
        };

        let text = |name: &str| match fields.get(name).and_then(Value::as_str) {
            Some(text) if !text.trim().is_empty() => Ok(text.to_owned()),
            _ => Err(format!("payload.{name} must be a non-empty string")),
        };
        let stage = match (fields.get("stage").and_then(Value::as_str), workflow) {
            (None, _) => Stage::First,
            (Some("document"), Workflow::Planner) => Stage::Document {
                outline: text("outline")?,
            },
            (Some("review"), Workflow::Critic) => Stage::Review {
                draft: text("draft")?,
                round: fields
                    .get("round")
                    .and_then(Value::as_u64)
                    .and_then(|n| u8::try_from(n).ok())
                    .filter(|n| (1..=max_iterations).contains(n))
                    .ok_or_else(|| format!("payload.round must be an integer from 1 to {max_iterations}"))?,
            },
            (Some(stage), workflow) => {
                return Err(format!(
                    "payload.stage `{stage}` is not a stage of the {workflow:?} workflow"
                ));
            }
        };

        Ok(Self {
            topic,
            sections,
            workflow,
            max_iterations,
            stage,
        })
    }

    /// The payload of the job that runs `stage` next: this one's fields with
    /// the stage's own.
    pub fn next(&self, stage: Stage) -> String {
        let workflow = match self.workflow {
            Workflow::Simple => "simple",
            Workflow::Planner => "planner",
            Workflow::Critic => "critic",
        };
        let mut next = serde_json::json!({
            "topic": self.topic,
            "sections": self.sections,
            "workflow": workflow,
            "maxIterations": self.max_iterations,
        });
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
        }
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
    fn refuses_a_stage_that_does_not_fit() {
        for (json, problem) in [
            (r#"{"topic": "T", "stage": "document"}"#, "payload.outline"),
            (r#"{"topic": "T", "stage": "review"}"#, "not a stage of the Planner"),
            (
                r#"{"topic": "T", "workflow": "critic", "stage": "review", "draft": "d", "round": 3}"#,
                "payload.round",
            ),
            (r#"{"topic": "T", "stage": "lunch"}"#, "`lunch`"),
        ] {
            assert!(
                Payload::parse(json).is_err_and(|reason| reason.contains(problem)),
                "{json}"
            );
        }
    }

    #[test]
    fn reads_workflow_and_rounds() {
        let parsed = Payload::parse(r#"{"topic": "Tides", "workflow": "critic", "maxIterations": 4, "message": {}}"#);
        assert_eq!(
            parsed.map(|p| (p.workflow, p.max_iterations)),
            Ok((Workflow::Critic, 4))
        );
        assert_eq!(
            Payload::parse(r#"{"topic": "Tides", "workflow": "simple"}"#).map(|p| p.workflow),
            Ok(Workflow::Simple)
        );
        assert!(Payload::parse(r#"{"topic": "Tides", "workflow": "chaos"}"#).is_err_and(|r| r.contains("workflow")));
        assert!(
            Payload::parse(r#"{"topic": "Tides", "maxIterations": 0}"#).is_err_and(|r| r.contains("maxIterations"))
        );
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
            assert_eq!(
                Payload::parse(json),
                Err("payload.topic must be a non-empty string".to_owned()),
                "{json}"
            );
        }
    }

    #[test]
    fn refuses_sections_out_of_range() {
        for sections in ["0", "11", "-1", "2.5", "\"3\"", "300"] {
            let json = format!(r#"{{"topic": "Tides", "sections": {sections}}}"#);
            assert_eq!(
                Payload::parse(&json),
                Err("payload.sections must be an integer from 1 to 10".to_owned()),
                "{json}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        assert!(Payload::parse("{").is_err_and(|reason| reason.starts_with("payload is not valid JSON")));
        assert_eq!(Payload::parse("[]"), Err("payload must be a JSON object".to_owned()));
    }
}
