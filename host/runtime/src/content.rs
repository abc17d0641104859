//! Content blocks as JSON: the stored and public form of a handler's typed
//! blocks, `{"type": "code", "language": "rust", "code": "..."}` and so on.

use serde_json::{Map, Value, json};

use crate::bindings::types::{ContentBlock, Media, MediaSource};

pub fn blocks_to_json(blocks: &[ContentBlock]) -> Value {
    Value::Array(blocks.iter().map(block_to_json).collect())
}

pub fn block_to_json(block: &ContentBlock) -> Value {
    match block {
        ContentBlock::Text(text) => json!({ "type": "text", "text": text }),
        ContentBlock::Markdown(text) => json!({ "type": "markdown", "text": text }),
        ContentBlock::Html(text) => json!({ "type": "html", "html": text }),
        ContentBlock::Code(code) => {
            json!({ "type": "code", "language": code.language, "code": code.code })
        }
        // Checked to parse by the guest contract; kept as text if it does not.
        ContentBlock::Json(text) => {
            json!({ "type": "json", "json": serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.clone())) })
        }
        ContentBlock::Thinking(text) => json!({ "type": "thinking", "text": text }),
        ContentBlock::Image(media) => media_to_json("image", media),
        ContentBlock::Audio(media) => media_to_json("audio", media),
        ContentBlock::Video(media) => media_to_json("video", media),
        ContentBlock::File(media) => media_to_json("file", media),
        ContentBlock::Placeholder(p) => {
            json!({ "type": "placeholder", "taskId": p.task_id, "description": p.description })
        }
    }
}

fn media_to_json(kind: &str, media: &Media) -> Value {
    let mut object = Map::new();
    object.insert("type".into(), kind.into());
    match &media.source {
        MediaSource::Url(url) => object.insert("url".into(), url.clone().into()),
        MediaSource::Base64(data) => object.insert("base64".into(), data.clone().into()),
    };
    let optional = [
        ("mimeType", media.mime_type.clone().map(Value::from)),
        ("caption", media.caption.clone().map(Value::from)),
        ("width", media.width.map(Value::from)),
        ("height", media.height.map(Value::from)),
        ("name", media.name.clone().map(Value::from)),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            object.insert(key.into(), value);
        }
    }
    Value::Object(object)
}
