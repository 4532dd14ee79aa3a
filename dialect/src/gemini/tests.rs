//! Golden pairs: OpenAI-shaped requests and the Gemini requests they become, and Gemini
//! responses and streams (as Google's API documentation shows them) and the OpenAI shapes
//! they become.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::{error, request, response, stream};
use crate::{StreamItem, StreamToOpenAi};

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn without_created(body: &str) -> Value {
    let mut v: Value = serde_json::from_str(body).unwrap();
    if let Some(o) = v.as_object_mut() {
        o.remove("created");
    }
    v
}

#[test]
fn request_with_system_turns_and_generation_config() {
    // Gemini docs: system instructions, multi-turn chat and generationConfig examples.
    let openai = map(json!({
        "model": "fast",
        "messages": [
            {"role": "system", "content": "You are a cat. Your name is Neko."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Great to meet you. What would you like to know?"},
            {"role": "user", "content": "I have two dogs in my house. How many paws are in my house?"}
        ],
        "stop": ["Title"],
        "temperature": 1.0,
        "max_tokens": 800,
        "top_p": 0.8,
        "top_k": 10,
        "stream_options": {"include_usage": true}
    }));
    assert_eq!(
        Value::Object(request::from_openai(&openai)),
        json!({
            "systemInstruction": {"parts": [{"text": "You are a cat. Your name is Neko."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}]},
                {"role": "model", "parts": [{"text": "Great to meet you. What would you like to know?"}]},
                {"role": "user", "parts": [{"text": "I have two dogs in my house. How many paws are in my house?"}]}
            ],
            "generationConfig": {"stopSequences": ["Title"], "temperature": 1.0, "maxOutputTokens": 800,
                                 "topP": 0.8, "topK": 10}
        })
    );
}

#[test]
fn request_with_function_calling_and_json_mode() {
    // Gemini docs, function calling: declarations, the model's call and the function's response.
    let openai = map(json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Turn the lights down to a romantic level"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "set_light_values", "arguments": "{\"brightness\":25,\"color_temp\":\"warm\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"brightness\":25,\"colorTemperature\":\"warm\"}"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "set_light_values",
            "description": "Sets the brightness and color temperature of a light.",
            "parameters": {"type": "object", "properties": {
                "brightness": {"type": "integer"}, "color_temp": {"type": "string", "enum": ["daylight", "cool", "warm"]}},
                "required": ["brightness", "color_temp"]}
        }}],
        "tool_choice": {"type": "function", "function": {"name": "set_light_values"}},
        "response_format": {"type": "json_object"}
    }));
    assert_eq!(
        Value::Object(request::from_openai(&openai)),
        json!({
            "contents": [
                {"role": "user", "parts": [
                    {"text": "Turn the lights down to a romantic level"},
                    {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
                ]},
                {"role": "model", "parts": [{"functionCall": {"name": "set_light_values",
                    "args": {"brightness": 25, "color_temp": "warm"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "set_light_values",
                    "response": {"brightness": 25, "colorTemperature": "warm"}}}]}
            ],
            "tools": [{"functionDeclarations": [{
                "name": "set_light_values",
                "description": "Sets the brightness and color temperature of a light.",
                "parameters": {"type": "object", "properties": {
                    "brightness": {"type": "integer"}, "color_temp": {"type": "string", "enum": ["daylight", "cool", "warm"]}},
                    "required": ["brightness", "color_temp"]}
            }]}],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["set_light_values"]}},
            "generationConfig": {"responseMimeType": "application/json"}
        })
    );
}

#[test]
fn response_text() {
    // Gemini docs, text generation: the REST response.
    let body = r#"{
      "candidates": [{
        "content": {"parts": [{"text": "AI learns patterns from data to make predictions or decisions.\n"}], "role": "model"},
        "finishReason": "STOP",
        "avgLogprobs": -0.0948
      }],
      "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 12, "totalTokenCount": 20,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]},
      "modelVersion": "gemini-2.0-flash",
      "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
    }"#;
    let completion = response::to_openai(body, "gemini-2.0-flash").unwrap();
    assert_eq!(
        without_created(&completion.body),
        json!({
            "id": "mAitaLmkHPPlz7IPvtfUqQ4",
            "object": "chat.completion",
            "model": "gemini-2.0-flash",
            "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "AI learns patterns from data to make predictions or decisions.\n"},
                "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20}
        })
    );
}

