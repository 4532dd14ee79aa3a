//! Every way a request can fail, mapped once to OpenAI's error shape.

use std::path::PathBuf;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rdkafka::error::KafkaError;
use sluice_dialect::anthropic::RequestError;
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::CodecError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("invalid configuration")]
    Invalid(#[source] Box<figment::Error>),
    #[error("invalid configuration: `{field}` {problem}")]
    Field {
        field: String,
        problem: &'static str,
    },
}

/// Why the moderation classifier gave no verdict.
#[derive(Debug, Error)]
pub enum ModerationError {
    #[error("the moderation classifier did not answer in time")]
    Timeout,
    #[error("the moderation classifier answered HTTP {0}")]
    Status(u16),
    #[error("the moderation classifier could not be reached")]
    Transport(#[source] reqwest::Error),
    #[error("the moderation classifier's answer is not a moderation result")]
    Invalid(#[source] serde_json::Error),
    #[error("the moderation classifier's answer has no results")]
    NoResults,
}

impl ModerationError {
    pub fn from_reqwest(error: reqwest::Error) -> ModerationError {
        if error.is_timeout() {
            ModerationError::Timeout
        } else {
            ModerationError::Transport(error)
        }
    }
}

/// A spend refusal worded by the budget room (`budget::Exceeded`): this module maps it to
/// 429 `budget_exceeded` without naming the room.
pub trait SpendRefusal: std::error::Error + Send + Sync {
    /// The `policy` of the `rejected` audit event.
    fn audit_policy(&self) -> String;
    /// Spent plus this request's cost stays within the limit: only reservations in flight
    /// refused it, so a batch line may wait for them to settle.
    fn fits_once_settled(&self) -> bool;
}

/// Errors of the HTTP API. Each maps to one status and OpenAI error type/code.
#[derive(Debug, Error)]
pub enum ApiError {
    #[error("Missing bearer authentication in header")]
    MissingKey,
    #[error("Incorrect API key provided")]
    InvalidKey,
    #[error("This API key has been revoked")]
    KeyRevoked,
    #[error("This API key has expired")]
    KeyExpired,
    #[error("This API key is not allowed to use the model `{0}`")]
    ModelNotAllowed(String),
    #[error("The admin API is disabled: no admin key is configured (`[admin] key_sha256` or SLUICE_ADMIN_KEY_SHA256)")]
    AdminDisabled,
    #[error(
        "Missing or incorrect admin key: the admin API takes `Authorization: Bearer <admin key>`"
    )]
    InvalidAdminKey,
    #[error("No API key with id `{0}`")]
    KeyNotFound(String),
    #[error("The API key `{id}` cannot be changed: {reason}")]
    KeyNotChangeable { id: String, reason: &'static str },
    #[error("Unknown parameter `{0}`")]
    UnknownParam(String),
    /// `n` over its cap (`billing::Refusal::TooManyChoices`).
    #[error("Invalid value for `n`: expected an integer from 1 to {max}")]
    TooManyChoices { max: u32 },
    /// A field billed at prices Sluice does not know (`billing::Refusal::Field`).
    #[error("Unsupported parameter: {0}")]
    UnsupportedField(sluice_schemas::billable::Refused),
    #[error("Invalid value for `allowed_models`: the model `{0}` is not configured")]
    UnknownAllowedModel(String),
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("Request body must be JSON (Content-Type: application/json)")]
    NotJson,
    #[error("Request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// Larger than what Kafka accepts: final, never retried (docs/security.md).
    #[error("The request is {size} bytes once encoded for the queue, more than the {limit} bytes it accepts; nothing was accepted, shorten the request")]
    MessageTooLarge { size: usize, limit: usize },
    /// The broker refused it as too large (its topic's `max.message.bytes` is smaller).
    #[error("The request is {size} bytes once encoded for the queue, more than its topic accepts; nothing was accepted, shorten the request")]
    TopicRefusedSize { size: usize },
    #[error("'messages' must contain at least one message")]
    EmptyMessages,
    #[error("'model' must not be empty")]
    EmptyModel,
    #[error("The model `{0}` does not exist or you do not have access to it")]
    UnknownModel(String),
    #[error("Invalid priority `{0}`: expected interactive, standard or batch")]
    InvalidPriority(String),
    #[error("Invalid timeout `{0}`: expected a positive number of milliseconds up to the configured maximum")]
    InvalidTimeout(String),
    #[error("Invalid value for `{param}`: {problem}")]
    InvalidParam {
        param: &'static str,
        problem: &'static str,
    },
    #[error("Invalid value for `sluice.webhook_url`: {0}")]
    WebhookRefused(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Its message is the budget room's (`budget::Exceeded`'s `Display`).
    #[error("{0}")]
    BudgetExceeded(Box<dyn SpendRefusal>),
    #[error("Rate limit reached for this API key; retry after {} ms", retry_after.as_millis())]
    RateLimited { retry_after: std::time::Duration },
    #[error("No request with id `{0}`")]
    RequestNotFound(String),
    #[error("No replay with id `{0}`")]
    ReplayNotFound(String),
    #[error("Team `{0}` may not be replayed: its policy forbids it (`[replay] forbidden_teams`, or an `[audit]` content policy of `none`)")]
    ReplayForbidden(String),
    #[error("{max} replays are running already (`[replay] max_running`); retry when one ends")]
    ReplaysBusy { max: usize },
    #[error("The request queue is unavailable; nothing was accepted, retry later")]
    QueueUnavailable(#[source] KafkaError),
    #[error("The results store is unavailable; retry later")]
    StoreUnavailable(#[source] clickhouse::error::Error),
    #[error("Timed out after {0} ms waiting for the result of request {1}; it is still being processed and can be fetched at GET /v1/requests/{1}")]
    SyncTimeout(u128, String),
    #[error("Internal error encoding the request")]
    Encode(#[source] CodecError),
    #[error("Internal error while checking the request")]
    Internal(#[source] tokio::task::JoinError),
    #[error("Internal error: the ingress is shutting down")]
    ShuttingDown,
    #[error("The request body was not received within {ms} ms")]
    BodyTimeout { ms: u128 },
    #[error("Request headers exceed the limit of {count} headers or {bytes} bytes")]
    HeadersTooLarge { count: usize, bytes: usize },
    #[error("The request was blocked by guardrail rule `{rule}`")]
    PromptBlocked { rule: String },
    /// `categories` by name (`card`), `described` in words (`a payment card number`).
    #[error("The request contains {}, which this team's policy does not allow to leave the gateway (category: {})", .described.join(" and "), .categories.join(", "))]
    PiiBlocked {
        categories: Vec<&'static str>,
        described: Vec<&'static str>,
    },
    #[error("The request was flagged by content moderation{}", flagged_list(.categories))]
    ContentFlagged { categories: Vec<String> },
    #[error("The response was withheld: it was flagged by content moderation{}", flagged_list(.categories))]
    OutputFlagged { categories: Vec<String> },
    #[error("Content moderation is unavailable and this team's policy requires it; retry later")]
    ModerationUnavailable(#[source] ModerationError),
    #[error("Template `{0}` does not exist (or is not available to this key's team)")]
    TemplateNotFound(String),
    #[error("Template `{template}` needs the variable `{variable}` in sluice.variables")]
    TemplateVariableMissing { template: String, variable: String },
    #[error("Template `{template}` has no variable `{variable}`")]
    TemplateVariableUnknown { template: String, variable: String },
    #[error("Template variable `{0}` must be a string, number or boolean")]
    TemplateVariableInvalid(String),
    #[error("Invalid Idempotency-Key: {0}")]
    IdempotencyKeyInvalid(&'static str),
    #[error("This gateway remembers no idempotency keys (no `[idempotency] redis_url` is configured); send the request without Idempotency-Key")]
    IdempotencyDisabled,
    #[error("This Idempotency-Key was already used for a different request (another body, endpoint, priority or timeout) within the last {window_h} h; use a new key for a new request")]
    IdempotencyKeyReused { window_h: u64 },
    #[error("A request with this Idempotency-Key (request {0}) is still in progress; retry later, or fetch its result at GET /v1/requests/{0}")]
    IdempotencyInProgress(String),
    #[error("The idempotency-key store is unavailable, so this keyed request was not accepted; retry later")]
    IdempotencyUnavailable(String),
}

fn flagged_list(categories: &[String]) -> String {
    if categories.is_empty() {
        String::new()
    } else {
        format!(" (categories: {})", categories.join(", "))
    }
}

impl ApiError {
    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    ) {
        use ApiError::*;
        match self {
            MissingKey | InvalidKey | KeyRevoked | KeyExpired | InvalidAdminKey => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            ModelNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("model_not_allowed"),
                Some("model"),
            ),
            AdminDisabled => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("admin_api_disabled"),
                None,
            ),
            KeyNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("key_not_found"),
                None,
            ),
            KeyNotChangeable { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("key_not_changeable"),
                None,
            ),
            // The parameter's name is set in `body`, it is not static.
            UnknownParam(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("unknown_parameter"),
                None,
            ),
            TooManyChoices { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("n"),
            ),
            // The parameter's name is set in `body`, it is not static.
            UnsupportedField(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("unsupported_parameter"),
                None,
            ),
            UnknownAllowedModel(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("model_not_found"),
                Some("allowed_models"),
            ),
            InvalidJson(_) | NotJson => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_json"),
                None,
            ),
            BodyTooLarge { .. } | MessageTooLarge { .. } | TopicRefusedSize { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                None,
            ),
            EmptyMessages => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("messages"),
            ),
            EmptyModel => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("model"),
            ),
            UnknownModel(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model"),
            ),
            InvalidPriority(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("priority"),
            ),
            InvalidTimeout(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("timeout_ms"),
            ),
            InvalidParam { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some(param),
            ),
            WebhookRefused(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("sluice.webhook_url"),
            ),
            BudgetExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("budget_exceeded"),
                None,
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                None,
            ),
            RequestNotFound(_) | ReplayNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
                None,
            ),
            ReplayForbidden(_) => (
                StatusCode::FORBIDDEN,
                "permission_error",
                Some("replay_forbidden"),
                Some("team"),
            ),
            ReplaysBusy { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("too_many_replays"),
                None,
            ),
            QueueUnavailable(_) | StoreUnavailable(_) | ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("service_unavailable"),
                None,
            ),
            SyncTimeout(..) => (
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                Some("result_timeout"),
                None,
            ),
            Encode(_) | Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                None,
                None,
            ),
            BodyTimeout { .. } => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some("request_timeout"),
                None,
            ),
            HeadersTooLarge { .. } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request_error",
                Some("headers_too_large"),
                None,
            ),
            PromptBlocked { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("prompt_blocked"),
                Some("messages"),
            ),
            PiiBlocked { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("pii_detected"),
                Some("messages"),
            ),
            ContentFlagged { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("content_flagged"),
                Some("messages"),
            ),
            OutputFlagged { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                Some("output_flagged"),
                None,
            ),
            ModerationUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("moderation_unavailable"),
                None,
            ),
            TemplateNotFound(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("template_not_found"),
                Some("sluice.template"),
            ),
            TemplateVariableMissing { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("template_variable_missing"),
                Some("sluice.variables"),
            ),
            TemplateVariableUnknown { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("template_variable_unknown"),
                Some("sluice.variables"),
            ),
            TemplateVariableInvalid(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_value"),
                Some("sluice.variables"),
            ),
            IdempotencyKeyInvalid(_) | IdempotencyDisabled => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("invalid_idempotency_key"),
                None,
            ),
            IdempotencyKeyReused { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request_error",
                Some("idempotency_key_reused"),
                None,
            ),
            IdempotencyInProgress(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("idempotency_key_in_use"),
                None,
            ),
            IdempotencyUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Some("idempotency_store_unavailable"),
                None,
            ),
        }
    }

    /// The `reason` of the audit row for a refused request: the guardrail rule that
    /// matched (`deny.<id>`, `injection.<id>`, `pii.<category>`, `moderation.input`, ...),
    /// else the error code.
    pub fn audit_reason(&self) -> String {
        match self {
            ApiError::PromptBlocked { rule } => rule.clone(),
            ApiError::PiiBlocked { categories, .. } => categories
                .iter()
                .map(|c| format!("pii.{c}"))
                .collect::<Vec<_>>()
                .join(","),
            ApiError::ContentFlagged { .. } => "moderation.input".into(),
            ApiError::OutputFlagged { .. } => "moderation.output".into(),
            ApiError::ModerationUnavailable(_) => "moderation.unavailable".into(),
            _ => self.parts().2.unwrap_or_default().to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn body(&self) -> ErrorBody {
        let (_, kind, code, param) = self.parts();
        let mut body = ErrorBody::new(kind, code, self.to_string());
        if let Some(param) = param {
            body = body.with_param(param);
        }
        if let ApiError::UnknownParam(name) = self {
            body = body.with_param(name);
        }
        if let ApiError::UnsupportedField(refused) = self {
            body = body.with_param(&refused.param);
        }
        body
    }
}

/// An Anthropic body that does not parse or translate is refused as any invalid body is.
impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> ApiError {
        match e {
            RequestError::InvalidJson(e) => ApiError::InvalidJson(e),
            RequestError::InvalidParam { param, problem } => {
                ApiError::InvalidParam { param, problem }
            }
        }
    }
}

