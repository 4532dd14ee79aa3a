//! Batch lines go through the async request path: the same validation, guardrails and
//! input moderation as `POST /v1/requests`, at batch priority, under the batch's request id
//! and deadline.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use sluice_schemas::{Priority, Topic};

use super::validate::{validate, Accepted, Dialect, Mode, PRIORITY_HEADER};
use super::Handles;
use crate::error::ApiError;
use crate::keys::Caller;

/// A validated batch line, ready to publish.
pub(crate) struct Line(Accepted);

/// Validates one line's request body (`dialect`: OpenAI's chat body or Anthropic's
/// `params`). Its own `sluice.priority` cannot lift it out of the batch class.
pub(crate) fn validate_line(
    app: &impl Handles,
    caller: &Caller,
    body: Bytes,
    dialect: Dialect,
    request_id: String,
    deadline_ms: i64,
) -> Result<Line, ApiError> {
    let mut headers = HeaderMap::new();
    headers.insert(PRIORITY_HEADER, HeaderValue::from_static("batch"));
    let mut accepted = validate(app, caller, &headers, Ok(body), Mode::Async, dialect)?;
    if accepted.webhook_url.is_some() {
        return Err(ApiError::InvalidParam {
            param: "sluice.webhook_url",
            problem: "a batch line has no webhook of its own; set the batch's",
        });
    }
    accepted.record.request_id = request_id;
    accepted.record.priority = Priority::Batch;
    accepted.record.deadline_ms = deadline_ms;
    accepted.topic = match accepted.topic {
        Topic::TeamRequests(_, team) => Topic::TeamRequests(Priority::Batch, team),
        _ => Topic::Requests(Priority::Batch),
    };
    Ok(Line(accepted))
}

impl Line {
    /// The team's input moderation, when its policy has one.
    pub(crate) async fn moderate(&self) -> Result<(), ApiError> {
        self.0.policy.moderate_input(&self.0.moderation_input).await
    }

    /// Publishes the line (and its `accepted` audit event); returns once Kafka acked it.
    pub(crate) async fn publish(&self, app: &impl Handles) -> Result<(), ApiError> {
        super::publish(app, &self.0).await
    }
}
