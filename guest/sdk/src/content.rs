//! Plain content blocks and their conversion into the generated
//! [`ContentBlock`](crate::ContentBlock).
//!
//! Owns [`Block`]: the kinds of block a handler's parser produces from a
//! model's text. It must not parse anything itself; how an answer is split is
//! the handler's rule. Media and placeholder blocks are built with the
//! generated type directly.

use crate::bindings::spool::handler::types as wit;

/// A typed piece of an answer: the text-based WIT `content-block` variants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Text(String),
    Markdown(String),
    Html(String),
    Code {
        language: Option<String>,
        code: String,
    },
    /// JSON text that parses (the host stores it as is).
    Json(String),
    /// The model's reasoning, e.g. from a `<think>` section.
    Thinking(String),
}

impl From<Block> for wit::ContentBlock {
    fn from(block: Block) -> Self {
        match block {
            Block::Text(text) => wit::ContentBlock::Text(text),
            Block::Markdown(markdown) => wit::ContentBlock::Markdown(markdown),
            Block::Html(html) => wit::ContentBlock::Html(html),
            Block::Code { language, code } => wit::ContentBlock::Code(wit::CodeBlock { language, code }),
            Block::Json(json) => wit::ContentBlock::Json(json),
            Block::Thinking(thinking) => wit::ContentBlock::Thinking(thinking),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_becomes_its_variant() {
        let code = wit::CodeBlock {
            language: Some("rust".to_owned()),
            code: "fn main() {}".to_owned(),
        };
        let cases = [
            (Block::Text("t".into()), wit::ContentBlock::Text("t".into())),
            (Block::Markdown("# m".into()), wit::ContentBlock::Markdown("# m".into())),
            (Block::Html("<p>".into()), wit::ContentBlock::Html("<p>".into())),
            (
                Block::Code {
                    language: Some("rust".into()),
                    code: "fn main() {}".into(),
                },
                wit::ContentBlock::Code(code),
            ),
            (Block::Json("{}".into()), wit::ContentBlock::Json("{}".into())),
            (Block::Thinking("hm".into()), wit::ContentBlock::Thinking("hm".into())),
        ];
        for (block, expected) in cases {
            assert_eq!(wit::ContentBlock::from(block), expected);
        }
    }
}
