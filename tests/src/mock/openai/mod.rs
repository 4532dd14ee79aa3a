//! OpenAI Chat Completions as api.openai.com speaks it: `POST /v1/chat/completions`
//! (JSON or `text/event-stream`), `GET /v1/models`, `GET /v1/models/{model}`,
//! `POST /v1/moderations` ([`moderations`]), `POST /v1/responses` ([`responses`]), and OpenAI's
//! error shape `{"error": {"message", "type", "param", "code"}}` for everything that fails.
//! Azure OpenAI's deployment path `POST /openai/deployments/{deployment}/chat/completions`
//! is answered the same way, with the key taken from Azure's `api-key` header, and so is
//! Azure's Responses API, `POST /openai/v1/responses`.
//!
//! A call is handled in OpenAI's order: an injected status, timeout or disconnect first (it
//! replaces everything else), then the API key (401), the JSON (400), the request fields
//! (400), the model (404), and then the reply, which an injected mid-stream fault cuts short.
//!
//! Token counts (see [`super::reply`] for the reply text):
//! - prompt tokens = 3 + Σ over messages (3 + words in the message's text), OpenAI's own
//!   per-message overhead rule with words for tokens. A message's text is its `content`
//!   string, or the `text` of each of its content parts; names, tool calls and images count
//!   nothing.
//! - completion tokens = `min(Behaviour::completion_tokens, max_completion_tokens or
//!   max_tokens)`, finish reason "length" if the cap cut it, else "stop".
//! - cached tokens (`usage.prompt_tokens_details.cached_tokens`) = half the prompt tokens,
//!   rounded down, when the request sets `prompt_cache_key`; else 0.
//!
//! Files: this one decides each call's answer; `stream.rs` writes SSE events, `wire.rs`
//! holds the response JSON types, `errors.rs` OpenAI's validation and error bodies,
//! `models.rs` the model endpoints.

mod embeddings;
mod errors;
mod http;
mod models;
pub mod moderations;
pub mod responses;
pub(super) mod stream;
mod tools;
mod wire;

use std::borrow::Cow;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;

use super::connection::Conn;
use super::reply::{self, count_words, reply_text, Reply};
use super::{check_key, ApiError, Failure, KeyCheck, RecordedCall, Shared};
use errors::{
    canned_error, missing_key, model_not_found, server_error, unparseable_json, validate,
    wrong_key, ErrorAnswer,
};
use stream::{words_in_chunks, EventStream};
pub use tools::forced_tool_call_of;
use tools::{forced_tool_call, ToolCall};
use wire::{
    finish_reason, ChatCompletionJson, ChoiceJson, FunctionJson, MessageJson, ToolCallJson,
    UsageJson,
};

pub(crate) use errors::{invalid_method, invalid_url};
use http::presented_key;
pub(super) use http::unix_now;
use http::{bearer_key, common_headers, event_stream, internal_error, json_answer, json_response};

pub(super) const SYSTEM_FINGERPRINT: &str = "fp_mock";
pub(super) const SERVICE_TIER: &str = "default";
/// `created` of every listed model: fixed, so listings are comparable across runs.
pub(super) const MODEL_CREATED: u64 = 1_700_000_000;
/// The longest a `Timeout` call holds its connection if neither the client nor shutdown
/// ends it first.
pub(super) const HANG: Duration = Duration::from_secs(3600);

/// OpenAI's routes. Unknown paths and methods are answered by [`invalid_url`] and
/// [`invalid_method`], set on the whole router.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(chat_completions),
        )
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route(
            "/openai/deployments/{deployment}/embeddings",
            post(embeddings::embeddings),
        )
        .route("/v1/moderations", post(moderations::moderations))
        .route("/v1/responses", post(responses::responses))
        .route("/openai/v1/responses", post(responses::responses))
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{model}", get(models::retrieve_model))
}

