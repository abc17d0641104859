//! Framing of streamed response bodies into NDJSON lines and server-sent events.
//!
//! Works on raw bytes, so network chunks may split anywhere, even inside a UTF-8
//! character. Knows nothing of either protocol's JSON: ollama.rs and openai.rs
//! interpret the frames, and decide when a stream is complete.

use std::ops::ControlFlow;

use super::ModelError;
use super::error;

/// What a frame handler returns: `Break` once the reply is complete, or the error
/// the stream carried.
pub(super) type Step = Result<ControlFlow<()>, ModelError>;

/// Calls `on_line` for each line of the body until it breaks or the body ends.
/// `Continue` means the body ended before any handler call said the reply was complete.
pub(super) async fn for_each_line(
    mut response: reqwest::Response,
    mut on_line: impl FnMut(&str) -> Step,
) -> Step {
    let mut framer = LineFramer::default();
    while let Some(chunk) = response.chunk().await.map_err(error::interrupted)? {
        framer.push(&chunk);
        while let Some(line) = framer.next_line() {
            if on_line(&line)?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
    }
    match framer.finish() {
        Some(line) => on_line(&line),
        None => Ok(ControlFlow::Continue(())),
    }
}

/// Calls `on_data` with the data of each server-sent event, like `for_each_line`.
pub(super) async fn for_each_event(
    response: reqwest::Response,
    mut on_data: impl FnMut(&str) -> Step,
) -> Step {
    let mut events = SseEvents::default();
    let flow = for_each_line(response, |line| match events.push_line(line) {
        Some(data) => on_data(&data),
        None => Ok(ControlFlow::Continue(())),
    })
    .await?;
    match (flow, events.finish()) {
        (ControlFlow::Continue(()), Some(data)) => on_data(&data),
        (flow, _) => Ok(flow),
    }
}

/// Splits a byte stream into lines, without their `\n` or `\r\n`.
#[derive(Default)]
pub(super) struct LineFramer {
    pending: Vec<u8>,
    /// How far `pending` is known to hold no newline, so each byte is scanned once.
    searched: usize,
}

impl LineFramer {
    pub(super) fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    pub(super) fn next_line(&mut self) -> Option<String> {
        let Some(offset) = self.pending[self.searched..]
            .iter()
            .position(|&byte| byte == b'\n')
        else {
            self.searched = self.pending.len();
            return None;
        };
        let end = self.searched + offset;
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        self.searched = 0;
        Some(decode(&line[..end]))
    }

    /// The last line, when the body ended without a final newline.
    pub(super) fn finish(&mut self) -> Option<String> {
        self.searched = 0;
        (!self.pending.is_empty()).then(|| decode(&std::mem::take(&mut self.pending)))
    }
}

fn decode(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// Gathers the `data:` fields of server-sent events; other fields and comments are ignored.
#[derive(Default)]
pub(super) struct SseEvents {
    data: Option<String>,
}

impl SseEvents {
    /// Takes one line; returns an event's data at the blank line that ends the event.
    pub(super) fn push_line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        None
    }

    /// The data of an event the body ended without closing.
    pub(super) fn finish(&mut self) -> Option<String> {
        self.data.take()
    }
}

/// A response whose body arrives in pieces cut at the given byte offsets, as if from
/// the network.
#[cfg(test)]
pub(super) fn chunked_response(body: &str, cuts: &[usize]) -> reqwest::Response {
    let bytes = bytes::Bytes::copy_from_slice(body.as_bytes());
    let mut start = 0;
    let mut chunks = Vec::new();
    for &cut in cuts.iter().chain([&body.len()]) {
        chunks.push(Ok::<_, std::io::Error>(bytes.slice(start..cut)));
        start = cut;
    }
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    reqwest::Response::from(http::Response::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut framer = LineFramer::default();
        let mut lines = Vec::new();
        for chunk in chunks {
            framer.push(chunk);
            lines.extend(std::iter::from_fn(|| framer.next_line()));
        }
        lines.extend(framer.finish());
        lines
    }

    fn events_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut events = SseEvents::default();
        let mut found: Vec<String> = lines_of(chunks)
            .iter()
            .filter_map(|line| events.push_line(line))
            .collect();
        found.extend(events.finish());
        found
    }

    const NDJSON: &str =
        "{\"response\":\"héllo \"}\n{\"response\":\"wörld 🌍\"}\r\n\n{\"done\":true}";
    const SSE: &str = ": keep-alive\r\ndata: {\"a\":\"ünï\"}\r\n\r\nevent: x\ndata: line one\ndata: 🌍\nid: 7\n\ndata: [DONE]\n\n";

    #[test]
    fn lines_survive_every_split_point() {
        let whole = lines_of(&[NDJSON.as_bytes()]);
        assert_eq!(
            whole,
            [
                "{\"response\":\"héllo \"}",
                "{\"response\":\"wörld 🌍\"}",
                "",
                "{\"done\":true}"
            ]
        );
        let bytes = NDJSON.as_bytes();
        for first in 0..=bytes.len() {
            for second in first..=bytes.len() {
                let chunks = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                assert_eq!(lines_of(&chunks), whole, "split at {first} and {second}");
            }
        }
        let one_byte_each: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(lines_of(&one_byte_each), whole);
    }

    #[test]
    fn events_survive_every_split_point() {
        let whole = events_of(&[SSE.as_bytes()]);
        assert_eq!(whole, ["{\"a\":\"ünï\"}", "line one\n🌍", "[DONE]"]);
        let bytes = SSE.as_bytes();
        for first in 0..=bytes.len() {
            for second in first..=bytes.len() {
                let chunks = [&bytes[..first], &bytes[first..second], &bytes[second..]];
                assert_eq!(events_of(&chunks), whole, "split at {first} and {second}");
            }
        }
    }

    #[test]
    fn unterminated_event_is_still_delivered() {
        assert_eq!(events_of(&[b"data: {\"x\":1}"]), ["{\"x\":1}"]);
        assert!(events_of(&[b": only a comment\n\n"]).is_empty());
    }
}
