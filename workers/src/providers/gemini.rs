//! Google's Gemini API: `models/{model}:generateContent` and
//! `models/{model}:streamGenerateContent?alt=sse`, translated to and from the internal
//! OpenAI shape. The key goes in the `x-goog-api-key` header, never in the URL (URLs end up
//! in logs).
//!
//! - System and developer messages become `systemInstruction`; assistant turns are `model`
//!   turns; tool results become `functionResponse` parts of a user turn, answered by the
//!   function's name (looked up from the assistant's tool call ids).
//! - Sampling, caps, stop sequences and JSON mode go into `generationConfig`.
//! - Usage: `promptTokenCount` (cached content included, as `cachedContentTokenCount`),
//!   `candidatesTokenCount` plus `thoughtsTokenCount` (thinking is billed as output).
//! - A stream has no end marker: it is complete when a chunk carried a `finishReason`.
//! - A 429's `RetryInfo.retryDelay` is honoured like a `Retry-After` header.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_schemas::openai::{CompletionUsage, ErrorBody};

use super::translate::{self, Chunks, Image, Part, ResponseFormat, ToolChoice};
use super::{
    call_json, call_stream, check_key_env, check_url, key_from_env, translate_events, Completion,
    EventStream, Invalid, Provider, StreamTranslator,
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
        let body = to_gemini(&request);
        let answer = call_json(self.post("generateContent", &body), timeout, map_error).await?;
        from_gemini(&answer, &self.model).map_err(ProviderError::Malformed)
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        let body = to_gemini(&request);
        let call = self.post("streamGenerateContent?alt=sse", &body);
        let response = call_stream(call, timeout, map_error).await?;
        Ok(translate_events(response, GeminiStream::new(&self.model)))
    }
}

/// The OpenAI chat request as a Gemini `GenerateContentRequest`.
pub fn to_gemini(request: &Map<String, Value>) -> Map<String, Value> {
    let messages = translate::messages(request);
    let names = translate::tool_names(messages);
    let mut system = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, parts: Vec<Value>| {
        if parts.is_empty() {
            return;
        }
        match contents.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => contents.push((role, parts)),
        }
    };
    for message in messages {
        match translate::role(message) {
            "system" | "developer" => {
                let text = translate::text(message);
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "assistant" => {
                let mut parts = content_parts(message);
                parts.extend(translate::tool_calls(message).into_iter().map(
                    |call| json!({"functionCall": {"name": call.name, "args": call.arguments}}),
                ));
                push("model", parts);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let name = names.get(id).cloned().unwrap_or_default();
                let text = translate::text(message);
                // `response` must be an object: JSON objects pass as they are.
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(Value::Object(o)) => Value::Object(o),
                    _ => json!({"content": text}),
                };
                push(
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                );
            }
            _ => push("user", content_parts(message)),
        }
    }

    let mut body = Map::new();
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let tools = translate::tools(request);
    if !tools.is_empty() {
        let declarations: Vec<Value> = tools
            .into_iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parameters": t.parameters});
                if let Some(description) = t.description {
                    d["description"] = json!(description);
                }
                d
            })
            .collect();
        body.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
        if let Some(choice) = translate::tool_choice(request) {
            let config = match choice {
                ToolChoice::Auto => json!({"mode": "AUTO"}),
                ToolChoice::None => json!({"mode": "NONE"}),
                ToolChoice::Required => json!({"mode": "ANY"}),
                ToolChoice::Function(name) => {
                    json!({"mode": "ANY", "allowedFunctionNames": [name]})
                }
            };
            body.insert(
                "toolConfig".into(),
                json!({"functionCallingConfig": config}),
            );
        }
    }
    let mut config = Map::new();
    for (openai, gemini) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
        ("n", "candidateCount"),
    ] {
        if let Some(v) = translate::number(request, openai) {
            config.insert(gemini.into(), v);
        }
    }
    if let Some(cap) = translate::completion_cap(request) {
        config.insert("maxOutputTokens".into(), json!(cap));
    }
    if let Some(stop) = translate::stop_sequences(request) {
        config.insert("stopSequences".into(), json!(stop));
    }
    match translate::response_format(request) {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        ResponseFormat::JsonSchema { schema, .. } => {
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema);
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    body
}

