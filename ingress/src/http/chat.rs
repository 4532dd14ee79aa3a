//! `POST /v1/chat/completions`, and the sync call both dialects share: admit, publish,
//! then wait for the result (or stream it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use sluice_schemas::{now_ms, AuditAction};
use tracing::Instrument;

use crate::admission::{audit_event, checked, of_caller, publish_traced, Accepted, Dialect, Mode};
use crate::error::ApiError;
use crate::guard::Output;
use crate::keys::Caller;
use crate::replies::StreamGuard;
use crate::state::AppState;

pub(super) async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    sync_call(app, headers, body, Dialect::OpenAi).await
}

/// `POST /v1/embeddings`: a sync call with an embeddings body.
pub(super) async fn embeddings(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    sync_call(app, headers, body, Dialect::Embeddings).await
}

/// A sync call in any dialect: publish, then wait for the result (or its stream).
pub(crate) async fn sync_call(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    dialect: Dialect,
) -> Response {
    let caller = match app.keys.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return dialect.error(e),
    };
    if let Err(e) = app.keys.check_rate(&caller) {
        return dialect.error(e);
    }
    let route = match dialect {
        Dialect::OpenAi => "POST /v1/chat/completions",
        Dialect::Anthropic => "POST /v1/messages",
        Dialect::Embeddings => "POST /v1/embeddings",
        Dialect::Responses => "POST /v1/responses",
    };
    let scope = match super::idempotent::scope(&headers, &caller, route, &body) {
        Ok(scope) => scope,
        Err(e) => return reject(&app, &caller, e, dialect),
    };
    let span = request_span(&headers, &caller, route);
    let response = async move {
        let admitted = async {
            let accepted = checked(&app, &caller, &headers, body, Mode::Sync, dialect).await?;
            accepted
                .policy
                .moderate_input(&accepted.moderation_input)
                .await?;
            Ok::<_, ApiError>(accepted)
        };
        let admitted = admitted.instrument(tracing::info_span!("admission")).await;
        let mut accepted = match admitted {
            Ok(a) => a,
            Err(e) => return reject(&app, &caller, e, dialect),
        };
        let request_id = accepted.record.request_id.clone();
        tracing::Span::current().record("request_id", request_id.as_str());
        let output = Output::new(Arc::clone(&accepted.policy), accepted.restorer.clone());
        let now = now_ms();
        let until_deadline =
            Duration::from_millis((accepted.record.deadline_ms - now).max(0) as u64);
        // A worker answers `expired` at the deadline; the grace covers its round trip.
        let wait = app
            .config
            .server
            .sync_timeout_ms
            .min(until_deadline + Duration::from_secs(2));
        let ticket = match claim_or_wait(&app, scope.as_ref(), &accepted, wait).await {
            Ok(Keyed::Ticket(ticket)) => ticket,
            Ok(Keyed::Answered(stored, original)) => {
                return replay(app, &accepted, stored, original, dialect, output).await
            }
            Err(e) => return dialect.error(e),
        };
        if let Some(entry) = super::cached::lookup(&app, &accepted).await {
            let ticket = ticket.as_ref();
            return super::cached::serve(app, &accepted, entry, dialect, output, ticket).await;
        }
        let response = answer(
            Arc::clone(&app),
            &mut accepted,
            ticket,
            dialect,
            output,
            wait,
        )
        .await;
        match accepted.cache.as_ref().map(crate::cache::Plan::missed) {
            Some(value) => super::cached::mark(response, value),
            None => response,
        }
    }
    .instrument(span.clone())
    .await;
    ended(&span, &response);
    response
}

/// Publishes an admitted request and answers with its result (or stream), kept in the
/// response cache when its plan says so.
async fn answer(
    app: Arc<AppState>,
    accepted: &mut Accepted,
    ticket: Option<crate::idempotency::Ticket>,
    dialect: Dialect,
    output: Output,
    wait: Duration,
) -> Response {
    let request_id = accepted.record.request_id.clone();
    if accepted.record.stream {
        let guard = app.waiters.register_stream(&request_id);
        let published = publish_traced(&*app, accepted).await;
        super::idempotent::published(&app, ticket.as_ref(), &published).await;
        if let Err(e) = published {
            return dialect.error(e);
        }
        // A keyed stream runs to its end when the caller goes away: it said it would
        // retry, and the retry gets the whole answer.
        let cancels = ticket.is_none();
        let (record, fill) = (&accepted.record, accepted.cache.clone());
        return super::sse::respond(
            Arc::clone(&app),
            record,
            guard,
            dialect,
            output,
            cancels,
            fill,
        )
        .instrument(tracing::info_span!("reply", stream = true))
        .await;
    }
    let mut guard = app.waiters.register(&request_id);
    let published = publish_traced(&*app, accepted).await;
    super::idempotent::published(&app, ticket.as_ref(), &published).await;
    if let Err(e) = published {
        return dialect.error(e);
    }
    let waited = tokio::time::timeout(wait, &mut guard.receiver)
        .instrument(tracing::info_span!("reply", stream = false))
        .await;
    match waited {
        Ok(Ok(result)) => {
            if let Some(plan) = &accepted.cache {
                app.cache.put(plan, &result);
            }
            finished(&app, accepted, output, result, dialect).await
        }
        Ok(Err(_)) => dialect.error(ApiError::ShuttingDown),
        Err(_) => dialect.error(ApiError::SyncTimeout(wait.as_millis(), request_id)),
    }
}

