//! OpenAI's request validation and error bodies, worded as api.openai.com words them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;

use super::wire::ErrorEnvelope;
use super::{common_headers, internal_error, json_response, ApiError, RecordedCall, Shared};

/// Rate limit numbers in the `x-ratelimit-*` headers of a 429.
const RATE_LIMIT_REQUESTS: u64 = 500;
const RATE_LIMIT_TOKENS: u64 = 200_000;

pub(super) const INVALID_REQUEST: &str = "invalid_request_error";
const SERVER_ERROR: &str = "server_error";
const ROLES: [&str; 6] = [
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The request fields the mock acts on, once validated.
pub(super) struct ChatRequest<'a> {
    pub(super) model: &'a str,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
}

/// OpenAI's checks on the fields the mock reads, with OpenAI's messages.
pub(super) fn validate(body: &Value) -> Result<ChatRequest<'_>, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(unparseable_json());
    };
    let model = match fields.get("model") {
        None | Some(Value::Null) => {
            return Err(ApiError::new(
                INVALID_REQUEST,
                None,
                "you must provide a model parameter",
            ))
        }
        Some(Value::String(model)) => model.as_str(),
        Some(other) => return Err(invalid_type("model", "a string", other)),
    };
    let messages = match fields.get("messages") {
        None | Some(Value::Null) => return Err(missing_parameter("messages")),
        Some(Value::Array(messages)) if messages.is_empty() => {
            return Err(ApiError::new(
                INVALID_REQUEST,
                Some("empty_array"),
                "Invalid 'messages': empty array. Expected an array with minimum length 1, \
                 but got an empty array instead.",
            )
            .with_param("messages"))
        }
        Some(Value::Array(messages)) => messages,
        Some(other) => return Err(invalid_type("messages", "an array", other)),
    };
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(invalid_type(
                &format!("messages[{i}]"),
                "an object",
                message,
            ));
        };
        match message.get("role") {
            None | Some(Value::Null) => {
                return Err(missing_parameter(&format!("messages[{i}].role")))
            }
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(ApiError::new(
                    INVALID_REQUEST,
                    Some("invalid_value"),
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'system', 'assistant', \
                         'user', 'function', 'tool', and 'developer'."
                    ),
                )
                .with_param(format!("messages[{i}].role")))
            }
            Some(other) => {
                return Err(invalid_type(
                    &format!("messages[{i}].role"),
                    "a string",
                    other,
                ))
            }
        }
    }
    let stream = match fields.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(stream)) => *stream,
        Some(other) => return Err(invalid_type("stream", "a boolean", other)),
    };
    let include_usage = match fields.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(_) if !stream => {
            return Err(ApiError::new(
                INVALID_REQUEST,
                None,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
            .with_param("stream_options"))
        }
        Some(Value::Object(options)) => match options.get("include_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(include)) => *include,
            Some(other) => {
                return Err(invalid_type(
                    "stream_options.include_usage",
                    "a boolean",
                    other,
                ))
            }
        },
        Some(other) => return Err(invalid_type("stream_options", "an object", other)),
    };
    for name in ["max_tokens", "max_completion_tokens"] {
        match fields.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {}
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => {
                return Err(ApiError::new(
                    INVALID_REQUEST,
                    Some("integer_below_min_value"),
                    format!(
                        "Invalid '{name}': integer below minimum value. Expected a value >= 1, \
                         but got {n} instead."
                    ),
                )
                .with_param(name))
            }
            Some(other) => return Err(invalid_type(name, "an integer", other)),
        }
    }
    Ok(ChatRequest {
        model,
        stream,
        include_usage,
    })
}

/// "a string", "an integer", ... as OpenAI names JSON types in its messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn invalid_type(param: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        Some("invalid_type"),
        format!(
            "Invalid type for '{param}': expected {expected}, but got {} instead.",
            json_type(got)
        ),
    )
    .with_param(param)
}

pub(super) fn missing_parameter(param: &str) -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        Some("missing_required_parameter"),
        format!("Missing required parameter: '{param}'."),
    )
    .with_param(param)
}

pub(super) fn unparseable_json() -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        None,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't \
         using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was \
         sent was not valid JSON. If you have trouble figuring out how to fix this, please \
         contact us through our help center at help.openai.com.)",
    )
}

pub(super) fn missing_key() -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        None,
        "You didn't provide an API key. You need to provide your API key in an Authorization \
         header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password \
         field (with blank username) if you're accessing the API from your browser and are \
         prompted for a username and password. You can obtain an API key from \
         https://platform.openai.com/account/api-keys.",
    )
}

pub(super) fn wrong_key(presented: &str) -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        Some("invalid_api_key"),
        format!(
            "Incorrect API key provided: {}. You can find your API key at \
             https://platform.openai.com/account/api-keys.",
            redact(presented)
        ),
    )
}

/// The key as OpenAI echoes it: first 3 and last 4 characters, the rest starred.
fn redact(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "*".repeat(chars.len());
    }
    let mut redacted: String = chars[..3].iter().collect();
    redacted.push_str(&"*".repeat(chars.len() - 7));
    redacted.extend(&chars[chars.len() - 4..]);
    redacted
}

