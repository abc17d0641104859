//! Thin clients for model servers: Ollama's native API and OpenAI-compatible APIs.
//!
//! Owns the shared request/reply types, request shaping, stream parsing and the
//! classification of failures. It must never retry, back off or pace calls: the
//! central rate limiter owns the one retry loop, so every failure is surfaced exactly
//! once, with its HTTP status and the server's requested wait intact.

mod error;
mod ollama;
mod openai;
mod stream;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

pub use spool_runtime::model::{ChatMessage, ChatReply, ChatRequest, ModelError, Params, Role};

/// Bounds only the TCP/TLS handshake; the whole call is bounded by `request_timeout_ms`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Ollama,
    Openai,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Ollama => "ollama",
            BackendKind::Openai => "openai",
        })
    }
}

/// Which Ollama endpoint chat requests use. `Generate` flattens the messages into
/// `system` + `prompt`, for models or proxies that only offer /api/generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OllamaApi {
    #[default]
    Chat,
    Generate,
}

/// `[model]`: every key but `url` has a default, and a misspelt key is an
/// error rather than a setting silently not applied. `Debug` is written by
/// hand: the URL and key are secrets (see `redact`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendConfig {
    pub kind: BackendKind,
    /// Base URL without the API path, e.g. `http://127.0.0.1:11434`. Required:
    /// the default (empty) is refused when the configuration is built.
    pub url: String,
    pub api_key: Option<String>,
    pub chat_model: String,
    pub embed_model: String,
    pub ollama_api: OllamaApi,
    /// Bound on a whole call, streaming included; 0 means unbounded.
    pub request_timeout_ms: u64,
    /// Every 403 is a rate limit (for a proxy that answers bursts with a bare
    /// 403). Off: only a 403 whose body or `Retry-After` says so is one; any
    /// other 403 (bad key, region, permission) fails the call for good.
    pub forbidden_is_rate_limit: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: BackendKind::Ollama,
            url: String::new(),
            api_key: None,
            chat_model: "qwen2.5:0.5b".into(),
            embed_model: "nomic-embed-text".into(),
            ollama_api: OllamaApi::Chat,
            request_timeout_ms: 120_000,
            forbidden_is_rate_limit: false,
        }
    }
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("kind", &self.kind)
            .field("url", &crate::redact::url(&self.url))
            .field(
                "api_key",
                &self.api_key.as_ref().map(|_| crate::redact::MASK),
            )
            .field("chat_model", &self.chat_model)
            .field("embed_model", &self.embed_model)
            .field("ollama_api", &self.ollama_api)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .finish()
    }
}

/// A client for one configured backend. Cloning is cheap and shares the connection pool.
#[derive(Clone, Debug)]
pub struct ModelClient {
    config: Arc<BackendConfig>,
    http: reqwest::Client,
    /// The URL's credentials and the API key: masked in every error this
    /// client returns (a server or reqwest may quote them).
    secrets: Arc<Vec<String>>,
}

