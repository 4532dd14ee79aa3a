//! Answers in the caller's dialect: OpenAI's shapes, or Anthropic's for `/v1/messages`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sluice_schemas::Result as ResultRecord;

use crate::admission::Dialect;
use crate::error::ApiError;

pub(crate) const REQUEST_ID_HEADER: &str = "x-sluice-request-id";

impl Dialect {
    pub(crate) fn error(self, error: ApiError) -> Response {
        match self {
            Dialect::OpenAi | Dialect::Embeddings | Dialect::Responses => error.into_response(),
            Dialect::Anthropic => error.into_anthropic_response(),
        }
    }

    pub(crate) fn result(self, result: &ResultRecord) -> Response {
        match self {
            Dialect::OpenAi | Dialect::Embeddings => result_response(result),
            Dialect::Anthropic => crate::http::anthropic::result_response(result),
            Dialect::Responses => crate::http::responses::result_response(result),
        }
    }
}

/// The caller sees what the provider (or the worker, for failures) answered.
fn result_response(result: &ResultRecord) -> Response {
    let status = StatusCode::from_u16(result.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, result.body.clone()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&result.request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    response
}
