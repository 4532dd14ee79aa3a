//! Anthropic's Messages API at `POST /v1/messages`, so Anthropic SDK users can point at
//! Sluice too. The body is parsed once as an Anthropic request and translated to the
//! internal OpenAI chat request (`sluice_dialect::anthropic`), which then takes the same
//! path as `/v1/chat/completions` (auth, validation, Kafka, any model's deployments); the
//! result, stream chunks and errors are translated back to Anthropic's message, event and
//! error shapes on the way out. This module holds the HTTP side of that.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sluice_dialect::anthropic::{error, request, response, stream, MessagesRequest, RequestError};
use sluice_schemas::openai::ChatCompletionRequest;
use sluice_schemas::{Result as ResultRecord, Status};

use crate::admission::Dialect;
use crate::error::ApiError;
use crate::http::REQUEST_ID_HEADER;
use crate::state::AppState;

/// `POST /v1/messages`.
pub async fn messages(
    State(app): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    crate::http::chat::sync_call(app, headers, body, Dialect::Anthropic).await
}

/// An Anthropic Messages request body as the internal OpenAI chat request: parsed once,
/// then translated.
pub fn to_openai(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let invalid = |e| match e {
        RequestError::InvalidJson(e) => ApiError::InvalidJson(e),
        RequestError::InvalidParam { param, problem } => ApiError::InvalidParam { param, problem },
    };
    request::to_openai(MessagesRequest::parse(body).map_err(invalid)?).map_err(invalid)
}

/// An ingress error in Anthropic's shape, with the status and headers it has on the
/// OpenAI endpoint.
pub fn error_response(error: ApiError) -> Response {
    let status = error.status();
    let message = error.to_string();
    // The OpenAI rendering logs server errors and sets Retry-After; keep both.
    let openai = error.into_response();
    let retry_after = openai.headers().get(header::RETRY_AFTER).cloned();
    let should_retry = openai.headers().get("x-should-retry").cloned();
    let mut response = (
        status,
        axum::Json(error::for_status(status.as_u16(), &message)),
    )
        .into_response();
    if let Some(v) = retry_after {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(v) = should_retry {
        response.headers_mut().insert("x-should-retry", v);
    }
    response
}

/// A worker's result as Anthropic's answer: the message, or the error in Anthropic's shape.
pub fn result_response(result: &ResultRecord) -> Response {
    let status = StatusCode::from_u16(result.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_str(&result.body).unwrap_or(Value::Null);
    let json = match result.status {
        Status::Completed => response::from_openai(&body, &result.model),
        Status::Failed | Status::Expired => error::from_openai(status.as_u16(), &body),
    };
    let mut response = (status, axum::Json(json)).into_response();
    if let Ok(v) = HeaderValue::from_str(&result.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Turns the OpenAI chunks of one stream into Anthropic's server-sent events.
pub struct StreamWriter(stream::FromOpenAi);

fn events(events: Vec<stream::Event>) -> Vec<Event> {
    events
        .into_iter()
        .map(|e| Event::default().event(e.name).data(e.data))
        .collect()
}

impl StreamWriter {
    pub fn new(model: &str, prompt_estimate: i32) -> StreamWriter {
        StreamWriter(stream::FromOpenAi::new(model, prompt_estimate))
    }

    /// One OpenAI chunk (JSON text).
    pub fn chunk(&mut self, data: &str) -> Vec<Event> {
        events(self.0.chunk(data))
    }

    /// The stream completed.
    pub fn done(&mut self) -> Vec<Event> {
        events(self.0.done())
    }

    /// The stream failed; `body` is an OpenAI error body.
    pub fn error(&mut self, body: &str) -> Vec<Event> {
        events(self.0.error(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_errors_are_the_ingress_errors() {
        let err = to_openai(br#"{"model": "m", "messages": []}"#).unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::InvalidParam {
                    param: "max_tokens",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "Invalid value for `max_tokens`: max_tokens is required: an integer of at least 1"
        );
        let err = to_openai(b"[1]").unwrap_err();
        assert!(matches!(err, ApiError::InvalidJson(_)), "{err}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_request_is_parsed_once_into_the_openai_request() {
        let request = to_openai(
            br#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                 "stream": true, "sluice": {"priority": "batch"}}"#,
        )
        .unwrap();
        assert_eq!(request.model, "m");
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.stream, Some(true));
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.extra["sluice"]["priority"], "batch");
    }
}