fn content_parts(message: &Value) -> Vec<Value> {
    translate::parts(message)
        .into_iter()
        .filter_map(|part| match part {
            Part::Text(text) if text.is_empty() => None,
            Part::Text(text) => Some(json!({"text": text})),
            Part::Image(Image::Inline { mime, data }) => {
                Some(json!({"inlineData": {"mimeType": mime, "data": data}}))
            }
            Part::Image(Image::Url(url)) => {
                let mime = mime_of(&url);
                Some(json!({"fileData": {"mimeType": mime, "fileUri": url}}))
            }
        })
        .collect()
}

/// Gemini wants a MIME type with a file URI; guess it from the extension.
fn mime_of(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    match path.rsplit('.').next() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        _ => "image/jpeg",
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default)]
    prompt_token_count: u32,
    #[serde(default)]
    candidates_token_count: u32,
    #[serde(default)]
    thoughts_token_count: u32,
    #[serde(default)]
    cached_content_token_count: u32,
}

impl UsageMetadata {
    fn openai(self) -> CompletionUsage {
        translate::usage(
            self.prompt_token_count,
            self.candidates_token_count
                .saturating_add(self.thoughts_token_count),
            self.cached_content_token_count,
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    #[serde(default)]
    usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    index: Option<u32>,
}

impl Candidate {
    fn parts(&self) -> &[Value] {
        self.content
            .as_ref()
            .and_then(|c| c.get("parts"))
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }
}

/// Gemini's finish reason as OpenAI's.
pub fn finish_reason(reason: &str, called_tools: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called_tools => "tool_calls",
        _ => "stop",
    }
}

/// Text of a part that is answer text (thought summaries are not).
fn part_text(part: &Value) -> Option<&str> {
    if part.get("thought") == Some(&Value::Bool(true)) {
        return None;
    }
    part.get("text").and_then(Value::as_str)
}

/// A part's function call: (id if Gemini gave one, name, arguments as JSON text).
fn part_call(part: &Value) -> Option<(Option<&str>, &str, String)> {
    let call = part.get("functionCall")?;
    Some((
        call.get("id").and_then(Value::as_str),
        call.get("name").and_then(Value::as_str).unwrap_or(""),
        call.get("args")
            .cloned()
            .unwrap_or_else(|| json!({}))
            .to_string(),
    ))
}

fn call_id(given: Option<&str>, position: usize) -> String {
    given.map_or_else(
        || format!("{}_{position}", translate::generated_id("call_")),
        str::to_string,
    )
}

/// A Gemini `GenerateContentResponse` as an OpenAI chat completion.
pub fn from_gemini(body: &str, model: &str) -> Result<Completion, serde_json::Error> {
    let response: Response = serde_json::from_str(body)?;
    let mut choices = Vec::new();
    for (i, candidate) in response.candidates.iter().enumerate() {
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in candidate.parts() {
            if let Some(t) = part_text(part) {
                text.push_str(t);
            }
            if let Some((id, name, arguments)) = part_call(part) {
                calls.push(translate::tool_call_json(
                    &call_id(id, calls.len()),
                    name,
                    &arguments,
                ));
            }
        }
        let finish = finish_reason(
            candidate.finish_reason.as_deref().unwrap_or("STOP"),
            !calls.is_empty(),
        );
        let content = (!text.is_empty() || calls.is_empty()).then_some(text);
        choices.push(translate::choice(
            candidate.index.unwrap_or(i as u32),
            content,
            calls,
            finish,
        ));
    }
    if choices.is_empty() {
        // The prompt was blocked (`promptFeedback.blockReason`): no candidate at all.
        choices.push(translate::choice(0, None, Vec::new(), "content_filter"));
    }
    let usage = response.usage_metadata.unwrap_or_default().openai();
    let id = response
        .response_id
        .unwrap_or_else(|| translate::generated_id("gen-"));
    Ok(Completion {
        body: translate::completion(
            &id,
            translate::unix_now(),
            response.model_version.as_deref().unwrap_or(model),
            choices,
            &usage,
        ),
        usage,
    })
}

/// Google's error body `{"error": {"code", "message", "status", "details"}}` (or a
/// one-element array of it) in OpenAI's shape, with `RetryInfo.retryDelay` as the retry hint.
pub fn map_error(_status: u16, body: &str) -> (String, Option<Duration>) {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return (body.to_string(), None);
    };
    let value = match &value {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        _ => value,
    };
    let Some(error) = value.get("error") else {
        return (body.to_string(), None);
    };
    (error_body(error).to_json(), retry_delay(error))
}

