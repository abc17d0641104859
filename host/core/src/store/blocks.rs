//! Content blocks as the store keeps them: the JSON shape of `crate::content`
//! (`{"type": "image", "url": ..., "caption": ...}`), checked when a client
//! sends one, given an `id` in the snapshot, and replaced there by a small
//! reference when the block is stored on its own.

use serde_json::{Map, Value};

/// Block types a client may send. `placeholder` is not among them: only a
/// task creates one, and only the task's end removes it.
const TEXT_TYPES: &[(&str, &str)] = &[
    ("text", "text"),
    ("markdown", "text"),
    ("thinking", "text"),
    ("html", "html"),
];
const MEDIA_TYPES: &[&str] = &["image", "audio", "video", "file"];
/// Small descriptive fields a reference keeps, so a client can lay out a
/// block (caption, size) before loading it.
const REFERENCE_KEEPS: &[&str] = &["mimeType", "caption", "width", "height", "name", "language"];

/// A whole number, however written: JSON has one number type, so `640.0` is 640.
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|n| n.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(n))
            .map(|n| n as u64)
    })
}

/// Checks a client's block; the error names the problem.
pub fn validate_block(block: &Value) -> Result<(), String> {
    let Value::Object(fields) = block else {
        return Err("a content block must be a JSON object".into());
    };
    let kind = fields
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a content block needs a string `type`")?;
    let string = |name: &str| -> Result<(), String> {
        match fields.get(name) {
            Some(Value::String(_)) => Ok(()),
            _ => Err(format!("a `{kind}` block needs a string `{name}`")),
        }
    };
    let optional_string = |name: &str| -> Result<(), String> {
        match fields.get(name) {
            None | Some(Value::Null | Value::String(_)) => Ok(()),
            Some(_) => Err(format!("`{name}` of a `{kind}` block must be a string")),
        }
    };
    if let Some((_, field)) = TEXT_TYPES.iter().find(|(name, _)| *name == kind) {
        return string(field);
    }
    match kind {
        "code" => {
            string("code")?;
            optional_string("language")
        }
        "json" => fields
            .get("json")
            .map(|_| ())
            .ok_or_else(|| "a `json` block needs a `json` value".into()),
        media if MEDIA_TYPES.contains(&media) => {
            match (fields.get("url"), fields.get("base64")) {
                (Some(Value::String(_)), None) | (None, Some(Value::String(_))) => {}
                _ => {
                    return Err(format!(
                        "a `{kind}` block needs exactly one of `url` and `base64`, as a string"
                    ));
                }
            }
            for name in ["mimeType", "caption", "name"] {
                optional_string(name)?;
            }
            for name in ["width", "height"] {
                match fields.get(name) {
                    None | Some(Value::Null) => {}
                    Some(value)
                        if whole_number(value).is_some_and(|n| n <= u64::from(u32::MAX)) => {}
                    Some(_) => {
                        return Err(format!(
                            "`{name}` of a `{kind}` block must be a whole number of pixels"
                        ));
                    }
                }
            }
            Ok(())
        }
        "placeholder" => Err("placeholder blocks are created by tasks, not sent".into()),
        other => Err(format!(
            "unknown content type `{other}`; known: text, markdown, html, code, json, thinking, image, audio, video, file"
        )),
    }
}

/// The block as the snapshot holds it inline: its fields plus its `id`.
pub fn with_id(id: &str, block: &Value) -> Value {
    let mut object = match block {
        Value::Object(fields) => fields.clone(),
        other => Map::from_iter([("value".to_owned(), other.clone())]),
    };
    object.insert("id".into(), id.into());
    Value::Object(object)
}

/// What the snapshot holds for a block stored on its own.
pub fn reference(id: &str, block: &Value, bytes: usize) -> Value {
    let mut object = Map::new();
    object.insert("id".into(), id.into());
    object.insert(
        "type".into(),
        block.get("type").cloned().unwrap_or(Value::Null),
    );
    object.insert("contentId".into(), id.into());
    object.insert("bytes".into(), bytes.into());
    object.insert("stored".into(), "separate".into());
    for name in REFERENCE_KEEPS {
        if let Some(value) = block
            .get(*name)
            .filter(|v| !v.is_null() && v.to_string().len() <= 256)
        {
            object.insert((*name).into(), value.clone());
        }
    }
    Value::Object(object)
}

/// Whether a snapshot entry is a reference to a separately stored block.
pub fn content_id(entry: &Value) -> Option<&str> {
    entry.get("contentId").and_then(Value::as_str)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn accepts_every_client_type() {
        for block in [
            json!({"type": "text", "text": "hi"}),
            json!({"type": "markdown", "text": "# hi"}),
            json!({"type": "thinking", "text": "hmm"}),
            json!({"type": "html", "html": "<p>hi</p>"}),
            json!({"type": "code", "code": "fn main() {}", "language": "rust"}),
            json!({"type": "json", "json": {"a": 1}}),
            json!({"type": "image", "url": "https://x/y.png", "caption": "y", "width": 10, "height": 20}),
            json!({"type": "image", "base64": "AAAA", "mimeType": "image/png"}),
            json!({"type": "audio", "url": "https://x/a.mp3"}),
            json!({"type": "video", "url": "https://x/v.mp4"}),
            json!({"type": "file", "base64": "AAAA", "name": "a.bin"}),
        ] {
            assert_eq!(validate_block(&block), Ok(()), "{block}");
        }
    }

    #[test]
    fn names_what_is_wrong() {
        let cases = [
            (json!("text"), "JSON object"),
            (json!({"text": "x"}), "string `type`"),
            (json!({"type": "text"}), "string `text`"),
            (
                json!({"type": "image", "url": "a", "base64": "b"}),
                "exactly one of",
            ),
            (
                json!({"type": "image", "url": "a", "width": -1}),
                "whole number",
            ),
            (
                json!({"type": "placeholder", "taskId": "t"}),
                "created by tasks",
            ),
            (json!({"type": "sticker"}), "unknown content type `sticker`"),
        ];
        for (block, expected) in cases {
            let error = validate_block(&block).expect_err("must be refused");
            assert!(error.contains(expected), "{block}: {error}");
        }
    }

    #[test]
    fn a_reference_keeps_the_layout_fields_but_not_the_bytes() {
        let block = json!({"type": "image", "base64": "A".repeat(50_000), "caption": "cat", "width": 640, "height": 480});
        let entry = reference("b1", &block, 50_100);
        assert_eq!(
            entry,
            json!({"id": "b1", "type": "image", "contentId": "b1", "bytes": 50_100, "stored": "separate", "caption": "cat", "width": 640, "height": 480})
        );
        assert_eq!(content_id(&entry), Some("b1"));
        assert_eq!(
            content_id(&with_id("b2", &json!({"type": "text", "text": "x"}))),
            None
        );
    }
}
