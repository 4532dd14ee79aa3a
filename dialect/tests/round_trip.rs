//! OpenAI -> Anthropic -> OpenAI: what the workers send Anthropic, read back the way the
//! ingress reads an Anthropic caller, means the same; likewise answers, streams and errors.
//! (Gemini is only ever called, never served: it has no way back to round-trip.)

#![expect(
    clippy::unwrap_used,
    reason = "a test: a failed unwrap is a failed test"
)]

use serde_json::{json, Map, Value};
use sluice_dialect::anthropic::{error, request, response, stream, MessagesRequest};
use sluice_dialect::{openai, StreamItem, StreamToOpenAi};
use sluice_schemas::openai::{CompletionUsage, ErrorBody};

fn map(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// An OpenAI request, sent as Anthropic's and read back as OpenAI's.
fn request_round_trip(openai: &Map<String, Value>) -> Map<String, Value> {
    let anthropic = request::from_openai(openai, "claude-x", 4096, false).body;
    let bytes = serde_json::to_vec(&anthropic).unwrap();
    let back = request::to_openai(MessagesRequest::parse(&bytes).unwrap()).unwrap();
    map(serde_json::to_value(back).unwrap())
}

/// A message's role, text and tool calls: what a provider reads of it.
fn meaning(message: &Value) -> (String, String, Vec<openai::ToolCall>, Option<&str>) {
    (
        openai::role(message).to_string(),
        openai::text(message),
        openai::tool_calls(message),
        message.get("tool_call_id").and_then(Value::as_str),
    )
}

#[test]
fn a_request_keeps_its_messages_tools_tool_calls_and_system_prompt() {
    let openai = map(json!({
        "model": "smart",
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking both.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "15 degrees"},
            {"role": "tool", "tool_call_id": "call_2", "content": "21 degrees"},
            {"role": "assistant", "content": "Paris 15, Rome 21."},
            {"role": "user", "content": [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false,
        "max_tokens": 300,
        "stop": ["END"],
        "temperature": 0.5,
        "top_p": 0.9,
        "user": "u-1"
    }));
    let back = request_round_trip(&openai);
    let before: Vec<_> = openai::messages(&openai).iter().map(meaning).collect();
    let after: Vec<_> = openai::messages(&back).iter().map(meaning).collect();
    assert_eq!(after, before);
    assert_eq!(
        openai::parts(&openai::messages(&back)[6]),
        openai::parts(&openai::messages(&openai)[6]),
        "the image survives"
    );
    assert_eq!(openai::tools(&back), openai::tools(&openai));
    assert_eq!(openai::tool_choice(&back), openai::tool_choice(&openai));
    assert_eq!(back["parallel_tool_calls"], json!(false));
    assert_eq!(openai::completion_cap(&back), Some(300));
    assert_eq!(
        openai::stop_sequences(&back),
        openai::stop_sequences(&openai)
    );
    for key in ["temperature", "top_p", "user"] {
        assert_eq!(back[key], openai[key], "{key}");
    }
    assert_eq!(
        back["model"], "claude-x",
        "the provider's name for the model"
    );
}

#[test]
fn tool_choices_round_trip() {
    for choice in [json!("auto"), json!("none"), json!("required")] {
        let openai = map(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": choice,
        }));
        let back = request_round_trip(&openai);
        assert_eq!(
            openai::tool_choice(&back),
            openai::tool_choice(&openai),
            "{choice}"
        );
    }
}

fn completion(content: Value, tool_calls: Option<Value>, finish: &str, usage: Value) -> Value {
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(calls) = tool_calls {
        message["tool_calls"] = calls;
    }
    json!({"id": "chatcmpl-abc", "object": "chat.completion", "created": 1, "model": "claude-x",
           "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
           "usage": usage})
}