/// What the mock answers to a well-formed chat completion `request` when configured with
/// `completion_tokens`: the same computation the mock makes, for tests to compare with.
pub fn expected_reply(request: &Value, completion_tokens: u32) -> Reply {
    let messages = messages(request);
    let seed = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(message_text)
        .unwrap_or_default();
    let (completion_tokens, finish_reason) =
        reply::completion(completion_tokens, completion_cap(request));
    let prompt_tokens = prompt_tokens(request);
    let cached_tokens = if request.get("prompt_cache_key").is_some() {
        prompt_tokens / 2
    } else {
        0
    };
    Reply {
        content: reply_text(&seed, completion_tokens),
        prompt_tokens,
        cached_tokens,
        completion_tokens,
        finish_reason,
    }
}

/// Prompt tokens of a chat completion request (rule in the module docs).
pub fn prompt_tokens(request: &Value) -> u32 {
    messages(request).iter().fold(3u32, |total, m| {
        total.saturating_add(3).saturating_add(message_words(m))
    })
}

fn messages(request: &Value) -> &[Value] {
    request
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn content_parts(message: &Value) -> impl Iterator<Item = &str> {
    let parts: &[Value] = message
        .get("content")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
}

fn message_text(message: &Value) -> Cow<'_, str> {
    match message.get("content") {
        Some(Value::String(text)) => Cow::Borrowed(text),
        Some(Value::Array(_)) => Cow::Owned(content_parts(message).collect::<Vec<_>>().join(" ")),
        _ => Cow::Borrowed(""),
    }
}

fn message_words(message: &Value) -> u32 {
    match message.get("content") {
        Some(Value::String(text)) => count_words(text),
        Some(Value::Array(_)) => content_parts(message)
            .map(count_words)
            .fold(0, u32::saturating_add),
        _ => 0,
    }
}

/// `max_completion_tokens`, else `max_tokens` (the older name).
fn completion_cap(request: &Value) -> Option<u32> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|name| request.get(*name).and_then(Value::as_u64))
        .map(|cap| u32::try_from(cap).unwrap_or(u32::MAX))
}

/// Everything about one call decided up front, under the behaviour lock (shared by every
/// wire format the mock speaks).
pub(super) struct Plan {
    pub(super) latency: Duration,
    pub(super) completion_tokens: u32,
    pub(super) stream_chunks: Option<NonZeroU32>,
    pub(super) stream_chunk_delay: Duration,
    pub(super) failure: Option<Failure>,
    pub(super) key: KeyCheck,
    pub(super) model_exists: bool,
    /// `Some(max calls kept)` when recording.
    pub(super) record: Option<usize>,
}

impl Plan {
    pub(super) fn take(shared: &Shared, presented_key: Option<&str>, model: Option<&str>) -> Plan {
        let mut behaviour = shared.behaviour();
        let mut failure = (!behaviour.fail_next.is_empty()).then(|| behaviour.fail_next.remove(0));
        if failure.is_none() {
            failure = shared
                .rate_limit(behaviour.requests_per_minute)
                .map(|wait| Failure::rate_limited(wait.max(Duration::from_millis(1))));
        }
        Plan {
            latency: behaviour.latency.sample(),
            completion_tokens: behaviour.completion_tokens,
            stream_chunks: behaviour.stream_chunks,
            stream_chunk_delay: behaviour.stream_chunk_delay,
            failure,
            key: check_key(behaviour.api_key.as_deref(), presented_key),
            model_exists: behaviour.models.is_empty()
                || model.is_some_and(|m| behaviour.models.iter().any(|known| known == m)),
            record: behaviour
                .record_calls
                .then_some(behaviour.max_recorded_calls),
        }
    }
}

/// How the mock answers one chat completion call.
enum Answer {
    Error(ErrorAnswer),
    /// Hold the connection, never answer.
    Hang,
    /// Close the connection without a response.
    Cut,
    Completion(Completion),
    /// An embeddings answer ([`embeddings`]) and its prompt tokens.
    Embeddings {
        json: Vec<u8>,
        tokens: u32,
    },
    /// A Responses API answer ([`responses`]).
    Response(Box<responses::Response>),
}

pub(super) struct Completion {
    id: String,
    created: u64,
    model: String,
    reply: Reply,
    /// The reply is this call instead of text.
    tool_call: Option<ToolCall>,
    /// `None` = a JSON answer.
    stream: Option<StreamShape>,
    fault: Option<Fault>,
}

