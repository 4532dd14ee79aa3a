//! One request and how its answer is read (status, SSE events).

use std::time::Instant;

use anyhow::Context as _;
use axum::body::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::args::Args;

pub(crate) fn client(args: &Args, connections: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(args.timeout)
        .build()
        .context("building the HTTP client")
}

pub(crate) fn headers(key: Option<&str>) -> anyhow::Result<HeaderMap> {
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(key) = key {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}")).context("--key")?;
        v.set_sensitive(true);
        h.insert(AUTHORIZATION, v);
    }
    Ok(h)
}

/// What every request sends.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) expect: u16,
    /// Read the answer as server-sent events.
    pub(crate) stream: bool,
    /// Streams: note when each content event arrived (`Answer::content_at`).
    pub(crate) record_content: bool,
}

/// How one request ended: its HTTP status, or why there was none.
pub(crate) enum Outcome {
    Status(u16),
    Failed(&'static str),
}

/// One request's answer.
pub(crate) struct Answer {
    pub(crate) outcome: Outcome,
    /// The body (not kept for streams).
    pub(crate) body: Bytes,
    /// Streams: when the first event with content arrived.
    pub(crate) first_token: Option<Instant>,
    /// Streams cut by `disconnect_after`: when the connection was dropped.
    pub(crate) disconnected: Option<Instant>,
    /// Streams of a `record_content` target: when each content event arrived.
    pub(crate) content_at: Vec<Instant>,
}

impl Answer {
    pub(crate) fn failed(kind: &'static str) -> Answer {
        Answer {
            outcome: Outcome::Failed(kind),
            body: Bytes::new(),
            first_token: None,
            disconnected: None,
            content_at: Vec::new(),
        }
    }
}

impl Target {
    /// Sends one request and reads the whole response (a stream: to `[DONE]`).
    pub(crate) async fn send(&self, client: &reqwest::Client) -> Answer {
        self.send_until(client, None).await
    }

    /// Sends one request; a stream is dropped after `disconnect_after` data events.
    pub(crate) async fn send_until(
        &self,
        client: &reqwest::Client,
        disconnect_after: Option<u32>,
    ) -> Answer {
        let sent = client
            .post(&self.url)
            .headers(self.headers.clone())
            .body(self.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Answer::failed(error_kind(&e)),
        };
        let status = response.status().as_u16();
        if self.stream && status == self.expect {
            return read_events(response, status, disconnect_after, self.record_content).await;
        }
        // The body is read in full: the response is complete only then, and the
        // connection goes back to the pool only then.
        match response.bytes().await {
            Ok(body) => Answer {
                outcome: Outcome::Status(status),
                body,
                first_token: None,
                disconnected: None,
                content_at: Vec::new(),
            },
            Err(e) => Answer::failed(error_kind(&e)),
        }
    }
}

/// What one SSE `data:` payload is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Done,
    Error,
    Content,
    /// A chunk without content: the role chunk, the finish chunk, the usage chunk.
    Other,
}

pub(crate) fn classify(payload: &[u8]) -> Event {
    if payload == b"[DONE]" {
        return Event::Done;
    }
    let Ok(v) = serde_json::from_slice::<Value>(payload) else {
        return Event::Other;
    };
    if v.get("error").is_some() {
        Event::Error
    } else if v["choices"][0]["delta"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        Event::Content
    } else {
        Event::Other
    }
}

/// Reads a stream's events until `[DONE]`, an error event, its end, or `disconnect_after`
/// data events (then the response is dropped, which closes the connection). `record`: note
/// the arrival of every content event.
pub(crate) async fn read_events(
    mut response: reqwest::Response,
    status: u16,
    disconnect_after: Option<u32>,
    record: bool,
) -> Answer {
    let mut answer = Answer::failed("no_done");
    let mut pending: Vec<u8> = Vec::new();
    let mut events = 0u32;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => return answer,
            Err(e) => {
                answer.outcome = Outcome::Failed(error_kind(&e));
                return answer;
            }
        };
        let now = Instant::now();
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(nl) = pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &pending[consumed..consumed + nl];
            consumed += nl + 1;
            let Some(payload) = line.strip_prefix(b"data:") else {
                continue;
            };
            let payload = payload.trim_ascii();
            events += 1;
            // Once the first token is in, only [DONE] and errors matter: no more JSON parsing
            // than needed (the generator shares the cores with the stack).
            let event = if record || answer.first_token.is_none() {
                classify(payload)
            } else if payload == b"[DONE]" {
                Event::Done
            } else if payload.starts_with(b"{\"error\"") {
                Event::Error
            } else {
                Event::Other
            };
            match event {
                Event::Done => {
                    answer.outcome = Outcome::Status(status);
                    return answer;
                }
                Event::Error => {
                    answer.outcome = Outcome::Failed("stream_error");
                    return answer;
                }
                Event::Content => {
                    answer.first_token.get_or_insert(now);
                    if record {
                        answer.content_at.push(now);
                    }
                }
                Event::Other => {}
            }
            if disconnect_after.is_some_and(|n| events >= n) {
                drop(response);
                answer.disconnected = Some(Instant::now());
                answer.outcome = Outcome::Failed("disconnected");
                return answer;
            }
        }
        pending.drain(..consumed);
    }
}

/// Counts the content events in the bytes of an HTTP/1 response as they pass a relay (SSE
/// lines; a chunked body's size lines are not `data:` lines and are skipped).
#[derive(Default)]
pub(crate) struct ContentScanner {
    pending: Vec<u8>,
}

impl ContentScanner {
    /// The content events whose line ends in `bytes`.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> usize {
        self.pending.extend_from_slice(bytes);
        let mut consumed = 0;
        let mut content = 0;
        while let Some(nl) = self.pending[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[consumed..consumed + nl];
            consumed += nl + 1;
            if let Some(payload) = line.strip_prefix(b"data:") {
                content += usize::from(classify(payload.trim_ascii()) == Event::Content);
            }
        }
        self.pending.drain(..consumed);
        content
    }
}

pub(crate) fn error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "io"
    }
}
