//! Azure OpenAI: OpenAI's wire format at a per-deployment URL,
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...` (and
//! `.../embeddings?api-version=...`), with the
//! key in an `api-key` header. The Azure deployment decides the model.
//!
//! With `api = "responses"` generation goes to Azure's Responses API instead, which lives on
//! its OpenAI-compatible v1 surface: `{endpoint}/openai/v1/responses`, no api-version, the
//! Azure deployment named as the body's `model`.

use serde::Deserialize;

use super::openai::{Api, Auth, OpenAi};
use super::{check_key_env, check_url, key_from_env, Invalid};

/// The GA API version used when config names none.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// The resource endpoint, e.g. `https://my-resource.openai.azure.com`.
    pub endpoint: String,
    /// The Azure deployment name (what Azure calls the model deployment).
    pub deployment: String,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    /// Name of the environment variable holding the key (sent as `api-key`).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `chat_completions` (the default) or `responses` (see the module docs).
    #[serde(default)]
    pub api: Api,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.into()
}

impl AzureConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url(&self.endpoint, "endpoint")?;
        if self.deployment.is_empty()
            || !self
                .deployment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Invalid {
                field: "deployment",
                problem: "must be an Azure deployment name (letters, digits, '-', '_', '.')",
            });
        }
        if self.api_version.trim().is_empty() {
            return Err(Invalid {
                field: "api_version",
                problem: "must not be empty",
            });
        }
        check_key_env(self.api_key_env.as_deref())
    }

    /// The chat completions URL.
    pub fn url(&self) -> String {
        self.url_of("chat/completions")
    }

    /// The deployment's URL for an operation (`chat/completions`, `embeddings`).
    fn url_of(&self, operation: &str) -> String {
        format!(
            "{}/openai/deployments/{}/{operation}?api-version={}",
            self.endpoint.trim_end_matches('/'),
            self.deployment,
            self.api_version
        )
    }
}

/// An OpenAI client pointed at the Azure deployment.
pub fn client(config: &AzureConfig, model: &str, http: reqwest::Client) -> OpenAi {
    let auth = match key_from_env(config.api_key_env.as_deref()) {
        Some(key) => Auth::Header("api-key", key),
        None => Auth::None,
    };
    let openai = OpenAi::with_urls(
        [config.url(), config.url_of("embeddings")],
        auth,
        model,
        http,
    );
    match config.api {
        Api::ChatCompletions => openai,
        Api::Responses => openai.at_responses(
            format!(
                "{}/openai/v1/responses",
                config.endpoint.trim_end_matches('/')
            ),
            &config.deployment,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_url_as_azure_documents_it() {
        let config: AzureConfig = toml_config(
            r#"endpoint = "https://my-resource.openai.azure.com/"
               deployment = "gpt-4o-prod""#,
        );
        assert_eq!(
            config.url(),
            "https://my-resource.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
        );
        assert_eq!(
            config.url_of("embeddings"),
            "https://my-resource.openai.azure.com/openai/deployments/gpt-4o-prod/embeddings?api-version=2024-10-21"
        );
        assert!(config.validate().is_ok());
        let bad: AzureConfig = toml_config(
            r#"endpoint = "my-resource.openai.azure.com"
               deployment = "x""#,
        );
        assert_eq!(bad.validate().map_err(|e| e.field), Err("endpoint"));
    }

    #[test]
    fn the_responses_api_is_on_azures_v1_surface() {
        let config: AzureConfig = toml_config(
            r#"endpoint = "https://my-resource.openai.azure.com/"
               deployment = "gpt-5-mini-prod"
               api = "responses""#,
        );
        assert_eq!(config.api, Api::Responses);
        let client = client(&config, "gpt-5-mini", reqwest::Client::new());
        assert_eq!(
            client.responses_target(),
            Some((
                "https://my-resource.openai.azure.com/openai/v1/responses",
                "gpt-5-mini-prod"
            ))
        );
        let chat: AzureConfig = toml_config(
            r#"endpoint = "https://my-resource.openai.azure.com"
               deployment = "gpt-4o-prod""#,
        );
        let client = super::client(&chat, "gpt-4o", reqwest::Client::new());
        assert_eq!(client.responses_target(), None);
    }

    fn toml_config(text: &str) -> AzureConfig {
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(text))
            .extract()
            .unwrap()
    }
}
