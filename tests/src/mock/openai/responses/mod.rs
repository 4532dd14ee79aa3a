//! OpenAI's Responses API as api.openai.com speaks it: `POST /v1/responses`, answered with a
//! `response` object, or with `stream: true` its typed server-sent events
//! (`event: response.created` ... `response.completed`, each with its `sequence_number`), and
//! OpenAI's error shape for everything that fails. Calls are handled in the chat format's
//! order ([`super`]): injected failures, the key, the JSON, the fields (unknown ones are
//! refused, as OpenAI does), the model, then the reply.
//!
//! A request is read as the chat completion it stands for, so text, token counts and forced
//! function calls follow the chat rules ([`super::expected_reply`],
//! [`super::forced_tool_call_of`]):
//! - `instructions` is a system message; an `input` string is a user message; input items
//!   are messages (their `input_text` / `output_text` parts count as text), a
//!   `function_call` item is an assistant message with no text, a `function_call_output`
//!   item a tool message whose text is its `output`;
//! - function tools and a forcing `tool_choice` ("required", or `{"type": "function",
//!   "name"}`) give a `function_call` item instead of a message;
//! - the cap is `max_output_tokens` (at least 16, as OpenAI requires); a reply it cuts is
//!   `incomplete` with reason `max_output_tokens`, and its stream ends `response.incomplete`.
//!
//! A mid-stream fault counts events from `response.created`; its error event is `event:
//! error` with `code` and `message` (`server_error` unless the failure names one).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::{json, Map, Value};

use super::super::sse::{self, Planned};
use super::errors::{
    invalid_type, missing_parameter, model_not_found, server_error, unparseable_json, ErrorAnswer,
    INVALID_REQUEST,
};
use super::stream::words_in_chunks;
use super::tools::{forced_tool_call, ToolCall};
use super::{
    event_stream, expected_reply, handle, internal_error, json_answer, refusal, unix_now, Answer,
    Conn, Incoming, Plan, Progress,
};
use crate::mock::reply::{self, count_words, FinishReason, Reply};
use crate::mock::{ApiError, Failure, RecordedCall, Shared};

/// The request fields OpenAI accepts; any other is refused by name.
const FIELDS: [&str; 27] = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "temperature",
    "top_p",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "stream",
    "stream_options",
    "store",
    "metadata",
    "user",
    "safety_identifier",
    "text",
    "reasoning",
    "previous_response_id",
    "conversation",
    "prompt",
    "truncation",
    "include",
    "prompt_cache_key",
    "service_tier",
    "background",
];
const ROLES: [&str; 4] = ["user", "assistant", "system", "developer"];
const ITEM_TYPES: [&str; 3] = ["message", "function_call", "function_call_output"];
/// OpenAI's least `max_output_tokens`.
const MIN_OUTPUT_TOKENS: u64 = 16;

