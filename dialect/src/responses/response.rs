//! A chat completion as a Responses API `response` object: the message and function calls
//! as output items, usage in the Responses names, `incomplete` when the cap cut it.

use serde_json::{json, Value};

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
