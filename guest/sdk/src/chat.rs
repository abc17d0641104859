//! Plain chat messages and model requests, and their conversions to and from
//! the generated [`ChatMessage`](crate::ChatMessage) and
//! [`ModelRequest`](crate::ModelRequest).
//!
//! Owns the shapes a handler's prompt rules work with: they compare, print and
//! deserialize like ordinary Rust values. It must not decide what goes into a
//! prompt; that is the handler's rule.

use serde::Deserialize;

use crate::bindings::spool::handler::types as wit;

/// Speaker of a chat message; mirrors the WIT enum `role` and reads the
/// lowercase names clients send (`"system"`, `"user"`, `"assistant"`, `"tool"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// One turn of a conversation; mirrors the WIT record `chat-message` and reads
/// the `{"role", "content"}` objects clients send (other fields are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
}

/// A chat completion request; mirrors the WIT record `model-request` with its
/// sampling parameters laid flat. [`Request::default`] asks the host's default
/// model, with every parameter left to the model server.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Request {
    /// `None`: the host's default model.
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    pub json_output: bool,
}

impl Request {
    /// The messages, to the default model with default parameters.
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            ..Self::default()
        }
    }
}

impl From<Role> for wit::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::System => wit::Role::System,
            Role::User => wit::Role::User,
            Role::Assistant => wit::Role::Assistant,
            Role::Tool => wit::Role::Tool,
        }
    }
}

impl From<wit::Role> for Role {
    fn from(role: wit::Role) -> Self {
        match role {
            wit::Role::System => Role::System,
            wit::Role::User => Role::User,
            wit::Role::Assistant => Role::Assistant,
            wit::Role::Tool => Role::Tool,
        }
    }
}

impl From<Message> for wit::ChatMessage {
    fn from(message: Message) -> Self {
        wit::ChatMessage {
            role: message.role.into(),
            content: message.content,
        }
    }
}

impl From<wit::ChatMessage> for Message {
    fn from(message: wit::ChatMessage) -> Self {
        Message {
            role: message.role.into(),
            content: message.content,
        }
    }
}

impl From<Request> for wit::ModelRequest {
    fn from(request: Request) -> Self {
        wit::ModelRequest {
            model: request.model,
            messages: request.messages.into_iter().map(Into::into).collect(),
            params: wit::ModelParams {
                temperature: request.temperature,
                top_p: request.top_p,
                max_tokens: request.max_tokens,
                stop: request.stop,
                json_output: request.json_output,
            },
        }
    }
}

/// Every parameter left to the model server: no stop strings, no JSON mode.
impl Default for wit::ModelParams {
    fn default() -> Self {
        Self {
            temperature: None,
            top_p: None,
            max_tokens: None,
            stop: Vec::new(),
            json_output: false,
        }
    }
}

/// No messages, to the host's default model with default parameters.
impl Default for wit::ModelRequest {
    fn default() -> Self {
        Self {
            model: None,
            messages: Vec::new(),
            params: wit::ModelParams::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_messages_round_trip() {
        for role in [Role::System, Role::User, Role::Assistant, Role::Tool] {
            let message = Message::new(role, "hi");
            let generated = wit::ChatMessage::from(message.clone());
            assert_eq!(Message::from(generated), message);
        }
        assert_eq!(
            wit::ChatMessage::from(Message::system("Be brief.")),
            wit::ChatMessage {
                role: wit::Role::System,
                content: "Be brief.".to_owned()
            }
        );
    }

    #[test]
    fn reads_the_messages_clients_send() {
        let message: Message = serde_json::from_str(r#"{"role": "assistant", "content": "ok", "id": 3}"#).unwrap();
        assert_eq!(message, Message::new(Role::Assistant, "ok"));
        assert!(serde_json::from_str::<Message>(r#"{"role": "User", "content": "x"}"#).is_err());
    }

    #[test]
    fn a_request_keeps_every_setting() {
        let request = Request {
            model: Some("qwen3".to_owned()),
            temperature: Some(0.5),
            top_p: Some(0.9),
            max_tokens: Some(64),
            stop: vec!["END".to_owned()],
            json_output: true,
            ..Request::new(vec![Message::system("s"), Message::user("u")])
        };
        assert_eq!(
            wit::ModelRequest::from(request),
            wit::ModelRequest {
                model: Some("qwen3".to_owned()),
                messages: vec![
                    wit::ChatMessage {
                        role: wit::Role::System,
                        content: "s".to_owned()
                    },
                    wit::ChatMessage {
                        role: wit::Role::User,
                        content: "u".to_owned()
                    },
                ],
                params: wit::ModelParams {
                    temperature: Some(0.5),
                    top_p: Some(0.9),
                    max_tokens: Some(64),
                    stop: vec!["END".to_owned()],
                    json_output: true,
                },
            }
        );
    }

    #[test]
    fn defaults_leave_everything_to_the_host_and_the_model_server() {
        assert_eq!(
            wit::ModelRequest::from(Request::default()),
            wit::ModelRequest::default()
        );
        let params = wit::ModelParams::default();
        assert_eq!(
            (params.temperature, params.top_p, params.max_tokens),
            (None, None, None)
        );
        assert!(params.stop.is_empty() && !params.json_output);
    }
}
