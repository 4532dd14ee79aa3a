//! OpenAI Chat Completions, and every server that speaks it (vLLM, Ollama, llama.cpp
//! server, Azure OpenAI): the internal shape itself, so requests and answers pass unchanged.
//! A deployment with `api = "responses"` is called at OpenAI's Responses API instead
//! (`{base_url}/responses`, for models served only there, or to use it for every caller):
//! each request is translated to it and its answers back, by `sluice_dialect::responses`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_dialect::responses;
use sluice_schemas::embeddings::{EmbeddingsRequest, EmbeddingsResponse};
use sluice_schemas::openai::ChatCompletionResponse;

use eventsource_stream::Eventsource;
use futures::StreamExt;

use super::{
    call_json, call_stream, check_key_env, check_url, key_from_env, passthrough_error,
    translate_events, Completion, Embedded, EventStream, Invalid, Provider,
};
use crate::error::ProviderError;

#[derive(Debug, Clone, Deserialize)]
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
    /// Which of OpenAI's APIs the deployment is called at: `chat_completions` (the default)
    /// or `responses`.
    #[serde(default)]
    pub api: Api,
}

/// The API an OpenAI deployment is called at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    #[default]
    ChatCompletions,
    Responses,
}

impl OpenAiConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        check_url(&self.base_url, "base_url")?;
        check_key_env(self.api_key_env.as_deref())
    }
}

/// How a call presents its key.
#[derive(Clone)]
pub(crate) enum Auth {
    None,
    /// `Authorization: Bearer <key>` (OpenAI and compatible servers).
    Bearer(String),
    /// A header of its own, e.g. Azure's `api-key`.
    Header(&'static str, String),
}

#[derive(Clone)]
pub struct OpenAi {
    url: String,
    /// The same API's `embeddings` endpoint.
    embeddings_url: String,
    auth: Auth,
    model: String,
    http: reqwest::Client,
    /// Send the completion cap as `max_tokens`: self-hosted servers (older vLLM, llama.cpp
    /// server) may ignore `max_completion_tokens`, and an ignored cap is an unbounded bill.
    cap_as_max_tokens: bool,
    /// The Responses API's URL, for a deployment called there.
    responses_url: Option<String>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi").field("url", &self.url).finish()
    }
}

impl OpenAi {
    pub fn new(config: &OpenAiConfig, model: &str, http: reqwest::Client) -> OpenAi {
        let auth = match key_from_env(config.api_key_env.as_deref()) {
            Some(key) => Auth::Bearer(key),
            None => Auth::None,
        };
        let base = config.base_url.trim_end_matches('/');
        let openai = OpenAi::with_urls(
            [
                format!("{base}/chat/completions"),
                format!("{base}/embeddings"),
            ],
            auth,
            model,
            http,
        );
        match config.api {
            Api::ChatCompletions => openai,
            Api::Responses => openai.at_responses(format!("{base}/responses"), model),
        }
    }

    /// Where generation goes when it is at the Responses API: the URL and the model named.
    #[cfg(test)]
    pub(crate) fn responses_target(&self) -> Option<(&str, &str)> {
        self.responses_url
            .as_deref()
            .map(|url| (url, self.model.as_str()))
    }

    /// The same client calling the Responses API at `url` for generation, naming `model`.
    pub(crate) fn at_responses(self, url: String, model: &str) -> OpenAi {
        OpenAi {
            responses_url: Some(url),
            model: model.to_string(),
            ..self
        }
    }

    /// A client for an OpenAI-shaped API: its chat completions and embeddings URLs.
    pub(crate) fn with_urls(
        [url, embeddings_url]: [String; 2],
        auth: Auth,
        model: &str,
        http: reqwest::Client,
    ) -> OpenAi {
        OpenAi {
            url,
            embeddings_url,
            auth,
            model: model.to_string(),
            http,
            cap_as_max_tokens: false,
            responses_url: None,
        }
    }

