//! Anthropic's Messages API at `POST /v1/messages`, so Anthropic SDK users can point at
//! Sluice too. The request is translated to the internal OpenAI chat request here and then
//! takes the same path as `/v1/chat/completions` (auth, validation, Kafka, any model's
//! deployments); the result, stream chunks and errors are translated back to Anthropic's
//! message, event and error shapes on the way out.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::{Result as ResultRecord, Status};

use crate::admission::Dialect;
use crate::error::ApiError;
use crate::http::REQUEST_ID_HEADER;
use crate::state::AppState;

/// `POST /v1/messages`.
pub async fn messages(
    State(app): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::http::chat::sync_call(app, headers, body, Dialect::Anthropic).await
}

fn invalid(param: &'static str, problem: &'static str) -> ApiError {
    ApiError::InvalidParam { param, problem }
}

/// An Anthropic Messages request as the internal OpenAI chat request (JSON).
pub fn to_openai(body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let request: Map<String, Value> =
        serde_json::from_slice(body).map_err(ApiError::InvalidJson)?;
    let mut out = Map::new();
    match request.get("model") {
        Some(Value::String(m)) => out.insert("model".into(), json!(m)),
        _ => return Err(invalid("model", "a model name (string) is required")),
    };
    match request.get("max_tokens").and_then(Value::as_u64) {
        Some(n) if n >= 1 => out.insert("max_tokens".into(), json!(n)),
        _ => {
            return Err(invalid(
                "max_tokens",
                "max_tokens is required: an integer of at least 1",
            ))
        }
    };
    let mut messages = Vec::new();
    let system = match request.get("system") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks_text(blocks),
        Some(_) => return Err(invalid("system", "a string or a list of text blocks")),
    };
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    let Some(Value::Array(turns)) = request.get("messages") else {
        return Err(invalid(
            "messages",
            "messages is required: a list of messages",
        ));
    };
    for turn in turns {
        let role = match turn.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant")) => r,
            _ => {
                return Err(invalid(
                    "messages",
                    "each message's role is user or assistant",
                ))
            }
        };
        match turn.get("content") {
            Some(Value::String(text)) => messages.push(json!({"role": role, "content": text})),
            Some(Value::Array(blocks)) if role == "assistant" => {
                messages.push(assistant_message(blocks));
            }
            Some(Value::Array(blocks)) => user_messages(blocks, &mut messages)?,
            _ => {
                return Err(invalid(
                    "messages",
                    "each message's content is a string or a list of blocks",
                ))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(stop) = request.get("stop_sequences").filter(|v| v.is_array()) {
        out.insert("stop".into(), stop.clone());
    }
    for key in ["temperature", "top_p", "top_k"] {
        if let Some(v) = request.get(key).filter(|v| v.is_number()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(user) = request
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if let Some(Value::Array(tools)) = request.get("tools") {
        let mut converted = Vec::new();
        for tool in tools {
            // Server tools (web search, code execution, ...) run at Anthropic; only custom
            // tools mean the same thing behind every provider.
            if tool
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "custom")
            {
                return Err(invalid(
                    "tools",
                    "only custom tools (name, description, input_schema) are supported",
                ));
            }
            let mut function = json!({
                "name": tool.get("name").cloned().unwrap_or(Value::Null),
                "parameters": tool.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = tool.get("description") {
                function["description"] = d.clone();
            }
            converted.push(json!({"type": "function", "function": function}));
        }
        out.insert("tools".into(), Value::Array(converted));
    }
    if let Some(choice) = request.get("tool_choice") {
        let converted = match choice.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => json!("auto"),
        };
        out.insert("tool_choice".into(), converted);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if request.get("stream") == Some(&Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        // The usage chunk carries the counts of the closing `message_delta`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(sluice) = request.get("sluice") {
        out.insert("sluice".into(), sluice.clone());
    }
    serde_json::to_vec(&out).map_err(ApiError::InvalidJson)
}

fn blocks_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assistant_message(blocks: &[Value]) -> Value {
    let text: String = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({"id": b.get("id").cloned().unwrap_or(Value::Null), "type": "function", "function": {
                "name": b.get("name").cloned().unwrap_or(Value::Null),
                "arguments": b.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
            }})
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// A user turn: its tool results become `tool` messages (first, as they answer the
/// assistant's calls), the rest one user message.
fn user_messages(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                json!({"type": "text", "text": block.get("text").cloned().unwrap_or(json!(""))}),
            ),
            Some("image") => {
                let source = block.get("source").cloned().unwrap_or(Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    _ => return Err(invalid("messages", "image sources are base64 or url")),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_result") => {
                let content = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(b)) => blocks_text(b),
                    _ => String::new(),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": content,
                }));
            }
            _ => {}
        }
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// OpenAI's finish reason as Anthropic's stop reason.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage from OpenAI's: `input_tokens` excludes cache reads.
fn usage(openai: &Value) -> Value {
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
pub fn message_from_openai(completion: &Value, model: &str) -> Value {
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
        "id": anthropic_id(completion["id"].as_str().unwrap_or("")),
        "type": "message",
        "role": "assistant",
        "model": completion["model"].as_str().unwrap_or(model),
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str()),
        "stop_sequence": null,
        "usage": usage(&completion["usage"]),
    })
}

