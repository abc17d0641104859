//! The chat job body: what a client may send, and how it is checked.
//!
//! Owns [`Payload`] and its refusals. It must not shape prompts: what the
//! model is sent from a payload is [`crate::prompt`]'s rule.

use serde::Deserialize;
use serde_json::{Map, Value};
use spool_sdk::PayloadError;
use spool_sdk::chat::Message;

/// The longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// A checked chat payload.
///
/// ```json
/// {
///   "prompt": "What is a UUIDv7?",
///   "conversationHistory": [{ "role": "user", "content": "Hi" }],
///   "system": "You are terse.",
///   "historyBudgetChars": 4000,
///   "model": "llama3.2",
///   "temperature": 0.7,
///   "maxTokens": 512,
///   "recallTurns": 2
/// }
/// ```
///
/// Only `prompt` is required. `prompt` and `conversationHistory` are checked
/// strictly (see [`Payload::parse`]); the other settings are optional hints,
/// taken when they have the right type and otherwise ignored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload {
    /// The user's message: a non-blank string of at most [`MAX_PROMPT_CHARS`].
    pub prompt: String,
    /// `conversationHistory`, oldest first; empty when absent or `null`. Each
    /// turn is `{role, content}` with role system, user, assistant or tool
    /// (other fields are ignored).
    pub history: Vec<Message>,
    /// `system`, when a non-blank string: replaces the default system prompt.
    pub system: Option<String>,
    /// `historyBudgetChars`, when a non-negative integer.
    pub history_budget: Option<usize>,
    /// `model`, when a string; otherwise the host's default model is used.
    pub model: Option<String>,
    /// `temperature`, when a number.
    pub temperature: Option<f32>,
    /// `maxTokens`, when an integer in 0..=u32::MAX.
    pub max_tokens: Option<u32>,
    /// `recallTurns`, when a non-negative integer: how many older turns that
    /// no longer fit the budget are recalled by similarity (0: none).
    pub recall_turns: Option<usize>,
}

impl Payload {
    /// Parses and checks a payload, or says what is wrong with it (the reason
    /// the client gets back when `admit` refuses the job).
    pub fn parse(json: &str) -> Result<Self, PayloadError> {
        let fields = spool_sdk::payload::object(json)?;

        let prompt = match fields.get("prompt") {
            Some(Value::String(prompt)) if !prompt.trim().is_empty() => prompt.clone(),
            _ => return Err(PayloadError::new("payload.prompt must be a non-empty string")),
        };
        let length = prompt.chars().count();
        if length > MAX_PROMPT_CHARS {
            return Err(PayloadError::new(format!(
                "payload.prompt is {length} characters long; the limit is {MAX_PROMPT_CHARS}"
            )));
        }

        let history = match fields.get("conversationHistory") {
            None | Some(Value::Null) => Vec::new(),
            Some(turns) => parse_history(turns)?,
        };

        Ok(Self {
            prompt,
            history,
            system: string(&fields, "system").filter(|system| !system.trim().is_empty()),
            history_budget: fields
                .get("historyBudgetChars")
                .and_then(Value::as_u64)
                .and_then(|budget| usize::try_from(budget).ok()),
            model: string(&fields, "model"),
            temperature: fields.get("temperature").and_then(Value::as_f64).map(|t| t as f32),
            max_tokens: fields
                .get("maxTokens")
                .and_then(Value::as_u64)
                .and_then(|max| u32::try_from(max).ok()),
            recall_turns: fields
                .get("recallTurns")
                .and_then(Value::as_u64)
                .and_then(|turns| usize::try_from(turns).ok()),
        })
    }
}

/// Reads `conversationHistory`: an array of `{role, content}` objects.
fn parse_history(turns: &Value) -> Result<Vec<Message>, PayloadError> {
    let Value::Array(turns) = turns else {
        return Err(PayloadError::new(
            "payload.conversationHistory must be an array of {role, content} objects",
        ));
    };
    turns
        .iter()
        .enumerate()
        .map(|(index, turn)| {
            Message::deserialize(turn).map_err(|err| {
                PayloadError::new(format!(
                    "payload.conversationHistory[{index}] must be {{role, content}} with role \
                     system, user, assistant or tool: {err}"
                ))
            })
        })
        .collect()
}

