//! Providers: a closed set, chosen by `type` in config, all behind one trait. Whatever the
//! provider speaks, requests arrive and answers leave in one internal shape: the OpenAI chat
//! completion request, response and `chat.completion.chunk` (what flows through Kafka and
//! back to callers). Each provider module holds its config and HTTP calls; the bodies are
//! translated to and from its wire format by `sluice_dialect`.

pub mod anthropic;
pub mod azure;
pub mod gemini;
pub mod openai;
pub mod scrub;

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use sluice_dialect::{StreamItem, StreamToOpenAi};

use crate::error::ProviderError;

/// One provider endpoint, as configured under `[deployments.provider]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// OpenAI's API (or any server that speaks it).
    Openai(openai::OpenAiConfig),
    /// A self-hosted OpenAI-compatible server (vLLM, Ollama, llama.cpp server): the same
    /// wire format as `openai`, named apart so results and dashboards tell them apart.
    OpenaiCompatible(openai::OpenAiConfig),
    /// Azure OpenAI: a resource endpoint, a deployment and an API version.
    Azure(azure::AzureConfig),
    /// Anthropic's Messages API.
    Anthropic(anthropic::AnthropicConfig),
    /// Google's Gemini API (generateContent, streamGenerateContent).
    Gemini(gemini::GeminiConfig),
}

/// A config field that is wrong: its name under `provider` and what is wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub problem: &'static str,
}

impl ProviderConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        match self {
            ProviderConfig::Openai(c) | ProviderConfig::OpenaiCompatible(c) => c.validate(),
            ProviderConfig::Azure(c) => c.validate(),
            ProviderConfig::Anthropic(c) => c.validate(),
            ProviderConfig::Gemini(c) => c.validate(),
        }
    }

    /// The `type`, recorded as the provider of results and usage.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderConfig::Openai(_) => "openai",
            ProviderConfig::OpenaiCompatible(_) => "openai_compatible",
            ProviderConfig::Azure(_) => "azure",
            ProviderConfig::Anthropic(_) => "anthropic",
            ProviderConfig::Gemini(_) => "gemini",
        }
    }

    /// The provider's own name for the model, if config sets one.
    pub fn model(&self) -> Option<&str> {
        match self {
            ProviderConfig::Openai(c) | ProviderConfig::OpenaiCompatible(c) => c.model.as_deref(),
            ProviderConfig::Azure(_) => None,
            ProviderConfig::Anthropic(c) => c.model.as_deref(),
            ProviderConfig::Gemini(c) => c.model.as_deref(),
        }
    }
}

pub use sluice_dialect::Completion;

/// A provider's stream of server-sent events, translated to OpenAI `chat.completion.chunk`
/// JSON (and the final `[DONE]`).
pub type EventStream = futures::stream::BoxStream<'static, Result<String, ProviderError>>;

/// What every provider does: one chat completion call, whole or streamed.
pub trait Provider {
    /// `request` is the caller's OpenAI chat request (Sluice's own fields removed).
    fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<Completion, ProviderError>> + Send;

    /// Starts a streamed completion; `timeout` bounds the wait for the response head. An
    /// error before the stream starts is retriable like any other; once events flow, the
    /// caller owns idle timeouts.
    fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> impl std::future::Future<Output = Result<EventStream, ProviderError>> + Send;
}

/// A provider client built from config.
#[derive(Debug, Clone)]
pub enum Client {
    /// OpenAI, OpenAI-compatible servers and Azure OpenAI: one wire format.
    Openai(openai::OpenAi),
    Anthropic(anthropic::Anthropic),
    Gemini(gemini::Gemini),
}