/// An OpenAI completion, given to an Anthropic caller and read back as a provider's answer.
fn response_round_trip(openai: &Value) -> (Value, CompletionUsage) {
    let anthropic = response::from_openai(openai, "smart");
    let back = response::to_openai(&anthropic.to_string(), None).unwrap();
    (serde_json::from_str(&back.body).unwrap(), back.usage)
}

#[test]
fn an_answer_keeps_its_text_tool_calls_stop_reason_and_usage() {
    let calls = json!([{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]);
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
                       "prompt_tokens_details": {"cached_tokens": 60}});
    let openai = completion(
        json!("Checking."),
        Some(calls.clone()),
        "tool_calls",
        usage.clone(),
    );
    let (back, back_usage) = response_round_trip(&openai);
    let choice = &back["choices"][0];
    assert_eq!(choice["message"]["content"], "Checking.");
    assert_eq!(choice["message"]["tool_calls"], calls);
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(back["usage"], usage);
    assert_eq!(back_usage.prompt_tokens, 100);
    assert_eq!(back["model"], "claude-x");
}

#[test]
fn stop_reasons_round_trip() {
    for finish in ["stop", "length", "content_filter"] {
        let usage = json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        let (back, _) = response_round_trip(&completion(json!("x"), None, finish, usage.clone()));
        assert_eq!(back["choices"][0]["finish_reason"], finish);
        assert_eq!(back["usage"], usage);
    }
    for finish in ["stop", "length", "tool_calls", "content_filter"] {
        assert_eq!(
            response::finish_reason(Some(response::stop_reason(Some(finish)))),
            finish
        );
    }
}

/// OpenAI chunks, streamed to an Anthropic caller and read back as a provider's stream.
fn stream_round_trip(chunks: &[Value]) -> Vec<StreamItem> {
    let mut to_anthropic = stream::FromOpenAi::new("smart", 7);
    let mut events = Vec::new();
    for chunk in chunks {
        events.extend(to_anthropic.chunk(&chunk.to_string()));
    }
    events.extend(to_anthropic.done());
    let mut to_openai = stream::ToOpenAi::new(None);
    let mut out = Vec::new();
    for event in events {
        to_openai.event(&event.data, &mut out).unwrap();
    }
    out
}

#[test]
fn a_stream_keeps_its_text_tool_calls_stop_reason_and_usage() {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "claude-x",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let chunks = [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo"}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "claude-x", "choices": [],
               "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
                         "prompt_tokens_details": {"cached_tokens": 5}}}),
    ];
    let out = stream_round_trip(&chunks);
    assert_eq!(out.last(), Some(&StreamItem::Done));
    let chunks: Vec<Value> = out
        .iter()
        .filter_map(|item| match item {
            StreamItem::Chunk(c) => Some(serde_json::from_str(c).unwrap()),
            _ => None,
        })
        .collect();
    let deltas = || chunks.iter().map(|c| &c["choices"][0]["delta"]);
    let text: String = deltas().filter_map(|d| d["content"].as_str()).collect();
    assert_eq!(text, "Hello");
    let calls: Vec<&Value> = deltas()
        .filter_map(|d| d["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls[0]["id"], "call_1");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    assert_eq!(
        chunks.last().unwrap()["usage"],
        json!({"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13,
               "prompt_tokens_details": {"cached_tokens": 5}})
    );
}

#[test]
fn errors_keep_their_type_and_message() {
    for kind in [
        "overloaded_error",
        "rate_limit_error",
        "timeout_error",
        "invalid_request_error",
    ] {
        let openai = ErrorBody::new(kind, Some(kind), "Try later.");
        let event = error::stream_from_openai(&openai.to_json());
        assert_eq!(error::to_openai(&event.to_string()), Some(openai));
    }
    let failed = json!({"error": {"message": "Slow down.", "type": "rate_limit_error"}});
    let anthropic = error::from_openai(429, &failed);
    let back = error::to_openai(&anthropic.to_string()).unwrap();
    assert_eq!(back.error.kind, "rate_limit_error");
    assert_eq!(back.error.message, "Slow down.");
}
