use serde_json::{json, Value};

use super::request::to_openai;
use super::response::from_openai;
use super::stream::FromOpenAi;
use crate::anthropic::RequestError;

fn chat(body: Value) -> Value {
    Value::Object(to_openai(body.to_string().as_bytes()).unwrap())
}

fn refused(body: Value) -> &'static str {
    match to_openai(body.to_string().as_bytes()) {
        Err(RequestError::InvalidParam { param, .. }) => param,
        other => panic!("not refused by name: {other:?}"),
    }
}

#[test]
fn a_string_input_with_instructions_is_a_chat_request() {
    let out = chat(
        json!({"model": "m", "input": "hi", "instructions": "be brief",
                          "max_output_tokens": 50, "temperature": 0, "metadata": {"k": "v"},
                          "store": false}),
    );
    assert_eq!(
        out,
        json!({"model": "m", "temperature": 0, "max_completion_tokens": 50,
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": "hi"}]})
    );
}

#[test]
fn items_tools_and_formats_translate() {
    let out = chat(json!({
        "model": "m", "stream": true,
        "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}
    }));
    let messages = out["messages"].as_array().unwrap();
    assert_eq!(
        messages[0],
        json!({"role": "developer", "content": "rules"})
    );
    assert_eq!(
        messages[1]["content"][1],
        json!({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}})
    );
    assert_eq!(messages[2]["content"], "calling");
    assert_eq!(
        messages[2]["tool_calls"][1]["id"], "c2",
        "calls merge into the assistant turn"
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "c1", "content": "42"})
    );
    assert_eq!(
        out["tools"][0],
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": true}})
    );
    assert_eq!(
        out["tool_choice"],
        json!({"type": "function", "function": {"name": "f"}})
    );
    assert_eq!(out["response_format"]["json_schema"]["name"], "s");
    assert_eq!(out["stream_options"], json!({"include_usage": true}));
}

#[test]
fn what_needs_state_or_has_no_chat_form_is_refused_by_name() {
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})),
        "previous_response_id"
    );
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "store": true})),
        "store"
    );
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "background": "yes"})),
        "background"
    );
    // `background` is the ingress's: the chat request is the same.
    assert_eq!(
        chat(json!({"model": "m", "input": "x", "background": true})),
        chat(json!({"model": "m", "input": "x"}))
    );
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})),
        "tools"
    );
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "colour": 1})),
        "body"
    );
    assert_eq!(refused(json!({"model": "m"})), "input");
    assert_eq!(
        refused(json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]})),
        "input"
    );
    assert_eq!(
        refused(json!({"model": "m", "input": "x", "max_output_tokens": 0})),
        "max_output_tokens"
    );
    assert!(matches!(
        to_openai(b"{nope"),
        Err(RequestError::InvalidJson(_))
    ));
}