pub(super) async fn responses(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> axum::response::Response {
    let request = Incoming {
        method,
        uri,
        headers,
        raw_body,
    };
    handle(shared, &conn, request, answer).await
}

/// What the mock answers to a well-formed Responses `request` when configured with
/// `completion_tokens`, as the chat completion it stands for would be answered (a forced
/// function call aside: see [`super::forced_tool_call_of`] on `chat_request(request)`).
pub fn expected_reply_of(request: &Value, completion_tokens: u32) -> Reply {
    expected_reply(&chat_request(request), completion_tokens)
}

/// The chat completion request a Responses request stands for (rules in the module docs).
pub fn chat_request(request: &Value) -> Value {
    let mut messages = Vec::new();
    if let Some(instructions) = request.get("instructions").and_then(Value::as_str) {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match request.get("input") {
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => messages.extend(items.iter().map(chat_message)),
        _ => {}
    }
    let mut chat = json!({"messages": messages});
    let tools: Vec<Value> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
        .map(|t| {
            json!({"type": "function", "function": {"name": t.get("name"),
                                                          "parameters": t.get("parameters")}})
        })
        .collect();
    chat["tools"] = Value::Array(tools);
    if let Some(choice) = request.get("tool_choice") {
        chat["tool_choice"] = match choice.get("name") {
            Some(name) => json!({"type": "function", "function": {"name": name}}),
            None => choice.clone(),
        };
    }
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("prompt_cache_key", "prompt_cache_key"),
    ] {
        if let Some(value) = request.get(from) {
            chat[to] = value.clone();
        }
    }
    chat
}

fn chat_message(item: &Value) -> Value {
    match item.get("type").and_then(Value::as_str) {
        Some("function_call") => json!({"role": "assistant", "content": null}),
        Some("function_call_output") => json!({"role": "tool", "content": item.get("output")}),
        _ => json!({"role": item.get("role"), "content": item.get("content")}),
    }
}

fn invalid_value(param: &str, got: &str, supported: &[&str]) -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        Some("invalid_value"),
        format!(
            "Invalid value: '{got}'. Supported values are: {}.",
            supported
                .iter()
                .map(|v| format!("'{v}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .with_param(param)
}

/// OpenAI's checks on the fields the mock reads, with OpenAI's messages; the model and
/// whether it streams.
fn validate(body: &Value) -> Result<(&str, bool), ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(unparseable_json());
    };
    if let Some(unknown) = fields.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::new(
            INVALID_REQUEST,
            Some("unknown_parameter"),
            format!("Unknown parameter: '{unknown}'."),
        )
        .with_param(unknown));
    }
    let model = match fields.get("model") {
        None | Some(Value::Null) => return Err(missing_parameter("model")),
        Some(Value::String(model)) => model.as_str(),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    match fields.get("input") {
        None | Some(Value::Null) => return Err(missing_parameter("input")),
        Some(Value::String(_)) => {}
        Some(Value::Array(items)) => validate_items(items)?,
        Some(other) => return Err(invalid_type("input", "a string or an array", other)),
    }
    if let Some(cap) = fields.get("max_output_tokens").filter(|c| !c.is_null()) {
        match cap.as_u64() {
            Some(n) if n >= MIN_OUTPUT_TOKENS => {}
            Some(n) => {
                return Err(ApiError::new(
                    INVALID_REQUEST,
                    Some("integer_below_min_value"),
                    format!(
                        "Invalid 'max_output_tokens': integer below minimum value. Expected a \
                         value >= {MIN_OUTPUT_TOKENS}, but got {n} instead."
                    ),
                )
                .with_param("max_output_tokens"))
            }
            None => return Err(invalid_type("max_output_tokens", "an integer", cap)),
        }
    }
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    Ok((model, stream))
}

fn validate_items(items: &[Value]) -> Result<(), ApiError> {
    for (i, item) in items.iter().enumerate() {
        let Some(fields) = item.as_object() else {
            return Err(invalid_type(&format!("input[{i}]"), "an object", item));
        };
        let kind = match fields.get("type") {
            None => "message",
            Some(Value::String(kind)) => kind.as_str(),
            Some(other) => {
                return Err(invalid_type(&format!("input[{i}].type"), "a string", other))
            }
        };
        if !ITEM_TYPES.contains(&kind) {
            return Err(invalid_value(
                &format!("input[{i}].type"),
                kind,
                &ITEM_TYPES,
            ));
        }
        if kind == "message" {
            let role = fields.get("role").and_then(Value::as_str).unwrap_or("");
            if !ROLES.contains(&role) {
                return Err(invalid_value(&format!("input[{i}].role"), role, &ROLES));
            }
        } else {
            let needs: &[&str] = if kind == "function_call" {
                &["call_id", "name", "arguments"]
            } else {
                &["call_id", "output"]
            };
            if let Some(missing) = needs.iter().find(|n| !fields.contains_key(**n)) {
                return Err(missing_parameter(&format!("input[{i}].{missing}")));
            }
        }
    }
    Ok(())
}

/// Decide the answer: injected failure, then auth, JSON, fields, model, then the reply.
fn answer(plan: &Plan, body: Option<&Value>, presented_key: Option<&str>) -> Answer {
    let stream = body.and_then(|b| b.get("stream")) == Some(&Value::Bool(true));
    if let Some(refused) = refusal(plan, body, stream, presented_key) {
        return refused;
    }
    let bad = |error| Answer::Error(ErrorAnswer::new(StatusCode::BAD_REQUEST, error));
    let Some(body) = body else {
        return bad(unparseable_json());
    };
    let (model, stream) = match validate(body) {
        Ok(valid) => valid,
        Err(error) => return bad(error),
    };
    if !plan.model_exists {
        return Answer::Error(ErrorAnswer::new(
            StatusCode::NOT_FOUND,
            model_not_found(model),
        ));
    }
    let chat = chat_request(body);
    let mut reply = expected_reply(&chat, plan.completion_tokens);
    let tool_call = forced_tool_call(&chat);
    if let Some(call) = &tool_call {
        reply.content = String::new();
        reply.completion_tokens = count_words(&call.arguments);
        reply.finish_reason = FinishReason::ToolCalls;
    }
    Answer::Response(Box::new(Response::new(
        body, model, reply, tool_call, stream, plan,
    )))
}

