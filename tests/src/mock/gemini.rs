//! Google's Gemini API as generativelanguage.googleapis.com speaks it:
//! `POST /v1beta/models/{model}:generateContent` and
//! `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`, the key in `x-goog-api-key`
//! (or `?key=`), and Google's error shape `{"error": {"code", "message", "status"}}`; a 429
//! carries a `RetryInfo` detail with `retryDelay` (Google sends no `Retry-After`).
//!
//! Same machinery as the OpenAI format ([`super::behaviour`], [`super::reply`]). Tokens:
//! - prompt tokens = words of `systemInstruction` + words of every content's text parts.
//! - candidates tokens = `min(Behaviour::completion_tokens,
//!   generationConfig.maxOutputTokens)`; finish reason `MAX_TOKENS` when the cap cut it.
//!
//! A stream is one `data:` event per chunk, each a whole `GenerateContentResponse`; the
//! last carries `finishReason` and the full `usageMetadata`; then the connection closes
//! (no end marker). A mid-stream fault counts chunks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::CONTENT_TYPE;
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

/// Gemini's routes: `{model}:{method}` is one path segment.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v1beta/models/{model_method}", post(generate))
}

fn parts_text(content: &Value) -> String {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What the mock answers to a well-formed `request` when configured with
/// `completion_tokens` (rules in the module docs).
pub fn expected_reply(request: &Value, completion_tokens: u32) -> Reply {
    let contents = request
        .get("contents")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let seed = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str).unwrap_or("user") == "user")
        .map(parts_text)
        .unwrap_or_default();
    let system = request
        .get("systemInstruction")
        .or_else(|| request.get("system_instruction"))
        .map(parts_text)
        .unwrap_or_default();
    let prompt = contents.iter().fold(count_words(&system), |n, c| {
        n.saturating_add(count_words(&parts_text(c)))
    });
    let cap = request
        .get("generationConfig")
        .and_then(|g| g.get("maxOutputTokens"))
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

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "STOP",
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ToolCalls => "STOP",
    }
}

/// Google's canonical status for an HTTP status.
pub fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        500.. => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    }
}

fn error_message(status: u16) -> &'static str {
    match status {
        429 => "You exceeded your current quota, please check your plan and billing details.",
        503 => "The model is overloaded. Please try again later.",
        500.. => "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        _ => "Request contains an invalid argument.",
    }
}

struct ErrorAnswer {
    code: u16,
    status: String,
    message: String,
    html: Option<String>,
    retry_after: Option<Duration>,
}

impl ErrorAnswer {
    fn new(code: u16, message: impl Into<String>) -> ErrorAnswer {
        ErrorAnswer {
            code,
            status: status_name(code).to_string(),
            message: message.into(),
            html: None,
            retry_after: None,
        }
    }

    fn json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message, "status": self.status});
        if let Some(delay) = self.retry_after {
            error["details"] = json!([{
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": format!("{}s", delay.as_secs_f64()),
            }]);
        }
        json!({"error": error})
    }

    fn into_response(self) -> Response {
        let mut response = match &self.html {
            Some(html) => {
                let mut r = Response::new(Body::from(html.clone()));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                r
            }
            None => json_response(&self.json()),
        };
        *response.status_mut() =
            StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    }
}

fn json_response(json: &Value) -> Response {
    let mut response = Response::new(Body::from(json.to_string()));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

enum Answer {
    Error(ErrorAnswer),
    Hang,
    Cut,
    Content {
        id: String,
        model: String,
        reply: Reply,
        stream: bool,
    },
    /// An `embedContent` or `batchEmbedContents` answer and its tokens.
    Embeddings {
        json: Value,
        tokens: u32,
    },
}

fn presented_key<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get("x-goog-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            uri.query()?
                .split('&')
                .find_map(|kv| kv.strip_prefix("key="))
        })
}

