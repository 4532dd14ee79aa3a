//! A chat completion as a Responses API `response` object: the message and function calls
//! as output items, usage in the Responses names, `incomplete` when the cap cut it.

use serde_json::{json, Value};
use sluice_schemas::openai::CompletionUsage;

use crate::openai::{self, Completion};

/// The `resp_` id of the response answering Sluice request `request_id`.
pub fn response_id(request_id: &str) -> String {
    format!("resp_{}", request_id.trim_start_matches("req_"))
}

/// `status` and `incomplete_details` for a chat `finish_reason`.
pub fn status(finish_reason: Option<&str>) -> (&'static str, Value) {
    match finish_reason {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// Chat usage in the Responses names (`input_tokens`, `output_tokens`, details).
pub fn usage(chat: &Value) -> Value {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let input = n(&chat["prompt_tokens"]);
    let output = n(&chat["completion_tokens"]);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n(&chat["prompt_tokens_details"]["cached_tokens"])},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n(&chat["completion_tokens_details"]["reasoning_tokens"])},
        "total_tokens": input + output,
    })
}

/// A `message` output item of `text`.
pub fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

/// A `function_call` output item.
pub fn function_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": format!("fc_{call_id}"), "call_id": call_id,
           "name": name, "arguments": arguments, "status": status})
}

/// The `response` object (what the SDKs read; fields Sluice does not echo have their
/// defaults).
pub fn object(
    id: &str,
    created_at: u64,
    model: &str,
    status: &str,
    incomplete: Value,
    output: Vec<Value>,
    usage: Value,
) -> Value {
    json!({
        "id": id, "object": "response", "created_at": created_at, "status": status,
        "error": null, "incomplete_details": incomplete, "instructions": null,
        "max_output_tokens": null, "model": model, "output": output,
        "parallel_tool_calls": true, "previous_response_id": null, "store": false,
        "temperature": null, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
        "tools": [], "top_p": null, "truncation": "disabled", "usage": usage, "metadata": {},
    })
}

/// The `response` of a background request not answered yet.
pub fn queued(request_id: &str, created_at: u64, model: &str) -> Value {
    object(
        &response_id(request_id),
        created_at,
        model,
        "queued",
        Value::Null,
        Vec::new(),
        Value::Null,
    )
}

/// The `response` of a background request its caller cancelled before it started.
pub fn cancelled(request_id: &str, created_at: u64, model: &str) -> Value {
    object(
        &response_id(request_id),
        created_at,
        model,
        "cancelled",
        Value::Null,
        Vec::new(),
        Value::Null,
    )
}

/// The `response` of a background request that failed with `error` (OpenAI's `error`
/// object: `code`, `message`).
pub fn failed(request_id: &str, created_at: u64, model: &str, error: &Value) -> Value {
    let mut response = object(
        &response_id(request_id),
        created_at,
        model,
        "failed",
        Value::Null,
        Vec::new(),
        Value::Null,
    );
    response["error"] = json!({
        "code": error["code"].as_str().or(error["type"].as_str()).unwrap_or("server_error"),
        "message": error["message"].as_str().unwrap_or("The request failed."),
    });
    response
}

/// The Sluice request id of a `resp_` id (`None` if it is not one).
pub fn request_id(response_id: &str) -> Option<String> {
    response_id
        .strip_prefix("resp_")
        .filter(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|rest| format!("req_{rest}"))
}

/// A chat completion (JSON) as the `response` of request `request_id`.
pub fn from_openai(completion: &Value, model: &str, request_id: &str) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let id = response_id(request_id);
    let mut output = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        output.push(message_item(
            &format!("msg_{}", &id[5..]),
            text,
            "completed",
        ));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        output.push(function_item(
            call["id"].as_str().unwrap_or_default(),
            call["function"]["name"].as_str().unwrap_or_default(),
            call["function"]["arguments"].as_str().unwrap_or("{}"),
            "completed",
        ));
    }
    let (status, incomplete) = status(choice["finish_reason"].as_str());
    object(
        &id,
        completion["created"].as_u64().unwrap_or_default(),
        completion["model"].as_str().unwrap_or(model),
        status,
        incomplete,
        output,
        usage(&completion["usage"]),
    )
}

/// The chat `finish_reason` of a `response` (a JSON answer's, or the one in a stream's last
/// event); `called`: the answer has function calls.
pub(super) fn finish_reason(response: &Value, called: bool) -> &'static str {
    match (
        response["status"].as_str(),
        response["incomplete_details"]["reason"].as_str(),
    ) {
        (Some("incomplete"), Some("content_filter")) => "content_filter",
        (Some("incomplete"), _) => "length",
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// A `response`'s usage in chat's terms (input tokens include cached ones in both).
pub(super) fn chat_usage(usage: &Value) -> CompletionUsage {
    let n = |v: &Value| u32::try_from(v.as_u64().unwrap_or(0)).unwrap_or(u32::MAX);
    openai::usage(
        n(&usage["input_tokens"]),
        n(&usage["output_tokens"]),
        n(&usage["input_tokens_details"]["cached_tokens"]),
    )
}

/// A provider's `response` object (JSON) as a chat completion: the workers' side, for a
/// deployment that speaks the Responses API. Message text is the content, function calls
/// are tool calls (their `call_id` the call's id); reasoning items have no chat form and
/// are left out (their tokens are in `output_tokens`, which is what is billed). A
/// `failed` response is an error.
pub fn to_openai(body: &str) -> Result<Completion, serde_json::Error> {
    let response: Value = serde_json::from_str(body)?;
    if !response.is_object() || response["object"] != "response" {
        return Err(serde::de::Error::custom(
            "not a Responses API `response` object",
        ));
    }
    if response["status"] == "failed" {
        let message = response["error"]["message"]
            .as_str()
            .unwrap_or("no message");
        return Err(serde::de::Error::custom(format!(
            "the provider's response failed: {message}"
        )));
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for item in response["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if part["type"] == "output_text" {
                        text.push_str(part["text"].as_str().unwrap_or_default());
                    }
                }
            }
            Some("function_call") => calls.push(openai::tool_call_json(
                item["call_id"].as_str().unwrap_or_default(),
                item["name"].as_str().unwrap_or_default(),
                item["arguments"].as_str().unwrap_or("{}"),
            )),
            _ => {}
        }
    }
    let finish = finish_reason(&response, !calls.is_empty());
    let content = (!text.is_empty() || calls.is_empty()).then_some(text);
    let usage = chat_usage(&response["usage"]);
    let body = openai::completion(
        response["id"].as_str().unwrap_or_default(),
        response["created_at"]
            .as_i64()
            .unwrap_or_else(openai::unix_now),
        response["model"].as_str().unwrap_or_default(),
        vec![openai::choice(0, content, calls, finish)],
        &usage,
    );
    Ok(Completion { body, usage })
}
