//! The one trait every provider implements, and [`Client`], the closed set of them.

use std::time::Duration;

use serde_json::{Map, Value};
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::openai::CompletionUsage;

use super::config::ProviderConfig;
use super::{anthropic, azure, gemini, openai};
use crate::error::ProviderError;

pub use sluice_dialect::Completion;

/// A provider's stream of server-sent events, translated to OpenAI `chat.completion.chunk`
/// JSON (and the final `[DONE]`).
pub type EventStream = futures::stream::BoxStream<'static, Result<String, ProviderError>>;

/// An embeddings answer in OpenAI's shape, and its usage.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub body: String,
    /// `prompt_tokens` (= `total_tokens`); no completion tokens.
    pub usage: CompletionUsage,
    /// The provider reported no usage: it is the ingress's count.
    pub estimated: bool,
}

impl Embedded {
    /// `usage` as the provider reported it, else `prompt_tokens` (the ingress's count).
    pub(crate) fn new(body: String, reported: Option<u32>, prompt_tokens: u32) -> Embedded {
        let tokens = reported.unwrap_or(prompt_tokens);
        Embedded {
            body,
            usage: CompletionUsage {
                prompt_tokens: tokens,
                completion_tokens: 0,
                total_tokens: tokens,
                prompt_tokens_details: None,
            },
            estimated: reported.is_none(),
        }
    }
}

/// What every provider does: one chat completion call, whole or streamed, and one
/// embeddings call.
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

    /// Embeds the request's input. `prompt_tokens` is the ingress's count of it, the usage
    /// when the provider reports none. A provider without embeddings answers
    /// [`ProviderError::Unsupported`] without a call.
    fn embed(
        &self,
        request: &EmbeddingsRequest,
        prompt_tokens: u32,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Embedded, ProviderError>> + Send;
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

    async fn embed(
        &self,
        request: &EmbeddingsRequest,
        prompt_tokens: u32,
        timeout: Duration,
    ) -> Result<Embedded, ProviderError> {
        match self {
            Client::Openai(p) => p.embed(request, prompt_tokens, timeout).await,
            Client::Anthropic(p) => p.embed(request, prompt_tokens, timeout).await,
            Client::Gemini(p) => p.embed(request, prompt_tokens, timeout).await,
        }
    }
}