/// A JSON answer through the output guardrails; one they withhold is refused and audited.
pub(super) async fn finished(
    app: &AppState,
    accepted: &Accepted,
    output: Output,
    mut result: sluice_schemas::Result,
    dialect: Dialect,
) -> Response {
    match output.finish(&mut result).await {
        Ok(()) => dialect.result(&result),
        Err(e) => {
            let audit = audit_event(&accepted.record, AuditAction::Rejected, 0, None);
            app.audits.reject(audit, &e);
            dialect.error(e)
        }
    }
}

/// What a valid sync request does about its `Idempotency-Key`.
enum Keyed {
    /// Publish, holding the key's claim if it has a key.
    Ticket(Option<crate::idempotency::Ticket>),
    /// A retry: the first request's result and id.
    Answered(crate::lookup::StoredResult, String),
}

/// Claims the request's key, or, for a retry, waits up to `wait` for the first request's
/// result (or takes over a key whose request never reached Kafka).
async fn claim_or_wait(
    app: &AppState,
    scope: Option<&crate::idempotency::Scope>,
    accepted: &Accepted,
    wait: Duration,
) -> Result<Keyed, ApiError> {
    use super::idempotent::{claim, Keyed as Claimed, Waited};
    let r = &accepted.record;
    match claim(app, scope, &r.request_id).await? {
        Claimed::Fresh(ticket) => Ok(Keyed::Ticket(ticket)),
        Claimed::Retry(held) => {
            let Some(scope) = scope else {
                return Ok(Keyed::Ticket(None));
            };
            match super::idempotent::wait(app, scope, held, &r.team, &r.request_id, wait).await? {
                Waited::Result(stored, original) => Ok(Keyed::Answered(stored, original)),
                Waited::Mine(ticket) => Ok(Keyed::Ticket(Some(ticket))),
            }
        }
    }
}

/// The first request's answer, given to its retry as the retry asked for it (JSON or a
/// stream, in its dialect), through the same output guardrails.
async fn replay(
    app: Arc<AppState>,
    accepted: &Accepted,
    stored: crate::lookup::StoredResult,
    original: String,
    dialect: Dialect,
    output: Output,
) -> Response {
    let mut result = super::replay::record(stored, original, &accepted.record);
    if accepted.record.stream {
        let mut record = accepted.record.clone();
        record.request_id = result.request_id.clone();
        let usage = super::replay::wants_usage(&record.body);
        let guard = StreamGuard::replay(super::replay::stream_events(result, usage));
        let response = super::sse::respond(app, &record, guard, dialect, output, false, None).await;
        return super::idempotent::replayed(response);
    }
    match output.finish(&mut result).await {
        Ok(()) => super::idempotent::replayed(dialect.result(&result)),
        Err(e) => dialect.error(e),
    }
}

/// Records the answer's status on the request span; a 5xx marks it failed.
pub(crate) fn ended(span: &tracing::Span, response: &Response) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The span of one API request (`otel.kind = server`): a child of the caller's W3C
/// `traceparent` when it sent a valid one, else the root of a new trace.
pub(crate) fn request_span(headers: &HeaderMap, caller: &Caller, route: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = route,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        team = %caller.team,
        request_id = tracing::field::Empty,
    );
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    sluice_schemas::trace::set_parent(&span, traceparent);
    span
}

/// Answers a request refused before it was accepted, and records the rejection for audit
/// (in the background).
pub(super) fn reject(
    app: &AppState,
    caller: &Caller,
    error: ApiError,
    dialect: Dialect,
) -> Response {
    app.audits.reject(of_caller(caller), &error);
    dialect.error(error)
}
