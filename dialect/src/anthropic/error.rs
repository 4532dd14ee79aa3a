//! Errors, both ways: Anthropic's error body `{"type": "error", "error": {"type",
//! "message"}}` as OpenAI's ([`to_openai`], the workers), and an OpenAI error as
//! Anthropic's ([`from_openai`], [`stream_from_openai`], the ingress).

use serde_json::{json, Value};
use sluice_schemas::openai::ErrorBody;

/// Anthropic's error type for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Anthropic's error body.
pub fn body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// Anthropic's error body for an HTTP status.
pub fn for_status(status: u16, message: &str) -> Value {
    body(error_type(status), message)
}

/// A failed answer (`openai` is its OpenAI error body) as Anthropic's error body.
pub fn from_openai(status: u16, openai: &Value) -> Value {
    let message = openai["error"]["message"]
        .as_str()
        .unwrap_or("The request failed.");
    for_status(status, message)
}

/// The OpenAI error body that ends a stream as the data of Anthropic's `error` event.
pub fn stream_from_openai(openai: &str) -> Value {
    let parsed = serde_json::from_str::<ErrorBody>(openai).ok();
    let (kind, message) = match &parsed {
        Some(e) => (
            match e.error.kind.as_str() {
                "overloaded_error"
                | "rate_limit_error"
                | "timeout_error"
                | "invalid_request_error" => e.error.kind.as_str(),
                "timeout" => "timeout_error",
                _ => "api_error",
            },
            e.error.message.as_str(),
        ),
        None => ("api_error", "The stream failed."),
    };
    body(kind, message)
}

/// Anthropic's error body in OpenAI's shape, the Anthropic type kept as `type` and `code`
/// (e.g. `overloaded_error`); `None` if the body is not Anthropic's shape.
pub fn to_openai(anthropic: &str) -> Option<ErrorBody> {
    let value: Value = serde_json::from_str(anthropic).ok()?;
    let error = value.get("error")?;
    let kind = error.get("type")?.as_str()?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or(kind);
    Some(ErrorBody::new(kind, Some(kind), message))
}
