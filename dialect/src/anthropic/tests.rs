//! Golden pairs: OpenAI-shaped requests and the Anthropic requests they become, and
//! Anthropic responses and streams (as Anthropic's API reference shows them) and the OpenAI
//! shapes they become.

use serde_json::{json, Map, Value};

use super::{error, request, response, stream, MessagesRequest, RequestError};
use crate::{StreamItem, StreamToOpenAi};

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn request_with_system_turns_tools_and_sampling() {
    let openai = map(json!({
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "What's the weather like in San Francisco?"},
            {"role": "assistant", "content": "I'll check.", "tool_calls": [{
                "id": "toolu_01A09q90qw90lq917835lq9", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\"}"}
            }]},
            {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
            {"role": "user", "content": [
                {"type": "text", "text": "And this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}
            ]}
        ],
        "max_tokens": 1024,
        "stop": ["\n\nHuman:"],
        "temperature": 1.5,
        "top_p": 0.9,
        "user": "user-123",
        "parallel_tool_calls": false,
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
        }}],
        "tool_choice": "required",
        "stream_options": {"include_usage": true}
    }));
    let out = request::from_openai(&openai, "claude-sonnet-4-5", 4096, true);
    assert_eq!(
        Value::Object(out.body),
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": "You are a weather bot.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What's the weather like in San Francisco?"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "I'll check."},
                    {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                     "input": {"location": "San Francisco, CA"}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A09q90qw90lq917835lq9", "content": "15 degrees"},
                    {"type": "text", "text": "And this picture?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"}}
                ]}
            ],
            "stop_sequences": ["\n\nHuman:"],
            "temperature": 1.0,
            "top_p": 0.9,
            "metadata": {"user_id": "user-123"},
            "tools": [{
                "name": "get_weather",
                "description": "Get the current weather in a given location",
                "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}
            }],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stream": true
        })
    );
    assert_eq!(out.json_tool, None);
}

#[test]
fn max_tokens_defaults_from_config() {
    let openai =
        map(json!({"model": "m", "messages": [{"role": "user", "content": "Hello, world"}]}));
    let out = request::from_openai(&openai, "claude-opus-4-1", 2048, false);
    assert_eq!(
        Value::Object(out.body),
        json!({"model": "claude-opus-4-1", "max_tokens": 2048,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, world"}]}]})
    );
}

#[test]
fn response_text() {
    // Anthropic API reference, Messages: the example response.
    let body = r#"{
      "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
      "type": "message",
      "role": "assistant",
      "model": "claude-sonnet-4-5-20250929",
      "content": [{"type": "text", "text": "Hi! My name is Claude."}],
      "stop_reason": "end_turn",
      "stop_sequence": null,
      "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    }"#;
    let completion = response::to_openai(body, None).unwrap();
    let mut got: Value = serde_json::from_str(&completion.body).unwrap();
    assert!(got["created"].as_i64().unwrap() > 1_700_000_000);
    got.as_object_mut().unwrap().remove("created");
    assert_eq!(
        got,
        json!({
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "object": "chat.completion",
            "model": "claude-sonnet-4-5-20250929",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! My name is Claude."},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2095, "completion_tokens": 503, "total_tokens": 2598}
        })
    );
    assert_eq!(completion.usage.prompt_tokens, 2095);
}

#[test]
fn response_tool_use_and_cache_usage() {
    // Anthropic docs, tool use: a response that calls a tool.
    let body = r#"{
      "id": "msg_01Aq9w938a90dw8q",
      "type": "message",
      "model": "claude-sonnet-4-5",
      "stop_reason": "tool_use",
      "role": "assistant",
      "content": [
        {"type": "text", "text": "I'll check the current weather in San Francisco for you."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
         "input": {"location": "San Francisco, CA", "unit": "celsius"}}
      ],
      "usage": {"input_tokens": 100, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 1800, "output_tokens": 60}
    }"#;
    let completion = response::to_openai(body, None).unwrap();
    let got: Value = serde_json::from_str(&completion.body).unwrap();
    assert_eq!(
        got["choices"][0],
        json!({"index": 0, "logprobs": null, "finish_reason": "tool_calls", "message": {
            "role": "assistant",
            "content": "I'll check the current weather in San Francisco for you.",
            "tool_calls": [{"id": "toolu_01A09q90qw90lq917835lq9", "type": "function", "function": {
                "name": "get_weather", "arguments": "{\"location\":\"San Francisco, CA\",\"unit\":\"celsius\"}"}}]
        }})
    );
    // Prompt tokens include cache writes and reads; reads are the cached ones.
    assert_eq!(
        got["usage"],
        json!({"prompt_tokens": 1920, "completion_tokens": 60, "total_tokens": 1980,
               "prompt_tokens_details": {"cached_tokens": 1800}})
    );
}

#[test]
fn json_schema_is_a_forced_tool_whose_input_is_the_answer() {
    let openai = map(
        json!({"model": "m", "messages": [{"role": "user", "content": "Name a city"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema":
            {"type": "object", "properties": {"name": {"type": "string"}}}}}}),
    );
    let out = request::from_openai(&openai, "claude", 100, false);
    assert_eq!(out.json_tool.as_deref(), Some("city"));
    assert_eq!(
        out.body["tool_choice"],
        json!({"type": "tool", "name": "city"})
    );
    assert_eq!(
        out.body["tools"][0]["input_schema"]["properties"]["name"]["type"],
        "string"
    );
    let body = r#"{"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
        "content": [{"type": "tool_use", "id": "toolu_1", "name": "city", "input": {"name": "Paris"}}],
        "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7}}"#;
    let got: Value =
        serde_json::from_str(&response::to_openai(body, Some("city")).unwrap().body).unwrap();
    assert_eq!(
        got["choices"][0]["message"],
        json!({"role": "assistant", "content": "{\"name\":\"Paris\"}"})
    );
    assert_eq!(got["choices"][0]["finish_reason"], "stop");
}

/// Feeds `(event, data)` pairs through the translator; returns the chunks as JSON (or the
/// literal `[DONE]` as a string).
fn translate_stream(events: &[(&str, &str)], json_tool: Option<&str>) -> Vec<Value> {
    let mut stream = stream::ToOpenAi::new(json_tool.map(str::to_string));
    let mut out = Vec::new();
    for (_name, data) in events {
        stream.event(data, &mut out).unwrap();
    }
    out.into_iter()
        .map(|item| match item {
            StreamItem::Chunk(s) => serde_json::from_str(&s).unwrap(),
            StreamItem::Error(e) => serde_json::to_value(e).unwrap(),
            StreamItem::Done => json!("[DONE]"),
        })
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("created");
            }
            v
        })
        .collect()
}

