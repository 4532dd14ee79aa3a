//! Providers: a closed set, chosen by `type` in config, all behind one trait.

pub mod openai;

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_schemas::openai::CompletionUsage;

use crate::error::ProviderError;

/// One provider endpoint, as configured under `[deployments.provider]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, the mock).
    Openai(openai::OpenAiConfig),
}

impl ProviderConfig {
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            ProviderConfig::Openai(c) => c.validate(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Openai(_) => "openai",
        }
    }
}

/// A successful completion, translated to OpenAI's response shape.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The response body the caller gets, as JSON.
    pub body: String,
    /// Usage as the provider reported it.
    pub usage: CompletionUsage,
}

/// A provider's stream of server-sent events, translated to OpenAI `chat.completion.chunk`
/// JSON (and the final `[DONE]`).
pub type EventStream = futures::stream::BoxStream<'static, Result<String, ProviderError>>;

/// What every provider does: one chat completion call, whole or streamed.
pub trait Provider {
    /// `request` is the caller's OpenAI chat request (Sluice's own fields removed).
    fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Completion, ProviderError>> + Send;

    /// Starts a streamed completion; `timeout` bounds the wait for the response head. An
    /// error before the stream starts is retriable like any other; once events flow, the
    /// caller owns idle timeouts.
    fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<EventStream, ProviderError>> + Send;
}

/// A provider client built from config.
#[derive(Debug, Clone)]
pub enum Client {
    Openai(openai::OpenAi),
}

impl Client {
    pub fn new(config: &ProviderConfig, http: reqwest::Client) -> Client {
        match config {
            ProviderConfig::Openai(c) => Client::Openai(openai::OpenAi::new(c, http)),
        }
    }
}

impl Provider for Client {
    async fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        match self {
            Client::Openai(p) => p.complete(request, timeout).await,
        }
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        match self {
            Client::Openai(p) => p.stream(request, timeout).await,
        }
    }
}

/// Parses `Retry-After` (seconds) and OpenAI's `retry-after-ms`.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}
