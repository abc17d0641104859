//! The document job body: `{"topic": string, "sections"?: 1..=10}`, and how it
//! is checked.

use serde_json::Value;

/// Sections in the outline when the payload does not say.
pub const DEFAULT_SECTIONS: u8 = 3;

/// The most sections a document may ask for.
pub const MAX_SECTIONS: u8 = 10;

/// A checked document payload, e.g. `{"topic": "Rust error handling", "sections": 4}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// What the document is about: a non-blank string, trimmed.
    pub topic: String,
    /// How many sections the outline has: 1..=[`MAX_SECTIONS`], by default
    /// [`DEFAULT_SECTIONS`].
    pub sections: u8,
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

        Ok(Self { topic, sections })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(topic: &str, sections: u8) -> Payload {
        Payload {
            topic: topic.to_owned(),
            sections,
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
