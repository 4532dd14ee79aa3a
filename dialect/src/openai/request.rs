//! Reading an OpenAI chat request, in provider-neutral terms: its messages, content parts,
//! tool calls, tools and parameters.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

/// The request's messages.
pub fn messages(request: &Map<String, Value>) -> &[Value] {
    request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub fn role(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

/// One part of a message's content, in provider-neutral terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(Image),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// A `data:` URL: the bytes inline, base64.
    Inline { mime: String, data: String },
    /// A URL the provider fetches.
    Url(String),
}

/// A message's content as parts: a string is one text part; parts other than text and
/// images (audio, files) are dropped, as the target providers cannot take them here.
pub fn parts(message: &Value) -> Vec<Part> {
    match message.get("content") {
        Some(Value::String(text)) => vec![Part::Text(text.clone())],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => Some(Part::Text(
                    p.get("text").and_then(Value::as_str)?.to_string(),
                )),
                Some("image_url") => {
                    let url = p.get("image_url")?;
                    let url = url.get("url").and_then(Value::as_str).or(url.as_str())?;
                    Some(Part::Image(image(url)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A message's text: its content string, or its text parts joined.
pub fn text(message: &Value) -> String {
    parts(message)
        .into_iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t),
            Part::Image(_) => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `data:image/png;base64,AAAA` -> inline bytes; anything else is a URL.
pub fn image(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            if let Some(mime) = meta.strip_suffix(";base64") {
                return Image::Inline {
                    mime: mime.to_string(),
                    data: data.to_string(),
                };
            }
        }
    }
    Image::Url(url.to_string())
}

/// A tool call an assistant message made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments, parsed (OpenAI sends them as a JSON string).
    pub arguments: Value,
}

pub fn tool_calls(message: &Value) -> Vec<ToolCall> {
    message
        .get("tool_calls")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|call| {
            let function = call.get("function")?;
            Some(ToolCall {
                id: call.get("id").and_then(Value::as_str)?.to_string(),
                name: function.get("name").and_then(Value::as_str)?.to_string(),
                arguments: parse_arguments(
                    function
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}"),
                ),
            })
        })
        .collect()
}

/// Tool call arguments as a JSON object; text that is not one becomes `{}`, as providers
/// that take objects cannot take anything else.
pub fn parse_arguments(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => Value::Object(Map::new()),
    }
}

/// Tool names by tool call id, for providers that answer tool results by name.
pub fn tool_names(messages: &[Value]) -> HashMap<String, String> {
    messages
        .iter()
        .flat_map(tool_calls)
        .map(|c| (c.id, c.name))
        .collect()
}

/// A declared function tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

pub fn tools(request: &Map<String, Value>) -> Vec<Tool> {
    request
        .get("tools")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str).unwrap_or("function") == "function")
        .filter_map(|t| {
            let f = t.get("function")?;
            Some(Tool {
                name: f.get("name").and_then(Value::as_str)?.to_string(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Function(String),
}

pub fn tool_choice(request: &Map<String, Value>) -> Option<ToolChoice> {
    match request.get("tool_choice")? {
        Value::String(s) => match s.as_str() {
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        },
        Value::Object(o) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Function(n.to_string())),
        _ => None,
    }
}

/// `stop` as a list (OpenAI takes a string or an array).
pub fn stop_sequences(request: &Map<String, Value>) -> Option<Vec<String>> {
    match request.get("stop")? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        ),
        _ => None,
    }
}

/// `max_completion_tokens`, else `max_tokens`.
pub fn completion_cap(request: &Map<String, Value>) -> Option<u64> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64))
}

/// What `response_format` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseFormat {
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching this schema.
    JsonSchema {
        name: String,
        schema: Value,
    },
}

pub fn response_format(request: &Map<String, Value>) -> ResponseFormat {
    let Some(format) = request.get("response_format") else {
        return ResponseFormat::Text;
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => ResponseFormat::JsonObject,
        Some("json_schema") => {
            let spec = format.get("json_schema").cloned().unwrap_or(Value::Null);
            ResponseFormat::JsonSchema {
                name: spec
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("response")
                    .to_string(),
                schema: spec
                    .get("schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            }
        }
        _ => ResponseFormat::Text,
    }
}

pub fn number(request: &Map<String, Value>, key: &str) -> Option<Value> {
    request.get(key).filter(|v| v.is_number()).cloned()
}
