//! Google's Gemini API: `models/{model}:generateContent` and
//! `models/{model}:streamGenerateContent?alt=sse`, translated to and from the internal
//! OpenAI shape by `sluice_dialect::gemini`; this module holds the config, URLs and HTTP
//! calls. The key goes in the `x-goog-api-key` header, never in the URL (URLs end up in
//! logs).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_dialect::gemini::{embeddings, error, request, response, stream};
use sluice_schemas::embeddings::EmbeddingsRequest;

use super::{
    call_json, call_stream, check_key_env, check_url, key_from_env, translate_events, Completion,
    Embedded, EventStream, Invalid, Provider,
};
use crate::error::ProviderError;

pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeminiConfig {
    /// With the API version: `https://generativelanguage.googleapis.com/v1beta` (default).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Name of the environment variable holding the key (sent as `x-goog-api-key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Gemini's name for the model, e.g. `gemini-2.5-flash`.
    #[serde(default)]
    pub model: Option<String>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}

impl GeminiConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url(&self.base_url, "base_url")?;
        if let Some(model) = &self.model {
            if model.is_empty() || model.contains(['/', ':', '?', '#']) {
                return Err(Invalid {
                    field: "model",
                    problem: "must be a bare Gemini model name such as gemini-2.5-flash",
                });
            }
        }
        check_key_env(self.api_key_env.as_deref())
    }
}

#[derive(Clone)]
pub struct Gemini {
    /// `{base_url}/models/{model}`; the method is appended per call.
    model_url: String,
    model: String,
    api_key: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Gemini {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gemini")
            .field("model_url", &self.model_url)
            .finish()
    }
}

impl Gemini {
    pub fn new(config: &GeminiConfig, model: &str, http: reqwest::Client) -> Gemini {
        let model = model.strip_prefix("models/").unwrap_or(model);
        Gemini {
            model_url: format!("{}/models/{model}", config.base_url.trim_end_matches('/')),
            model: model.to_string(),
            api_key: key_from_env(config.api_key_env.as_deref()),
            http,
        }
    }

    fn post(&self, method: &str, body: &Map<String, Value>) -> reqwest::RequestBuilder {
        let call = self
            .http
            .post(format!("{}:{method}", self.model_url))
            .json(body);
        match &self.api_key {
            Some(key) => call.header("x-goog-api-key", key),
            None => call,
        }
    }
}

impl Provider for Gemini {
    async fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        let body = request::from_openai(&request);
        let answer = call_json(self.post("generateContent", &body), timeout, map_error).await?;
        response::to_openai(&answer, &self.model).map_err(ProviderError::Malformed)
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        let body = request::from_openai(&request);
        let call = self.post("streamGenerateContent?alt=sse", &body);
        let response = call_stream(call, timeout, map_error).await?;
        Ok(translate_events(
            response,
            stream::ToOpenAi::new(&self.model),
        ))
    }

    /// `embedContent` or `batchEmbedContents`. Gemini reports no usage for them: it is the
    /// ingress's count, marked estimated.
    async fn embed(
        &self,
        request: &EmbeddingsRequest,
        prompt_tokens: u32,
        timeout: Duration,
    ) -> Result<Embedded, ProviderError> {
        let (method, body) =
            embeddings::from_openai(request, &self.model).map_err(ProviderError::Unsupported)?;
        let answer = call_json(self.post(method, &body), timeout, map_error).await?;
        let body = embeddings::to_openai(&answer, request, &self.model, prompt_tokens)
            .map_err(ProviderError::Malformed)?;
        Ok(Embedded::new(body, None, prompt_tokens))
    }
}

/// Google's error body in OpenAI's shape, with its `RetryInfo.retryDelay` as the retry
/// hint; a body that is not Google's passes as it is.
pub fn map_error(_status: u16, body: &str) -> (String, Option<Duration>) {
    match error::to_openai(body) {
        Some((error, retry)) => (error.to_json(), retry),
        None => (body.to_string(), None),
    }
}
