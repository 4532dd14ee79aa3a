//! A Responses API request (`POST /v1/responses`, stateless) as the chat completion request
//! Sluice queues. What has no chat form, or needs stored state Sluice does not keep
//! (`previous_response_id`, `store: true` for a team not allowed stored conversations:
//! the ingress resolves both first for one that is; built-in tools), is refused by name.
//! `background` is the ingress's to act on (it queues the request as an async one): it
//! changes nothing in the chat request.

use serde_json::{json, Map, Value};

use crate::anthropic::RequestError;

fn invalid(param: &'static str, problem: &'static str) -> RequestError {
    RequestError::InvalidParam { param, problem }
}

/// Fields passed to the chat request under the same name.
const PASSED: [&str; 6] = [
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "prompt_cache_key",
];

/// Fields of the Responses API Sluice does not serve, refused by name (a field ignored in
/// silence could change the answer or the bill).
const UNSUPPORTED: [(&str, &str); 11] = [
    (
        "previous_response_id",
        "this team's retention policy keeps no conversations ([retention] conversation_teams); send the whole conversation in `input`",
    ),
    (
        "conversation",
        "the Conversations API is not served: use `previous_response_id` (a team allowed stored conversations) or send the whole conversation in `input`",
    ),
    ("reasoning", "reasoning options are not supported"),
    ("include", "`include` is not supported"),
    (
        "truncation",
        "`truncation` is not supported; Sluice never truncates input",
    ),
    ("service_tier", "`service_tier` is not supported"),
    (
        "prompt",
        "stored prompts are not supported; see Sluice's `sluice.template`",
    ),
    ("max_tool_calls", "`max_tool_calls` is not supported"),
    ("top_logprobs", "`top_logprobs` is not supported"),
    (
        "stream_options",
        "`stream_options` is not supported; a stream always ends with its usage",
    ),
    (
        "safety_identifier",
        "`safety_identifier` is not supported; use `user`",
    ),
];

/// The chat completion request for a Responses `body`.
pub fn to_openai(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    let fields: Map<String, Value> =
        serde_json::from_slice(body).map_err(RequestError::InvalidJson)?;
    let mut chat = Map::new();
    let mut messages = Vec::new();
    for (name, value) in &fields {
        match name.as_str() {
            n if PASSED.contains(&n) => {
                chat.insert(name.clone(), value.clone());
            }
            "input" => {}
            "instructions" => match value {
                Value::String(text) => messages.insert(0, json!({"role": "system", "content": text})),
                Value::Null => {}
                _ => return Err(invalid("instructions", "must be a string")),
            },
            "max_output_tokens" => match value.as_u64() {
                Some(n) if n > 0 => {
                    chat.insert("max_completion_tokens".into(), json!(n));
                }
                _ if value.is_null() => {}
                _ => return Err(invalid("max_output_tokens", "must be a positive integer")),
            },
            "stream" => match value {
                Value::Bool(true) => {
                    chat.insert("stream".into(), json!(true));
                    chat.insert("stream_options".into(), json!({"include_usage": true}));
                }
                Value::Bool(false) | Value::Null => {}
                _ => return Err(invalid("stream", "must be a boolean")),
            },
            "store" => match value {
                Value::Bool(false) | Value::Null => {}
                Value::Bool(true) => {
                    return Err(invalid("store", "this team's retention policy keeps no conversations ([retention] conversation_teams); set `store` to false or leave it out"))
                }
                _ => return Err(invalid("store", "must be a boolean")),
            },
            "background" => {
                if !(value.is_boolean() || value.is_null()) {
                    return Err(invalid("background", "must be a boolean"));
                }
            }
            "metadata" => {
                if !(value.is_object() || value.is_null()) {
                    return Err(invalid("metadata", "must be an object"));
                }
            }
            "tools" => {
                chat.insert("tools".into(), tools(value)?);
            }
            "tool_choice" => {
                chat.insert("tool_choice".into(), tool_choice(value)?);
            }
            "text" => {
                if let Some(format) = text_format(value)? {
                    chat.insert("response_format".into(), format);
                }
            }
            "sluice" => {
                chat.insert(name.clone(), value.clone());
            }
            other => {
                return Err(match UNSUPPORTED.iter().find(|(n, _)| *n == other) {
                    Some((param, problem)) => invalid(param, problem),
                    None => invalid("body", "has a field the Responses API does not define"),
                })
            }
        }
    }
    match fields.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for item in items {
                push_item(&mut messages, item)?;
            }
        }
        None | Some(Value::Null) => return Err(invalid("input", "is required")),
        Some(_) => {
            return Err(invalid(
                "input",
                "must be a string or an array of input items",
            ))
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    Ok(chat)
}