pub(super) struct StreamShape {
    include_usage: bool,
    /// Content chunks; 0 only when the reply is empty.
    chunks: u32,
    delay: Duration,
}

pub(super) enum Fault {
    /// Cut the connection after this many events.
    Break { after: u32 },
    /// Send this error event after this many events, then end the stream.
    Error { after: u32, error: ApiError },
}

impl Fault {
    fn after(&self) -> u32 {
        match self {
            Fault::Break { after } | Fault::Error { after, .. } => *after,
        }
    }
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let request = Incoming {
        method,
        uri,
        headers,
        raw_body,
    };
    handle(shared, &conn, request, answer).await
}

/// An HTTP request as received.
pub(super) struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
}

/// Every generation call in OpenAI's formats: the plan taken, the answer `decide`d, then
/// recorded and delivered.
async fn handle(
    shared: Arc<Shared>,
    conn: &Conn,
    request: Incoming,
    decide: fn(&Plan, Option<&Value>, Option<&str>) -> Answer,
) -> Response {
    let Incoming {
        method,
        uri,
        headers,
        raw_body,
    } = request;
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    let body = serde_json::from_slice::<Value>(&raw_body).ok();
    // Azure OpenAI sends its key as `api-key`.
    let presented_key = presented_key(&headers);
    let model = body.as_ref().and_then(|b| b.get("model")?.as_str());
    let plan = Plan::take(&shared, presented_key, model);
    if let Some(failure) = &plan.failure {
        tracing::debug!(seq, ?failure, "mock provider injects a failure");
    }
    let answer = decide(&plan, body.as_ref(), presented_key);

    let model = model.map(str::to_owned);
    let stream = body.as_ref().and_then(|b| b.get("stream")) == Some(&Value::Bool(true));
    let call = || {
        let mut call = RecordedCall::received(seq, received_at, method, &uri, headers, raw_body);
        call.model = model;
        call.stream = stream;
        call.body = body;
        call
    };
    deliver(shared, conn, &plan, seq, answer, call).await
}

/// The end of every OpenAI call: records it (when recording, as `call` builds it, with
/// what it is answered), waits the planned latency, then answers.
async fn deliver(
    shared: Arc<Shared>,
    conn: &Conn,
    plan: &Plan,
    seq: u64,
    answer: Answer,
    call: impl FnOnce() -> RecordedCall,
) -> Response {
    if let Some(max) = plan.record {
        let mut call = call();
        call.injected = plan.failure.clone();
        answer.describe(&mut call);
        shared.record(call, max);
    }
    if !plan.latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(plan.latency) => {}
            () = shared.stopped() => {}
        }
    }
    let progress = Progress {
        shared: Arc::clone(&shared),
        seq,
    };
    answer.respond(&shared, conn, plan.latency, progress).await
}

/// Where a stream reports how it really ended (the recorded call is the plan until then).
pub(super) struct Progress {
    pub(super) shared: Arc<Shared>,
    pub(super) seq: u64,
}

/// What comes before the body on every OpenAI call: an injected failure (a mid-stream one
/// is a 500 on a call that does not stream), then the API key.
fn refusal(
    plan: &Plan,
    body: Option<&Value>,
    stream: bool,
    presented_key: Option<&str>,
) -> Option<Answer> {
    let model = body.and_then(|b| b.get("model")?.as_str());
    match &plan.failure {
        Some(Failure::Status {
            status,
            error,
            body,
            retry_after,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(Answer::Error(ErrorAnswer {
                status,
                error: error
                    .clone()
                    .unwrap_or_else(|| canned_error(status, model, presented_key, *retry_after)),
                raw_body: body.clone(),
                retry_after: *retry_after,
            }));
        }
        Some(Failure::Timeout) => return Some(Answer::Hang),
        Some(Failure::Disconnect) => return Some(Answer::Cut),
        Some(Failure::MidStreamError { error, .. }) if !stream => {
            return Some(Answer::Error(ErrorAnswer::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                error.clone().unwrap_or_else(server_error),
            )));
        }
        Some(Failure::MidStreamBreak { .. } | Failure::MidStreamError { .. }) | None => {}
    }
    match plan.key {
        KeyCheck::Accepted => {}
        KeyCheck::Missing => {
            return Some(Answer::Error(ErrorAnswer::new(
                StatusCode::UNAUTHORIZED,
                missing_key(),
            )))
        }
        KeyCheck::Wrong => {
            return Some(Answer::Error(ErrorAnswer::new(
                StatusCode::UNAUTHORIZED,
                wrong_key(presented_key.unwrap_or_default()),
            )))
        }
    }

    None
}

