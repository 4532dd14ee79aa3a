//! Anthropic's Messages API (`POST /v1/messages`) as a provider: config, URL, headers and
//! the HTTP calls. The bodies are translated to and from the internal OpenAI shape by
//! `sluice_dialect::anthropic` (requests, answers, stream events, errors).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_dialect::anthropic::{error, request, response, stream};
use sluice_schemas::embeddings::EmbeddingsRequest;

use super::{
    call_json, call_stream, check_key_env, check_url, key_from_env, translate_events, Completion,
    Embedded, EventStream, Invalid, Provider,
};
use crate::error::ProviderError;

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_VERSION: &str = "2023-06-01";
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// Without `/v1`: `https://api.anthropic.com` (the default).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the key (sent as `x-api-key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Anthropic's name for the model, e.g. `claude-sonnet-4-5`.
    #[serde(default)]
    pub model: Option<String>,
    /// The `anthropic-version` header.
    #[serde(default = "default_version")]
    pub version: String,
    /// `max_tokens` when the caller sets no cap (Anthropic requires one).
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u32,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_version() -> String {
    DEFAULT_VERSION.into()
}
fn default_max_tokens() -> u32 {
    DEFAULT_MAX_TOKENS
}

impl AnthropicConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url(&self.base_url, "base_url")?;
        if self.default_max_tokens == 0 {
            return Err(Invalid {
                field: "default_max_tokens",
                problem: "must be at least 1",
            });
        }
        check_key_env(self.api_key_env.as_deref())
    }
}

#[derive(Clone)]
pub struct Anthropic {
    url: String,
    api_key: Option<String>,
    version: String,
    model: String,
    default_max_tokens: u32,
    http: reqwest::Client,
}

impl std::fmt::Debug for Anthropic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anthropic").field("url", &self.url).finish()
    }
}

impl Anthropic {
    pub fn new(config: &AnthropicConfig, model: &str, http: reqwest::Client) -> Anthropic {
        Anthropic {
            url: format!("{}/v1/messages", config.base_url.trim_end_matches('/')),
            api_key: key_from_env(config.api_key_env.as_deref()),
            version: config.version.clone(),
            model: model.to_string(),
            default_max_tokens: config.default_max_tokens,
            http,
        }
    }

    fn post(&self, body: &Map<String, Value>) -> reqwest::RequestBuilder {
        let call = self
            .http
            .post(&self.url)
            .header("anthropic-version", &self.version)
            .json(body);
        match &self.api_key {
            Some(key) => call.header("x-api-key", key),
            None => call,
        }
    }
}

impl Provider for Anthropic {
    async fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        let out = request::from_openai(&request, &self.model, self.default_max_tokens, false);
        let body = call_json(self.post(&out.body), timeout, map_error).await?;
        response::to_openai(&body, out.json_tool.as_deref()).map_err(ProviderError::Malformed)
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        let out = request::from_openai(&request, &self.model, self.default_max_tokens, true);
        let response = call_stream(self.post(&out.body), timeout, map_error).await?;
        Ok(translate_events(
            response,
            stream::ToOpenAi::new(out.json_tool),
        ))
    }

    async fn embed(
        &self,
        _request: &EmbeddingsRequest,
        _prompt_tokens: u32,
        _timeout: Duration,
    ) -> Result<Embedded, ProviderError> {
        Err(ProviderError::Unsupported(
            "Anthropic has no embeddings API; route this model to an OpenAI, Azure, Gemini or OpenAI-compatible deployment",
        ))
    }
}

/// Anthropic's error body in OpenAI's shape; a body that is not Anthropic's passes as it is.
pub fn map_error(_status: u16, body: &str) -> (String, Option<Duration>) {
    match error::to_openai(body) {
        Some(error) => (error.to_json(), None),
        None => (body.to_string(), None),
    }
}