/// One input item as chat messages: a message, a function call (an assistant tool call,
/// merged into the assistant message before it) or a function call's output.
fn push_item(messages: &mut Vec<Value>, item: &Value) -> Result<(), RequestError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
                _ => return Err(invalid("input", "a message's `role` must be user, assistant, system or developer")),
            };
            let content = match item.get("content") {
                Some(Value::String(text)) => json!(text),
                Some(Value::Array(parts)) if role == "assistant" => {
                    let texts: Result<Vec<&str>, _> = parts.iter().map(assistant_text).collect();
                    json!(texts?.concat())
                }
                Some(Value::Array(parts)) => {
                    let parts: Result<Vec<Value>, _> = parts.iter().map(input_part).collect();
                    Value::Array(parts?)
                }
                _ => return Err(invalid("input", "a message needs `content`: a string or content parts")),
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let field = |name: &str| item.get(name).and_then(Value::as_str);
            let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                return Err(invalid("input", "a `function_call` item needs `call_id` and `name`"));
            };
            let call = json!({"id": call_id, "type": "function",
                              "function": {"name": name, "arguments": field("arguments").unwrap_or("{}")}});
            match messages.last_mut() {
                Some(last) if last["role"] == "assistant" => {
                    match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                        Some(calls) => calls.push(call),
                        None => last["tool_calls"] = json!([call]),
                    }
                }
                _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                return Err(invalid("input", "a `function_call_output` item needs `call_id`"));
            };
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => return Err(invalid("input", "a `function_call_output` item needs `output`")),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        _ => {
            return Err(invalid(
                "input",
                "Sluice takes message, function_call and function_call_output items (no stored items, reasoning or built-in tool calls)",
            ))
        }
    }
    Ok(())
}

/// A user, system or developer content part in chat's form.
fn input_part(part: &Value) -> Result<Value, RequestError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text") => match part.get("text") {
            Some(Value::String(text)) => Ok(json!({"type": "text", "text": text})),
            _ => Err(invalid("input", "an `input_text` part needs `text`")),
        },
        Some("input_image") => match part.get("image_url").and_then(Value::as_str) {
            Some(url) => {
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = detail.clone();
                }
                Ok(json!({"type": "image_url", "image_url": image}))
            }
            None => Err(invalid(
                "input",
                "an `input_image` part needs an `image_url` (file ids are not supported)",
            )),
        },
        _ => Err(invalid(
            "input",
            "content parts are input_text or input_image (files are not supported)",
        )),
    }
}

/// The text of an assistant message's part (what an earlier response answered).
fn assistant_text(part: &Value) -> Result<&str, RequestError> {
    match (
        part.get("type").and_then(Value::as_str),
        part.get("text").and_then(Value::as_str),
    ) {
        (Some("output_text" | "input_text"), Some(text)) => Ok(text),
        _ => Err(invalid(
            "input",
            "an assistant message's parts are output_text",
        )),
    }
}

/// Function tools in chat's form; any other tool type would bring fees Sluice cannot price.
fn tools(value: &Value) -> Result<Value, RequestError> {
    let Some(tools) = value.as_array() else {
        return Err(invalid("tools", "must be an array"));
    };
    let converted: Result<Vec<Value>, RequestError> = tools
        .iter()
        .map(|tool| {
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(invalid("tools", "only `function` tools are supported (built-in tools bill fees Sluice cannot price)"));
            }
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                return Err(invalid("tools", "a function tool needs a `name`"));
            };
            let mut function = json!({"name": name});
            for field in ["description", "parameters", "strict"] {
                if let Some(v) = tool.get(field).filter(|v| !v.is_null()) {
                    function[field] = v.clone();
                }
            }
            Ok(json!({"type": "function", "function": function}))
        })
        .collect();
    Ok(Value::Array(converted?))
}

