//! The HTTP side every provider shares: the client, JSON and streaming calls with the
//! attempt's traceparent, error mapping, `Retry-After`, and stream translation.

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use sluice_dialect::{StreamItem, StreamToOpenAi};

use super::client::EventStream;
use super::scrub;
use crate::error::ProviderError;

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
