//! The embedding job body: `{"texts": [string], "model"?: string}`.
//!
//! Owns [`Payload`] and its refusals; it must not call the model.

use serde_json::Value;
use spool_sdk::PayloadError;

/// Most texts one job may embed.
pub const MAX_TEXTS: usize = 256;
/// Longest text accepted, in characters.
pub const MAX_TEXT_CHARS: usize = 32_000;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload {
    /// 1..=[`MAX_TEXTS`] texts, each 1..=[`MAX_TEXT_CHARS`] characters.
    pub texts: Vec<String>,
    /// `None`: the host's default embedding model.
    pub model: Option<String>,
}

impl Payload {
    pub fn parse(json: &str) -> Result<Self, PayloadError> {
        let fields = spool_sdk::payload::object(json)?;
        let Some(Value::Array(items)) = fields.get("texts") else {
            return Err(PayloadError::new("payload.texts must be an array of strings"));
        };
        if items.is_empty() || items.len() > MAX_TEXTS {
            return Err(PayloadError::new(format!(
                "payload.texts must hold 1 to {MAX_TEXTS} texts, not {}",
                items.len()
            )));
        }
        let mut texts = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            match item {
                Value::String(text) if !text.is_empty() && text.chars().count() <= MAX_TEXT_CHARS => {
                    texts.push(text.clone())
                }
                _ => {
                    return Err(PayloadError::new(format!(
                        "payload.texts[{index}] must be a string of 1 to {MAX_TEXT_CHARS} characters"
                    )));
                }
            }
        }
        let model = match fields.get("model") {
            None | Some(Value::Null) => None,
            Some(Value::String(model)) if !model.is_empty() => Some(model.clone()),
            Some(_) => return Err(PayloadError::new("payload.model must be a non-empty string")),
        };
        Ok(Self { texts, model })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_model_are_read() {
        let payload = Payload::parse(r#"{"texts":["a","b"],"model":"m"}"#).unwrap();
        assert_eq!(payload.texts, ["a", "b"]);
        assert_eq!(payload.model.as_deref(), Some("m"));
    }

    #[test]
    fn bad_texts_are_refused_by_name() {
        for (body, field) in [
            (r#"{}"#, "payload.texts"),
            (r#"{"texts":[]}"#, "payload.texts"),
            (r#"{"texts":["a",3]}"#, "payload.texts[1]"),
            (r#"{"texts":[""]}"#, "payload.texts[0]"),
            (r#"{"texts":["a"],"model":7}"#, "payload.model"),
        ] {
            let error = Payload::parse(body).unwrap_err();
            assert!(error.reason().starts_with(field), "{body}: {error}");
        }
    }
}