    /// [`OpenAi::new`] for an OpenAI-compatible server: the cap goes as `max_tokens`.
    pub fn compatible(config: &OpenAiConfig, model: &str, http: reqwest::Client) -> OpenAi {
        OpenAi {
            cap_as_max_tokens: true,
            ..OpenAi::new(config, model, http)
        }
    }
}

impl Provider for OpenAi {
    async fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        if let Some(url) = &self.responses_url {
            let call = self.send(url, &self.responses_body(&request, false)?);
            let body = call_json(call, timeout, passthrough_error).await?;
            return responses::response::to_openai(&body).map_err(ProviderError::Malformed);
        }
        let body = call_json(self.post(request), timeout, passthrough_error).await?;
        let parsed: ChatCompletionResponse =
            serde_json::from_str(&body).map_err(ProviderError::Malformed)?;
        Ok(Completion {
            usage: parsed.usage.unwrap_or_default(),
            body,
        })
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        if let Some(url) = &self.responses_url {
            let call = self.send(url, &self.responses_body(&request, true)?);
            let response = call_stream(call, timeout, passthrough_error).await?;
            return Ok(translate_events(
                response,
                responses::stream::ToOpenAi::new(),
            ));
        }
        let response = call_stream(self.post(request), timeout, passthrough_error).await?;
        Ok(response
            .bytes_stream()
            .eventsource()
            .map(|event| match event {
                // A mid-stream error is the provider's text too: scrubbed like a status
                // error's body. Content chunks pass unchanged.
                Ok(event) if event.data.starts_with("{\"error\"") => {
                    Ok(super::scrub::scrub(&event.data).into_owned())
                }
                Ok(event) => Ok(event.data),
                Err(eventsource_stream::EventStreamError::Transport(e)) => {
                    Err(ProviderError::Body(e))
                }
                Err(_) => Err(ProviderError::StreamBroken),
            })
            .boxed())
    }

    /// The request as it came, for the deployment's model; the answer passes unchanged.
    async fn embed(
        &self,
        request: &EmbeddingsRequest,
        prompt_tokens: u32,
        timeout: Duration,
    ) -> Result<Embedded, ProviderError> {
        let request = EmbeddingsRequest {
            model: self.model.clone(),
            ..request.clone()
        };
        let call = self.send(&self.embeddings_url, &request);
        let body = call_json(call, timeout, passthrough_error).await?;
        let parsed: EmbeddingsResponse =
            serde_json::from_str(&body).map_err(ProviderError::Malformed)?;
        if parsed.data.len() != request.input.len() {
            return Err(ProviderError::Malformed(serde::de::Error::custom(format!(
                "{} embeddings answered for {} inputs",
                parsed.data.len(),
                request.input.len()
            ))));
        }
        let reported = parsed.usage.map(|u| u.prompt_tokens);
        Ok(Embedded::new(body, reported, prompt_tokens))
    }
}

impl OpenAi {
    fn post(&self, mut request: Map<String, Value>) -> reqwest::RequestBuilder {
        request.insert("model".into(), Value::String(self.model.clone()));
        if self.cap_as_max_tokens {
            if let Some(cap) = request.remove("max_completion_tokens") {
                request.insert("max_tokens".into(), cap);
            }
        }
        self.send(&self.url, &request)
    }

    /// The Responses API's request for a chat `request`; a field it has no form for is
    /// refused without a call (another deployment may take it).
    fn responses_body(
        &self,
        request: &Map<String, Value>,
        stream: bool,
    ) -> Result<Map<String, Value>, ProviderError> {
        responses::request::from_openai(request, &self.model, stream)
            .map_err(ProviderError::Unsupported)
    }

    fn send(&self, url: &str, body: &impl serde::Serialize) -> reqwest::RequestBuilder {
        let call = self.http.post(url).json(body);
        match &self.auth {
            Auth::None => call,
            Auth::Bearer(key) => call.bearer_auth(key),
            Auth::Header(name, key) => call.header(*name, key),
        }
    }
}
