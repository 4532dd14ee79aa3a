//! What every OpenAI answer shares over HTTP: JSON bodies (whole or cut), api.openai.com's
//! headers, the key a call presents.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use futures::StreamExt as _;

use super::errors::{server_error, ErrorAnswer};
use super::stream::cut;

/// A JSON answer with OpenAI's headers; `cut`: the head promises the whole body, half of it
/// arrives, then the connection ends.
pub(super) fn json_answer(json: Vec<u8>, cut_half: bool, processing: Duration) -> Response {
    let mut response = if cut_half {
        let full_length = json.len();
        let mut json = Bytes::from(json);
        let half = json.split_to(full_length / 2);
        let body = futures::stream::once(async move { Ok(half) }).chain(cut());
        let mut response = Response::new(Body::from_stream(body));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(full_length));
        response
    } else {
        Response::new(Body::from(json))
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    common_headers(headers, processing);
    response
}

pub(super) fn json_response(json: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(json));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Headers api.openai.com puts on every response.
pub(super) fn common_headers(headers: &mut HeaderMap, processing: Duration) {
    if let Ok(id) = HeaderValue::from_str(&format!("req_{}", uuid::Uuid::new_v4().simple())) {
        headers.insert("x-request-id", id);
    }
    headers.insert(
        "openai-processing-ms",
        HeaderValue::from(u64::try_from(processing.as_millis()).unwrap_or(u64::MAX)),
    );
    headers.insert("openai-version", HeaderValue::from_static("2020-10-01"));
}

/// Serialization of the mock's own types cannot fail; if it ever does, say so in OpenAI's shape.
pub(super) fn internal_error(error: &serde_json::Error, processing: Duration) -> Response {
    tracing::error!(%error, "mock provider could not serialize its answer");
    ErrorAnswer::new(StatusCode::INTERNAL_SERVER_ERROR, server_error()).into_response(processing)
}

/// The key a call presents: `Authorization: Bearer`, or Azure OpenAI's `api-key`.
pub(super) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    bearer_key(headers).or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
}

/// The key in `Authorization: Bearer <key>`; any other scheme counts as no key.
pub(super) fn bearer_key(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|key| !key.is_empty())
}

pub(in crate::mock) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A `text/event-stream` answer with OpenAI's headers.
pub(super) fn event_stream(body: Body, processing: Duration) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    common_headers(headers, processing);
    response
}
