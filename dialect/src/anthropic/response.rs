//! Answers, both ways: an Anthropic message as an OpenAI chat completion ([`to_openai`],
//! the workers' Anthropic provider), and an OpenAI chat completion as an Anthropic message
//! ([`from_openai`], the ingress's `/v1/messages` and message batches).
//!
//! Usage: Anthropic's `input_tokens` excludes cache reads and writes; OpenAI's
//! `prompt_tokens` includes them, with cache reads as `cached_tokens`.

use serde::Deserialize;
use serde_json::{json, Value};
use sluice_schemas::openai::CompletionUsage;

use crate::openai::{self, Completion};

#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub(crate) struct Usage {
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
    pub(crate) fn update(&mut self, later: Usage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }

    pub(crate) fn openai(self) -> CompletionUsage {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0))
            .saturating_add(cached);
        openai::usage(prompt, self.output_tokens.unwrap_or(0), cached)
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
pub fn to_openai(body: &str, json_tool: Option<&str>) -> Result<Completion, serde_json::Error> {
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
                tool_calls.push(openai::tool_call_json(
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
        body: openai::completion(
            &message.id,
            openai::unix_now(),
            &message.model,
            vec![openai::choice(0, content, tool_calls, finish)],
            &usage,
        ),
        usage,
    })
}

/// OpenAI's finish reason as Anthropic's stop reason.
pub fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage from OpenAI's: `input_tokens` excludes cache reads.
pub(crate) fn usage_from_openai(openai: &Value) -> Value {
    let prompt = openai["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = openai["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
        .min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": openai["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// An OpenAI chat completion as an Anthropic message.
pub fn from_openai(completion: &Value, model: &str) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
    {
        let input: Value = call["function"]["arguments"]
            .as_str()
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    json!({
        "id": message_id(completion["id"].as_str().unwrap_or("")),
        "type": "message",
        "role": "assistant",
        "model": completion["model"].as_str().unwrap_or(model),
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage_from_openai(&completion["usage"]),
    })
}

/// An Anthropic message id for an OpenAI completion id.
pub(crate) fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}
