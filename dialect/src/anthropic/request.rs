//! Requests, both ways: an Anthropic Messages request as the internal OpenAI chat request
//! ([`to_openai`], the ingress's `/v1/messages`), and an OpenAI chat request as an
//! Anthropic Messages request ([`from_openai`], the workers' Anthropic provider).
//!
//! - System and developer messages become the top-level `system`; tool results (OpenAI's
//!   `tool` messages) become `tool_result` blocks of a user turn; consecutive turns of one
//!   role are merged, as Anthropic wants user and assistant to alternate. The other way,
//!   `system` becomes the first message and a user turn's tool results become `tool`
//!   messages ahead of its other content.
//! - `max_tokens` is required by Anthropic: the caller's cap, else `default_max_tokens`.
//! - JSON mode: `json_schema` is served by forcing a tool whose input schema is the schema
//!   (the tool's input becomes the message content); `json_object` by a system instruction.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use sluice_schemas::openai::ChatCompletionRequest;

use crate::openai::{self, Image, Part, ResponseFormat, ToolChoice};

/// Why an Anthropic request cannot be served; the ingress renders it like its own errors.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("Invalid value for `{param}`: {problem}")]
    InvalidParam {
        param: &'static str,
        problem: &'static str,
    },
}

fn invalid(param: &'static str, problem: &'static str) -> RequestError {
    RequestError::InvalidParam { param, problem }
}

/// An Anthropic Messages request, parsed once from the body (any JSON object). Each field
/// is kept as sent and checked when translated, so that an error names the field.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "Map<String, Value>")]
pub struct MessagesRequest {
    pub model: Option<Value>,
    pub max_tokens: Option<Value>,
    pub system: Option<Value>,
    pub messages: Option<Value>,
    pub stop_sequences: Option<Value>,
    pub temperature: Option<Value>,
    pub top_p: Option<Value>,
    pub top_k: Option<Value>,
    pub metadata: Option<Value>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub stream: Option<Value>,
    /// Sluice's own options, passed on as they are.
    pub sluice: Option<Value>,
}

impl From<Map<String, Value>> for MessagesRequest {
    fn from(mut body: Map<String, Value>) -> MessagesRequest {
        let mut take = |key: &str| body.remove(key);
        MessagesRequest {
            model: take("model"),
            max_tokens: take("max_tokens"),
            system: take("system"),
            messages: take("messages"),
            stop_sequences: take("stop_sequences"),
            temperature: take("temperature"),
            top_p: take("top_p"),
            top_k: take("top_k"),
            metadata: take("metadata"),
            tools: take("tools"),
            tool_choice: take("tool_choice"),
            stream: take("stream"),
            sluice: take("sluice"),
        }
    }
}

impl MessagesRequest {
    /// The request body, parsed.
    pub fn parse(body: &[u8]) -> Result<MessagesRequest, RequestError> {
        serde_json::from_slice(body).map_err(RequestError::InvalidJson)
    }
}

/// An Anthropic Messages request as the internal OpenAI chat request.
pub fn to_openai(request: MessagesRequest) -> Result<ChatCompletionRequest, RequestError> {
    let mut out = Map::new();
    match &request.model {
        Some(Value::String(m)) => out.insert("model".into(), json!(m)),
        _ => return Err(invalid("model", "a model name (string) is required")),
    };
    match request.max_tokens.as_ref().and_then(Value::as_u64) {
        Some(n) if n >= 1 => out.insert("max_tokens".into(), json!(n)),
        _ => {
            return Err(invalid(
                "max_tokens",
                "max_tokens is required: an integer of at least 1",
            ))
        }
    };
    let mut messages = Vec::new();
    let system = match &request.system {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks_text(blocks),
        Some(_) => return Err(invalid("system", "a string or a list of text blocks")),
    };
    if !system.is_empty() {
        messages.push(json!({"role": "system", "content": system}));
    }
    let Some(Value::Array(turns)) = &request.messages else {
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
    if let Some(stop) = request.stop_sequences.filter(Value::is_array) {
        out.insert("stop".into(), stop);
    }
    for (key, value) in [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", request.top_k),
    ] {
        if let Some(v) = value.filter(Value::is_number) {
            out.insert(key.into(), v);
        }
    }
    if let Some(user) = request
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if let Some(Value::Array(tools)) = &request.tools {
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
    if let Some(choice) = &request.tool_choice {
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
    if request.stream == Some(Value::Bool(true)) {
        out.insert("stream".into(), json!(true));
        // The usage chunk carries the counts of the closing `message_delta`.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    if let Some(sluice) = request.sluice {
        out.insert("sluice".into(), sluice);
    }
    serde_json::from_value(Value::Object(out)).map_err(RequestError::InvalidJson)
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
fn user_messages(blocks: &[Value], messages: &mut Vec<Value>) -> Result<(), RequestError> {
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

/// An Anthropic request, and the name of the tool that stands for JSON mode, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub body: Map<String, Value>,
    pub json_tool: Option<String>,
}

const JSON_OBJECT_INSTRUCTION: &str =
    "Respond with a single JSON object and nothing else: no prose, no code fences.";

/// The OpenAI chat request as an Anthropic Messages request.
pub fn from_openai(
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
    for message in openai::messages(request) {
        match openai::role(message) {
            "system" | "developer" => system.push(openai::text(message)),
            "assistant" => {
                let mut blocks = content_blocks(message);
                blocks.extend(openai::tool_calls(message).into_iter().map(|call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments})
                }));
                push("assistant", blocks);
            }
            "tool" => push(
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": message.get("tool_call_id").and_then(Value::as_str).unwrap_or(""),
                    "content": openai::text(message),
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
        json!(openai::completion_cap(request).unwrap_or(u64::from(default_max_tokens))),
    );
    let mut tools: Vec<Value> = openai::tools(request)
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
    let mut tool_choice = openai::tool_choice(request).map(|choice| match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    let mut json_tool = None;
    match openai::response_format(request) {
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
    if let Some(stop) = openai::stop_sequences(request) {
        body.insert("stop_sequences".into(), json!(stop));
    }
    if let Some(t) = request.get("temperature").and_then(Value::as_f64) {
        // OpenAI's range is 0..2, Anthropic's 0..1.
        body.insert("temperature".into(), json!(t.clamp(0.0, 1.0)));
    }
    for key in ["top_p", "top_k"] {
        if let Some(v) = openai::number(request, key) {
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
    openai::parts(message)
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
