//! Ollama's native API: /api/chat and /api/generate (streamed as NDJSON) and /api/embed.
//!
//! Owns only the shape of Ollama requests and replies. Error classification lives in
//! error.rs, line framing in stream.rs; nothing here retries.

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::stream::{self, Step};
use super::{
    ChatMessage, ChatReply, ChatRequest, ModelClient, ModelError, OllamaApi, Params, Role, error,
};

pub(super) async fn chat(
    client: &ModelClient,
    model: &str,
    request: &ChatRequest,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatReply, ModelError> {
    let options = Options::from(&request.params);
    let format = request.params.json_output.then_some("json");
    let response = match client.config().ollama_api {
        OllamaApi::Chat => {
            let body = ChatBody {
                model,
                messages: &request.messages,
                stream: true,
                options,
                format,
            };
            client.post("/api/chat", &body).await?
        }
        OllamaApi::Generate => {
            let (system, prompt) = flatten(&request.messages);
            let body = GenerateBody {
                model,
                prompt,
                system,
                stream: true,
                options,
                format,
            };
            client.post("/api/generate", &body).await?
        }
    };
    read_reply(response, model, on_delta).await
}

pub(super) async fn embed(
    client: &ModelClient,
    model: &str,
    texts: &[String],
) -> Result<Vec<Vec<f32>>, ModelError> {
    #[derive(Deserialize)]
    struct Embeddings {
        embeddings: Vec<Vec<f32>>,
    }
    let response = client
        .post(
            "/api/embed",
            &serde_json::json!({ "model": model, "input": texts }),
        )
        .await?;
    let reply: Embeddings = super::json_body(response).await?;
    Ok(reply.embeddings)
}

/// Folds the NDJSON stream of /api/chat or /api/generate into a reply.
async fn read_reply(
    response: reqwest::Response,
    model: &str,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Result<ChatReply, ModelError> {
    let status = response.status().as_u16();
    let mut reply = ChatReply::empty(model);
    let flow = stream::for_each_line(response, |line| {
        accept_line(&mut reply, line, status, on_delta)
    })
    .await?;
    if flow.is_continue() {
        return Err(ModelError::Unavailable(
            "stream ended before Ollama said done".into(),
        ));
    }
    Ok(reply)
}

fn accept_line(
    reply: &mut ChatReply,
    line: &str,
    status: u16,
    on_delta: &mut (dyn FnMut(&str) + Send),
) -> Step {
    if line.trim().is_empty() {
        return Ok(ControlFlow::Continue(()));
    }
    let line: Line = serde_json::from_str(line).map_err(|e| error::bad_body(status, e))?;
    if let Some(failure) = line.error {
        // Ollama reports failures after the 200 head (e.g. the runner crashed) this way.
        return Err(ModelError::Unavailable(format!(
            "failed mid-stream: {}",
            error::error_field_message(&failure)
        )));
    }
    let piece = line
        .message
        .map(|message| message.content)
        .or(line.response)
        .unwrap_or_default();
    if !piece.is_empty() {
        on_delta(&piece);
        reply.text.push_str(&piece);
    }
    if !line.done {
        return Ok(ControlFlow::Continue(()));
    }
    if let Some(model) = line.model.filter(|model| !model.is_empty()) {
        reply.model = model;
    }
    reply.prompt_tokens = line.prompt_eval_count;
    reply.completion_tokens = line.eval_count;
    reply.finish_reason = line.done_reason;
    Ok(ControlFlow::Break(()))
}

/// /api/generate takes one system string and one prompt: system messages are joined,
/// and the other messages become a role-labelled transcript (a lone message stays bare).
fn flatten(messages: &[ChatMessage]) -> (Option<String>, String) {
    let (system, turns): (Vec<&ChatMessage>, Vec<&ChatMessage>) = messages
        .iter()
        .partition(|message| message.role == Role::System);
    let system = (!system.is_empty()).then(|| {
        system
            .iter()
            .map(|message| message.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    let prompt = match turns.as_slice() {
        [only] => only.content.clone(),
        _ => turns
            .iter()
            .map(|message| format!("{}: {}", speaker(message.role), message.content))
            .collect::<Vec<_>>()
            .join("\n\n"),
    };
    (system, prompt)
}

fn speaker(role: Role) -> &'static str {
    match role {
        Role::System => "System",
        Role::User => "User",
        Role::Assistant => "Assistant",
        Role::Tool => "Tool",
    }
}

#[derive(Serialize)]
struct ChatBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    options: Options<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

#[derive(Serialize)]
struct GenerateBody<'a> {
    model: &'a str,
    prompt: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    stream: bool,
    options: Options<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
}

#[derive(Serialize)]
struct Options<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_predict: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop: &'a [String],
}

impl<'a> From<&'a Params> for Options<'a> {
    fn from(params: &'a Params) -> Self {
        Self {
            temperature: params.temperature,
            top_p: params.top_p,
            num_predict: params.max_tokens,
            stop: &params.stop,
        }
    }
}

/// One NDJSON line of /api/chat (`message`) or /api/generate (`response`).
#[derive(Deserialize)]
struct Line {
    error: Option<Value>,
    model: Option<String>,
    message: Option<LineMessage>,
    response: Option<String>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u32>,
    eval_count: Option<u32>,
}

#[derive(Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
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

    #[tokio::test]
    async fn reads_a_stream_split_mid_character() {
        let body = concat!(
            "{\"message\":{\"content\":\"héllo \"}}\n{\"message\":{\"content\":\"you\"}}\n",
            "{\"model\":\"m:1\",\"message\":{\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",",
            "\"prompt_eval_count\":4,\"eval_count\":2}\n",
        );
        let inside_e_acute = body.find('é').unwrap() + 1;
        let (reply, deltas) = read(
            body,
            &[inside_e_acute, inside_e_acute + 20, body.len() - 30],
        )
        .await;
        assert_eq!(deltas, ["héllo ", "you"]);
        assert_eq!(
            reply,
            Ok(ChatReply {
                text: "héllo you".into(),
                model: "m:1".into(),
                prompt_tokens: Some(4),
                completion_tokens: Some(2),
                finish_reason: Some("stop".into()),
            })
        );
    }

    #[tokio::test]
    async fn stream_without_done_is_unavailable() {
        let (reply, deltas) = read("{\"response\":\"partial\"}\n", &[5]).await;
        assert_eq!(deltas, ["partial"]);
        assert!(
            matches!(reply, Err(ModelError::Unavailable(_))),
            "{reply:?}"
        );
    }

    #[tokio::test]
    async fn error_line_and_garbage_are_classified() {
        let (reply, _) = read("{\"response\":\"a\"}\n{\"error\":\"runner died\"}\n", &[]).await;
        assert_eq!(
            reply,
            Err(ModelError::Unavailable(
                "failed mid-stream: runner died".into()
            ))
        );
        let (reply, _) = read("<html>\n", &[]).await;
        assert!(
            matches!(reply, Err(ModelError::Rejected { status: 200, .. })),
            "{reply:?}"
        );
    }

    #[test]
    fn generate_flattens_messages() {
        let system = ChatMessage::new(Role::System, "be brief");
        let user = ChatMessage::new(Role::User, "hi");
        assert_eq!(
            flatten(&[system.clone(), user.clone()]),
            (Some("be brief".into()), "hi".into())
        );
        let assistant = ChatMessage::new(Role::Assistant, "hello");
        assert_eq!(
            flatten(&[user.clone(), assistant, user]),
            (None, "User: hi\n\nAssistant: hello\n\nUser: hi".into())
        );
    }

    #[test]
    fn request_body_carries_only_set_options() {
        let params = Params {
            temperature: Some(0.7),
            max_tokens: Some(5),
            json_output: true,
            ..Params::default()
        };
        let messages = [ChatMessage::new(Role::User, "hi")];
        let body = ChatBody {
            model: "m",
            messages: &messages,
            stream: true,
            options: Options::from(&params),
            format: Some("json"),
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"options":{"temperature":0.7,"num_predict":5},"format":"json"}"#
        );
    }
}