fn tool_choice(value: &Value) -> Result<Value, RequestError> {
    match value {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(value.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            match o.get("name").and_then(Value::as_str) {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name}})),
                None => Err(invalid("tool_choice", "a function choice needs a `name`")),
            }
        }
        _ => Err(invalid(
            "tool_choice",
            "must be auto, none, required or {\"type\": \"function\", \"name\"}",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn text_format(value: &Value) -> Result<Option<Value>, RequestError> {
    let Some(format) = value.get("format") else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let (Some(name), Some(schema)) = (format.get("name"), format.get("schema")) else {
                return Err(invalid(
                    "text",
                    "a json_schema format needs `name` and `schema`",
                ));
            };
            let mut json_schema = json!({"name": name, "schema": schema});
            for field in ["strict", "description"] {
                if let Some(v) = format.get(field).filter(|v| !v.is_null()) {
                    json_schema[field] = v.clone();
                }
            }
            Ok(Some(
                json!({"type": "json_schema", "json_schema": json_schema}),
            ))
        }
        _ => Err(invalid(
            "text",
            "`format.type` must be text, json_object or json_schema",
        )),
    }
}

/// The refusal of a chat field that has no form in the Responses API, for a deployment
/// that speaks it (a field dropped in silence would change the answer or the bill).
macro_rules! no_form {
    ($field:literal) => {
        concat!(
            "`",
            $field,
            "` has no form in OpenAI's Responses API, which this deployment speaks (api = \"responses\"); route the request to a chat completions deployment"
        )
    };
}

/// Chat fields the Responses API has under the same name.
const SAME_NAME: [&str; 10] = [
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "prompt_cache_key",
    "metadata",
    "service_tier",
    "safety_identifier",
    "store",
    "top_logprobs",
];

/// The Responses API request for a chat completion `chat`, for `model`: the workers' side,
/// for an OpenAI deployment that speaks the Responses API (`api = "responses"`). Every
/// message becomes an input item (system and developer messages keep their role; tool calls
/// are `function_call` items, tool answers `function_call_output` items), the cap is
/// `max_output_tokens`, `response_format` is `text.format`, and `store` is false unless the
/// caller set it. A field with no Responses form is refused by name.
pub fn from_openai(
    chat: &Map<String, Value>,
    model: &str,
    stream: bool,
) -> Result<Map<String, Value>, &'static str> {
    let mut out = Map::new();
    let mut text = Map::new();
    out.insert("model".into(), json!(model));
    for (name, value) in chat {
        if value.is_null() {
            continue;
        }
        match name.as_str() {
            "model" | "stream" | "stream_options" => {}
            n if SAME_NAME.contains(&n) => {
                out.insert(name.clone(), value.clone());
            }
            "messages" => {
                let messages = value.as_array().map_or(&[][..], Vec::as_slice);
                let mut input = Vec::with_capacity(messages.len());
                for message in messages {
                    push_message(&mut input, message)?;
                }
                out.insert("input".into(), Value::Array(input));
            }
            "max_completion_tokens" => {
                out.insert("max_output_tokens".into(), value.clone());
            }
            "max_tokens" => {
                out.entry("max_output_tokens").or_insert(value.clone());
            }
            "tools" => {
                let tools = value.as_array().map_or(&[][..], Vec::as_slice);
                let tools: Result<Vec<Value>, _> = tools.iter().map(function_tool).collect();
                out.insert("tools".into(), Value::Array(tools?));
            }
            "tool_choice" => {
                out.insert("tool_choice".into(), chat_tool_choice(value)?);
            }
            "response_format" => {
                if let Some(format) = format_of(value)? {
                    text.insert("format".into(), format);
                }
            }
            "verbosity" => {
                text.insert("verbosity".into(), value.clone());
            }
            "reasoning_effort" => {
                out.insert("reasoning".into(), json!({"effort": value}));
            }
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value == &Value::Bool(false) => {}
            "n" => return Err(no_form!("n")),
            "logprobs" => return Err(no_form!("logprobs")),
            "stop" => return Err(no_form!("stop")),
            "seed" => return Err(no_form!("seed")),
            "presence_penalty" => return Err(no_form!("presence_penalty")),
            "frequency_penalty" => return Err(no_form!("frequency_penalty")),
            "logit_bias" => return Err(no_form!("logit_bias")),
            "modalities" | "audio" => return Err(no_form!("audio")),
            "prediction" => return Err(no_form!("prediction")),
            _ => {
                return Err(
                    "the request has a field with no form in OpenAI's Responses API, which this deployment speaks (api = \"responses\"); route it to a chat completions deployment",
                )
            }
        }
    }
    if !text.is_empty() {
        out.insert("text".into(), Value::Object(text));
    }
    out.entry("store").or_insert(Value::Bool(false));
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(out)
}