#[test]
fn response_function_call_thoughts_and_cache() {
    let body = r#"{
      "candidates": [{"content": {"role": "model", "parts": [
          {"text": "Thinking about lights", "thought": true},
          {"functionCall": {"name": "set_light_values", "args": {"brightness": 25, "color_temp": "warm"}}}
        ]}, "finishReason": "STOP", "index": 0}],
      "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 20,
                        "thoughtsTokenCount": 30, "totalTokenCount": 1050},
      "modelVersion": "gemini-2.5-flash"
    }"#;
    let completion = response::to_openai(body, "gemini-2.5-flash").unwrap();
    let got = without_created(&completion.body);
    let choice = &got["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(
        call["function"],
        json!({"name": "set_light_values", "arguments": "{\"brightness\":25,\"color_temp\":\"warm\"}"})
    );
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(
        got["usage"],
        json!({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
               "prompt_tokens_details": {"cached_tokens": 600}})
    );
}

#[test]
fn errors_map_with_their_retry_delay() {
    let body = r#"{"error": {"code": 429, "message": "You exceeded your current quota, please check your plan and billing details.",
      "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "39s"}]}}"#;
    let (mapped, retry) = error::to_openai(body)
        .map(|(e, r)| (e.to_json(), r))
        .unwrap();
    assert_eq!(retry, Some(Duration::from_secs(39)));
    assert_eq!(
        serde_json::from_str::<Value>(&mapped).unwrap(),
        json!({"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                         "type": "resource_exhausted", "param": null, "code": "RESOURCE_EXHAUSTED"}})
    );
    let key = r#"[{"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}]"#;
    let (mapped, retry) = error::to_openai(key)
        .map(|(e, r)| (e.to_json(), r))
        .unwrap();
    assert_eq!(retry, None);
    assert!(mapped.contains("\"code\":\"INVALID_ARGUMENT\""), "{mapped}");
}

fn stream(events: &[&str]) -> Vec<Value> {
    let mut translator = stream::ToOpenAi::new("gemini-2.0-flash");
    let mut out = Vec::new();
    for data in events {
        translator.event(data, &mut out).unwrap();
    }
    translator.end(&mut out);
    out.iter()
        .map(|item| match item {
            StreamItem::Chunk(s) => without_created(s),
            StreamItem::Error(e) => serde_json::to_value(e).unwrap(),
            StreamItem::Done => json!("[DONE]"),
        })
        .collect()
}

#[test]
fn stream_ends_with_usage_and_done_only_after_a_finish_reason() {
    // Gemini docs, streamGenerateContent?alt=sse: each event a whole response.
    let events = [
        r#"{"candidates": [{"content": {"parts": [{"text": "The"}], "role": "model"}, "index": 0}], "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}, "modelVersion": "gemini-2.0-flash", "responseId": "r1"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " quick brown fox"}], "role": "model"}, "index": 0}], "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}, "modelVersion": "gemini-2.0-flash", "responseId": "r1"}"#,
        r#"{"candidates": [{"content": {"parts": [{"text": " jumps."}], "role": "model"}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 5, "totalTokenCount": 13}, "modelVersion": "gemini-2.0-flash", "responseId": "r1"}"#,
    ];
    let chunk = |choices: Value| json!({"id": "r1", "object": "chat.completion.chunk", "model": "gemini-2.0-flash", "choices": choices});
    let delta = |d: Value| {
        chunk(json!([{"index": 0, "delta": d, "logprobs": null, "finish_reason": null}]))
    };
    let mut usage = chunk(json!([]));
    usage["usage"] = json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13});
    assert_eq!(
        stream(&events),
        vec![
            delta(json!({"role": "assistant", "content": ""})),
            delta(json!({"content": "The"})),
            delta(json!({"content": " quick brown fox"})),
            delta(json!({"content": " jumps."})),
            chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])),
            usage,
            json!("[DONE]"),
        ]
    );
    // Cut before the finishing chunk: no [DONE], so the stream counts as broken.
    assert_eq!(
        stream(&events[..2]).last().unwrap()["choices"][0]["delta"]["content"],
        " quick brown fox"
    );
}
