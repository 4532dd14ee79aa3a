//! Anthropic's Messages API (`POST /v1/messages`), translated to and from the internal
//! OpenAI shape.
//!
//! - System and developer messages become the top-level `system`; tool results (OpenAI's
//!   `tool` messages) become `tool_result` blocks of a user turn; consecutive turns of one
//!   role are merged, as Anthropic wants user and assistant to alternate.
//! - `max_tokens` is required by Anthropic: the caller's cap, else `default_max_tokens`.
//! - JSON mode: `json_schema` is served by forcing a tool whose input schema is the schema
//!   (the tool's input becomes the message content); `json_object` by a system instruction.
//! - Usage: Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's
//!   `prompt_tokens` includes them, with cache reads as `cached_tokens`.

use std::collections::{HashMap, HashSet};
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
        let out = to_anthropic(&request, &self.model, self.default_max_tokens, false);
        let body = call_json(self.post(&out.body), timeout, map_error).await?;
        from_anthropic(&body, out.json_tool.as_deref()).map_err(ProviderError::Malformed)
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        let out = to_anthropic(&request, &self.model, self.default_max_tokens, true);
        let response = call_stream(self.post(&out.body), timeout, map_error).await?;
        Ok(translate_events(
            response,
            AnthropicStream::new(out.json_tool),
        ))
    }
}

/// An Anthropic request, and the name of the tool that stands for JSON mode, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub body: Map<String, Value>,
    pub json_tool: Option<String>,
}

const JSON_OBJECT_INSTRUCTION: &str =
    "Respond with a single JSON object and nothing else: no prose, no code fences.";

