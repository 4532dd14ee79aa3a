//! Errors: Google's error body `{"error": {"code", "message", "status", "details"}}` (or a
//! one-element array of it) as OpenAI's ([`to_openai`]). A 429's `RetryInfo.retryDelay` is
//! the retry hint, honoured like a `Retry-After` header.

use std::time::Duration;

use serde_json::Value;
use sluice_schemas::openai::ErrorBody;

/// The error in OpenAI's shape and the retry hint it carries; `None` if the body is not
/// Google's shape.
pub fn to_openai(body: &str) -> Option<(ErrorBody, Option<Duration>)> {
    let value = serde_json::from_str::<Value>(body).ok()?;
    let value = match &value {
        Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
        _ => value,
    };
    let error = value.get("error")?;
    Some((error_body(error), retry_delay(error)))
}

pub(crate) fn error_body(error: &Value) -> ErrorBody {
    let status = error
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("UNKNOWN");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or(status);
    ErrorBody::new(&status.to_ascii_lowercase(), Some(status), message)
}

fn retry_delay(error: &Value) -> Option<Duration> {
    error
        .get("details")?
        .as_array()?
        .iter()
        .find(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })?
        .get("retryDelay")?
        .as_str()?
        .strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s.clamp(0.0, 3600.0)).ok())
}