/// Decide the answer: injected failure, then auth, JSON, fields, model, then the reply.
fn answer(plan: &Plan, body: Option<&Value>, presented_key: Option<&str>) -> Answer {
    let stream = body.and_then(|b| b.get("stream")) == Some(&Value::Bool(true));
    if let Some(refused) = refusal(plan, body, stream, presented_key) {
        return refused;
    }
    let Some(body) = body else {
        return Answer::Error(ErrorAnswer::new(
            StatusCode::BAD_REQUEST,
            unparseable_json(),
        ));
    };
    let request = match validate(body) {
        Ok(request) => request,
        Err(error) => return Answer::Error(ErrorAnswer::new(StatusCode::BAD_REQUEST, error)),
    };
    if !plan.model_exists {
        return Answer::Error(ErrorAnswer::new(
            StatusCode::NOT_FOUND,
            model_not_found(request.model),
        ));
    }

    let mut reply = expected_reply(body, plan.completion_tokens);
    let tool_call = forced_tool_call(body);
    if let Some(call) = &tool_call {
        reply.content = String::new();
        reply.completion_tokens = count_words(&call.arguments);
        reply.finish_reason = reply::FinishReason::ToolCalls;
    }
    let fault = match &plan.failure {
        Some(Failure::MidStreamBreak { after_chunks }) => Some(Fault::Break {
            after: *after_chunks,
        }),
        Some(Failure::MidStreamError {
            after_chunks,
            error,
        }) => Some(Fault::Error {
            after: *after_chunks,
            error: error.clone().unwrap_or_else(server_error),
        }),
        _ => None,
    };
    let stream = request.stream.then(|| {
        let words = reply.completion_tokens;
        StreamShape {
            include_usage: request.include_usage,
            // A tool call streams as two chunks: id and name, then the arguments.
            chunks: match tool_call {
                Some(_) => 2,
                None => plan.stream_chunks.map_or(words, |k| k.get().min(words)),
            },
            delay: plan.stream_chunk_delay,
        }
    });
    Answer::Completion(Completion {
        id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
        created: unix_now(),
        model: request.model.to_owned(),
        reply,
        tool_call,
        stream,
        fault,
    })
}

impl Answer {
    /// Fill in what the client gets from this answer.
    fn describe(&self, call: &mut RecordedCall) {
        match self {
            Answer::Error(error) => {
                call.status = Some(error.status.as_u16());
                if error.raw_body.is_none() {
                    call.error = Some(error.error.clone());
                }
            }
            Answer::Hang | Answer::Cut => {}
            Answer::Embeddings { tokens, .. } => {
                call.status = Some(200);
                call.prompt_tokens = *tokens;
                call.usage_reported = true;
            }
            Answer::Response(response) => response.describe(call),
            Answer::Completion(completion) => {
                let sent = completion.sent();
                call.status = Some(200);
                call.response_id = Some(completion.id.clone());
                call.prompt_tokens = completion.reply.prompt_tokens;
                call.completion_tokens = sent.words;
                let content = &completion.reply.content;
                call.content = content[..reply::words_end(content, 0, sent.words)].to_owned();
                call.finish_reason = sent.finish.then_some(completion.reply.finish_reason);
                call.usage_reported = sent.usage;
                if let Some(Fault::Error { error, .. }) = &completion.fault {
                    call.error = Some(error.clone());
                }
            }
        }
    }