#[test]
fn a_completion_is_a_response_object() {
    let completion = json!({"id": "chatcmpl-1", "created": 7, "model": "m-2024",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
            "content": "ok", "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                  "prompt_tokens_details": {"cached_tokens": 2}}});
    let r = from_openai(&completion, "m", "req_abc");
    assert_eq!(r["id"], "resp_abc");
    assert_eq!(r["object"], "response");
    assert_eq!(r["status"], "completed");
    assert_eq!(r["model"], "m-2024");
    assert_eq!(
        r["output"][0]["content"][0],
        json!({"type": "output_text", "text": "ok", "annotations": [], "logprobs": []})
    );
    assert_eq!(r["output"][1]["call_id"], "c1");
    assert_eq!(r["usage"]["input_tokens"], 5);
    assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 2);
    assert_eq!(r["usage"]["total_tokens"], 8);
    let mut cut = completion.clone();
    cut["choices"][0]["finish_reason"] = json!("length");
    let r = from_openai(&cut, "m", "req_abc");
    assert_eq!(
        (r["status"].as_str(), &r["incomplete_details"]),
        (Some("incomplete"), &json!({"reason": "max_output_tokens"}))
    );
}

fn names(events: &[super::stream::Event]) -> Vec<&str> {
    events.iter().map(|e| e.name).collect()
}

/// The Responses events of one streamed chat answer: a role chunk, text "Hello", a call of
/// `f` with arguments `{"a":1}` in two pieces, finish `tool_calls`, usage 4 + 6.
fn events_of(writer: &mut FromOpenAi) -> Vec<super::stream::Event> {
    let mut events = Vec::new();
    for chunk in [
        json!({"model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
        json!({"choices": [{"index": 0, "delta": {"content": "lo"}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\""}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}}),
    ] {
        events.extend(writer.chunk(&chunk.to_string()));
    }
    events.extend(writer.done());
    events
}

#[test]
fn a_stream_is_the_typed_event_sequence() {
    let events = events_of(&mut FromOpenAi::new("req_1", "m", 9));
    assert_eq!(
        names(&events),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let data: Vec<Value> = events
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["sequence_number"], i, "{d}");
        assert_eq!(d["type"], events[i].name);
    }
    assert_eq!(data[6]["text"], "Hello");
    assert_eq!(data[12]["arguments"], "{\"a\":1}");
    let done = &data[14]["response"];
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(done["output"][1]["arguments"], "{\"a\":1}");
    assert_eq!(done["usage"]["output_tokens"], 6);
}

#[test]
fn a_failed_stream_ends_with_error_and_failed() {
    let mut s = FromOpenAi::new("req_1", "m", 9);
    s.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}).to_string());
    let events = s.error(
        r#"{"error": {"message": "boom", "type": "server_error", "code": "stream_interrupted"}}"#,
    );
    assert_eq!(names(&events), ["error", "response.failed"]);
    let failed: Value = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["code"], "stream_interrupted");
}

// The workers' side: a deployment that speaks the Responses API.

use super::request::from_openai as to_responses;
use super::response::to_openai as completion_of;
use super::stream::ToOpenAi;
use crate::openai::{StreamItem, StreamToOpenAi};

fn responses_of(chat: Value) -> Result<Value, &'static str> {
    let Value::Object(chat) = chat else {
        panic!("not an object")
    };
    to_responses(&chat, "gpt-x", false).map(Value::Object)
}

