use std::time::Duration;

use thiserror::Error;

/// The one config error of the services (`sluice_schemas::config`).
pub use sluice_schemas::config::ConfigError;

#[derive(Debug, Error)]
pub enum WorkerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Kafka client error")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("HTTP client could not be built")]
    Http(#[source] reqwest::Error),
    #[error(transparent)]
    Ops(#[from] sluice_schemas::ops::OpsError),
}

/// A failed provider call.
#[derive(Debug, Error)]
pub enum ProviderError {
    #[error("provider answered HTTP {status}")]
    Status {
        status: u16,
        /// The provider's error body, passed to the caller.
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach the provider")]
    Connect(#[source] reqwest::Error),
    #[error("provider response could not be read")]
    Body(#[source] reqwest::Error),
    #[error("provider response is not a chat completion")]
    Malformed(#[source] serde_json::Error),
    #[error("request body is not valid JSON")]
    BadRequest(#[source] serde_json::Error),
    #[error("provider stream is not valid server-sent events")]
    StreamBroken,
    /// The deployment's provider has no form of the request (Anthropic has no embeddings
    /// API; Gemini embeds no token arrays). No call was made: another deployment may serve
    /// it, and this one is not at fault.
    #[error("{0}")]
    Unsupported(&'static str),
}

impl ProviderError {
    /// Whether trying the same deployment again may succeed: throttling, server errors
    /// (Anthropic's 529 included), timeouts, broken connections.
    pub fn is_retriable(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                matches!(status, 408 | 409 | 429) || *status >= 500
            }
            ProviderError::Timeout(_) | ProviderError::Connect(_) | ProviderError::Body(_) => true,
            ProviderError::Malformed(_)
            | ProviderError::BadRequest(_)
            | ProviderError::StreamBroken
            | ProviderError::Unsupported(_) => false,
        }
    }

    /// Whether another deployment may succeed where this one failed: everything retriable,
    /// plus the answers that are about the deployment rather than the request (its key is
    /// refused, or it does not have the model). These also count against its circuit breaker.
    /// A 400 says the request is wrong and would be wrong everywhere.
    pub fn is_deployment_fault(&self) -> bool {
        self.is_retriable()
            || matches!(self, ProviderError::Status { status, .. } if matches!(status, 401 | 403 | 404))
    }

    /// A stable label for metrics and the `error_kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Status { status: 429, .. } => "rate_limited",
            ProviderError::Status { status: 529, .. } => "overloaded",
            ProviderError::Status { status, .. } if *status >= 500 => "upstream_error",
            ProviderError::Status { .. } => "upstream_rejected",
            ProviderError::Timeout(_) => "timeout",
            ProviderError::Connect(_) => "connect",
            ProviderError::Body(_) => "body",
            ProviderError::Malformed(_) => "malformed_response",
            ProviderError::BadRequest(_) => "bad_request",
            ProviderError::StreamBroken => "stream_broken",
            ProviderError::Unsupported(_) => "unsupported",
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