impl Client {
    /// `model` is the provider's name for the model: the config's `model`, else the
    /// deployment's (callers may have asked for an alias, which no provider knows).
    pub fn new(config: &ProviderConfig, model: &str, http: reqwest::Client) -> Client {
        match config {
            ProviderConfig::Openai(c) => Client::Openai(openai::OpenAi::new(c, model, http)),
            ProviderConfig::OpenaiCompatible(c) => {
                Client::Openai(openai::OpenAi::compatible(c, model, http))
            }
            ProviderConfig::Azure(c) => Client::Openai(azure::client(c, model, http)),
            ProviderConfig::Anthropic(c) => {
                Client::Anthropic(anthropic::Anthropic::new(c, model, http))
            }
            ProviderConfig::Gemini(c) => Client::Gemini(gemini::Gemini::new(c, model, http)),
        }
    }
}

impl Provider for Client {
    async fn complete(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<Completion, ProviderError> {
        match self {
            Client::Openai(p) => p.complete(request, timeout).await,
            Client::Anthropic(p) => p.complete(request, timeout).await,
            Client::Gemini(p) => p.complete(request, timeout).await,
        }
    }

    async fn stream(
        &self,
        request: Map<String, Value>,
        timeout: Duration,
    ) -> Result<EventStream, ProviderError> {
        match self {
            Client::Openai(p) => p.stream(request, timeout).await,
            Client::Anthropic(p) => p.stream(request, timeout).await,
            Client::Gemini(p) => p.stream(request, timeout).await,
        }
    }
}

/// Parses `Retry-After` (seconds) and OpenAI's `retry-after-ms`.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// Checks shared by every provider's config.
pub(crate) fn check_url(url: &str, field: &'static str) -> Result<(), Invalid> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(Invalid {
            field,
            problem: "must start with http:// or https://",
        })
    }
}

pub(crate) fn check_key_env(var: Option<&str>) -> Result<(), Invalid> {
    match var {
        Some(var) if std::env::var(var).is_err() => Err(Invalid {
            field: "api_key_env",
            problem: "names an environment variable that is not set",
        }),
        _ => Ok(()),
    }
}

pub(crate) fn key_from_env(var: Option<&str>) -> Option<String> {
    var.and_then(|v| std::env::var(v).ok())
}

/// Turns a provider's error body into the caller's (OpenAI) shape, with any retry hint the
/// body carries (Gemini puts it there instead of in a header).
pub(crate) type ErrorMapper = fn(status: u16, body: &str) -> (String, Option<Duration>);

/// The OpenAI wire format: the body is already in the caller's shape.
pub(crate) fn passthrough_error(_status: u16, body: &str) -> (String, Option<Duration>) {
    (body.to_string(), None)
}

/// The HTTP client of provider calls. It follows no redirects: a redirected call would
/// carry the provider key (reqwest drops `Authorization` across hosts, not `x-api-key`,
/// `api-key` or `x-goog-api-key`) to wherever the `Location` points. A 3xx is a failed call.
pub fn http_client(max_idle_per_host: usize) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_idle_per_host)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

tokio::task_local! {
    /// The caller's W3C `traceparent` for the provider calls made inside [`with_traceparent`].
    static TRACEPARENT: Option<String>;
}

/// Runs `work` so that every provider call it makes carries `traceparent` (the caller's,
/// passed on unchanged, when the worker exports no spans). A malformed value is dropped,
/// never sent.
pub async fn with_traceparent<F: std::future::Future>(
    traceparent: Option<&str>,
    work: F,
) -> F::Output {
    let valid = traceparent
        .filter(|t| sluice_schemas::trace::trace_id(t).is_some())
        .map(|t| t.trim().to_string());
    TRACEPARENT.scope(valid, work).await
}

/// The call with a `traceparent`: the current span's (the attempt's) when traces are
/// exported, else the caller's as it came, if there is one.
fn traced(call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    let current = sluice_schemas::trace::traceparent(&tracing::Span::current());
    match current.or_else(|| TRACEPARENT.try_with(Clone::clone).ok().flatten()) {
        Some(traceparent) => call.header("traceparent", traceparent),
        None => call,
    }
}

