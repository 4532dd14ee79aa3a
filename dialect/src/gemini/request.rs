//! Requests: an OpenAI chat request as a Gemini `GenerateContentRequest` ([`from_openai`],
//! the workers' Gemini provider). Gemini is only ever called, never served: there is no
//! inverse.
//!
//! - System and developer messages become `systemInstruction`; assistant turns are `model`
//!   turns; tool results become `functionResponse` parts of a user turn, answered by the
//!   function's name (looked up from the assistant's tool call ids).
//! - Sampling, caps, stop sequences and JSON mode go into `generationConfig`.

use serde_json::{json, Map, Value};

use crate::openai::{self, Image, Part, ResponseFormat, ToolChoice};

/// The OpenAI chat request as a Gemini `GenerateContentRequest`.
pub fn from_openai(request: &Map<String, Value>) -> Map<String, Value> {
    let messages = openai::messages(request);
    let names = openai::tool_names(messages);
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
        match openai::role(message) {
            "system" | "developer" => {
                let text = openai::text(message);
                if !text.is_empty() {
                    system.push(json!({"text": text}));
                }
            }
            "assistant" => {
                let mut parts = content_parts(message);
                parts.extend(openai::tool_calls(message).into_iter().map(
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
                let text = openai::text(message);
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
    let tools = openai::tools(request);
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
        if let Some(choice) = openai::tool_choice(request) {
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
        if let Some(v) = openai::number(request, openai) {
            config.insert(gemini.into(), v);
        }
    }
    if let Some(cap) = openai::completion_cap(request) {
        config.insert("maxOutputTokens".into(), json!(cap));
    }
    if let Some(stop) = openai::stop_sequences(request) {
        config.insert("stopSequences".into(), json!(stop));
    }
    match openai::response_format(request) {
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
    openai::parts(message)
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