    async fn respond(
        self,
        shared: &Shared,
        conn: &Conn,
        processing: Duration,
        progress: Progress,
    ) -> Response {
        match self {
            Answer::Error(error) => error.into_response(processing),
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
            Answer::Embeddings { json, .. } => {
                let mut response = json_response(json);
                common_headers(response.headers_mut(), processing);
                response
            }
            Answer::Completion(completion) => match completion.stream {
                Some(_) => completion.into_event_stream(processing, progress),
                None => completion.into_json(processing),
            },
            Answer::Response(response) => response.into_response(processing, progress),
        }
    }
}

/// What part of a completion reaches the client.
struct Sent {
    /// Words of content.
    words: u32,
    /// The finish reason (the final chunk, or the whole JSON body).
    finish: bool,
    usage: bool,
}

impl Completion {
    fn sent(&self) -> Sent {
        let words = self.reply.completion_tokens;
        let Some(stream) = &self.stream else {
            return match self.fault {
                // A cut JSON body gives the client nothing usable.
                Some(Fault::Break { .. }) => Sent {
                    words: 0,
                    finish: false,
                    usage: false,
                },
                _ => Sent {
                    words,
                    finish: true,
                    usage: true,
                },
            };
        };
        // Events: role, `chunks` content chunks, finish, then usage if asked for.
        let events = stream.chunks + 2 + u32::from(stream.include_usage);
        let events_sent = self
            .fault
            .as_ref()
            .map_or(events, |fault| fault.after().min(events));
        let chunks_sent = events_sent.saturating_sub(1).min(stream.chunks);
        Sent {
            words: words_in_chunks(chunks_sent, words, stream.chunks),
            finish: events_sent >= stream.chunks + 2,
            usage: stream.include_usage && events_sent >= stream.chunks + 3,
        }
    }

    fn into_json(self, processing: Duration) -> Response {
        match serde_json::to_vec(&self.json()) {
            Ok(json) => json_answer(
                json,
                matches!(self.fault, Some(Fault::Break { .. })),
                processing,
            ),
            Err(error) => internal_error(&error, processing),
        }
    }

    fn json(&self) -> ChatCompletionJson<'_> {
        ChatCompletionJson {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [ChoiceJson {
                index: 0,
                message: MessageJson {
                    role: "assistant",
                    content: self.tool_call.is_none().then_some(&*self.reply.content),
                    refusal: (),
                    tool_calls: self.tool_call.as_ref().map(|call| {
                        [ToolCallJson {
                            index: None,
                            id: Some(&call.id),
                            kind: Some("function"),
                            function: FunctionJson {
                                name: Some(&call.name),
                                arguments: &call.arguments,
                            },
                        }]
                    }),
                    annotations: [],
                },
                logprobs: (),
                finish_reason: finish_reason(self.reply.finish_reason),
            }],
            usage: UsageJson::new(&self.reply),
            service_tier: SERVICE_TIER,
            system_fingerprint: SYSTEM_FINGERPRINT,
        }
    }

    fn into_event_stream(self, processing: Duration, progress: Progress) -> Response {
        let events = EventStream::new(self, progress);
        let events = futures::stream::unfold(events, |mut events| async move {
            let event = events.next_event().await?;
            Some((event, events))
        });
        event_stream(Body::from_stream(events), processing)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mock::reply::FinishReason;

    #[test]
    fn prompt_tokens_count_words_plus_overhead() {
        let request = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello there"},
                                          {"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "again"}]},
            {"role": "assistant", "content": null, "tool_calls": []}
        ]});
        // 3 + (3 + 2) + (3 + 3) + (3 + 0)
        assert_eq!(prompt_tokens(&request), 17);
        let reply = expected_reply(&request, 4);
        assert_eq!(reply.content, "hello there again hello");
        assert_eq!(reply.finish_reason, FinishReason::Stop);
    }

    #[test]
    fn the_newer_cap_wins() {
        let request = json!({"messages": [{"role": "user", "content": "a b"}],
                             "max_tokens": 2, "max_completion_tokens": 3});
        let reply = expected_reply(&request, 10);
        assert_eq!(
            (reply.completion_tokens, reply.content.as_str()),
            (3, "a b a")
        );
        assert_eq!(reply.finish_reason, FinishReason::Length);
    }
}
