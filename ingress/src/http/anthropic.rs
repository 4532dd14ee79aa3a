//! Anthropic's Messages API at `POST /v1/messages`, so Anthropic SDK users can point at
//! Sluice too. The body is parsed once as an Anthropic request and translated to the
//! internal OpenAI chat request (`sluice_dialect::anthropic`), which then takes the same
//! path as `/v1/chat/completions` (auth, validation, Kafka, any model's deployments); the
//! result, stream chunks and errors are translated back to Anthropic's message, event and
//! error shapes on the way out. This module holds the HTTP side of that.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use sluice_dialect::anthropic::{error, response, stream};
use sluice_schemas::{Result as ResultRecord, Status};

use crate::admission::{checked, Dialect, Mode};
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

/// `POST /v1/messages/count_tokens`: `{"input_tokens": n}`, the prompt tokens Sluice counts
/// for the body exactly as it counts a `/v1/messages` call's for budgets and throttling
/// (after templates, decorators and PII masking, with the model's tokenizer: tiktoken's,
/// an estimate for a model that is not OpenAI's). Checked as that call would be (key, model,
/// guardrails; refusals audited), answered by the ingress: no provider call, no Kafka, no cost.
pub async fn count_tokens(
    State(app): State<std::sync::Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match app.keys.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_anthropic_response(),
    };
    if let Err(e) = app.keys.check_rate(&caller) {
        return e.into_anthropic_response();
    }
    match checked(
        &app,
        &caller,
        &headers,
        body,
        Mode::Count,
        Dialect::Anthropic,
    )
    .await
    {
        Ok(counted) => {
            axum::Json(json!({"input_tokens": counted.record.prompt_tokens})).into_response()
        }
        Err(e) => super::chat::reject(&app, &caller, e, Dialect::Anthropic),
    }
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

/// Named server-sent events (Anthropic's, and the Responses API's, which share the type).
pub(super) fn events(events: Vec<stream::Event>) -> Vec<Event> {
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