impl ApiError {
    /// The error in Anthropic's shape (`/v1/messages` and its batches), with the status and
    /// headers it has on the OpenAI endpoints.
    pub fn into_anthropic_response(self) -> Response {
        let status = self.status();
        let message = self.to_string();
        // The OpenAI rendering logs server errors and sets Retry-After; keep both.
        let openai = self.into_response();
        let mut response = (
            status,
            axum::Json(sluice_dialect::anthropic::error::for_status(
                status.as_u16(),
                &message,
            )),
        )
            .into_response();
        for name in [header::RETRY_AFTER.as_str(), "x-should-retry"] {
            if let Some(v) = openai.headers().get(name) {
                response.headers_mut().insert(name, v.clone());
            }
        }
        response
    }
}

/// A response's error code (or type), for the request metrics' `reason` label.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        let retry_after = match &self {
            ApiError::RateLimited { retry_after } => Some(retry_after.as_secs_f64().ceil() as u64),
            _ if status == StatusCode::SERVICE_UNAVAILABLE => Some(1),
            ApiError::IdempotencyInProgress(_) => Some(1),
            _ => None,
        };
        let mut response = (status, axum::Json(self.body())).into_response();
        let (_, kind, code, _) = self.parts();
        response
            .extensions_mut()
            .insert(ErrorCode(code.unwrap_or(kind)));
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let ApiError::BudgetExceeded(_)
        | ApiError::IdempotencyKeyReused { .. }
        | ApiError::MessageTooLarge { .. }
        | ApiError::TopicRefusedSize { .. } = &self
        {
            // Retrying cannot help (before the period resets, or ever for a too-large
            // request); the OpenAI and Anthropic SDKs honour this header and do not retry.
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        if let ApiError::RateLimited { retry_after } = &self {
            response.headers_mut().insert(
                "retry-after-ms",
                HeaderValue::from(retry_after.as_millis().min(u128::from(u64::MAX)) as u64),
            );
        }
        response
    }
}
