//! Anthropic's Messages API as api.anthropic.com speaks it: `POST /v1/messages` (JSON, or
//! server-sent events with `stream: true`), the key in `x-api-key`, the `anthropic-version`
//! header required, and Anthropic's error shape `{"type": "error", "error": {"type",
//! "message"}}` (429 `rate_limit_error` with `retry-after`, 529 `overloaded_error`, ...).
//!
//! Same machinery as the OpenAI format ([`super::behaviour`], [`super::reply`]): injected
//! failures first, then the key (401), the version header and fields (400), the model (404),
//! then the reply. Token counts:
//! - input tokens = words of `system` + words of every message's text (text blocks, and
//!   the text of tool results); Anthropic reports no cache use here (0).
//! - output tokens = `min(Behaviour::completion_tokens, max_tokens)`; stop reason
//!   `max_tokens` when the cap cut it, else `end_turn`.
//!
//! A stream is `message_start`, `content_block_start`, `ping`, one `content_block_delta`
//! per chunk, `content_block_stop`, `message_delta` (stop reason, output tokens),
//! `message_stop`. A mid-stream fault counts events from `message_start`; its error event
//! is `event: error` with an `overloaded_error` unless the failure names one.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use super::connection::Conn;
use super::openai::{stream::words_in_chunks, Plan, HANG};
use super::reply::{self, count_words, reply_text, FinishReason, Reply};
use super::sse::{self, Planned};
use super::{ApiError, Failure, KeyCheck, RecordedCall, Shared};

/// Anthropic's routes.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v1/messages", post(messages))
}

/// The text of a message: its content string, or its text blocks and tool results.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| match b.get("type").and_then(Value::as_str) {
                Some("text") => b.get("text").and_then(Value::as_str).map(str::to_string),
                Some("tool_result") => match b.get("content") {
                    Some(Value::String(t)) => Some(t.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn system_text(request: &Value) -> String {
    match request.get("system") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What the mock answers to a well-formed Messages `request` when configured with
/// `completion_tokens` (rules in the module docs).
pub fn expected_reply(request: &Value, completion_tokens: u32) -> Reply {
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let seed = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let prompt = messages
        .iter()
        .fold(count_words(&system_text(request)), |n, m| {
            n.saturating_add(count_words(&message_text(m)))
        });
    let cap = request
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map(|c| u32::try_from(c).unwrap_or(u32::MAX));
    let (completion_tokens, finish_reason) = reply::completion(completion_tokens, cap);
    Reply {
        content: reply_text(&seed, completion_tokens),
        prompt_tokens: prompt,
        cached_tokens: 0,
        completion_tokens,
        finish_reason,
    }
}

fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}

/// Anthropic's error type for a status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500.. => "api_error",
        _ => "invalid_request_error",
    }
}

fn error_message(status: u16) -> &'static str {
    match status {
        401 => "invalid x-api-key",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "The requested resource could not be found.",
        429 => "Number of request tokens has exceeded your per-minute rate limit (https://docs.claude.com/en/api/rate-limits); see the response headers for current usage. Please reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.",
        529 => "Overloaded",
        500.. => "Internal server error",
        _ => "Invalid request",
    }
}

fn error_json(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message},
           "request_id": request_id()})
}

fn request_id() -> String {
    format!("req_{}", uuid::Uuid::new_v4().simple())
}

struct ErrorAnswer {
    status: StatusCode,
    kind: String,
    message: String,
    html: Option<String>,
    retry_after: Option<Duration>,
}

impl ErrorAnswer {
    fn new(status: u16, kind: &str, message: impl Into<String>) -> ErrorAnswer {
        ErrorAnswer {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind: kind.to_string(),
            message: message.into(),
            html: None,
            retry_after: None,
        }
    }

    fn into_response(self) -> Response {
        let mut response = match self.html {
            Some(html) => {
                let mut r = Response::new(Body::from(html));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            None => json_response(&error_json(&self.kind, &self.message)),
        };
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            headers.insert(
                "anthropic-ratelimit-requests-limit",
                HeaderValue::from(50u64),
            );
            headers.insert(
                "anthropic-ratelimit-requests-remaining",
                HeaderValue::from(0u64),
            );
        }
        response
    }
}

