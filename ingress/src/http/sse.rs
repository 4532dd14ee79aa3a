//! Streaming responses: the caller gets OpenAI's server-sent events (or, on
//! `/v1/messages`, Anthropic's) as the worker forwards them over the reply topic. A caller
//! that goes away cancels the provider call.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::{
    encode, now_ms, Audit, AuditAction, Cancel, Request, Status, StreamChunk, Topic,
};

use super::REQUEST_ID_HEADER;
use crate::admission::{audit_event, Dialect};
use crate::error::ApiError;
use crate::guard::{Output, StreamOutput};
use crate::http::anthropic::StreamWriter;
use crate::http::responses::StreamWriter as ResponsesWriter;
use crate::kafka::send;
use crate::replies::{ReplyEvent, StreamGuard};
use crate::state::AppState;

/// Publishes a `Cancel` for the request when dropped while armed: the response stream was
/// dropped before the result arrived, so the caller is gone.
struct CancelOnDrop {
    app: Arc<AppState>,
    request_id: String,
    team: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let app = Arc::clone(&self.app);
        let cancel = Cancel {
            request_id: std::mem::take(&mut self.request_id),
            team: std::mem::take(&mut self.team),
            reason: "client_disconnected".into(),
            occurred_at_ms: now_ms(),
        };
        tracing::info!(request_id = %cancel.request_id, "stream caller went away; cancelling");
        tokio::spawn(async move {
            let Ok(payload) = encode(&cancel) else { return };
            let topic = app.topics.name(&Topic::Cancels);
            if let Err(error) =
                send(&app.producer, &topic, &cancel.request_id, &payload, None).await
            {
                tracing::warn!(%error, request_id = %cancel.request_id, "cancel not published");
            }
        });
    }
}

/// A dialect's own stream events, made from the OpenAI chunks.
enum Writer {
    Anthropic(StreamWriter),
    Responses(ResponsesWriter),
}

impl Writer {
    fn render(&mut self, out: Out) -> Vec<Event> {
        match (self, out) {
            (Writer::Anthropic(w), Out::Chunk(data)) => w.chunk(&data),
            (Writer::Anthropic(w), Out::Done) => w.done(),
            (Writer::Anthropic(w), Out::Error(body)) => w.error(&body),
            (Writer::Responses(w), Out::Chunk(data)) => w.chunk(&data),
            (Writer::Responses(w), Out::Done) => w.done(),
            (Writer::Responses(w), Out::Error(body)) => w.error(&body),
        }
    }
}

struct StreamState {
    guard: StreamGuard,
    cancel: CancelOnDrop,
    /// The attempt whose chunks the caller is getting (a redelivered request streams again
    /// under another attempt; those chunks are not mixed in).
    attempt: String,
    next_seq: i32,
    pending: Option<StreamChunk>,
    idle: Duration,
    done: bool,
    /// Anthropic's or the Responses API's events; `None` = OpenAI's as they come.
    writer: Option<Writer>,
    /// Rendered events not sent yet.
    queue: VecDeque<Event>,
    /// Restoration and output moderation; `None` when the policy has neither.
    output: Option<StreamOutput>,
    /// The audit row for a stream a guardrail cuts (filled in then).
    audit: Audit,
    /// Where the completed answer goes in the response cache (a miss that may be stored).
    fill: Option<crate::cache::Plan>,
}

/// What the reply topic delivers to a stream, before it is rendered in a dialect.
enum Out {
    /// An OpenAI chunk (JSON).
    Chunk(String),
    Done,
    /// An OpenAI error body (JSON).
    Error(String),
}