fn error_body(error: &Value) -> ErrorBody {
    let status = error
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or(status);
    ErrorBody::new(&status.to_ascii_lowercase(), Some(status), message)
}

fn retry_delay(error: &Value) -> Option<Duration> {
    error
        .get("details")?
        .as_array()?
        .iter()
        .find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })?
        .get("retryDelay")?
        .as_str()?
        .strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s.clamp(0.0, 3600.0)).ok())
}

/// Gemini's stream (each event a whole `GenerateContentResponse`) as OpenAI chunks.
pub(crate) struct GeminiStream {
    model: String,
    chunks: Option<Chunks>,
    usage: Option<CompletionUsage>,
    /// Tool calls so far (their positions), per candidate index.
    calls: std::collections::HashMap<u32, u32>,
    finished: bool,
}

impl GeminiStream {
    pub(crate) fn new(model: &str) -> GeminiStream {
        GeminiStream {
            model: model.to_string(),
            chunks: None,
            usage: None,
            calls: std::collections::HashMap::new(),
            finished: false,
        }
    }
}

impl StreamTranslator for GeminiStream {
    fn event(
        &mut self,
        _name: &str,
        data: &str,
        out: &mut Vec<String>,
    ) -> Result<(), ProviderError> {
        let value: Value = serde_json::from_str(data).map_err(ProviderError::Malformed)?;
        if let Some(error) = value.get("error") {
            out.push(super::scrub::scrub(&error_body(error).to_json()).into_owned());
            return Ok(());
        }
        let response: Response = serde_json::from_value(value).map_err(ProviderError::Malformed)?;
        let chunks = match &self.chunks {
            Some(chunks) => chunks.clone(),
            None => {
                let chunks = Chunks {
                    id: response
                        .response_id
                        .clone()
                        .unwrap_or_else(|| translate::generated_id("gen-")),
                    created: translate::unix_now(),
                    model: response
                        .model_version
                        .clone()
                        .unwrap_or_else(|| self.model.clone()),
                };
                out.push(chunks.role(0));
                self.chunks = Some(chunks.clone());
                chunks
            }
        };
        for (i, candidate) in response.candidates.iter().enumerate() {
            let index = candidate.index.unwrap_or(i as u32);
            for part in candidate.parts() {
                if let Some(text) = part_text(part) {
                    if !text.is_empty() {
                        out.push(chunks.text(index, text));
                    }
                }
                if let Some((id, name, arguments)) = part_call(part) {
                    let position = self.calls.entry(index).or_insert(0);
                    let id = call_id(id, *position as usize);
                    out.push(chunks.tool_start(index, *position, &id, name));
                    out.push(chunks.tool_arguments(index, *position, &arguments));
                    *position += 1;
                }
            }
            if let Some(reason) = &candidate.finish_reason {
                let called = self.calls.get(&index).is_some_and(|n| *n > 0);
                out.push(chunks.finish(index, finish_reason(reason, called)));
                self.finished = true;
            }
        }
        if let Some(usage) = response.usage_metadata {
            self.usage = Some(usage.openai());
        }
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<String>) {
        if !self.finished {
            // Cut before the last chunk: no [DONE], so the worker sees a broken stream.
            return;
        }
        if let (Some(chunks), Some(usage)) = (&self.chunks, &self.usage) {
            out.push(chunks.usage(usage));
        }
        out.push("[DONE]".into());
    }
}

#[cfg(test)]
mod tests;