/// The OpenAI chat request as an Anthropic Messages request.
pub fn to_anthropic(
    request: &Map<String, Value>,
    model: &str,
    default_max_tokens: u32,
    stream: bool,
) -> Outgoing {
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    let mut push = |role: &'static str, blocks: Vec<Value>| {
        if blocks.is_empty() {
            return;
        }
        match turns.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    };
    for message in translate::messages(request) {
        match translate::role(message) {
            "system" | "developer" => system.push(translate::text(message)),
            "assistant" => {
                let mut blocks = content_blocks(message);
                blocks.extend(translate::tool_calls(message).into_iter().map(|call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
                }));
                push("assistant", blocks);
            }
            "tool" => push(
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").and_then(Value::as_str).unwrap_or(""),
                    "content": translate::text(message),
                })],
            ),
            // user, and the legacy `function` role, which has no id to answer by.
            _ => push("user", content_blocks(message)),
        }
    }

    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert(
        "max_tokens".into(),
        json!(translate::completion_cap(request).unwrap_or(u64::from(default_max_tokens))),
    );
    let mut tools: Vec<Value> = translate::tools(request)
        .into_iter()
        .map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.parameters});
            if let Some(d) = t.description {
                tool["description"] = json!(d);
            }
            tool
        })
        .collect();
    let disable_parallel = request.get("parallel_tool_calls") == Some(&Value::Bool(false));
    let mut tool_choice = translate::tool_choice(request).map(|choice| match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    let mut json_tool = None;
    match translate::response_format(request) {
        ResponseFormat::Text => {}
        ResponseFormat::JsonObject => system.push(JSON_OBJECT_INSTRUCTION.into()),
        ResponseFormat::JsonSchema { name, schema } => {
            tools.push(json!({
                "name": name,
                "description": "Respond by calling this tool: its input is the response, a JSON value matching the schema.",
                "input_schema": schema,
            }));
            tool_choice = Some(json!({"type": "tool", "name": name}));
            json_tool = Some(name);
        }
    }
    if disable_parallel && !tools.is_empty() {
        let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        choice["disable_parallel_tool_use"] = json!(true);
    }
    let system: Vec<String> = system.into_iter().filter(|s| !s.is_empty()).collect();
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    body.insert(
        "messages".into(),
        Value::Array(
            turns
                .into_iter()
                .map(|(role, content)| json!({"role": role, "content": content}))
                .collect(),
        ),
    );
    if let Some(stop) = translate::stop_sequences(request) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(t) = request.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0..2, Anthropic's 0..1.
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    for key in ["top_p", "top_k"] {
        if let Some(v) = translate::number(request, key) {
            body.insert(key.into(), v);
        }
    }
    if let Some(user) = request.get("user").and_then(Value::as_str) {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if !tools.is_empty() {
        body.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice {
            body.insert("tool_choice".into(), choice);
        }
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Outgoing { body, json_tool }
}

fn content_blocks(message: &Value) -> Vec<Value> {
    translate::parts(message)
        .into_iter()
        .filter_map(|part| match part {
            Part::Text(text) if text.is_empty() => None,
            Part::Text(text) => Some(json!({"type": "text", "text": text})),
            Part::Image(Image::Inline { mime, data }) => Some(json!({
                "type": "image",
                "source": {"type": "base64", "media_type": mime, "data": data},
            })),
            Part::Image(Image::Url(url)) => Some(json!({
                "type": "image",
                "source": {"type": "url", "url": url},
            })),
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u32>,
    #[serde(default)]
    cache_read_input_tokens: Option<u32>,
}

impl Usage {
    /// Later reports (message_delta) replace what they carry.
    fn update(&mut self, later: Usage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    fn openai(self) -> CompletionUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        translate::usage(prompt, self.output_tokens.unwrap_or(0), cached)
    }
}

#[derive(Debug, Deserialize)]
struct Message {
    id: String,
    model: String,
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Usage,
}

/// Anthropic's stop reason as OpenAI's finish reason.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// An Anthropic message as an OpenAI chat completion.
pub fn from_anthropic(
    body: &str,
    json_tool: Option<&str>,
) -> Result<Completion, serde_json::Error> {
    let message: Message = serde_json::from_str(body)?;
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut json_answer = false;
    for block in &message.content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => {
                let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                if Some(name) == json_tool {
                    // JSON mode: the forced tool's input is the answer.
                    text = input.to_string();
                    json_answer = true;
                    continue;
                }
                tool_calls.push(translate::tool_call_json(
                    block.get("id").and_then(Value::as_str).unwrap_or(""),
                    name,
                    &input.to_string(),
                ));
            }
            _ => {}
        }
    }
    let finish = if json_answer && tool_calls.is_empty() {
        "stop"
    } else {
        finish_reason(message.stop_reason.as_deref())
    };
    let usage = message.usage.openai();
    let content = (!text.is_empty() || tool_calls.is_empty()).then_some(text);
    Ok(Completion {
        body: translate::completion(
            &message.id,
            translate::unix_now(),
            &message.model,
            vec![translate::choice(0, content, tool_calls, finish)],
            &usage,
        ),
        usage,
    })
}

/// Anthropic's error body `{"type": "error", "error": {"type", "message"}}` in OpenAI's
/// shape, the Anthropic type kept as `type` and `code` (e.g. `overloaded_error`).
pub fn map_error(_status: u16, body: &str) -> (String, Option<Duration>) {
    match error_body(body) {
        Some(error) => (error.to_json(), None),
        None => (body.to_string(), None),
    }
}

fn error_body(body: &str) -> Option<ErrorBody> {
    let value: Value = serde_json::from_str(body).ok()?;
    let error = value.get("error")?;
    let kind = error.get("type")?.as_str()?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or(kind);
    Some(ErrorBody::new(kind, Some(kind), message))
}

/// Anthropic's stream events as OpenAI chunks.
pub(crate) struct AnthropicStream {
    chunks: Option<Chunks>,
    usage: Usage,
    /// Tool-use content blocks (by block index) and their position among tool calls.
    tools: HashMap<u64, u32>,
    /// Blocks of the JSON-mode tool, whose input is streamed as content.
    json_blocks: HashSet<u64>,
    json_tool: Option<String>,
}

impl AnthropicStream {
    pub(crate) fn new(json_tool: Option<String>) -> AnthropicStream {
        AnthropicStream {
            chunks: None,
            usage: Usage::default(),
            tools: HashMap::new(),
            json_blocks: HashSet::new(),
            json_tool,
        }
    }

    fn chunks(&mut self) -> &Chunks {
        self.chunks.get_or_insert_with(|| Chunks {
            id: translate::generated_id("msg_"),
            created: translate::unix_now(),
            model: String::new(),
        })
    }
}

impl StreamTranslator for AnthropicStream {
    fn event(
        &mut self,
        _name: &str,
        data: &str,
        out: &mut Vec<String>,
    ) -> Result<(), ProviderError> {
        let event: Value = serde_json::from_str(data).map_err(ProviderError::Malformed)?;
        let index = event.get("index").and_then(Value::as_u64).unwrap_or(0);
        match event.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                let message = &event["message"];
                self.chunks = Some(Chunks {
                    id: message["id"].as_str().unwrap_or("").to_string(),
                    created: translate::unix_now(),
                    model: message["model"].as_str().unwrap_or("").to_string(),
                });
                if let Ok(usage) = serde_json::from_value(message["usage"].clone()) {
                    self.usage.update(usage);
                }
                out.push(self.chunks().role(0));
            }
            "content_block_start" => {
                let block = &event["content_block"];
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or("");
                        if !text.is_empty() {
                            out.push(self.chunks().text(0, text));
                        }
                    }
                    Some("tool_use") => {
                        let name = block["name"].as_str().unwrap_or("");
                        if Some(name) == self.json_tool.as_deref() {
                            self.json_blocks.insert(index);
                        } else {
                            let position = self.tools.len() as u32;
                            self.tools.insert(index, position);
                            let id = block["id"].as_str().unwrap_or("");
                            out.push(self.chunks().tool_start(0, position, id, name));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &event["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        out.push(self.chunks().text(0, delta["text"].as_str().unwrap_or("")));
                    }
                    Some("input_json_delta") => {
                        let partial = delta["partial_json"].as_str().unwrap_or("");
                        if self.json_blocks.contains(&index) {
                            out.push(self.chunks().text(0, partial));
                        } else if let Some(position) = self.tools.get(&index).copied() {
                            out.push(self.chunks().tool_arguments(0, position, partial));
                        }
                    }
                    // Thinking and signatures have no place in a chat completion.
                    _ => {}
                }
            }
            "message_delta" => {
                if let Ok(usage) = serde_json::from_value(event["usage"].clone()) {
                    self.usage.update(usage);
                }
                let stop = event["delta"]["stop_reason"].as_str();
                let reason = if stop == Some("tool_use") && self.tools.is_empty() {
                    "stop"
                } else {
                    finish_reason(stop)
                };
                out.push(self.chunks().finish(0, reason));
            }
            "message_stop" => {
                let usage = self.usage.openai();
                out.push(self.chunks().usage(&usage));
                out.push("[DONE]".into());
            }
            "error" => {
                let error = error_body(data).unwrap_or_else(|| {
                    ErrorBody::new(
                        "api_error",
                        Some("api_error"),
                        "The provider failed mid-stream.",
                    )
                });
                out.push(super::scrub::scrub(&error.to_json()).into_owned());
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self, _out: &mut Vec<String>) {}
}

#[cfg(test)]
mod tests;