fn answer(plan: &Plan, model: &str, method: &str, uri: &Uri, body: Option<&Value>) -> Answer {
    match &plan.failure {
        Some(Failure::Status {
            status,
            error,
            body,
            retry_after,
        }) => {
            let mut answer = ErrorAnswer::new(
                *status,
                error
                    .as_ref()
                    .map_or(error_message(*status).to_string(), |e| e.message.clone()),
            );
            if let Some(e) = error {
                answer.status = e.kind.clone();
            }
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
                403,
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
            ))
        }
        KeyCheck::Wrong => {
            return Answer::Error(ErrorAnswer::new(
                400,
                "API key not valid. Please pass a valid API key.",
            ))
        }
    }
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "embedContent" | "batchEmbedContents" => return embed(plan, model, method, body),
        _ => return Answer::Error(ErrorAnswer::new(404, format!("Method not found: {method}"))),
    };
    if stream
        && uri
            .query()
            .is_none_or(|q| !q.split('&').any(|kv| kv == "alt=sse"))
    {
        // Without alt=sse Google streams a JSON array; the mock speaks only SSE.
        return Answer::Error(ErrorAnswer::new(
            400,
            "The mock streams server-sent events only: add ?alt=sse.",
        ));
    }
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Answer::Error(ErrorAnswer::new(400, "Invalid JSON payload received."));
    };
    let has_contents = body
        .get("contents")
        .and_then(Value::as_array)
        .is_some_and(|c| !c.is_empty());
    if !has_contents {
        return Answer::Error(ErrorAnswer::new(
            400,
            "* GenerateContentRequest.contents: contents is not specified\n",
        ));
    }
    if !plan.model_exists {
        return Answer::Error(ErrorAnswer::new(
            404,
            format!("models/{model} is not found for API version v1beta, or is not supported for generateContent."),
        ));
    }
    if !stream {
        if let Some(Failure::MidStreamError { error, .. }) = &plan.failure {
            let mut answer = ErrorAnswer::new(
                500,
                error
                    .as_ref()
                    .map_or(error_message(500).to_string(), |e| e.message.clone()),
            );
            if let Some(e) = error {
                answer.status = e.kind.clone();
            }
            return Answer::Error(answer);
        }
    }
    Answer::Content {
        id: uuid::Uuid::new_v4().simple().to_string(),
        model: model.to_string(),
        reply: expected_reply(body, plan.completion_tokens),
        stream,
    }
}

/// `embedContent` and `batchEmbedContents` (see [`super::embeddings`]).
fn embed(plan: &Plan, model: &str, method: &str, body: Option<&Value>) -> Answer {
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Answer::Error(ErrorAnswer::new(400, "Invalid JSON payload received."));
    };
    if !plan.model_exists {
        return Answer::Error(ErrorAnswer::new(
            404,
            format!("models/{model} is not found for API version v1beta, or is not supported for {method}."),
        ));
    }
    match super::embeddings::gemini_answer(method, model, body) {
        Ok((json, tokens)) => Answer::Embeddings { json, tokens },
        Err(message) => Answer::Error(ErrorAnswer::new(400, message)),
    }
}

fn usage(reply: &Reply, completion: Option<u32>) -> Value {
    match completion {
        Some(c) => json!({"promptTokenCount": reply.prompt_tokens, "candidatesTokenCount": c,
                          "totalTokenCount": reply.prompt_tokens.saturating_add(c)}),
        None => {
            json!({"promptTokenCount": reply.prompt_tokens, "totalTokenCount": reply.prompt_tokens})
        }
    }
}