/// Sends a JSON call and returns the body of a 2xx answer.
pub(crate) async fn call_json(
    call: reqwest::RequestBuilder,
    timeout: Duration,
    map_error: ErrorMapper,
) -> Result<String, ProviderError> {
    let response = traced(call)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| classify(e, timeout))?;
    let status = response.status();
    let retry = retry_after(response.headers());
    let body = response.text().await.map_err(|e| {
        if e.is_timeout() {
            ProviderError::Timeout(timeout)
        } else {
            ProviderError::Body(e)
        }
    })?;
    if !status.is_success() {
        return Err(status_error(status.as_u16(), &body, retry, map_error));
    }
    Ok(body)
}

/// Starts a streamed call; `timeout` bounds the wait for the response head only.
pub(crate) async fn call_stream(
    call: reqwest::RequestBuilder,
    timeout: Duration,
    map_error: ErrorMapper,
) -> Result<reqwest::Response, ProviderError> {
    let response = tokio::time::timeout(timeout, traced(call).send())
        .await
        .map_err(|_| ProviderError::Timeout(timeout))?
        .map_err(|e| classify(e, timeout))?;
    let status = response.status();
    if !status.is_success() {
        let retry = retry_after(response.headers());
        let body = response.text().await.unwrap_or_default();
        return Err(status_error(status.as_u16(), &body, retry, map_error));
    }
    Ok(response)
}

fn status_error(
    status: u16,
    body: &str,
    header_retry: Option<Duration>,
    map_error: ErrorMapper,
) -> ProviderError {
    let (body, body_retry) = map_error(status, body);
    ProviderError::Status {
        status,
        // The caller gets this body: no hint of Sluice's key, no operator account ids.
        body: scrub::scrub(&body).into_owned(),
        retry_after: header_retry.or(body_retry),
    }
}

pub(crate) fn classify(e: reqwest::Error, timeout: Duration) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout(timeout)
    } else {
        ProviderError::Connect(e)
    }
}

/// A translated stream item as the chunk text the worker passes on; a provider's error
/// is scrubbed first, as any error body a caller can see.
fn stream_item(item: StreamItem) -> String {
    match item {
        StreamItem::Chunk(chunk) => chunk,
        StreamItem::Error(error) => scrub::scrub(&error.to_json()).into_owned(),
        StreamItem::Done => "[DONE]".into(),
    }
}

