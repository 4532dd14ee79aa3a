//! OpenAI Chat Completions, and every server that speaks it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_schemas::openai::ChatCompletionResponse;

use eventsource_stream::Eventsource;
use futures::StreamExt;

use super::{retry_after, Completion, EventStream, Provider};
use crate::error::ProviderError;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// Name of the environment variable holding the API key (keys never live in config files).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// The provider's name for the model, if it differs from the name callers use.
    #[serde(default)]
    pub model: Option<String>,
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("model", &self.model)
            .finish()
    }
}

impl OpenAiConfig {
    pub fn validate(&self) -> Result<(), &'static str> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err("base_url must start with http:// or https://");
        }
        if let Some(var) = &self.api_key_env {
            if std::env::var(var).is_err() {
                return Err("api_key_env names an environment variable that is not set");
            }
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct OpenAi {
    url: String,
    api_key: Option<String>,
    model: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi").field("url", &self.url).finish()
    }
}

impl OpenAi {
    pub fn new(config: &OpenAiConfig, http: reqwest::Client) -> OpenAi {
        OpenAi {
            url: format!("{}/chat/completions", config.base_url.trim_end_matches('/')),
            api_key: config
                .api_key_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok()),
            model: config.model.clone(),
            http,
        }
    }
}

impl Provider for OpenAi {
    async fn complete(
        &self,
        mut request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        if let Some(model) = &self.model {
            request.insert("model".into(), Value::String(model.clone()));
        }
        let response = self
            .post(&request)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(e, timeout))?;
        let status = response.status();
        let retry = retry_after(response.headers());
        let body = response.text().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout(timeout)
            } else {
                ProviderError::Body(e)
            }
        })?;
        if !status.is_success() {
            return Err(ProviderError::Status {
                status: status.as_u16(),
                body,
                retry_after: retry,
            });
        }
        let parsed: ChatCompletionResponse =
            serde_json::from_str(&body).map_err(ProviderError::Malformed)?;
        Ok(Completion {
            usage: parsed.usage.unwrap_or_default(),
            body,
        })
    }

    async fn stream(
        &self,
        mut request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        if let Some(model) = &self.model {
            request.insert("model".into(), Value::String(model.clone()));
        }
        let response = tokio::time::timeout(timeout, self.post(&request).send())
            .await
            .map_err(|_| ProviderError::Timeout(timeout))?
            .map_err(|e| classify(e, timeout))?;
        let status = response.status();
        if !status.is_success() {
            let retry = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            return Err(ProviderError::Status {
                status: status.as_u16(),
                body,
                retry_after: retry,
            });
        }
        Ok(response
            .bytes_stream()
            .eventsource()
            .map(|event| match event {
                Ok(event) => Ok(event.data),
                Err(eventsource_stream::EventStreamError::Transport(e)) => {
                    Err(ProviderError::Body(e))
                }
                Err(_) => Err(ProviderError::StreamBroken),
            })
            .boxed())
    }
}

impl OpenAi {
    fn post(&self, request: &Map<String, Value>) -> reqwest::RequestBuilder {
        let call = self.http.post(&self.url).json(request);
        match &self.api_key {
            Some(key) => call.bearer_auth(key),
            None => call,
        }
    }
}

fn classify(e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(timeout)
    } else {
        ProviderError::Connect(e)
    }
}