/// A planned answer: the response object, and for a stream its events.
pub(crate) struct Response {
    object: Value,
    reply: Reply,
    tool_call: bool,
    /// `None`: a JSON answer.
    events: Option<Vec<Planned>>,
    /// How many events get out; all of them unless a fault strikes.
    sent: u32,
    fault: Option<sse::Fault>,
    /// A JSON body cut halfway.
    cut: bool,
    delay: Duration,
    error: Option<ApiError>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

impl Response {
    fn new(
        body: &Value,
        model: &str,
        reply: Reply,
        tool_call: Option<ToolCall>,
        stream: bool,
        plan: &Plan,
    ) -> Response {
        let item_id = new_id(if tool_call.is_some() { "fc_" } else { "msg_" });
        let cut_short = reply.finish_reason == FinishReason::Length;
        let done = if cut_short { "incomplete" } else { "completed" };
        let item = |status: &str, text: &str, arguments: &str| match &tool_call {
            Some(call) => json!({"id": item_id, "type": "function_call", "status": status,
                                 "arguments": arguments, "call_id": call.id, "name": call.name}),
            None => {
                let content: Vec<Value> = (status != "in_progress")
                    .then(|| text_part(text))
                    .into_iter()
                    .collect();
                json!({"id": item_id, "type": "message", "status": status, "role": "assistant",
                       "content": content})
            }
        };
        let arguments = tool_call.as_ref().map_or("", |c| c.arguments.as_str());
        let mut object = response_object(body, model);
        let started = object.clone();
        object["status"] = json!(done);
        if cut_short {
            object["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        object["output"] = json!([item(done, &reply.content, arguments)]);
        object["usage"] = usage(&reply);
        let mut response = Response {
            object,
            tool_call: tool_call.is_some(),
            events: None,
            sent: 0,
            fault: None,
            cut: matches!(plan.failure, Some(Failure::MidStreamBreak { .. })),
            delay: plan.stream_chunk_delay,
            error: None,
            reply,
        };
        if stream {
            let mut events = Events::default();
            events.push("response.created", json!({"response": started}), false);
            events.push("response.in_progress", json!({"response": started}), false);
            let item_added = json!({"output_index": 0, "item": item("in_progress", "", "")});
            events.push("response.output_item.added", item_added, false);
            let at = json!({"item_id": item_id, "output_index": 0});
            let with = |mut fields: Value, extra: Value| {
                if let (Some(fields), Value::Object(extra)) = (fields.as_object_mut(), extra) {
                    fields.extend(extra);
                }
                fields
            };
            if tool_call.is_some() {
                let delta = with(at.clone(), json!({"delta": arguments}));
                events.push("response.function_call_arguments.delta", delta, true);
                let done = with(at, json!({"arguments": arguments}));
                events.push("response.function_call_arguments.done", done, false);
            } else {
                let at = with(at, json!({"content_index": 0}));
                let part = with(at.clone(), json!({"part": text_part("")}));
                events.push("response.content_part.added", part, false);
                let content = &response.reply.content;
                let words = response.reply.completion_tokens;
                let chunks = plan.stream_chunks.map_or(words, |k| k.get().min(words));
                let mut offset = 0;
                for j in 0..chunks {
                    let in_chunk =
                        words_in_chunks(j + 1, words, chunks) - words_in_chunks(j, words, chunks);
                    let start = offset;
                    offset = reply::words_end(content, start, in_chunk);
                    let delta = with(
                        at.clone(),
                        json!({"delta": &content[start..offset], "logprobs": []}),
                    );
                    events.push("response.output_text.delta", delta, true);
                }
                let text = with(at.clone(), json!({"text": content, "logprobs": []}));
                events.push("response.output_text.done", text, false);
                let part = with(at, json!({"part": text_part(content)}));
                events.push("response.content_part.done", part, false);
            }
            let item_done = json!({"output_index": 0, "item": response.object["output"][0]});
            events.push("response.output_item.done", item_done, false);
            let end = json!({"response": response.object});
            events.push(&format!("response.{done}"), end, false);
            response.plan_fault(&mut events, plan.failure.as_ref());
            response.events = Some(events.planned);
        }
        response
    }

    /// A stream's fault: a break after some events, or an `error` event after them.
    fn plan_fault(&mut self, events: &mut Events, failure: Option<&Failure>) {
        let total = events.planned.len() as u32;
        self.sent = total;
        self.fault = match failure {
            Some(Failure::MidStreamBreak { after_chunks }) if *after_chunks < total => {
                self.sent = *after_chunks;
                Some(sse::Fault::Break {
                    after: *after_chunks,
                })
            }
            Some(Failure::MidStreamError {
                after_chunks,
                error,
            }) => {
                let error = error.clone().unwrap_or_else(server_error);
                self.sent = (*after_chunks).min(total.saturating_sub(1));
                let code = error.code.as_deref().unwrap_or(&error.kind);
                let data = json!({"type": "error", "code": code, "message": error.message,
                                  "param": error.param, "sequence_number": self.sent});
                self.error = Some(error);
                Some(sse::Fault::Error {
                    after: self.sent,
                    event: sse::event(Some("error"), &data, false),
                })
            }
            _ => None,
        };
    }

    /// Fill in what the client gets from this answer.
    pub(super) fn describe(&self, call: &mut RecordedCall) {
        call.status = Some(200);
        call.response_id = self.object["id"].as_str().map(str::to_owned);
        call.prompt_tokens = self.reply.prompt_tokens;
        let words = self.reply.completion_tokens;
        let (words_sent, finished) = match &self.events {
            None if self.cut => (0, false),
            None => (words, true),
            Some(events) => {
                let total = events.len() as u32;
                let content: Vec<bool> = events.iter().map(|e| e.content).collect();
                let sent_content = content
                    .iter()
                    .take(self.sent as usize)
                    .filter(|c| **c)
                    .count() as u32;
                let chunks = content.iter().filter(|c| **c).count() as u32;
                let words_sent = match self.tool_call {
                    true if sent_content > 0 => words,
                    true => 0,
                    false => words_in_chunks(sent_content, words, chunks),
                };
                (words_sent, self.sent >= total)
            }
        };
        call.completion_tokens = words_sent;
        let content = &self.reply.content;
        call.content = content[..reply::words_end(content, 0, words_sent)].to_owned();
        call.finish_reason = finished.then_some(self.reply.finish_reason);
        call.usage_reported = finished;
        call.error = self.error.clone();
    }

    pub(super) fn into_response(
        self,
        processing: Duration,
        progress: Progress,
    ) -> axum::response::Response {
        let Some(events) = self.events else {
            return match serde_json::to_vec(&self.object) {
                Ok(json) => json_answer(json, self.cut, processing),
                Err(error) => internal_error(&error, processing),
            };
        };
        let body = sse::body(
            events,
            self.delay,
            self.fault,
            progress.shared,
            progress.seq,
        );
        event_stream(body, processing)
    }
}

/// Typed events in order, numbered from 0.
#[derive(Default)]
struct Events {
    planned: Vec<Planned>,
}

impl Events {
    fn push(&mut self, name: &str, mut data: Value, content: bool) {
        if let Some(fields) = data.as_object_mut() {
            let mut typed = Map::new();
            typed.insert("type".into(), json!(name));
            typed.insert("sequence_number".into(), json!(self.planned.len()));
            typed.append(fields);
            *fields = typed;
        }
        self.planned.push(Planned {
            bytes: sse::event(Some(name), &data, false),
            content,
        });
    }
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text})
}

fn usage(reply: &Reply) -> Value {
    json!({"input_tokens": reply.prompt_tokens,
           "input_tokens_details": {"cached_tokens": reply.cached_tokens},
           "output_tokens": reply.completion_tokens,
           "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": reply.prompt_tokens + reply.completion_tokens})
}

/// The response object as it starts (`in_progress`, no output yet), the request's settings
/// echoed with OpenAI's defaults.
fn response_object(body: &Value, model: &str) -> Value {
    let echo = |name: &str, default: Value| body.get(name).cloned().unwrap_or(default);
    json!({
        "id": new_id("resp_"),
        "object": "response",
        "created_at": unix_now(),
        "status": "in_progress",
        "background": false,
        "error": null,
        "incomplete_details": null,
        "instructions": echo("instructions", Value::Null),
        "max_output_tokens": echo("max_output_tokens", Value::Null),
        "model": model,
        "output": [],
        "parallel_tool_calls": echo("parallel_tool_calls", json!(true)),
        "previous_response_id": null,
        "reasoning": {"effort": body.get("reasoning").and_then(|r| r.get("effort")), "summary": null},
        "service_tier": "default",
        "store": echo("store", json!(true)),
        "temperature": echo("temperature", json!(1.0)),
        "text": echo("text", json!({"format": {"type": "text"}})),
        "tool_choice": echo("tool_choice", json!("auto")),
        "tools": echo("tools", json!([])),
        "top_p": echo("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": null,
        "user": null,
        "metadata": echo("metadata", json!({})),
    })
}

#[cfg(test)]
mod tests;
