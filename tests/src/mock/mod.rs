//! A mock LLM provider speaking the providers' real wire formats over real HTTP, standing in
//! for them in tests, demos and benchmarks.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use sluice_tests::mock::{Behaviour, Failure, MockProvider};
//!
//! let mock = MockProvider::start(Behaviour { completion_tokens: 5, ..Behaviour::default() }).await?;
//! mock.fail_next([Failure::rate_limited(std::time::Duration::from_secs(1))]);
//! // point the client at mock.base_url() ("http://127.0.0.1:PORT/v1") ...
//! let calls = mock.calls();
//! mock.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! - [`behaviour`]: what it answers (latency, reply size, stream shape, injected failures).
//! - [`reply`]: how reply text and token counts are derived, so tests can compute them.
//! - [`openai`]: OpenAI Chat Completions (`/v1/chat/completions`, `/v1/models`), the
//!   Responses API (`/v1/responses`, [`openai::responses`]), and Azure OpenAI's deployment
//!   path (`/openai/deployments/{deployment}/chat/completions`).
//! - [`anthropic`]: Anthropic Messages (`/v1/messages`), at [`MockProvider::origin`].
//! - [`gemini`]: Gemini generateContent and streamGenerateContent
//!   (`/v1beta/models/{model}:generateContent`), at [`MockProvider::gemini_base_url`].
//!
//! One instance answers every format at once, each on its own paths, so a test can put
//! deployments of several providers in front of one mock. `GET /v1/models` is OpenAI's.
//!
//! Behaviour is set on the instance only; nothing in a request changes how the mock behaves.

pub mod anthropic;
pub mod behaviour;
mod connection;
pub mod embeddings;
pub mod gemini;
pub mod openai;
pub mod reply;
mod sse;

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Method, Uri};
use axum::Router;
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use behaviour::{ApiError, Behaviour, Failure, Latency};
pub use reply::{FinishReason, Reply};

use connection::{Conn, MockListener};

/// Request bodies up to this size are read; benchmarks send long prompts.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// How long [`MockProvider::shutdown`] waits for in-flight responses (e.g. slow streams).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running mock provider. Dropping it stops the server too, without waiting.
pub struct MockProvider {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<watch::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl MockProvider {
    /// Serve on 127.0.0.1 on a free port.
    pub async fn start(behaviour: Behaviour) -> anyhow::Result<MockProvider> {
        MockProvider::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour).await
    }

    /// Serve on `addr` (port 0 = any free port).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> anyhow::Result<MockProvider> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the mock provider to {addr}"))?;
        let addr = connection::reachable(listener.local_addr()?);
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            limiter: Mutex::new(None),
            behaviour: Mutex::new(behaviour),
            calls: Mutex::new(VecDeque::new()),
            received: AtomicU64::new(0),
            moderations: AtomicU64::new(0),
            stopped,
        });
        // Paths no provider serves are answered in OpenAI's error shape.
        let app = Router::new()
            .merge(openai::routes())
            .merge(anthropic::routes())
            .merge(gemini::routes())
            .fallback(openai::invalid_url)
            .method_not_allowed_fallback(openai::invalid_method)
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(Arc::clone(&shared));
        let signal = shared.stopped();
        let server = tokio::spawn(async move {
            axum::serve(
                MockListener(listener),
                app.into_make_service_with_connect_info::<Conn>(),
            )
            .with_graceful_shutdown(signal)
            .await
        });
        tracing::debug!(%addr, "mock provider listening");
        Ok(MockProvider {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// Where it listens, e.g. 127.0.0.1:41234.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for providers whose paths are not under `/v1`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// OpenAI's base URL: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Gemini's base URL: `http://127.0.0.1:PORT/v1beta`.
    pub fn gemini_base_url(&self) -> String {
        format!("http://{}/v1beta", self.addr)
    }

    /// The current behaviour; `fail_next` holds the failures not yet used.
    pub fn behaviour(&self) -> Behaviour {
        self.shared.behaviour().clone()
    }

    /// Replace the behaviour, including the queue of injected failures. Calls in flight keep
    /// the behaviour they started with.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour() = behaviour;
    }

    /// Append to the queue of injected failures, leaving everything else as it is.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = Failure>) {
        self.shared.behaviour().fail_next.extend(failures);
    }

    /// The recorded calls, oldest first (at most `max_recorded_calls` of the latest).
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.shared.calls().iter().cloned().collect()
    }

    /// Forget the recorded calls; [`MockProvider::call_count`] keeps counting.
    pub fn clear_calls(&self) {
        self.shared.calls().clear();
    }

    /// `POST /v1/moderations` calls received since start (not in [`MockProvider::calls`],
    /// which holds generation calls).
    pub fn moderation_count(&self) -> u64 {
        self.shared.moderations.load(Ordering::Relaxed)
    }

    /// Requests received since start, recorded or not.
    pub fn call_count(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Stop accepting, end hanging `Timeout` calls, and wait (at most a few seconds) for
    /// responses in flight.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
                Ok(joined) => joined
                    .context("mock provider task")?
                    .context("mock provider")?,
                Err(_) => tracing::warn!("mock provider still had responses in flight at shutdown"),
            }
        }
        Ok(())
    }
}

impl Drop for MockProvider {
    fn drop(&mut self) {
        // Dropping the sender is the shutdown signal.
        drop(self.stop.take());
    }
}

