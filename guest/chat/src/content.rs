//! Content-block handling: splitting a model's answer into typed blocks.
//!
//! The answer is read left to right:
//!
//! - `<think>…</think>` becomes a **thinking** block (an unclosed `<think>`
//!   runs to the end of the text);
//! - a ```` ```json ```` fence becomes a **json** block when its body parses
//!   as JSON, and a **code** block with language `json` when it does not;
//! - any other ```` ``` ```` fence becomes a **code** block whose language is
//!   the first word of the info string (none when it is empty); an unclosed
//!   fence runs to the end of the text;
//! - the text between them becomes **text** blocks, trimmed, blank ones
//!   dropped. Text is kept as written, Markdown included: this handler does not
//!   guess whether prose is Markdown, so it never emits `markdown` blocks.
//!
//! Fences and think tags are recognised anywhere, not only at the start of a
//! line; inside a fence or a thinking section nothing else is recognised.
//!
//! Owns only this splitting. The block shapes are the SDK's [`Block`], and
//! nothing here calls the host, so `parse-content` stays a pure rule.

use spool_sdk::content::Block;

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const FENCE: &str = "```";

/// Splits `text` into blocks, in order.
pub fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut rest = text;
    loop {
        let think = rest.find(THINK_OPEN);
        let fence = rest.find(FENCE);
        match (think, fence) {
            (Some(at), fence) if fence.is_none_or(|fence| at < fence) => {
                push_text(&mut blocks, &rest[..at]);
                let (thinking, after) = split_at_marker(&rest[at + THINK_OPEN.len()..], THINK_CLOSE);
                let thinking = thinking.trim();
                if !thinking.is_empty() {
                    blocks.push(Block::Thinking(thinking.to_owned()));
                }
                rest = after;
            }
            (_, Some(at)) => {
                push_text(&mut blocks, &rest[..at]);
                let (block, after) = fenced(&rest[at + FENCE.len()..]);
                blocks.push(block);
                rest = after;
            }
            (_, None) => {
                push_text(&mut blocks, rest);
                return blocks;
            }
        }
    }
}

/// Reads a fenced block from just after its opening ```` ``` ````; returns the
/// block and the text after the closing fence.
fn fenced(after_open: &str) -> (Block, &str) {
    let (info, body) = after_open.split_once('\n').unwrap_or((after_open, ""));
    let language = info.split_whitespace().next().map(str::to_owned);

    // The closing fence starts a line: either the body's first or a later one.
    let (code, after) = match body.strip_prefix(FENCE) {
        Some(after) => ("", after),
        None => split_at_marker(body, "\n```"),
    };
    let code = code.trim_end_matches(['\r', '\n']);

    let is_json = language
        .as_deref()
        .is_some_and(|language| language.eq_ignore_ascii_case("json"));
    let block = if is_json && serde_json::from_str::<serde_json::Value>(code).is_ok() {
        Block::Json(code.trim().to_owned())
    } else {
        Block::Code {
            language,
            code: code.to_owned(),
        }
    };
    (block, after)
}

/// Splits `text` around the first `marker`: what precedes it and what follows.
/// Without a marker, all of `text` precedes it and nothing follows.
fn split_at_marker<'a>(text: &'a str, marker: &str) -> (&'a str, &'a str) {
    text.split_once(marker).unwrap_or((text, ""))
}

/// Adds `text`, trimmed, as a text block unless it is blank.
fn push_text(blocks: &mut Vec<Block>, text: &str) {
    let text = text.trim();
    if !text.is_empty() {
        blocks.push(Block::Text(text.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str) -> Block {
        Block::Text(text.to_owned())
    }

    fn code(language: Option<&str>, code: &str) -> Block {
        Block::Code {
            language: language.map(str::to_owned),
            code: code.to_owned(),
        }
    }

    #[test]
    fn plain_text_is_one_trimmed_block() {
        assert_eq!(parse("  # Title\n\n- a list\n"), vec![text("# Title\n\n- a list")]);
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse(" \n\t"), vec![]);
    }

    #[test]
    fn code_fence_with_language() {
        let answer = "Try this:\n```rust\nfn main() {\n    println!(\"hi\");\n}\n```\nThen run it.";
        assert_eq!(
            parse(answer),
            vec![
                text("Try this:"),
                code(Some("rust"), "fn main() {\n    println!(\"hi\");\n}"),
                text("Then run it."),
            ]
        );
    }

    #[test]
    fn code_fence_language_is_the_first_word_or_none() {
        assert_eq!(
            parse("```python title=x.py\npass\n```"),
            vec![code(Some("python"), "pass")]
        );
        assert_eq!(parse("```\nls -l\n```"), vec![code(None, "ls -l")]);
        assert_eq!(parse("```sh\n```"), vec![code(Some("sh"), "")]);
        assert_eq!(parse("```c\r\nint x;\r\n```\r\n"), vec![code(Some("c"), "int x;")]);
    }

    #[test]
    fn json_fence_that_parses_is_a_json_block() {
        let answer = "Here:\n```json\n{\"a\": [1, 2]}\n```";
        assert_eq!(
            parse(answer),
            vec![text("Here:"), Block::Json("{\"a\": [1, 2]}".to_owned())]
        );
        assert_eq!(parse("```JSON\n[true]\n```"), vec![Block::Json("[true]".to_owned())]);
    }

    #[test]
    fn json_fence_that_does_not_parse_is_json_code() {
        assert_eq!(
            parse("```json\n{\"a\": 1,}\n```"),
            vec![code(Some("json"), "{\"a\": 1,}")]
        );
        assert_eq!(parse("```json\n```"), vec![code(Some("json"), "")]);
    }

    #[test]
    fn thinking_comes_first_then_the_answer() {
        let answer = "<think>\nThe user wants a greeting.\n</think>\n\nHello!";
        assert_eq!(
            parse(answer),
            vec![Block::Thinking("The user wants a greeting.".to_owned()), text("Hello!")]
        );
    }

    #[test]
    fn empty_thinking_is_dropped() {
        assert_eq!(parse("<think>\n\n</think>\nHi"), vec![text("Hi")]);
    }

    #[test]
    fn unclosed_think_runs_to_the_end() {
        assert_eq!(
            parse("Hm. <think>still going ```rust"),
            vec![text("Hm."), Block::Thinking("still going ```rust".to_owned())]
        );
    }

    #[test]
    fn unclosed_fence_runs_to_the_end() {
        assert_eq!(
            parse("Start:\n```js\nlet a = 1;\n<think>no</think>\n"),
            vec![text("Start:"), code(Some("js"), "let a = 1;\n<think>no</think>")]
        );
        assert_eq!(parse("```json\n{\"cut\": "), vec![code(Some("json"), "{\"cut\": ")]);
        assert_eq!(parse("```toml"), vec![code(Some("toml"), "")]);
    }

    #[test]
    fn everything_in_order() {
        let answer = "<think>plan</think>Intro\n```json\n{}\n```\nmiddle\n```\nraw\n```\n<think>again</think>end";
        assert_eq!(
            parse(answer),
            vec![
                Block::Thinking("plan".to_owned()),
                text("Intro"),
                Block::Json("{}".to_owned()),
                text("middle"),
                code(None, "raw"),
                Block::Thinking("again".to_owned()),
                text("end"),
            ]
        );
    }
}