fn chunk(choices: Value) -> Value {
    json!({"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "object": "chat.completion.chunk",
           "model": "claude-opus-4-6", "choices": choices})
}

fn delta(delta: Value) -> Value {
    chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
}

#[test]
fn stream_of_text() {
    // Anthropic docs, streaming messages: the basic example.
    let events = [
        (
            "message_start",
            r#"{"type": "message_start", "message": {"id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY", "type": "message", "role": "assistant", "content": [], "model": "claude-opus-4-6", "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}"#,
        ),
        (
            "content_block_start",
            r#"{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}"#,
        ),
        ("ping", r#"{"type": "ping"}"#),
        (
            "content_block_delta",
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "!"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type": "content_block_stop", "index": 0}"#,
        ),
        (
            "message_delta",
            r#"{"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence":null}, "usage": {"output_tokens": 15}}"#,
        ),
        ("message_stop", r#"{"type": "message_stop"}"#),
    ];
    let mut usage = chunk(json!([]));
    usage["usage"] = json!({"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40});
    assert_eq!(
        translate_stream(&events, None),
        vec![
            delta(json!({"role": "assistant", "content": ""})),
            delta(json!({"content": "Hello"})),
            delta(json!({"content": "!"})),
            chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}])),
            usage,
            json!("[DONE]"),
        ]
    );
}

#[test]
fn stream_of_a_tool_call() {
    // Anthropic docs, streaming messages: the tool use example (abridged deltas).
    let events = [
        (
            "message_start",
            r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","model":"claude-opus-4-6","stop_sequence":null,"usage":{"input_tokens":472,"output_tokens":2},"content":[],"stop_reason":null}}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Okay, let's check the weather."}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":0}"#,
        ),
        (
            "content_block_start",
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_01T1x1fJ34qAmk2tNTrN7Up6","name":"get_weather","input":{}}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"location\":"}}"#,
        ),
        (
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":" \"San Francisco, CA\"}"}}"#,
        ),
        (
            "content_block_stop",
            r#"{"type":"content_block_stop","index":1}"#,
        ),
        (
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":89}}"#,
        ),
        ("message_stop", r#"{"type":"message_stop"}"#),
    ];
    let got = translate_stream(&events, None);
    let tool = |d: Value| delta(json!({"tool_calls": [d]}));
    assert_eq!(
        got[1],
        delta(json!({"content": "Okay, let's check the weather."}))
    );
    assert_eq!(
        got[2],
        tool(
            json!({"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}})
        )
    );
    assert_eq!(
        got[4],
        tool(json!({"index": 0, "function": {"arguments": "{\"location\":"}}))
    );
    assert_eq!(got[6]["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(got[7]["usage"]["completion_tokens"], 89);
    assert_eq!(got[8], json!("[DONE]"));
}

#[test]
fn errors_in_body_and_mid_stream() {
    let body = r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
    let mapped = error::to_openai(body).unwrap().to_json();
    assert_eq!(
        serde_json::from_str::<Value>(&mapped).unwrap(),
        json!({"error": {"message": "Overloaded", "type": "overloaded_error", "param": null, "code": "overloaded_error"}})
    );
    let got = translate_stream(
        &[(
            "error",
            r#"{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}"#,
        )],
        None,
    );
    assert_eq!(got[0]["error"]["type"], "overloaded_error");
}

// The ingress's way: Anthropic requests in, OpenAI answers and chunks out as Anthropic's.

fn to_openai_bytes(
    body: &[u8],
) -> Result<sluice_schemas::openai::ChatCompletionRequest, RequestError> {
    request::to_openai(MessagesRequest::parse(body)?)
}

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
    let out = serde_json::to_value(to_openai_bytes(body.to_string().as_bytes()).unwrap()).unwrap();
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
    let err = to_openai_bytes(br#"{"model": "m", "messages": []}"#).unwrap_err();
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
        response::from_openai(&completion, "smart"),
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
    let mut writer = stream::FromOpenAi::new("m", 9);
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
