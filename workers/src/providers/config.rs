//! `[deployments.provider]`: each provider type's config, and the checks they share.

use serde::Deserialize;

use super::{anthropic, azure, gemini, openai};

/// One provider endpoint, as configured under `[deployments.provider]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// OpenAI's API (or any server that speaks it).
    Openai(openai::OpenAiConfig),
    /// A self-hosted OpenAI-compatible server (vLLM, Ollama, llama.cpp server): the same
    /// wire format as `openai`, named apart so results and dashboards tell them apart.
    OpenaiCompatible(openai::OpenAiConfig),
    /// Azure OpenAI: a resource endpoint, a deployment and an API version.
    Azure(azure::AzureConfig),
    /// Anthropic's Messages API.
    Anthropic(anthropic::AnthropicConfig),
    /// Google's Gemini API (generateContent, streamGenerateContent).
    Gemini(gemini::GeminiConfig),
}

/// A config field that is wrong: its name under `provider` and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

impl ProviderConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            ProviderConfig::Openai(c) | ProviderConfig::OpenaiCompatible(c) => c.validate(),
            ProviderConfig::Azure(c) => c.validate(),
            ProviderConfig::Anthropic(c) => c.validate(),
            ProviderConfig::Gemini(c) => c.validate(),
        }
    }

    /// The `type`, recorded as the provider of results and usage.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Openai(_) => "openai",
            ProviderConfig::OpenaiCompatible(_) => "openai_compatible",
            ProviderConfig::Azure(_) => "azure",
            ProviderConfig::Anthropic(_) => "anthropic",
            ProviderConfig::Gemini(_) => "gemini",
        }
    }

    /// The provider's own name for the model, if config sets one.
    pub fn model(&self) -> Option<&str> {
        match self {
            ProviderConfig::Openai(c) | ProviderConfig::OpenaiCompatible(c) => c.model.as_deref(),
            ProviderConfig::Azure(_) => None,
            ProviderConfig::Anthropic(c) => c.model.as_deref(),
            ProviderConfig::Gemini(c) => c.model.as_deref(),
        }
    }
}

/// Checks shared by every provider's config.
pub(crate) fn check_url(url: &str, field: &'static str) -> Result<(), Invalid> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(Invalid {
            field,
            problem: "must start with http:// or https://",
        })
    }
}

pub(crate) fn check_key_env(var: Option<&str>) -> Result<(), Invalid> {
    match var {
        Some(var) if std::env::var(var).is_err() => Err(Invalid {
            field: "api_key_env",
            problem: "names an environment variable that is not set",
        }),
        _ => Ok(()),
    }
}

pub(crate) fn key_from_env(var: Option<&str>) -> Option<String> {
    var.and_then(|v| std::env::var(v).ok())
}