impl std::fmt::Debug for MockProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockProvider")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// One request the mock received and what it answered.
#[derive(Debug, Clone)]
pub struct RecordedCall {
    /// Arrival order from 0 over the mock's life, counting unrecorded calls too.
    pub seq: u64,
    pub received_at: SystemTime,
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    /// The body exactly as received.
    pub raw_body: Bytes,
    /// The body parsed as JSON; `None` if empty or not JSON.
    pub body: Option<Value>,
    pub model: Option<String>,
    pub stream: bool,
    /// The injected failure this call used up, if any.
    pub injected: Option<Failure>,
    /// The HTTP status answered; `None` when no response was sent (Timeout, Disconnect).
    pub status: Option<u16>,
    /// The completion id answered (OpenAI: `chatcmpl-...`).
    pub response_id: Option<String>,
    /// Prompt tokens of the answer (0 for errors).
    pub prompt_tokens: u32,
    /// Tokens of the content actually sent; for a broken stream, only what got out.
    pub completion_tokens: u32,
    /// The reply text actually sent (concatenated deltas when streaming).
    pub content: String,
    /// Sent to the client; `None` for errors and streams cut before the final chunk.
    pub finish_reason: Option<FinishReason>,
    /// Whether the client was told the usage: always for a complete non-streaming answer,
    /// for a stream only with `stream_options.include_usage` and if the usage chunk got out.
    pub usage_reported: bool,
    /// The error answered (status error, or the error event of a stream).
    pub error: Option<ApiError>,
    /// When a stream's body ended: sent in full, cut, or dropped because the client went
    /// away. `None` for non-streaming answers and streams still running.
    pub ended_at: Option<SystemTime>,
    /// The client went away before the stream ended; the counts above are what was
    /// produced until then.
    pub client_gone: bool,
}

impl RecordedCall {
    /// A received request with nothing answered yet.
    pub(crate) fn received(
        seq: u64,
        received_at: SystemTime,
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        raw_body: Bytes,
    ) -> RecordedCall {
        RecordedCall {
            seq,
            received_at,
            method,
            path: uri.path().to_owned(),
            headers,
            raw_body,
            body: None,
            model: None,
            stream: false,
            injected: None,
            status: None,
            response_id: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            content: String::new(),
            finish_reason: None,
            ended_at: None,
            client_gone: false,
            usage_reported: false,
            error: None,
        }
    }

    /// A request header as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `Authorization` header, e.g. `Bearer sk-...`.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }
}

/// State shared by the handlers of one mock instance.
pub(crate) struct Shared {
    behaviour: Mutex<Behaviour>,
    /// The provider's rate limit, rebuilt when the behaviour's limit changes.
    limiter: Mutex<Option<(NonZeroU32, governor::DefaultDirectRateLimiter)>>,
    calls: Mutex<VecDeque<RecordedCall>>,
    received: AtomicU64,
    moderations: AtomicU64,
    stopped: watch::Receiver<()>,
}

impl Shared {
    pub(crate) fn count_moderation(&self) {
        self.moderations.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one call from the provider's rate limit; the wait if it is exhausted.
    pub(crate) fn rate_limit(&self, per_minute: Option<NonZeroU32>) -> Option<Duration> {
        let per_minute = per_minute?;
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        if limiter.as_ref().is_none_or(|(n, _)| *n != per_minute) {
            *limiter = Some((
                per_minute,
                governor::RateLimiter::direct(governor::Quota::per_minute(per_minute)),
            ));
        }
        let (_, l) = limiter.as_ref()?;
        l.check().err().map(|not_until| {
            use governor::clock::Clock;
            not_until.wait_time_from(governor::clock::DefaultClock::default().now())
        })
    }

    /// The behaviour, locked. Hold it only to copy out what a call needs.
    pub(crate) fn behaviour(&self) -> MutexGuard<'_, Behaviour> {
        // A panic elsewhere cannot leave a Behaviour half-written in a way that matters here.
        self.behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn calls(&self) -> MutexGuard<'_, VecDeque<RecordedCall>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next arrival number.
    pub(crate) fn next_seq(&self) -> u64 {
        self.received.fetch_add(1, Ordering::Relaxed)
    }

    /// `Some(max calls kept)` if calls are recorded.
    pub(crate) fn record_limit(&self) -> Option<usize> {
        let behaviour = self.behaviour();
        behaviour
            .record_calls
            .then_some(behaviour.max_recorded_calls)
    }

    /// Updates a recorded call (if still kept) with what happened after it was recorded.
    pub(crate) fn update(&self, seq: u64, f: impl FnOnce(&mut RecordedCall)) {
        if let Some(call) = self.calls().iter_mut().rev().find(|c| c.seq == seq) {
            f(call);
        }
    }

    /// Keep `call`, evicting the oldest beyond `max`.
    pub(crate) fn record(&self, call: RecordedCall, max: usize) {
        if max == 0 {
            return;
        }
        let mut calls = self.calls();
        while calls.len() >= max {
            calls.pop_front();
        }
        calls.push_back(call);
    }

    /// Resolves when the mock shuts down.
    pub(crate) fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut stopped = self.stopped.clone();
        async move {
            // Err = the sender is gone, which is the signal; no value is ever sent.
            while stopped.changed().await.is_ok() {}
        }
    }
}

/// The outcome of checking a presented API key against the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyCheck {
    Accepted,
    Missing,
    Wrong,
}

pub(crate) fn check_key(expected: Option<&str>, presented: Option<&str>) -> KeyCheck {
    match (expected, presented) {
        (None, _) => KeyCheck::Accepted,
        (Some(_), None) => KeyCheck::Missing,
        (Some(expected), Some(presented)) if expected == presented => KeyCheck::Accepted,
        (Some(_), Some(_)) => KeyCheck::Wrong,
    }
}

#[cfg(test)]
mod tests;