pub(super) fn model_not_found(model: &str) -> ApiError {
    ApiError::new(
        INVALID_REQUEST,
        Some("model_not_found"),
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
}

pub(super) fn server_error() -> ApiError {
    ApiError::new(
        SERVER_ERROR,
        None,
        "The server had an error while processing your request. Sorry about that!",
    )
}

/// OpenAI's body for an injected status with no explicit error.
pub(super) fn canned_error(
    status: StatusCode,
    model: Option<&str>,
    presented_key: Option<&str>,
    retry_after: Option<Duration>,
) -> ApiError {
    let model = model.unwrap_or_default();
    match status.as_u16() {
        401 => wrong_key(presented_key.unwrap_or_default()),
        403 => ApiError::new(
            "request_forbidden",
            Some("unsupported_country_region_territory"),
            "Country, region, or territory not supported",
        ),
        404 => model_not_found(model),
        429 => ApiError::new(
            "requests",
            Some("rate_limit_exceeded"),
            format!(
                "Rate limit reached for {model} in organization org-mock on requests per min \
                 (RPM): Limit {RATE_LIMIT_REQUESTS}, Used {RATE_LIMIT_REQUESTS}, Requested 1. \
                 Please try again in {}. Visit https://platform.openai.com/account/rate-limits \
                 to learn more.",
                openai_duration(retry_after.unwrap_or(Duration::from_secs(1)))
            ),
        ),
        500 => server_error(),
        503 => ApiError::new(
            SERVER_ERROR,
            None,
            "The server is overloaded or not ready yet.",
        ),
        code @ 500.. => ApiError::new(
            SERVER_ERROR,
            None,
            format!("HTTP {code} from the mock provider."),
        ),
        code => ApiError::new(
            INVALID_REQUEST,
            None,
            format!("HTTP {code} from the mock provider."),
        ),
    }
}

/// Durations as OpenAI writes them in messages and `x-ratelimit-reset-*`: `20ms`, `2s`,
/// `1.5s`.
fn openai_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

pub(super) struct ErrorAnswer {
    pub(super) status: StatusCode,
    pub(super) error: ApiError,
    /// Sent instead of the JSON error, as HTML.
    pub(super) raw_body: Option<String>,
    pub(super) retry_after: Option<Duration>,
}

impl ErrorAnswer {
    pub(super) fn new(status: StatusCode, error: ApiError) -> ErrorAnswer {
        ErrorAnswer {
            status,
            error,
            raw_body: None,
            retry_after: None,
        }
    }

    pub(super) fn into_response(self, processing: Duration) -> Response {
        let mut response = match self.raw_body {
            Some(html) => {
                let mut response = Response::new(Body::from(html));
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                response
            }
            None => match serde_json::to_vec(&ErrorEnvelope { error: &self.error }) {
                Ok(json) => json_response(json),
                Err(error) => return internal_error(&error, processing),
            },
        };
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        common_headers(headers, processing);
        if let Some(retry_after) = self.retry_after {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            let reset = openai_duration(self.retry_after.unwrap_or(Duration::from_secs(1)));
            headers.insert(
                "x-ratelimit-limit-requests",
                HeaderValue::from(RATE_LIMIT_REQUESTS),
            );
            headers.insert("x-ratelimit-remaining-requests", HeaderValue::from(0u64));
            if let Ok(reset) = HeaderValue::from_str(&reset) {
                headers.insert("x-ratelimit-reset-requests", reset);
            }
            headers.insert(
                "x-ratelimit-limit-tokens",
                HeaderValue::from(RATE_LIMIT_TOKENS),
            );
            headers.insert(
                "x-ratelimit-remaining-tokens",
                HeaderValue::from(RATE_LIMIT_TOKENS),
            );
            headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("0s"));
        }
        response
    }
}

/// Record a call answered with `answer` and answer it.
pub(super) fn simple_answer(
    shared: &Shared,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
    answer: ErrorAnswer,
) -> Response {
    let seq = shared.next_seq();
    let received_at = SystemTime::now();
    if let Some(max) = shared.record_limit() {
        let mut call = RecordedCall::received(seq, received_at, method, &uri, headers, raw_body);
        call.status = Some(answer.status.as_u16());
        call.error = Some(answer.error.clone());
        shared.record(call, max);
    }
    answer.into_response(Duration::ZERO)
}

/// Any path OpenAI does not serve: 404 as api.openai.com words it.
pub(crate) async fn invalid_url(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let error = ApiError::new(
        INVALID_REQUEST,
        None,
        format!("Invalid URL ({method} {})", uri.path()),
    );
    let answer = ErrorAnswer::new(StatusCode::NOT_FOUND, error);
    simple_answer(&shared, method, uri, headers, raw_body, answer)
}

/// A served path with the wrong method: 405.
pub(crate) async fn invalid_method(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw_body: Bytes,
) -> Response {
    let error = ApiError::new(
        INVALID_REQUEST,
        None,
        format!("Invalid method for URL ({method} {})", uri.path()),
    );
    let answer = ErrorAnswer::new(StatusCode::METHOD_NOT_ALLOWED, error);
    simple_answer(&shared, method, uri, headers, raw_body, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_like_openai() {
        assert_eq!(redact("sk-test-1234567890"), "sk-***********7890");
        assert_eq!(redact("short"), "*****");
    }

    #[test]
    fn durations_read_like_openai() {
        assert_eq!(openai_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(openai_duration(Duration::from_secs(2)), "2s");
        assert_eq!(openai_duration(Duration::from_millis(1500)), "1.5s");
    }
}