fn anthropic_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_string()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn error_json(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// An ingress error in Anthropic's shape, with the status and headers it has on the
/// OpenAI endpoint.
pub fn error_response(error: ApiError) -> Response {
    let status = error.status();
    let message = error.to_string();
    // The OpenAI rendering logs server errors and sets Retry-After; keep both.
    let openai = error.into_response();
    let retry_after = openai.headers().get(header::RETRY_AFTER).cloned();
    let should_retry = openai.headers().get("x-should-retry").cloned();
    let mut response = (status, axum::Json(error_json(status.as_u16(), &message))).into_response();
    if let Some(v) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(v) = should_retry {
        response.headers_mut().insert("x-should-retry", v);
    }
    response
}

/// A worker's result as Anthropic's answer: the message, or the error in Anthropic's shape.
pub fn result_response(result: &ResultRecord) -> Response {
    let status = StatusCode::from_u16(result.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_str(&result.body).unwrap_or(Value::Null);
    let json = match result.status {
        Status::Completed => message_from_openai(&body, &result.model),
        Status::Failed | Status::Expired => error_json(status.as_u16(), &error_message(&body)),
    };
    let mut response = (status, axum::Json(json)).into_response();
    if let Ok(v) = HeaderValue::from_str(&result.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

fn error_message(body: &Value) -> String {
    body["error"]["message"]
        .as_str()
        .unwrap_or("The request failed.")
        .to_string()
}

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Block {
    None,
    Text,
    Tool,
}

/// Turns the OpenAI chunks of one stream into Anthropic's events.
pub struct StreamWriter {
    model: String,
    /// The ingress's own count, sent in `message_start` before the provider's is known.
    prompt_estimate: i32,
    started: bool,
    block: Block,
    /// Index of the next content block.
    next_index: u32,
    stop_reason: &'static str,
    usage: Option<Value>,
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

impl StreamWriter {
    pub fn new(model: &str, prompt_estimate: i32) -> StreamWriter {
        StreamWriter {
            model: model.to_string(),
            prompt_estimate,
            started: false,
            block: Block::None,
            next_index: 0,
            stop_reason: "end_turn",
            usage: None,
        }
    }

    fn start(&mut self, id: &str, model: Option<&str>, out: &mut Vec<Event>) {
        if self.started {
            return;
        }
        self.started = true;
        out.push(event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": anthropic_id(id), "type": "message", "role": "assistant", "content": [],
                "model": model.unwrap_or(&self.model), "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.prompt_estimate.max(0), "output_tokens": 0}}}),
        ));
    }

    fn close_block(&mut self, out: &mut Vec<Event>) {
        if self.block != Block::None {
            out.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": self.next_index - 1}),
            ));
            self.block = Block::None;
        }
    }

    fn open_block(&mut self, kind: Block, block: Value, out: &mut Vec<Event>) {
        self.close_block(out);
        out.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": self.next_index, "content_block": block}),
        ));
        self.next_index += 1;
        self.block = kind;
    }

    /// One OpenAI chunk (JSON text).
    pub fn chunk(&mut self, data: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return out;
        };
        self.start(
            chunk["id"].as_str().unwrap_or(""),
            chunk["model"].as_str(),
            &mut out,
        );
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.block != Block::Text {
                self.open_block(Block::Text, json!({"type": "text", "text": ""}), &mut out);
            }
            let index = self.next_index - 1;
            out.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index,
                       "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
        {
            if let Some(id) = call["id"].as_str() {
                self.open_block(
                    Block::Tool,
                    json!({"type": "tool_use", "id": id, "name": call["function"]["name"], "input": {}}),
                    &mut out,
                );
            }
            let arguments = call["function"]["arguments"].as_str().unwrap_or("");
            if self.block == Block::Tool && !arguments.is_empty() {
                let index = self.next_index - 1;
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": arguments}}),
                ));
            }
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            self.stop_reason = stop_reason(Some(finish));
        }
        out
    }

    /// The stream completed.
    pub fn done(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.start("", None, &mut out);
        self.close_block(&mut out);
        let usage = match &self.usage {
            Some(u) => usage(u),
            None => json!({"output_tokens": 0}),
        };
        out.push(event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                   "usage": usage}),
        ));
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// The stream failed; `body` is an OpenAI error body.
    pub fn error(&mut self, body: &str) -> Vec<Event> {
        let parsed = serde_json::from_str::<ErrorBody>(body).ok();
        let (kind, message) = match &parsed {
            Some(e) => (
                match e.error.kind.as_str() {
                    "overloaded_error"
                    | "rate_limit_error"
                    | "timeout_error"
                    | "invalid_request_error" => e.error.kind.as_str(),
                    "timeout" => "timeout_error",
                    _ => "api_error",
                },
                e.error.message.as_str(),
            ),
            None => ("api_error", "The stream failed."),
        };
        vec![event(
            "error",
            json!({"type": "error", "error": {"type": kind, "message": message}}),
        )]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn anthropic_request_becomes_the_openai_request() {
        // Anthropic docs: a multi-turn request with a system prompt and a tool round trip.
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "You are a weather bot."}],
            "messages": [
                {"role": "user", "content": "What's the weather like in San Francisco?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "I'll check."},
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                     "input": {"location": "San Francisco, CA"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
                    {"type": "text", "text": "Thanks. And this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
                ]}
            ],
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_k": 40,
            "metadata": {"user_id": "u-1"},
            "tools": [{"name": "get_weather", "description": "Get the weather",
                       "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stream": true
        });
        let out: Value =
            serde_json::from_slice(&to_openai(body.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 1024,
                "messages": [
                    {"role": "system", "content": "You are a weather bot."},
                    {"role": "user", "content": "What's the weather like in San Francisco?"},
                    {"role": "assistant", "content": "I'll check.", "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9",
                        "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}}]},
                    {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
                    {"role": "user", "content": [
                        {"type": "text", "text": "Thanks. And this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
                    ]}
                ],
                "stop": ["END"],
                "temperature": 0.5,
                "top_k": 40,
                "user": "u-1",
                "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}],
                "tool_choice": "required",
                "parallel_tool_calls": false,
                "stream": true,
                "stream_options": {"include_usage": true}
            })
        );
    }

    #[test]
    fn missing_max_tokens_is_named() {
        let err = to_openai(br#"{"model": "m", "messages": []}"#).unwrap_err();
        assert!(err.to_string().contains("max_tokens"), "{err}");
    }

    #[test]
    fn openai_completion_becomes_an_anthropic_message() {
        let completion = json!({
            "id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "Checking.",
                "tool_calls": [{"id": "call_1", "type": "function",
                                "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\"}"}}]}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                      "prompt_tokens_details": {"cached_tokens": 60}}
        });
        assert_eq!(
            message_from_openai(&completion, "smart"),
            json!({
                "id": "msg_abc", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"location": "Paris"}}
                ],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 40, "cache_creation_input_tokens": 0,
                          "cache_read_input_tokens": 60, "output_tokens": 20}
            })
        );
    }

    #[test]
    fn openai_chunks_become_anthropic_events() {
        let mut writer = StreamWriter::new("m", 9);
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            .to_string()
        };
        let mut events = Vec::new();
        events.extend(writer.chunk(&chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        events.extend(writer.chunk(&chunk(json!({"content": "Hel"}), Value::Null)));
        events.extend(writer.chunk(&chunk(json!({"content": "lo"}), Value::Null)));
        events.extend(writer.chunk(&chunk(json!({}), json!("stop"))));
        events.extend(writer.chunk(
            &json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}})
            .to_string(),
        ));
        events.extend(writer.done());
        let text: String = events.iter().map(|e| format!("{e:?}")).collect();
        let order = [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ];
        assert_eq!(events.len(), order.len(), "{text}");
        let mut at = 0;
        for name in order {
            let found = text[at..]
                .find(name)
                .unwrap_or_else(|| panic!("{name} in {text}"));
            at += found + name.len();
        }
        assert!(
            text.contains("end_turn") && text.contains("\\\"output_tokens\\\":2"),
            "{text}"
        );
    }
}