#[test]
fn a_responses_request_is_the_same_request_after_the_chat_shape() {
    let caller = json!({
        "model": "m", "instructions": "be brief", "max_output_tokens": 40, "temperature": 0.5,
        "input": [
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"}],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "f"},
        "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}
    });
    let native = responses_of(chat(caller)).unwrap();
    assert_eq!(
        native,
        json!({
            "model": "gpt-x", "max_output_tokens": 40, "temperature": 0.5, "store": false,
            "input": [
                {"type": "message", "role": "system", "content": "be brief"},
                {"type": "message", "role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
                {"type": "message", "role": "assistant", "content": "calling"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"}],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}}
        })
    );
}

#[test]
fn chat_fields_without_a_responses_form_are_refused_by_name() {
    let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (field, value) in [
        ("stop", json!(["\n"])),
        ("seed", json!(7)),
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("presence_penalty", json!(0.5)),
    ] {
        let mut chat = base();
        chat[field] = value;
        let refused = responses_of(chat).unwrap_err();
        assert!(
            refused.contains(&format!("`{field}`")),
            "{field}: {refused}"
        );
    }
    let mut unknown = base();
    unknown["made_up"] = json!(1);
    assert!(responses_of(unknown).unwrap_err().contains("no form"));
    let mut fine = base();
    for (field, value) in [
        ("n", json!(1)),
        ("logprobs", json!(false)),
        ("stop", Value::Null),
        ("max_tokens", json!(9)),
        ("stream_options", json!({"include_usage": true})),
        ("store", json!(true)),
    ] {
        fine[field] = value;
    }
    let Value::Object(fine) = fine else {
        unreachable!()
    };
    let native = Value::Object(to_responses(&fine, "gpt-x", true).unwrap());
    assert_eq!(
        native,
        json!({"model": "gpt-x", "max_output_tokens": 9, "store": true, "stream": true,
               "input": [{"type": "message", "role": "user", "content": "hi"}]})
    );
}

fn response_json(status: &str, output: Value) -> String {
    json!({"id": "resp_9", "object": "response", "created_at": 77, "status": status,
           "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
           "model": "gpt-x-2026", "output": output,
           "usage": {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4},
                     "output_tokens": 30, "output_tokens_details": {"reasoning_tokens": 20},
                     "total_tokens": 42}})
    .to_string()
}

#[test]
fn a_response_object_is_a_chat_completion() {
    let body = response_json(
        "completed",
        json!([
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
             "content": [{"type": "output_text", "text": "Hel", "annotations": []},
                         {"type": "output_text", "text": "lo", "annotations": []}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
             "arguments": "{\"a\":1}", "status": "completed"}]),
    );
    let completion = completion_of(&body).unwrap();
    assert_eq!(
        (
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens
        ),
        (12, 30)
    );
    assert_eq!(
        completion
            .usage
            .prompt_tokens_details
            .map(|d| d.cached_tokens),
        Some(4)
    );
    let chat: Value = serde_json::from_str(&completion.body).unwrap();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["model"], "gpt-x-2026");
    let choice = &chat["choices"][0];
    assert_eq!(choice["message"]["content"], "Hello");
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(
        choice["message"]["tool_calls"][0],
        json!({"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}})
    );
    assert_eq!(chat["usage"]["total_tokens"], 42);

    let cut = completion_of(&response_json(
        "incomplete",
        json!([{"type": "message", "content": [{"type": "output_text", "text": "He"}]}]),
    ))
    .unwrap();
    let cut: Value = serde_json::from_str(&cut.body).unwrap();
    assert_eq!(cut["choices"][0]["finish_reason"], "length");
    assert!(cut["choices"][0]["message"].get("tool_calls").is_none());

    assert!(completion_of(&response_json("failed", json!([]))).is_err());
    assert!(completion_of(r#"{"object": "chat.completion"}"#).is_err());
    assert!(completion_of("not json").is_err());
}

/// Chat chunks through the ingress's writer (chat -> Responses events) and back through the
/// workers' reader (Responses events -> chat): the same text, call, finish and usage.
#[test]
fn responses_events_are_chat_chunks_again() {
    let events = events_of(&mut FromOpenAi::new("req_1", "m", 9));
    let mut reader = ToOpenAi::new();
    let mut items = Vec::new();
    for event in &events {
        reader.event(&event.data, &mut items).unwrap();
    }
    assert_eq!(items.last(), Some(&StreamItem::Done));
    let chunks: Vec<Value> = items
        .iter()
        .filter_map(|item| match item {
            StreamItem::Chunk(c) => Some(serde_json::from_str(c).unwrap()),
            _ => None,
        })
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["id"], "resp_1");
    let delta = |c: &Value| c["choices"][0]["delta"].clone();
    let text: String = chunks
        .iter()
        .filter_map(|c| delta(c)["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "Hello");
    let calls: Vec<Value> = chunks
        .iter()
        .filter_map(|c| delta(c)["tool_calls"].get(0).cloned())
        .collect();
    assert_eq!(calls[0]["id"], "c1");
    assert_eq!(calls[0]["function"]["name"], "f");
    let arguments: String = calls
        .iter()
        .map(|c| c["function"]["arguments"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(arguments, "{\"a\":1}");
    assert!(calls.iter().all(|c| c["index"] == 0));
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| f.is_string())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].clone(),
            usage["completion_tokens"].clone()
        ),
        (json!(4), json!(6))
    );
}

#[test]
fn a_failed_responses_stream_is_one_error() {
    let mut writer = FromOpenAi::new("req_1", "m", 9);
    let mut events =
        writer.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "a"}}]}).to_string());
    events.extend(writer.error(
        r#"{"error": {"message": "boom", "type": "server_error", "code": "stream_interrupted"}}"#,
    ));
    let mut reader = ToOpenAi::new();
    let mut items = Vec::new();
    for event in &events {
        reader.event(&event.data, &mut items).unwrap();
    }
    let errors: Vec<&StreamItem> = items
        .iter()
        .filter(|i| matches!(i, StreamItem::Error(_)))
        .collect();
    assert_eq!(errors.len(), 1, "{items:?}");
    let StreamItem::Error(error) = errors[0] else {
        unreachable!()
    };
    assert_eq!(error.error.code.as_deref(), Some("stream_interrupted"));
    assert_eq!(error.error.message, "boom");
    assert!(!items.contains(&StreamItem::Done));
    assert!(reader.event("not json", &mut items).is_err());
}
