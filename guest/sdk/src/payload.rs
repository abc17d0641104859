//! Reading a job's JSON payload, with a refusal that says which field is wrong.
//!
//! Owns [`PayloadError`] and how it reaches the host: `?` turns it into
//! `admit`'s refusal (a `String`, sent to the client with HTTP 422) and into
//! `handle`'s [`JobError::Reject`] (a bad payload will not get better on a
//! retry). It must not know any payload's fields; those are the handler's.

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{Job, JobError};

/// Why a payload was refused: one sentence, naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PayloadError(String);

impl PayloadError {
    /// A refusal with a handler's own reason, e.g.
    /// `"payload.topic must be a non-empty string"`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PayloadError {}

/// `admit`'s refusal.
impl From<PayloadError> for String {
    fn from(error: PayloadError) -> Self {
        error.0
    }
}

/// `handle`'s refusal: final, since the same payload fails the same way again.
impl From<PayloadError> for JobError {
    fn from(error: PayloadError) -> Self {
        JobError::Reject(error.0)
    }
}

/// Reads `json` into `T`. A refusal names the path of the field at fault, e.g.
/// ``payload.history[1].role: unknown variant `bot`, expected one of …``.
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PayloadError> {
    // Read as a `Value` first: a syntax error then says where in the text it
    // is, and a type error says where in the data, without line and column.
    let value: Value = serde_json::from_str(json).map_err(not_json)?;
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = if path == "." { String::new() } else { format!(".{path}") };
        PayloadError(format!("payload{field}: {}", error.inner()))
    })
}

/// A whole number, however the client wrote it: JSON has one number type, so
/// `2.0` is the integer 2 (as JSON Schema says too).
pub fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|n| n.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(n))
            .map(|n| n as u64)
    })
}

/// Reads `json` as a JSON object, for handlers that check its fields one by one.
pub fn object(json: &str) -> Result<Map<String, Value>, PayloadError> {
    match serde_json::from_str(json).map_err(not_json)? {
        Value::Object(fields) => Ok(fields),
        _ => Err(PayloadError::new("payload must be a JSON object")),
    }
}

fn not_json(error: serde_json::Error) -> PayloadError {
    PayloadError(format!("payload is not valid JSON: {error}"))
}

impl Job {
    /// The job's payload read into `T`; see [`parse`].
    pub fn parse_payload<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        parse(&self.payload)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;
    use crate::chat::Message;
    use crate::{PriorityClass, PriorityDecision};

    #[derive(Debug, Deserialize, PartialEq)]
    struct Ask {
        prompt: String,
        #[serde(default)]
        history: Vec<Message>,
        #[serde(default)]
        rounds: Option<u8>,
    }

    fn reason<T: DeserializeOwned + fmt::Debug>(json: &str) -> String {
        parse::<T>(json).expect_err("payload should be refused").to_string()
    }

    #[test]
    fn reads_a_payload_into_its_type() {
        let ask: Ask = parse(r#"{"prompt": "hi", "history": [{"role": "user", "content": "x"}]}"#).unwrap();
        assert_eq!(
            ask,
            Ask {
                prompt: "hi".to_owned(),
                history: vec![Message::user("x")],
                rounds: None,
            }
        );
    }

    #[test]
    fn a_refusal_names_the_field() {
        assert_eq!(
            reason::<Ask>(r#"{"prompt": 4}"#),
            "payload.prompt: invalid type: integer `4`, expected a string"
        );
        assert_eq!(
            reason::<Ask>(r#"{"prompt": "x", "rounds": 300}"#),
            "payload.rounds: invalid value: integer `300`, expected u8"
        );
        assert_eq!(
            reason::<Ask>(
                r#"{"prompt": "x", "history": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]}"#
            ),
            "payload.history[1].role: unknown variant `bot`, expected one of `system`, `user`, `assistant`, `tool`"
        );
        assert_eq!(reason::<Ask>(r#"{}"#), "payload: missing field `prompt`");
    }

    #[test]
    fn a_refusal_says_when_it_is_not_json() {
        assert_eq!(
            reason::<Ask>(r#"{"prompt": "#),
            "payload is not valid JSON: EOF while parsing a value at line 1 column 11"
        );
        assert_eq!(object("[1]").unwrap_err().reason(), "payload must be a JSON object");
        assert!(
            object("nope")
                .unwrap_err()
                .reason()
                .starts_with("payload is not valid JSON: ")
        );
        assert_eq!(object(r#"{"a": 1}"#).unwrap()["a"], 1);
    }

    /// `?` in `admit` refuses the job; in `handle` it rejects it.
    #[test]
    fn question_mark_refuses_in_admit_and_rejects_in_handle() {
        fn admit(job: &Job) -> Result<PriorityDecision, String> {
            let _: Ask = job.parse_payload()?;
            Ok(PriorityDecision {
                class: PriorityClass::Normal,
                score: 5,
            })
        }
        fn handle(job: &Job) -> Result<String, JobError> {
            let ask: Ask = job.parse_payload()?;
            Ok(ask.prompt)
        }
        let job = |payload: &str| Job {
            id: "j".to_owned(),
            queue: "q".to_owned(),
            user_id: String::new(),
            user_tier: String::new(),
            priority: 5,
            payload: payload.to_owned(),
            attempt: 1,
        };

        let bad = job(r#"{"prompt": null}"#);
        let refusal = "payload.prompt: invalid type: null, expected a string";
        assert_eq!(admit(&bad), Err(refusal.to_owned()));
        assert_eq!(handle(&bad), Err(JobError::Reject(refusal.to_owned())));
        assert_eq!(handle(&job(r#"{"prompt": "ok"}"#)), Ok("ok".to_owned()));
    }
}