/// The field `key` when it is a string.
fn string(fields: &Map<String, Value>, key: &str) -> Option<String> {
    fields.get(key).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use spool_sdk::chat::Role;

    use super::*;

    fn reason(json: &str) -> String {
        Payload::parse(json).expect_err("payload should be refused").into()
    }

    #[test]
    fn minimal_payload() {
        let payload = Payload::parse(r#"{"prompt": "hello"}"#).unwrap();
        assert_eq!(
            payload,
            Payload {
                prompt: "hello".to_owned(),
                ..Payload::default()
            }
        );
    }

    #[test]
    fn full_payload() {
        let payload = Payload::parse(
            r#"{"prompt": "and you?", "system": "Be brief.", "historyBudgetChars": 100,
                "model": "qwen3", "temperature": 0.5, "maxTokens": 300, "recallTurns": 1, "extra": true,
                "conversationHistory": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello", "id": 7}
                ]}"#,
        )
        .unwrap();
        assert_eq!(
            payload,
            Payload {
                prompt: "and you?".to_owned(),
                history: vec![Message::new(Role::User, "hi"), Message::new(Role::Assistant, "hello")],
                system: Some("Be brief.".to_owned()),
                history_budget: Some(100),
                model: Some("qwen3".to_owned()),
                temperature: Some(0.5),
                max_tokens: Some(300),
                recall_turns: Some(1),
            }
        );
    }

    #[test]
    fn optional_settings_of_the_wrong_type_are_ignored() {
        let payload = Payload::parse(
            r#"{"prompt": "x", "system": "  ", "historyBudgetChars": -1, "model": 3,
                "temperature": "hot", "maxTokens": 1.5, "conversationHistory": null}"#,
        )
        .unwrap();
        assert_eq!(
            payload,
            Payload {
                prompt: "x".to_owned(),
                ..Payload::default()
            }
        );
    }

    #[test]
    fn refuses_a_missing_or_blank_prompt() {
        for json in [
            r#"{}"#,
            r#"{"prompt": ""}"#,
            r#"{"prompt": "  \n"}"#,
            r#"{"prompt": 42}"#,
        ] {
            assert_eq!(reason(json), "payload.prompt must be a non-empty string", "{json}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        assert!(reason("not json").starts_with("payload is not valid JSON"));
        assert_eq!(reason(r#"["prompt"]"#), "payload must be a JSON object");
        assert_eq!(reason(r#""hello""#), "payload must be a JSON object");
    }

    #[test]
    fn refuses_an_overlong_prompt() {
        let at_limit = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(MAX_PROMPT_CHARS));
        assert!(Payload::parse(&at_limit).is_ok());

        let over = format!(r#"{{"prompt": "{}"}}"#, "a".repeat(MAX_PROMPT_CHARS + 1));
        assert_eq!(
            reason(&over),
            "payload.prompt is 32001 characters long; the limit is 32000"
        );
    }

    #[test]
    fn refuses_malformed_history() {
        let not_array = reason(r#"{"prompt": "x", "conversationHistory": {"role": "user"}}"#);
        assert_eq!(
            not_array,
            "payload.conversationHistory must be an array of {role, content} objects"
        );

        for (turn, detail) in [
            (r#"{"role": "bot", "content": "hi"}"#, "unknown variant `bot`"),
            (r#"{"role": "User", "content": "hi"}"#, "unknown variant `User`"),
            (r#"{"role": "user"}"#, "missing field `content`"),
            (r#"{"role": "user", "content": 5}"#, "invalid type"),
            (r#""hi""#, "invalid type"),
        ] {
            let json =
                format!(r#"{{"prompt": "x", "conversationHistory": [{{"role": "tool", "content": ""}}, {turn}]}}"#);
            let reason = reason(&json);
            assert!(
                reason.starts_with(
                    "payload.conversationHistory[1] must be {role, content} with role system, user, assistant or tool: "
                ),
                "{reason}"
            );
            assert!(reason.contains(detail), "{reason}");
        }
    }
}