fn json_response(json: &Value) -> Response {
    let mut response = Response::new(Body::from(json.to_string()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(id) = HeaderValue::from_str(&request_id()) {
        headers.insert("request-id", id);
    }
    response
}

enum Answer {
    Error(ErrorAnswer),
    Hang,
    Cut,
    Message {
        id: String,
        model: String,
        reply: Reply,
        stream: bool,
        fault: Option<Failure>,
    },
}

/// Anthropic's checks on the fields the mock reads, with Anthropic's wording.
fn validate(body: &Value) -> Result<(&str, bool), String> {
    let Some(fields) = body.as_object() else {
        return Err("Input should be a valid dictionary".into());
    };
    let model = match fields.get("model") {
        Some(Value::String(m)) => m.as_str(),
        None => return Err("model: Field required".into()),
        Some(_) => return Err("model: Input should be a valid string".into()),
    };
    match fields.get("max_tokens") {
        Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
        None => return Err("max_tokens: Field required".into()),
        Some(_) => return Err("max_tokens: Input should be greater than or equal to 1".into()),
    }
    let messages = match fields.get("messages") {
        Some(Value::Array(m)) => m,
        None => return Err("messages: Field required".into()),
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if messages.is_empty() {
        return Err("messages: at least one message is required".into());
    }
    for (i, m) in messages.iter().enumerate() {
        match m.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            _ => {
                return Err(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant'"
                ))
            }
        }
    }
    let stream = fields.get("stream") == Some(&Value::Bool(true));
    Ok((model, stream))
}

fn answer(plan: &Plan, headers: &HeaderMap, body: Option<&Value>) -> Answer {
    match &plan.failure {
        Some(Failure::Status {
            status,
            error,
            body,
            retry_after,
        }) => {
            let kind = error
                .as_ref()
                .map_or(error_type(*status), |e| e.kind.as_str());
            let message = error
                .as_ref()
                .map_or(error_message(*status), |e| e.message.as_str());
            let mut answer = ErrorAnswer::new(*status, kind, message);
            answer.html = body.clone();
            answer.retry_after = *retry_after;
            return Answer::Error(answer);
        }
        Some(Failure::Timeout) => return Answer::Hang,
        Some(Failure::Disconnect) => return Answer::Cut,
        _ => {}
    }
    match plan.key {
        KeyCheck::Accepted => {}
        KeyCheck::Missing => {
            return Answer::Error(ErrorAnswer::new(
                401,
                "authentication_error",
                "x-api-key header is required",
            ))
        }
        KeyCheck::Wrong => {
            return Answer::Error(ErrorAnswer::new(
                401,
                "authentication_error",
                "invalid x-api-key",
            ))
        }
    }
    if !headers.contains_key("anthropic-version") {
        return Answer::Error(ErrorAnswer::new(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    let Some(body) = body else {
        return Answer::Error(ErrorAnswer::new(
            400,
            "invalid_request_error",
            "There was an error parsing the body of your request.",
        ));
    };
    let (model, stream) = match validate(body) {
        Ok(v) => v,
        Err(message) => {
            return Answer::Error(ErrorAnswer::new(400, "invalid_request_error", message))
        }
    };
    if !plan.model_exists {
        return Answer::Error(ErrorAnswer::new(
            404,
            "not_found_error",
            format!("model: {model}"),
        ));
    }
    if !stream {
        if let Some(Failure::MidStreamError { error, .. }) = &plan.failure {
            let (kind, message) = error
                .as_ref()
                .map_or(("api_error", "Internal server error"), |e| {
                    (e.kind.as_str(), e.message.as_str())
                });
            return Answer::Error(ErrorAnswer::new(500, kind, message));
        }
    }
    Answer::Message {
        id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
        model: model.to_string(),
        reply: expected_reply(body, plan.completion_tokens),
        stream,
        fault: plan.failure.clone(),
    }
}

async fn messages(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    let body = serde_json::from_slice::<Value>(&raw_body).ok();
    let presented_key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let model = body.as_ref().and_then(|b| b.get("model")?.as_str());
    let plan = Plan::take(&shared, presented_key, model);
    let answer = answer(&plan, &headers, body.as_ref());
    let stream_plan = match &answer {
        Answer::Message {
            id,
            model,
            reply,
            stream: true,
            fault,
        } => Some(StreamPlan::new(id, model, reply, fault.as_ref(), &plan)),
        _ => None,
    };

    if let Some(max) = plan.record {
        let mut call = RecordedCall::received(seq, received_at, method, &uri, headers, raw_body);
        call.model = model.map(str::to_owned);
        call.stream = body.as_ref().and_then(|b| b.get("stream")) == Some(&Value::Bool(true));
        call.body = body.clone();
        call.injected = plan.failure.clone();
        match &answer {
            Answer::Error(e) => {
                call.status = Some(e.status.as_u16());
                if e.html.is_none() {
                    call.error = Some(ApiError::new(&e.kind, None, e.message.clone()));
                }
            }
            Answer::Hang | Answer::Cut => {}
            Answer::Message { id, reply, .. } => {
                call.status = Some(200);
                call.response_id = Some(id.clone());
                call.prompt_tokens = reply.prompt_tokens;
                match &stream_plan {
                    Some(s) => {
                        call.completion_tokens = s.words_sent;
                        call.content = reply.content
                            [..reply::words_end(&reply.content, 0, s.words_sent)]
                            .to_owned();
                        call.finish_reason = s.finished.then_some(reply.finish_reason);
                        call.usage_reported = s.finished;
                        call.error = s.error.clone();
                    }
                    None => {
                        call.completion_tokens = reply.completion_tokens;
                        call.content = reply.content.clone();
                        call.finish_reason = Some(reply.finish_reason);
                        call.usage_reported = true;
                    }
                }
            }
        }
        shared.record(call, max);
    }

    if !plan.latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(plan.latency) => {}
            () = shared.stopped() => {}
        }
    }
    match answer {
        Answer::Error(e) => e.into_response(),
        Answer::Hang => {
            tokio::select! {
                () = tokio::time::sleep(HANG) => {}
                () = shared.stopped() => {}
            }
            conn.kill();
            Response::new(Body::empty())
        }
        Answer::Cut => {
            conn.kill();
            Response::new(Body::empty())
        }
        Answer::Message {
            id, model, reply, ..
        } => match stream_plan {
            Some(s) => {
                let mut response = Response::new(sse::body(
                    s.events,
                    plan.stream_chunk_delay,
                    s.fault,
                    Arc::clone(&shared),
                    seq,
                ));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream; charset=utf-8"),
                );
                response
            }
            None => json_response(&json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": reply.content}],
                "stop_reason": stop_reason(reply.finish_reason),
                "stop_sequence": null,
                "usage": {
                    "input_tokens": reply.prompt_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": reply.completion_tokens,
                    "service_tier": "standard",
                },
            })),
        },
    }
}

