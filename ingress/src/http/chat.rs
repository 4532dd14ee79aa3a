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

use crate::admission::{audit_event, checked, of_caller, publish_traced, Dialect, Mode};
use crate::error::ApiError;
use crate::guard::Output;
use crate::keys::Caller;
use crate::state::AppState;

pub(super) async fn chat_completions(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    sync_call(app, headers, body, Dialect::OpenAi).await
}

/// A sync call in either dialect: publish, then wait for the result (or its stream).
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
        if accepted.record.stream {
            let guard = app.waiters.register_stream(&request_id);
            if let Err(e) = publish_traced(&*app, &mut accepted).await {
                return dialect.error(e);
            }
            return super::sse::respond(Arc::clone(&app), &accepted.record, guard, dialect, output)
                .instrument(tracing::info_span!("reply", stream = true))
                .await;
        }
        let mut guard = app.waiters.register(&request_id);
        if let Err(e) = publish_traced(&*app, &mut accepted).await {
            return dialect.error(e);
        }
        let now = now_ms();
        let until_deadline =
            Duration::from_millis((accepted.record.deadline_ms - now).max(0) as u64);
        // A worker answers `expired` at the deadline; the grace covers its round trip.
        let wait = app
            .config
            .server
            .sync_timeout_ms
            .min(until_deadline + Duration::from_secs(2));
        let waited = tokio::time::timeout(wait, &mut guard.receiver)
            .instrument(tracing::info_span!("reply", stream = false))
            .await;
        match waited {
            Ok(Ok(mut result)) => match output.finish(&mut result).await {
                Ok(()) => dialect.result(&result),
                Err(e) => {
                    app.audits.reject(
                        audit_event(&accepted.record, AuditAction::Rejected, 0, None),
                        &e,
                    );
                    dialect.error(e)
                }
            },
            Ok(Err(_)) => dialect.error(ApiError::ShuttingDown),
            Err(_) => dialect.error(ApiError::SyncTimeout(wait.as_millis(), request_id)),
        }
    }
    .instrument(span.clone())
    .await;
    ended(&span, &response);
    response
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