impl ModelClient {
    pub fn new(config: BackendConfig) -> anyhow::Result<Self> {
        let shown = crate::redact::url(&config.url);
        let url = reqwest::Url::parse(&config.url)
            .with_context(|| format!("model server URL {shown:?} is not a valid URL"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "model server URL {shown:?} must start with http:// or https://"
        );
        let mut secrets = crate::redact::url_secrets(&config.url);
        secrets.extend(config.api_key.clone());
        // reqwest never retries on its own; nothing here may add that. Nor
        // does it follow redirects: it would turn a POST answered 301, 302 or
        // 303 into a GET without the body, and the model's answer to that
        // (404, 405) would hide the real cause (see `error::classify`).
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("spool/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client for model calls")?;
        Ok(Self {
            config: Arc::new(config),
            http,
            secrets: Arc::new(secrets),
        })
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    /// Streams the completion, calling `on_delta` with each text piece as it arrives,
    /// and returns the whole reply. A failure after some deltas still returns `Err`.
    pub async fn chat(
        &self,
        request: &ChatRequest,
        on_delta: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatReply, ModelError> {
        let model = request.model.as_deref().unwrap_or(&self.config.chat_model);
        self.bounded(async {
            match self.config.kind {
                BackendKind::Ollama => ollama::chat(self, model, request, on_delta).await,
                BackendKind::Openai => openai::chat(self, model, request, on_delta).await,
            }
        })
        .await
    }

    /// One vector per input text, in input order. `model` `None` uses the configured embed model.
    pub async fn embed(
        &self,
        model: Option<&str>,
        texts: &[String],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = model.unwrap_or(&self.config.embed_model);
        let vectors = self
            .bounded(async {
                match self.config.kind {
                    BackendKind::Ollama => ollama::embed(self, model, texts).await,
                    BackendKind::Openai => openai::embed(self, model, texts).await,
                }
            })
            .await?;
        if vectors.len() != texts.len() {
            return Err(ModelError::Rejected {
                status: 200,
                message: format!(
                    "asked for {} embeddings, got {}",
                    texts.len(),
                    vectors.len()
                ),
            });
        }
        Ok(vectors)
    }

    /// One line for the startup log and `/health`; never includes the API
    /// key nor the URL's credentials.
    pub fn describe(&self) -> String {
        let config = &self.config;
        let via = match (config.kind, config.ollama_api) {
            (BackendKind::Ollama, OllamaApi::Generate) => " via /api/generate",
            _ => "",
        };
        format!(
            "{} at {} (chat model {}{via}, embed model {})",
            config.kind,
            crate::redact::url(&config.url),
            config.chat_model,
            config.embed_model
        )
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ModelError>>,
    ) -> Result<T, ModelError> {
        let limit_ms = self.config.request_timeout_ms;
        let result = if limit_ms == 0 {
            call.await
        } else {
            tokio::time::timeout(Duration::from_millis(limit_ms), call)
                .await
                .unwrap_or_else(|_| {
                    Err(ModelError::Unavailable(format!(
                        "no complete answer within {limit_ms} ms"
                    )))
                })
        };
        // Errors end up in job records, events and the log.
        result.map_err(|error| self.scrubbed(error))
    }

    fn scrubbed(&self, error: ModelError) -> ModelError {
        let scrub = |text: String| crate::redact::scrub(&text, &self.secrets);
        match error {
            ModelError::RateLimited {
                status,
                retry_after,
                message,
            } => ModelError::RateLimited {
                status,
                retry_after,
                message: scrub(message),
            },
            ModelError::Unavailable(message) => ModelError::Unavailable(scrub(message)),
            ModelError::Rejected { status, message } => ModelError::Rejected {
                status,
                message: scrub(message),
            },
        }
    }

    /// Sends one POST and turns any non-success status into the matching `ModelError`.
    async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::Response, ModelError> {
        let body = serde_json::to_vec(body).map_err(|e| ModelError::Rejected {
            status: 0,
            message: format!("request body could not be encoded: {e}"),
        })?;
        let mut request = self
            .http
            .post(self.endpoint(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(error::transport)?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(error::from_response(response, self.config.forbidden_is_rate_limit).await)
        }
    }

    /// Joins base URL and API path, tolerating a base that already ends in `/v1`
    /// (the usual form of OpenAI base URLs) or a trailing slash.
    /// A query string on the base URL (`?api-key=...`, `?api-version=...`)
    /// stays a query string, after the path.
    fn endpoint(&self, path: &str) -> String {
        let (base, query) = match self.config.url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (self.config.url.as_str(), None),
        };
        let base = base.trim_end_matches('/');
        let url = match (base.strip_suffix("/v1"), path.strip_prefix("/v1/")) {
            (Some(_), Some(rest)) => format!("{base}/{rest}"),
            _ => format!("{base}{path}"),
        };
        match query {
            Some(query) => format!("{url}?{query}"),
            None => url,
        }
    }
}

/// Reads a whole non-streamed JSON body.
async fn json_body<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ModelError> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(error::interrupted)?;
    serde_json::from_slice(&bytes).map_err(|e| error::bad_body(status, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(kind: BackendKind, url: String) -> ModelClient {
        ModelClient::new(BackendConfig {
            kind,
            url,
            api_key: Some("sk-test".into()),
            chat_model: "chat-m".into(),
            embed_model: "embed-m".into(),
            ollama_api: OllamaApi::Chat,
            request_timeout_ms: 5_000,
            forbidden_is_rate_limit: false,
        })
        .expect("client builds")
    }

    #[test]
    fn describe_and_endpoints() {
        let ollama = client(BackendKind::Ollama, "http://127.0.0.1:11434/".into());
        assert_eq!(
            ollama.describe(),
            "ollama at http://127.0.0.1:11434/ (chat model chat-m, embed model embed-m)"
        );
        assert_eq!(
            ollama.endpoint("/api/chat"),
            "http://127.0.0.1:11434/api/chat"
        );
        let openai = client(BackendKind::Openai, "https://api.example.com/v1".into());
        assert_eq!(
            openai.endpoint("/v1/embeddings"),
            "https://api.example.com/v1/embeddings"
        );
        assert!(!openai.describe().contains("sk-test"));
        // Credentials in the URL: masked when shown, kept where requests go;
        // a query string stays after the path.
        let azure = client(
            BackendKind::Openai,
            "https://me:pw@api.example.com/v1?api-key=k3y9".into(),
        );
        assert_eq!(
            azure.endpoint("/v1/chat/completions"),
            "https://me:pw@api.example.com/v1/chat/completions?api-key=k3y9"
        );
        assert_eq!(
            azure.describe(),
            "openai at https://***@api.example.com/v1?api-key=*** (chat model chat-m, embed model embed-m)"
        );
        let error = azure.scrubbed(ModelError::Unavailable(
            "GET https://api.example.com/v1?api-key=k3y9 failed for sk-test".into(),
        ));
        assert!(!error.to_string().contains("k3y9") && !error.to_string().contains("sk-test"));
        assert!(!format!("{:?}", azure.config()).contains("sk-test"));
        let mut config = ollama.config().clone();
        config.url = "ftp://x".into();
        assert!(ModelClient::new(config.clone()).is_err());
        config.url = "not a url".into();
        assert!(ModelClient::new(config).is_err());
    }
}
