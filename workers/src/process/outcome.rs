//! How a request ended, before it becomes events, and the failures that need no answer.

use sluice_schemas::openai::{CompletionUsage, ErrorBody};
use sluice_schemas::{Attempt, Status};

use super::processor::Lane;
use crate::config::Deployment;
use crate::error::ProviderError;

/// How a request ended, before it becomes events.
pub(super) struct Outcome {
    pub status: Status,
    pub http_status: i32,
    pub body: String,
    pub error_kind: Option<&'static str>,
    pub provider: String,
    pub deployment: String,
    /// The model of the deployment that answered (its [[prices]] entry, else the
    /// deployment's catalogue price, bills the request).
    pub served_model: String,
    pub attempts: i32,
    /// Deployments passed over (failed, or skipped with an open circuit) before the last.
    pub fallbacks: i32,
    pub usage: CompletionUsage,
    /// Usage is a tiktoken estimate: the provider reported none.
    pub estimated: bool,
    pub started_at_ms: i64,
    /// Every provider call made for it, ended (crate::attempts).
    pub attempt_log: Vec<Attempt>,
    /// Why its chain was in the order it was (process::route); `None` when no chain was
    /// chosen.
    pub routing_reason: Option<String>,
    /// Processing hooks' decisions (crate::hooks), for the audit row's `policy`.
    pub decisions: Vec<String>,
    /// The producer of its reply: a stream's end goes where its chunks went.
    pub lane: Lane,
}

pub(super) fn clamp(n: u32) -> i32 {
    n.min(i32::MAX as u32) as i32
}

pub(super) fn failure(
    status: Status,
    http_status: i32,
    body: ErrorBody,
    kind: &'static str,
    started_at_ms: i64,
) -> Outcome {
    Outcome {
        status,
        http_status,
        body: body.to_json(),
        error_kind: Some(kind),
        provider: String::new(),
        deployment: String::new(),
        served_model: String::new(),
        attempts: 0,
        fallbacks: 0,
        usage: CompletionUsage::default(),
        estimated: false,
        started_at_ms,
        attempt_log: Vec::new(),
        routing_reason: None,
        decisions: Vec::new(),
        lane: Lane::Batched,
    }
}

pub(super) fn provider_failure(
    error: ProviderError,
    deployment: &Deployment,
    attempts: i32,
    started_at_ms: i64,
) -> Outcome {
    let kind = error.kind();
    let (http_status, body) = match error {
        // The provider's own error body is already in the caller's (OpenAI) shape.
        ProviderError::Status { status, body, .. }
            if serde_json::from_str::<ErrorBody>(&body).is_ok() =>
        {
            (status as i32, body)
        }
        ProviderError::Status { status, .. } => (
            status as i32,
            ErrorBody::new(
                "upstream_error",
                Some(kind),
                format!("The provider answered HTTP {status}."),
            )
            .to_json(),
        ),
        ProviderError::Unsupported(why) => (
            400,
            ErrorBody::new("invalid_request_error", Some("unsupported_model"), why).to_json(),
        ),
        ProviderError::Timeout(_) => (
            504,
            ErrorBody::new(
                "timeout",
                Some(kind),
                "The provider did not answer in time.",
            )
            .to_json(),
        ),
        other => (
            502,
            ErrorBody::new("upstream_error", Some(kind), other.to_string()).to_json(),
        ),
    };
    Outcome {
        status: Status::Failed,
        http_status,
        body,
        error_kind: Some(kind),
        provider: deployment.provider.kind().into(),
        deployment: deployment.name.clone(),
        served_model: deployment.model.clone(),
        attempts,
        fallbacks: 0,
        usage: CompletionUsage::default(),
        estimated: false,
        started_at_ms,
        attempt_log: Vec::new(),
        routing_reason: None,
        decisions: Vec::new(),
        lane: Lane::Batched,
    }
}

/// The caller cancelled the request before it started: nothing to bill. The ingress shows
/// it as `cancelled` (http 499 with this code).
pub(super) fn cancelled_by_caller(started_at_ms: i64) -> Outcome {
    failure(
        Status::Failed,
        499,
        ErrorBody::new(
            "invalid_request_error",
            Some(sluice_schemas::REQUEST_CANCELLED),
            "The request was cancelled before it reached a provider.",
        ),
        sluice_schemas::REQUEST_CANCELLED,
        started_at_ms,
    )
}

/// The caller went away before any provider answered: nothing to bill.
pub(super) fn caller_gone(started_at_ms: i64) -> Outcome {
    failure(
        Status::Failed,
        499,
        ErrorBody::new(
            "invalid_request_error",
            Some("client_disconnected"),
            "The caller disconnected before the request reached a provider.",
        ),
        "client_disconnected",
        started_at_ms,
    )
}
