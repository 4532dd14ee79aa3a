//! The one trait every provider implements, and [`Client`], the closed set of them.

use std::time::Duration;

use serde_json::{Map, Value};

use super::config::ProviderConfig;
use super::{anthropic, azure, gemini, openai};
use crate::error::ProviderError;

pub use sluice_dialect::Completion;

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
    /// OpenAI, OpenAI-compatible servers and Azure OpenAI: one wire format.
    Openai(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
}

impl Client {
    /// `model` is the provider's name for the model: the config's `model`, else the
    /// deployment's (callers may have asked for an alias, which no provider knows).
    pub fn new(config: &ProviderConfig, model: &str, http: reqwest::Client) -> Client {
        match config {
            ProviderConfig::Openai(c) => Client::Openai(openai::OpenAi::new(c, model, http)),
            ProviderConfig::OpenaiCompatible(c) => {
                Client::Openai(openai::OpenAi::compatible(c, model, http))
            }
            ProviderConfig::Azure(c) => Client::Openai(azure::client(c, model, http)),
            ProviderConfig::Anthropic(c) => {
                Client::Anthropic(anthropic::Anthropic::new(c, model, http))
            }
            ProviderConfig::Gemini(c) => Client::Gemini(gemini::Gemini::new(c, model, http)),
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
            Client::Anthropic(p) => p.complete(request, timeout).await,
            Client::Gemini(p) => p.complete(request, timeout).await,
        }
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        match self {
            Client::Openai(p) => p.stream(request, timeout).await,
            Client::Anthropic(p) => p.stream(request, timeout).await,
            Client::Gemini(p) => p.stream(request, timeout).await,
        }
    }
}
