//! OpenAI-compatible APIs: /v1/chat/completions (streamed as server-sent events) and
//! /v1/embeddings.
//!
//! Owns only the shape of OpenAI requests and replies. Error classification lives in
//! error.rs, event framing in stream.rs; nothing here retries.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stream::{self, Step};
use super::{ChatMessage, ChatReply, ChatRequest, ModelClient, ModelError, error};

pub(super) async fn chat(
    client: &ModelClient,
    model: &str,
    request: &ChatRequest,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatReply, ModelError> {
    let params = &request.params;
    let body = ChatBody {
        model,
        messages: &request.messages,
        stream: true,
        stream_options: StreamOptions {
            include_usage: true,
        },
        max_tokens: params.max_tokens,
        temperature: params.temperature,
        top_p: params.top_p,
        stop: &params.stop,
        response_format: params.json_output.then_some(ResponseFormat {
            r#type: "json_object",
        }),
    };
    let response = client.post("/v1/chat/completions", &body).await?;
    read_reply(response, model, on_delta).await
}

pub(super) async fn embed(
    client: &ModelClient,
    model: &str,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, ModelError> {
    #[derive(Deserialize)]
    struct Embeddings {
        data: Vec<Embedding>,
    }
    #[derive(Deserialize)]
    struct Embedding {
        index: usize,
        embedding: Vec<f32>,
    }
    let response = client
        .post(
            "/v1/embeddings",
            &serde_json::json!({ "model": model, "input": texts }),
        )
        .await?;
    let mut reply: Embeddings = super::json_body(response).await?;
    reply.data.sort_by_key(|item| item.index);
    Ok(reply.data.into_iter().map(|item| item.embedding).collect())
}

/// Folds the event stream of /v1/chat/completions into a reply.
async fn read_reply(
    response: reqwest::Response,
    model: &str,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatReply, ModelError> {
    let status = response.status().as_u16();
    let mut reply = ChatReply::empty(model);
    let flow = stream::for_each_event(response, |data| {
        accept_event(&mut reply, data, status, on_delta)
    })
    .await?;
    if flow.is_continue() {
        return Err(ModelError::Unavailable("stream ended before [DONE]".into()));
    }
    Ok(reply)
}

fn accept_event(
    reply: &mut ChatReply,
    data: &str,
    status: u16,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Step {
    if data.trim() == "[DONE]" {
        return Ok(ControlFlow::Break(()));
    }
    let chunk: Chunk = serde_json::from_str(data).map_err(|e| error::bad_body(status, e))?;
    if let Some(failure) = chunk.error {
        return Err(ModelError::Unavailable(format!(
            "failed mid-stream: {}",
            error::error_field_message(&failure)
        )));
    }
    if let Some(model) = chunk.model.filter(|model| !model.is_empty()) {
        reply.model = model;
    }
    if let Some(choice) = chunk.choices.into_iter().next() {
        if let Some(piece) = choice
            .delta
            .and_then(|delta| delta.content)
            .filter(|piece| !piece.is_empty())
        {
            on_delta(&piece);
            reply.text.push_str(&piece);
        }
        if choice.finish_reason.is_some() {
            reply.finish_reason = choice.finish_reason;
        }
    }
    if let Some(usage) = chunk.usage {
        reply.prompt_tokens = usage.prompt_tokens;
        reply.completion_tokens = usage.completion_tokens;
    }
    Ok(ControlFlow::Continue(()))
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct ResponseFormat {
    r#type: &'static str,
}

/// One `data:` event; fields absent from some servers' chunks default to nothing.
#[derive(Deserialize)]
struct Chunk {
    error: Option<Value>,
    model: Option<String>,
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::stream::chunked_response;

    async fn read(body: &str, cuts: &[usize]) -> (Result<ChatReply, ModelError>, Vec<String>) {
        let mut deltas = Vec::new();
        let reply = read_reply(chunked_response(body, cuts), "asked", &mut |piece| {
            deltas.push(piece.to_owned())
        })
        .await;
        (reply, deltas)
    }

    const STREAM: &str = concat!(
        "data: {\"model\":\"gpt-x\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"ça \"},\"finish_reason\":null}],\"usage\":null}\n\n",
        ": comment\n\n",
        "data: {\"choices\":[{\"delta\":{\"content\":\"va\"},\"finish_reason\":null}]}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
        "data: [DONE]\n\n",
    );

    #[tokio::test]
    async fn reads_a_stream_at_every_split_point() {
        let expected = ChatReply {
            text: "ça va".into(),
            model: "gpt-x".into(),
            prompt_tokens: Some(3),
            completion_tokens: Some(2),
            finish_reason: Some("stop".into()),
        };
        for cut in 0..=STREAM.len() {
            let (reply, deltas) = read(STREAM, &[cut]).await;
            assert_eq!(deltas, ["ça ", "va"], "cut at {cut}");
            assert_eq!(reply.as_ref(), Ok(&expected), "cut at {cut}");
        }
    }

    #[tokio::test]
    async fn stream_without_done_is_unavailable() {
        let truncated = &STREAM[..STREAM.find("data: [DONE]").unwrap()];
        let (reply, deltas) = read(truncated, &[]).await;
        assert_eq!(deltas, ["ça ", "va"]);
        assert!(
            matches!(reply, Err(ModelError::Unavailable(_))),
            "{reply:?}"
        );
    }

    #[tokio::test]
    async fn error_event_is_unavailable() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"error\":{\"message\":\"overloaded\"}}\n\n";
        let (reply, _) = read(body, &[]).await;
        assert_eq!(
            reply,
            Err(ModelError::Unavailable(
                "failed mid-stream: overloaded".into()
            ))
        );
    }

    #[test]
    fn request_body_carries_only_set_options() {
        let messages = [ChatMessage::new(crate::models::Role::User, "hi")];
        let stop = ["\n".to_owned()];
        let body = ChatBody {
            model: "m",
            messages: &messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: None,
            temperature: Some(0.2),
            top_p: None,
            stop: &stop,
            response_format: Some(ResponseFormat {
                r#type: "json_object",
            }),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"temperature":0.2,"stop":["\n"],"response_format":{"type":"json_object"}}"#
        );
    }
}