/// A stream's events, and what of it reaches the client.
struct StreamPlan {
    events: Vec<Planned>,
    fault: Option<sse::Fault>,
    words_sent: u32,
    /// The client gets the stop reason and final usage (`message_delta`).
    finished: bool,
    error: Option<ApiError>,
}

impl StreamPlan {
    fn new(
        id: &str,
        model: &str,
        reply: &Reply,
        failure: Option<&Failure>,
        plan: &Plan,
    ) -> StreamPlan {
        let words = reply.completion_tokens;
        let chunks = plan.stream_chunks.map_or(words, |k| k.get().min(words));
        let ev = |name: &str, data: Value, content: bool| Planned {
            bytes: sse::event(Some(name), &data, false),
            content,
        };
        let mut events = vec![
            ev(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": reply.prompt_tokens, "cache_creation_input_tokens": 0,
                              "cache_read_input_tokens": 0, "output_tokens": 1}}}),
                false,
            ),
            ev(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                false,
            ),
            ev("ping", json!({"type": "ping"}), false),
        ];
        let mut offset = 0;
        for j in 0..chunks {
            let in_chunk =
                words_in_chunks(j + 1, words, chunks) - words_in_chunks(j, words, chunks);
            let start = offset;
            offset = reply::words_end(&reply.content, start, in_chunk);
            events.push(ev(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": &reply.content[start..offset]}}),
                true,
            ));
        }
        events.push(ev(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
            false,
        ));
        events.push(ev(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason(reply.finish_reason), "stop_sequence": null},
                   "usage": {"output_tokens": words}}),
            false,
        ));
        events.push(ev("message_stop", json!({"type": "message_stop"}), false));

        let total = events.len() as u32;
        let (fault, error) = match failure {
            Some(Failure::MidStreamBreak { after_chunks }) if *after_chunks < total => (
                Some(sse::Fault::Break {
                    after: *after_chunks,
                }),
                None,
            ),
            Some(Failure::MidStreamError {
                after_chunks,
                error,
            }) => {
                let (kind, message) = error
                    .as_ref()
                    .map_or(("overloaded_error", "Overloaded"), |e| {
                        (e.kind.as_str(), e.message.as_str())
                    });
                let event = sse::event(
                    Some("error"),
                    &json!({"type": "error", "error": {"type": kind, "message": message}}),
                    false,
                );
                (
                    Some(sse::Fault::Error {
                        after: (*after_chunks).min(total.saturating_sub(1)),
                        event,
                    }),
                    Some(ApiError::new(kind, None, message)),
                )
            }
            _ => (None, None),
        };
        let sent = fault.as_ref().map_or(total, |f| f.after().min(total));
        // Events before the content: message_start, content_block_start, ping.
        let chunks_sent = sent.saturating_sub(3).min(chunks);
        StreamPlan {
            events,
            fault,
            words_sent: words_in_chunks(chunks_sent, words, chunks),
            finished: sent >= total - 1,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::mock::{Behaviour, Failure, MockProvider};

    fn request(stream: bool) -> Value {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream,
               "system": "Be brief.",
               "messages": [{"role": "user", "content": "Hello, world"}]})
    }

    async fn post(mock: &MockProvider, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("{}/v1/messages", mock.origin()))
            .header("x-api-key", "sk-ant-test")
            .header("anthropic-version", "2023-06-01")
            .json(body)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_message_in_anthropics_shape() {
        let mock = MockProvider::start(Behaviour {
            completion_tokens: 3,
            api_key: Some("sk-ant-test".into()),
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let response = post(&mock, &request(false)).await;
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("request-id"));
        let mut body: Value = response.json().await.unwrap();
        assert!(body["id"].as_str().unwrap().starts_with("msg_"));
        body.as_object_mut().unwrap().remove("id");
        // input tokens: "Be brief." (2) + "Hello, world" (2).
        assert_eq!(
            body,
            json!({"type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
                   "content": [{"type": "text", "text": "Hello, world Hello,"}],
                   "stop_reason": "end_turn", "stop_sequence": null,
                   "usage": {"input_tokens": 4, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0, "output_tokens": 3,
                             "service_tier": "standard"}})
        );
        let call = &mock.calls()[0];
        assert_eq!((call.prompt_tokens, call.completion_tokens), (4, 3));
        assert_eq!(call.header("anthropic-version"), Some("2023-06-01"));
    }

    #[tokio::test]
    async fn a_stream_of_anthropic_events() {
        let mock = MockProvider::start(Behaviour {
            completion_tokens: 2,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let text = post(&mock, &request(true)).await.text().await.unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let data: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(
            data[3]["delta"],
            json!({"type": "text_delta", "text": "Hello,"})
        );
        assert_eq!(
            data[4]["delta"],
            json!({"type": "text_delta", "text": " world"})
        );
        assert_eq!(data[6]["usage"]["output_tokens"], 2);
        assert!(mock.calls()[0].ended_at.is_some());
    }

    #[tokio::test]
    async fn errors_in_anthropics_shape() {
        let mock = MockProvider::start(Behaviour::default()).await.unwrap();
        mock.fail_next([
            Failure::rate_limited(Duration::from_secs(2)),
            Failure::status(529),
            Failure::MidStreamError {
                after_chunks: 4,
                error: None,
            },
        ]);
        let response = post(&mock, &request(false)).await;
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()["retry-after"], "2");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "rate_limit_error");
        let response = post(&mock, &request(false)).await;
        assert_eq!(response.status(), 529);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!({"type": "overloaded_error", "message": "Overloaded"})
        );
        let text = post(&mock, &request(true)).await.text().await.unwrap();
        assert!(
            text.ends_with("event: error\ndata: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\"},\"type\":\"error\"}\n\n"),
            "{text}"
        );
        // No anthropic-version header: 400, as Anthropic answers.
        let response = reqwest::Client::new()
            .post(format!("{}/v1/messages", mock.origin()))
            .json(&request(false))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
}