/// One chat message as input items.
fn push_message(input: &mut Vec<Value>, message: &Value) -> Result<(), &'static str> {
    let role = message.get("role").and_then(Value::as_str).unwrap_or("");
    let content = message.get("content").unwrap_or(&Value::Null);
    match role {
        "system" | "developer" | "user" => {
            let content = match content {
                Value::Array(parts) => {
                    let parts: Result<Vec<Value>, _> = parts.iter().map(chat_part).collect();
                    Value::Array(parts?)
                }
                Value::String(_) => content.clone(),
                _ => json!(""),
            };
            input.push(json!({"type": "message", "role": role, "content": content}));
        }
        "assistant" => {
            let text = match content {
                Value::String(text) => text.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => String::new(),
            };
            if !text.is_empty() {
                input.push(json!({"type": "message", "role": "assistant", "content": text}));
            }
            let calls = message.get("tool_calls").and_then(Value::as_array);
            for call in calls.map_or(&[][..], Vec::as_slice) {
                let function = &call["function"];
                input.push(json!({
                    "type": "function_call",
                    "call_id": call["id"].as_str().unwrap_or(""),
                    "name": function["name"].as_str().unwrap_or(""),
                    "arguments": function["arguments"].as_str().unwrap_or("{}"),
                }));
            }
        }
        "tool" => {
            let output = match content {
                Value::String(text) => text.clone(),
                Value::Array(parts) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
                _ => String::new(),
            };
            input.push(json!({
                "type": "function_call_output",
                "call_id": message["tool_call_id"].as_str().unwrap_or(""),
                "output": output,
            }));
        }
        _ => return Err(no_form!("function")),
    }
    Ok(())
}

/// A chat content part as an input part.
fn chat_part(part: &Value) -> Result<Value, &'static str> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "input_text", "text": part["text"]})),
        Some("image_url") => {
            let image = &part["image_url"];
            let mut out = json!({"type": "input_image", "image_url": image["url"]});
            out["detail"] = image.get("detail").cloned().unwrap_or(json!("auto"));
            Ok(out)
        }
        _ => Err(no_form!("content part")),
    }
}

/// A chat function tool in the Responses form (flat: name, description, parameters, strict).
fn function_tool(tool: &Value) -> Result<Value, &'static str> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return Err(no_form!("tools (a tool that is not a function)"));
    }
    let mut out = json!({"type": "function"});
    if let Some(function) = tool.get("function").and_then(Value::as_object) {
        for (name, value) in function {
            out[name.as_str()] = value.clone();
        }
    }
    Ok(out)
}

fn chat_tool_choice(value: &Value) -> Result<Value, &'static str> {
    match value {
        Value::String(_) => Ok(value.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({"type": "function", "name": o["function"]["name"]}))
        }
        _ => Err(no_form!("tool_choice")),
    }
}

/// `response_format` as `text.format` (`None` for plain text).
fn format_of(value: &Value) -> Result<Option<Value>, &'static str> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut format = json!({"type": "json_schema"});
            if let Some(schema) = value.get("json_schema").and_then(Value::as_object) {
                for (name, value) in schema {
                    format[name.as_str()] = value.clone();
                }
            }
            Ok(Some(format))
        }
        _ => Err(no_form!("response_format")),
    }
}
