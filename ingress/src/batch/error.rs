//! Errors of the Files and Batch APIs, in OpenAI's error shape (Anthropic's on
//! `/v1/messages/batches`, see `anthropic.rs`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_schemas::openai::ErrorBody;
use thiserror::Error;

use crate::error::ApiError;

#[derive(Debug, Error)]
pub enum BatchError {
    /// Authentication and the other errors every endpoint shares.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("The upload must be multipart/form-data with a `file` part and `purpose`")]
    NotMultipart,
    #[error("The multipart body is malformed: {0}")]
    Multipart(#[source] multer::Error),
    #[error("The upload has no `file` part")]
    MissingFile,
    #[error("Invalid purpose `{0}`: this endpoint accepts files with purpose `batch`")]
    WrongPurpose(String),
    #[error("The file is not JSONL: {0}")]
    NotJsonl(String),
    #[error("The upload is larger than the limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    #[error("No such File object: {0}")]
    FileNotFound(String),
    #[error("No batch found with id '{0}'")]
    BatchNotFound(String),
    #[error("Invalid value for `{param}`: {problem}")]
    InvalidParam {
        param: &'static str,
        problem: String,
    },
    #[error("We could not parse the JSON body of your request: {0}")]
    InvalidJson(#[source] serde_json::Error),
    #[error("Cannot cancel a batch with status '{0}'")]
    NotCancellable(String),
    #[error("Batch {0} has not ended; cancel it first, or delete it once it has ended")]
    NotEnded(String),
    #[error("Too many uploads are being read right now; retry shortly")]
    TooManyUploads,
    #[error("The batch has more than {limit} requests")]
    TooManyLines { param: &'static str, limit: u64 },
    #[error("Request {index} of `requests` is larger than {limit} bytes")]
    RequestTooLarge { index: u64, limit: usize },
    #[error("Request {index} of `requests` nests deeper than {limit} levels")]
    TooDeep { index: u64, limit: usize },
    #[error("The file {file_id} already has {limit} batches")]
    TooManyBatchesForFile { file_id: String, limit: u64 },
    #[error("The team already has {limit} open batches; retry when one has been published")]
    TooManyOpenBatches { limit: u64 },
    #[error(
        "The team's stored files would exceed its quota of {limit} {unit}; delete files first"
    )]
    QuotaExceeded { limit: u64, unit: &'static str },
    #[error("The file {0} is the input of a batch still being published; cancel the batch or retry when it has been published")]
    FileInUse(String),
    #[error("A batch with this Idempotency-Key ({0}) is still being created; retry shortly")]
    BatchInProgress(String),
    #[error("The batch store is unavailable; retry later")]
    Store(#[source] clickhouse::error::Error),
    #[error("The request queue is unavailable; retry later")]
    Queue(#[source] rdkafka::error::KafkaError),
}

impl From<clickhouse::error::Error> for BatchError {
    fn from(e: clickhouse::error::Error) -> BatchError {
        BatchError::Store(e)
    }
}

impl BatchError {
    pub fn status(&self) -> StatusCode {
        use BatchError::*;
        match self {
            Api(e) => e.status(),
            FileTooLarge { .. } | RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            TooManyUploads | TooManyOpenBatches { .. } => StatusCode::TOO_MANY_REQUESTS,
            FileInUse(_) | NotEnded(_) | BatchInProgress(_) => StatusCode::CONFLICT,
            FileNotFound(_) | BatchNotFound(_) => StatusCode::NOT_FOUND,
            NotCancellable(_) => StatusCode::CONFLICT,
            Store(_) | Queue(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn code_and_param(&self) -> (&'static str, Option<&'static str>) {
        use BatchError::*;
        match self {
            NotMultipart | Multipart(_) | MissingFile => ("invalid_file", Some("file")),
            WrongPurpose(_) => ("invalid_value", Some("purpose")),
            NotJsonl(_) => ("invalid_jsonl", Some("file")),
            FileTooLarge { .. } => ("file_too_large", Some("file")),
            FileNotFound(_) | BatchNotFound(_) => ("not_found", None),
            InvalidParam { param, .. } => ("invalid_value", Some(param)),
            InvalidJson(_) => ("invalid_json", None),
            NotCancellable(_) => ("batch_not_cancellable", None),
            TooManyUploads => ("too_many_uploads", None),
            TooManyLines { param, .. } => ("batch_too_large", Some(param)),
            RequestTooLarge { .. } => ("request_too_large", Some("requests")),
            TooDeep { .. } => ("nesting_too_deep", Some("requests")),
            TooManyBatchesForFile { .. } => ("too_many_batches_for_file", Some("input_file_id")),
            TooManyOpenBatches { .. } => ("too_many_open_batches", None),
            QuotaExceeded { .. } => ("storage_quota_exceeded", Some("file")),
            FileInUse(_) => ("file_in_use", None),
            NotEnded(_) => ("batch_not_ended", None),
            BatchInProgress(_) => ("idempotency_key_in_use", None),
            Store(_) | Queue(_) => ("service_unavailable", None),
            Api(_) => ("", None),
        }
    }
}

impl IntoResponse for BatchError {
    fn into_response(self) -> Response {
        if let BatchError::Api(e) = self {
            return e.into_response();
        }
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = ?self, "batch API unavailable");
        }
        let (code, param) = self.code_and_param();
        let kind = match status {
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_exceeded",
            _ => "invalid_request_error",
        };
        let mut body = ErrorBody::new(kind, Some(code), self.to_string());
        body.error.param = param.map(str::to_string);
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}