fn response_json(id: &str, model: &str, text: &str, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate =
        json!({"content": {"parts": [{"text": text}], "role": "model"}, "index": 0});
    if let Some(finish) = finish {
        candidate["finishReason"] = json!(finish);
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": id})
}

async fn generate(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(model_method): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    let (model, api_method) = model_method
        .split_once(':')
        .unwrap_or((model_method.as_str(), ""));
    let body = serde_json::from_slice::<Value>(&raw_body).ok();
    let plan = Plan::take(&shared, presented_key(&headers, &uri), Some(model));
    let answer = answer(&plan, model, api_method, &uri, body.as_ref());
    let stream_plan = match &answer {
        Answer::Content {
            id,
            model,
            reply,
            stream: true,
        } => Some(StreamPlan::new(
            id,
            model,
            reply,
            plan.failure.as_ref(),
            &plan,
        )),
        _ => None,
    };

    if let Some(max) = plan.record {
        let mut call = RecordedCall::received(seq, received_at, method, &uri, headers, raw_body);
        call.model = Some(model.to_owned());
        call.stream = api_method == "streamGenerateContent";
        call.body = body.clone();
        call.injected = plan.failure.clone();
        match &answer {
            Answer::Error(e) => {
                call.status = Some(e.code);
                if e.html.is_none() {
                    call.error = Some(ApiError::new(&e.status, None, e.message.clone()));
                }
            }
            Answer::Hang | Answer::Cut => {}
            Answer::Embeddings { tokens, .. } => {
                call.status = Some(200);
                call.prompt_tokens = *tokens;
                call.usage_reported = true;
            }
            Answer::Content { id, reply, .. } => {
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
        Answer::Embeddings { json, .. } => json_response(&json),
        Answer::Content {
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
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
                response
            }
            None => json_response(&response_json(
                &id,
                &model,
                &reply.content,
                Some(finish_reason(reply.finish_reason)),
                usage(&reply, Some(reply.completion_tokens)),
            )),
        },
    }
}

/// A stream's chunks, and what of it reaches the client.
struct StreamPlan {
    events: Vec<Planned>,
    fault: Option<sse::Fault>,
    words_sent: u32,
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
        // At least one chunk: the last one carries the finish reason.
        let chunks = plan
            .stream_chunks
            .map_or(words, |k| k.get().min(words))
            .max(1);
        let mut events = Vec::new();
        let mut offset = 0;
        for j in 0..chunks {
            let in_chunk =
                words_in_chunks(j + 1, words, chunks) - words_in_chunks(j, words, chunks);
            let start = offset;
            offset = reply::words_end(&reply.content, start, in_chunk);
            let last = j + 1 == chunks;
            let data = response_json(
                id,
                model,
                &reply.content[start..offset],
                last.then_some(finish_reason(reply.finish_reason)),
                usage(reply, last.then_some(words)),
            );
            events.push(Planned {
                bytes: sse::event(None, &data, true),
                content: true,
            });
        }
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
                let after = (*after_chunks).min(total.saturating_sub(1));
                let mut answer = ErrorAnswer::new(
                    503,
                    error
                        .as_ref()
                        .map_or(error_message(503).to_string(), |e| e.message.clone()),
                );
                if let Some(e) = error {
                    answer.status = e.kind.clone();
                }
                let api = ApiError::new(&answer.status, None, answer.message.clone());
                let event = sse::event(None, &answer.json(), true);
                (Some(sse::Fault::Error { after, event }), Some(api))
            }
            _ => (None, None),
        };
        let sent = fault.as_ref().map_or(total, |f| f.after().min(total));
        StreamPlan {
            events,
            fault,
            words_sent: words_in_chunks(sent, words, chunks),
            finished: sent >= total,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use crate::mock::{Behaviour, Failure, MockProvider};

    fn request() -> Value {
        json!({"systemInstruction": {"parts": [{"text": "You are a cat."}]},
               "contents": [{"role": "user", "parts": [{"text": "Hello there"}]}],
               "generationConfig": {"maxOutputTokens": 800}})
    }

    async fn post(mock: &MockProvider, method: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!(
                "{}/models/gemini-2.0-flash:{method}",
                mock.gemini_base_url()
            ))
            .header("x-goog-api-key", "AIza-test")
            .json(&request())
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn generate_content_in_geminis_shape() {
        let mock = MockProvider::start(Behaviour {
            completion_tokens: 3,
            api_key: Some("AIza-test".into()),
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let body: Value = post(&mock, "generateContent").await.json().await.unwrap();
        assert_eq!(
            body["candidates"],
            json!([{"content": {"parts": [{"text": "Hello there Hello"}], "role": "model"},
                    "finishReason": "STOP", "index": 0}])
        );
        // prompt: "You are a cat." (4) + "Hello there" (2).
        assert_eq!(
            body["usageMetadata"],
            json!({"promptTokenCount": 6, "candidatesTokenCount": 3, "totalTokenCount": 9})
        );
        assert_eq!(body["modelVersion"], "gemini-2.0-flash");
        assert_eq!(mock.calls()[0].model.as_deref(), Some("gemini-2.0-flash"));
    }

    #[tokio::test]
    async fn stream_generate_content_as_sse() {
        let mock = MockProvider::start(Behaviour {
            completion_tokens: 3,
            ..Behaviour::default()
        })
        .await
        .unwrap();
        let text = post(&mock, "streamGenerateContent?alt=sse")
            .await
            .text()
            .await
            .unwrap();
        let chunks: Vec<Value> = text
            .split("\r\n\r\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks.len(), 3);
        let words: String = chunks
            .iter()
            .map(|c| {
                c["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(words, "Hello there Hello");
        assert!(chunks[1]["candidates"][0].get("finishReason").is_none());
        assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(chunks[2]["usageMetadata"]["candidatesTokenCount"], 3);
    }

    #[tokio::test]
    async fn errors_in_googles_shape_with_retry_info() {
        let mock = MockProvider::start(Behaviour::default()).await.unwrap();
        mock.fail_next([Failure::rate_limited(Duration::from_secs(7))]);
        let response = post(&mock, "generateContent").await;
        assert_eq!(response.status(), 429);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["code"], 429);
        assert_eq!(body["error"]["details"][0]["retryDelay"], "7s");
        let response = reqwest::Client::new()
            .post(format!(
                "{}/models/m:generateContent",
                mock.gemini_base_url()
            ))
            .json(&json!({"contents": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
}