/// The chunks of a streamed response, translated event by event.
pub(crate) fn translate_events<T: StreamToOpenAi + Send + 'static>(
    response: reqwest::Response,
    translator: T,
) -> EventStream {
    struct State<T> {
        events: futures::stream::BoxStream<
            'static,
            Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>,
        >,
        translator: T,
        pending: VecDeque<StreamItem>,
        ended: bool,
    }
    let state = State {
        events: response.bytes_stream().eventsource().boxed(),
        translator,
        pending: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.pending.pop_front() {
                return Some((Ok(stream_item(item)), st));
            }
            if st.ended {
                return None;
            }
            let mut out = Vec::new();
            match st.events.next().await {
                None => {
                    st.ended = true;
                    st.translator.end(&mut out);
                }
                Some(Ok(event)) => {
                    if let Err(error) = st.translator.event(&event.data, &mut out) {
                        st.ended = true;
                        return Some((Err(ProviderError::Malformed(error)), st));
                    }
                }
                Some(Err(eventsource_stream::EventStreamError::Transport(e))) => {
                    st.ended = true;
                    return Some((Err(ProviderError::Body(e)), st));
                }
                Some(Err(_)) => {
                    st.ended = true;
                    return Some((Err(ProviderError::StreamBroken), st));
                }
            }
            st.pending.extend(out);
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A server at `/v1/messages` answering `status` with `body` and `location`, recording
    /// the `x-api-key` of each request it gets.
    async fn server(
        status: u16,
        body: &'static str,
        location: Option<String>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let record = Arc::clone(&record);
            let location = location.clone();
            async move {
                let key = headers
                    .get("x-api-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                record.lock().unwrap().push(key);
                let mut response = axum::http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                if let Some(l) = location {
                    response = response.header("location", l);
                }
                response.body(axum::body::Body::from(body)).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    fn anthropic(base_url: &str, key_env: &str) -> anthropic::Anthropic {
        let config: anthropic::AnthropicConfig = serde_json::from_value(serde_json::json!({
            "base_url": base_url, "api_key_env": key_env
        }))
        .unwrap();
        anthropic::Anthropic::new(&config, "claude-x", http_client(4).unwrap())
    }

    fn request() -> Map<String, Value> {
        serde_json::from_value(serde_json::json!({
            "model": "claude-x", "messages": [{"role": "user", "content": "hi"}]
        }))
        .unwrap()
    }

    #[test]
    fn provider_error_bodies_not_in_the_provider_shape_pass_as_they_are() {
        // A body that is not Anthropic's shape passes as it is.
        assert_eq!(
            anthropic::map_error(502, "<html>bad gateway</html>").0,
            "<html>bad gateway</html>"
        );
        assert!(ProviderError::Status {
            status: 529,
            body: String::new(),
            retry_after: None
        }
        .is_retriable());
    }

    #[tokio::test]
    async fn provider_calls_carry_the_callers_well_formed_traceparent_only() {
        let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
        let record = Arc::clone(&seen);
        let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let record = Arc::clone(&record);
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                record.lock().unwrap().push(traceparent);
                (
                    [("content-type", "application/json")],
                    r#"{"id":"m","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":1,"output_tokens":1}}"#,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        std::env::set_var("SLUICE_TEST_TRACE_KEY", "sk-ant-test");
        let client = anthropic(&url, "SLUICE_TEST_TRACE_KEY");
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let timeout = Duration::from_secs(5);
        for traceparent in [Some(caller), Some("not-a-traceparent"), None] {
            // Only the headers that reached the provider matter here.
            let _ = with_traceparent(traceparent, client.complete(request(), timeout)).await;
        }
        let _ = client.complete(request(), timeout).await;
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            [Some(caller.to_string()), None, None, None]
        );
    }

    #[tokio::test]
    async fn a_redirect_does_not_carry_the_provider_key_anywhere() {
        std::env::set_var("SLUICE_TEST_REDIRECT_KEY", "sk-ant-api03-secret-key");
        let (elsewhere, stolen) = server(200, "{}", None).await;
        let (provider, seen) = server(307, "{}", Some(format!("{elsewhere}/v1/messages"))).await;
        let client = anthropic(&provider, "SLUICE_TEST_REDIRECT_KEY");
        let outcome = client.complete(request(), Duration::from_secs(5)).await;
        assert!(
            matches!(outcome, Err(ProviderError::Status { status: 307, .. })),
            "{outcome:?}"
        );
        assert_eq!(seen.lock().unwrap().as_slice(), ["sk-ant-api03-secret-key"]);
        assert!(
            stolen.lock().unwrap().is_empty(),
            "the Location got nothing"
        );
    }

    #[tokio::test]
    async fn provider_error_bodies_reach_the_caller_without_key_hints_or_org_ids() {
        std::env::set_var("SLUICE_TEST_SCRUB_KEY", "sk-ant-api03-real-key");
        let (provider, _) = server(
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-api03-rea***key for organization org-Zx81ab3CDEfgHIjkLMno4pQr"}}"#,
            None,
        )
        .await;
        let client = anthropic(&provider, "SLUICE_TEST_SCRUB_KEY");
        match client.complete(request(), Duration::from_secs(5)).await {
            Err(ProviderError::Status {
                status: 401, body, ..
            }) => {
                assert!(!body.contains("api03"), "{body}");
                assert!(!body.contains("Zx81ab3"), "{body}");
                let parsed: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(parsed["error"]["type"], "authentication_error", "{body}");
            }
            other => panic!("expected the provider's 401, got {other:?}"),
        }
    }
}