/// Waits for the first event, then streams. Failures before the first chunk are answered as
/// plain JSON errors with their status, as OpenAI does. A caller that goes away cancels the
/// provider call if `cancels` (not for a keyed request, whose caller said it would retry,
/// nor for a replay). A completed answer is kept in the response cache under `fill`.
pub(super) async fn respond(
    app: Arc<AppState>,
    record: &Request,
    mut guard: StreamGuard,
    dialect: Dialect,
    output: Output,
    cancels: bool,
    fill: Option<crate::cache::Plan>,
) -> Response {
    let mut cancel = CancelOnDrop {
        app: Arc::clone(&app),
        request_id: record.request_id.clone(),
        team: record.team.clone(),
        armed: cancels && guard.is_live(),
    };
    let until_deadline = Duration::from_millis((record.deadline_ms - now_ms()).max(0) as u64);
    let wait = app
        .config
        .server
        .sync_timeout_ms
        .min(until_deadline + Duration::from_secs(2));
    let first = match tokio::time::timeout(wait, guard.receiver.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => return dialect.error(ApiError::ShuttingDown),
        Err(_) => {
            return dialect.error(ApiError::SyncTimeout(
                wait.as_millis(),
                record.request_id.clone(),
            ))
        }
    };
    let first = match first {
        ReplyEvent::End(mut result) => {
            cancel.armed = false;
            if let Some(plan) = &fill {
                app.cache.put(plan, &result);
            }
            if let Err(e) = output.finish(&mut result).await {
                app.audits
                    .reject(audit_event(record, AuditAction::Rejected, 0, None), &e);
                return dialect.error(e);
            }
            return dialect.result(&result);
        }
        ReplyEvent::Chunk(chunk) => chunk,
    };
    let state = StreamState {
        guard,
        cancel,
        attempt: first.attempt.clone(),
        // The first event goes through the same check as the rest: a stream whose first
        // record was lost does not start mid-answer.
        next_seq: 0,
        pending: Some(first),
        idle: app.config.server.sync_timeout_ms,
        done: false,
        writer: match dialect {
            Dialect::Anthropic => Some(Writer::Anthropic(StreamWriter::new(
                &record.model,
                record.prompt_tokens,
            ))),
            Dialect::Responses => Some(Writer::Responses(ResponsesWriter::new(
                &record.request_id,
                &record.model,
                record.created_at_ms,
            ))),
            Dialect::OpenAi | Dialect::Embeddings => None,
        },
        queue: VecDeque::new(),
        output: (!output.is_noop()).then(|| output.into_stream()),
        audit: audit_event(record, AuditAction::Rejected, 0, None),
        fill,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(event), st));
            }
            let out = next_out(&mut st).await?;
            for out in guard_output(&mut st, out).await {
                let rendered = match (&mut st.writer, out) {
                    (None, Out::Chunk(data) | Out::Error(data)) => {
                        vec![Event::default().data(data)]
                    }
                    (None, Out::Done) => vec![Event::default().data("[DONE]")],
                    (Some(writer), out) => writer.render(out),
                };
                st.queue.extend(rendered);
            }
        }
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&record.request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// Applies the output guardrails to what the reply topic delivered: masked values restored
/// (text that may be a split placeholder is held back, then released), and moderation of
/// the text so far; a flagged stream ends with an error event instead of its next chunk
/// or its final event (the provider call is cancelled if still running).
async fn guard_output(st: &mut StreamState, out: Out) -> Vec<Out> {
    let Some(output) = st.output.as_mut() else {
        return vec![out];
    };
    let (outs, checked) = match out {
        Out::Chunk(data) => {
            let data = output.chunk(data);
            (vec![Out::Chunk(data)], output.check_due().await)
        }
        Out::Done => {
            let checked = output.check_final().await;
            let mut outs: Vec<Out> = output.finish().map(Out::Chunk).into_iter().collect();
            outs.push(Out::Done);
            (outs, checked)
        }
        Out::Error(body) => {
            let mut outs: Vec<Out> = output.finish().map(Out::Chunk).into_iter().collect();
            outs.push(Out::Error(body));
            (outs, Ok(()))
        }
    };
    match checked {
        Ok(()) => outs,
        Err(error) => {
            st.done = true;
            st.cancel.app.audits.reject(st.audit.clone(), &error);
            vec![Out::Error(error.body().to_json())]
        }
    }
}

async fn next_out(st: &mut StreamState) -> Option<Out> {
    if st.done {
        return None;
    }
    loop {
        let received = match st.pending.take() {
            Some(first) => Ok(Some(ReplyEvent::Chunk(first))),
            None => tokio::time::timeout(st.idle, st.guard.receiver.recv()).await,
        };
        let event = match received {
            Ok(Some(event)) => event,
            Ok(None) => {
                st.done = true;
                return None;
            }
            Err(_) => {
                st.done = true;
                let body = ErrorBody::new(
                    "timeout",
                    Some("stream_idle_timeout"),
                    "No data arrived for this stream in time.",
                );
                return Some(Out::Error(body.to_json()));
            }
        };
        match event {
            ReplyEvent::Chunk(chunk) => {
                if chunk.attempt != st.attempt || chunk.seq < st.next_seq {
                    // Another attempt (redelivery) or a duplicate: never mixed in.
                    continue;
                }
                if chunk.seq > st.next_seq {
                    // An event of this attempt never arrived (a record the worker could not
                    // publish): what follows cannot be the whole answer, so say so rather
                    // than end a shortened stream as if it were complete.
                    st.done = true;
                    tracing::warn!(
                        expected = st.next_seq,
                        got = chunk.seq,
                        "stream events missing"
                    );
                    let body = ErrorBody::new(
                        "server_error",
                        Some("stream_incomplete"),
                        "Part of this stream was lost between the worker and the ingress; the answer is incomplete.",
                    );
                    return Some(Out::Error(body.to_json()));
                }
                st.next_seq += 1;
                return Some(Out::Chunk(chunk.data));
            }
            ReplyEvent::End(result) => {
                st.done = true;
                st.cancel.armed = false;
                if result.worker != st.attempt {
                    let body = ErrorBody::new(
                        "server_error",
                        Some("stream_interrupted"),
                        "The worker serving this stream failed mid-way; the request was completed by another worker but its output cannot be spliced into this stream.",
                    );
                    return Some(Out::Error(body.to_json()));
                }
                if let Some(plan) = st.fill.take() {
                    st.cancel.app.cache.put(&plan, &result);
                }
                return Some(match result.status {
                    Status::Completed => Out::Done,
                    Status::Failed | Status::Expired => Out::Error(result.body),
                });
            }
        }
    }
}
