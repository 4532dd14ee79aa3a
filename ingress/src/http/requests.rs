//! `POST /v1/requests` (async submission), `GET /v1/requests/{id}` (its status and result)
//! and `POST /v1/requests/{id}/cancel` ([`super::cancel`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use sluice_schemas::Audit;

use tracing::Instrument;

use super::chat::{ended, reject, request_span};
use super::REQUEST_ID_HEADER;
use crate::admission::{checked, of_caller, publish_traced, Dialect, Mode};
use crate::error::ApiError;
use crate::keys::Caller;
use crate::state::AppState;

pub(super) async fn submit(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    submit_in(app, headers, body, Dialect::OpenAi).await
}

/// An async submission: `POST /v1/requests` (OpenAI's chat body), or a background
/// `POST /v1/responses` (the Responses body, answered as a queued `response`).
pub(super) async fn submit_in(
    app: Arc<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    dialect: Dialect,
) -> Response {
    let caller = match app.keys.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return dialect.error(e),
    };
    let route = match dialect {
        Dialect::Responses => "POST /v1/responses",
        _ => "POST /v1/requests",
    };
    let span = request_span(&headers, &caller, route);
    let response = submit_traced(&app, &caller, &headers, body, dialect, route)
        .instrument(span.clone())
        .await;
    ended(&span, &response);
    response
}

async fn submit_traced(
    app: &Arc<AppState>,
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    dialect: Dialect,
    route: &str,
) -> Response {
    let request = tracing::Span::current();
    let scope = match super::idempotent::scope(headers, caller, route, &body) {
        Ok(scope) => scope,
        Err(e) => return reject(app, caller, e, dialect),
    };
    let admitted = async {
        let accepted = checked(app, caller, headers, body, Mode::Async, dialect).await?;
        request.record("request_id", accepted.record.request_id.as_str());
        if let Some(url) = &accepted.webhook_url {
            // The destination's DNS answer, for a clear 400 now (delivery checks again).
            app.webhooks.check(&caller.team, url).await?;
        }
        accepted
            .policy
            .moderate_input(&accepted.moderation_input)
            .await?;
        Ok::<_, ApiError>(accepted)
    };
    let mut accepted = match admitted.instrument(tracing::info_span!("admission")).await {
        Ok(a) => a,
        Err(e) => return reject(app, caller, e, dialect),
    };
    let ticket = match keyed(app, scope.as_ref(), &accepted).await {
        Ok(Keyed::Ticket(ticket)) => ticket,
        Ok(Keyed::Original(original)) => {
            let mut r = accepted.record.clone();
            r.request_id = original;
            return super::idempotent::replayed(queued(&r, dialect));
        }
        Err(e) => return dialect.error(e),
    };
    let published = publish_traced(&**app, &mut accepted).await;
    super::idempotent::published(app, ticket.as_ref(), &published).await;
    if let Err(e) = published {
        return dialect.error(e);
    }
    let r = &accepted.record;
    app.recent.remember(&r.request_id, &r.team);
    if let Some(url) = &accepted.webhook_url {
        crate::batch::webhooks::watch_request(Arc::clone(app), r, url.clone());
    }
    queued(r, dialect)
}

/// What an async request does about its `Idempotency-Key`.
enum Keyed {
    /// Publish, holding the key's claim if it has a key.
    Ticket(Option<crate::idempotency::Ticket>),
    /// A retry: the id of the request that holds the key.
    Original(String),
}

/// An async retry never waits: it gets the first request's id once Kafka has that request
/// (its result, if any, is at `GET /v1/requests/{id}`); 409 while the first publish is in
/// doubt; the key itself when that request never reached Kafka.
async fn keyed(
    app: &AppState,
    scope: Option<&crate::idempotency::Scope>,
    accepted: &crate::admission::Accepted,
) -> Result<Keyed, ApiError> {
    use super::idempotent::{claim, wait, Keyed as Claimed, Waited};
    let r = &accepted.record;
    let held = match claim(app, scope, &r.request_id).await? {
        Claimed::Fresh(ticket) => return Ok(Keyed::Ticket(ticket)),
        Claimed::Retry(held) => held,
    };
    let Some(scope) = scope else {
        return Ok(Keyed::Ticket(None));
    };
    let known = held.accepted
        || app.recent.contains(&held.request_id, &r.team)
        || app
            .store
            .was_accepted(&held.request_id, &r.team)
            .await
            .map_err(ApiError::StoreUnavailable)?;
    if known {
        crate::ops::idempotency("replayed");
        return Ok(Keyed::Original(held.request_id));
    }
    match wait(
        app,
        scope,
        held,
        &r.team,
        &r.request_id,
        std::time::Duration::ZERO,
    )
    .await?
    {
        Waited::Result(_, original) => Ok(Keyed::Original(original)),
        Waited::Mine(ticket) => Ok(Keyed::Ticket(Some(ticket))),
    }
}

/// `202 Accepted` for an async request, with its status URL; a background response is a
/// queued `response` object (200, as OpenAI answers it).
fn queued(r: &sluice_schemas::Request, dialect: Dialect) -> Response {
    if dialect == Dialect::Responses {
        let created_at = u64::try_from(r.created_at_ms / 1000).unwrap_or_default();
        let body = sluice_dialect::responses::response::queued(&r.request_id, created_at, &r.model);
        let mut response = Json(body).into_response();
        if let Ok(v) = HeaderValue::from_str(&r.request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        return response;
    }
    let location = format!("/v1/requests/{}", r.request_id);
    let mut response = (
        StatusCode::ACCEPTED,
        Json(json!({
            "id": r.request_id,
            "object": "sluice.request",
            "status": "queued",
            "model": r.model,
            "priority": r.priority.as_str(),
            "created_at": r.created_at_ms / 1000,
            "deadline_at": r.deadline_ms / 1000,
            "prompt_tokens": r.prompt_tokens,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

pub(super) async fn request_status(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let state = async_state(&app, &caller, &id).await?;
    Ok(Json(status_json(&id, state, false)).into_response())
}

/// `POST /v1/requests/{id}/cancel`: the request as it stands after the cancel.
pub(super) async fn cancel_request(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let state = super::cancel::cancel(&app, &caller, &id).await?;
    Ok(Json(status_json(&id, state, true)).into_response())
}

/// The `sluice.request` object of request `id`; `cancel_requested` marks one still queued
/// after a cancel.
fn status_json(id: &str, state: AsyncState, cancel_requested: bool) -> Value {
    match state {
        AsyncState::Done {
            status,
            http_status,
            model,
            finished_at_ms,
            response,
            error,
        } => json!({
            "id": id,
            "object": "sluice.request",
            "status": status,
            "model": model,
            "http_status": http_status,
            "completed_at": finished_at_ms / 1000,
            "response": response,
            "error": error,
        }),
        AsyncState::Queued => {
            let mut body = json!({
                "id": id,
                "object": "sluice.request",
                "status": "queued",
                "response": Value::Null,
                "error": Value::Null,
            });
            if cancel_requested {
                body["cancel_requested"] = Value::Bool(true);
            }
            body
        }
    }
}

/// Where an async request stands, as its caller may see it.
pub(super) enum AsyncState {
    /// Its result: the completion (`response`) or the error, after output moderation;
    /// `status` is the result's (`completed`, `failed`, `expired`), or `cancelled` for one
    /// its caller cancelled before it started.
    Done {
        status: String,
        http_status: i32,
        model: String,
        finished_at_ms: i64,
        response: Value,
        error: Value,
    },
    Queued,
}

/// The state of the caller's async request `id`; another team's is not found.
pub(super) async fn async_state(
    app: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<AsyncState, ApiError> {
    if let Some(stored) = app
        .store
        .result(id, &caller.team)
        .await
        .map_err(ApiError::StoreUnavailable)?
    {
        let parse = || serde_json::from_str(&stored.body).unwrap_or(Value::Null);
        let body: Value = if stored.body.len() < crate::cpu::HEAVY_BYTES {
            parse()
        } else {
            crate::cpu::in_place(parse)
        };
        let policy = app.guard.policy(&caller.team);
        let mut status = stored.status.clone();
        let mut http_status = stored.http_status;
        let (response, error) = if stored.status != "completed" {
            let error = body.get("error").cloned().unwrap_or(body);
            if http_status == 499 && error["code"] == sluice_schemas::REQUEST_CANCELLED {
                status = "cancelled".into();
            }
            (Value::Null, error)
        } else if policy.moderates_output() {
            // Async results are checked when they are read: the caller never gets a
            // completion the team's classifier refuses.
            match policy
                .moderate_output(&crate::guard::completion_texts(&stored.body))
                .await
            {
                Ok(()) => (body, Value::Null),
                Err(e @ ApiError::ModerationUnavailable(_)) => return Err(e),
                Err(e) => {
                    app.audits.reject(
                        Audit {
                            request_id: id.to_string(),
                            model: stored.model.clone(),
                            ..of_caller(caller)
                        },
                        &e,
                    );
                    status = "failed".into();
                    http_status = i32::from(e.status().as_u16());
                    (
                        Value::Null,
                        serde_json::to_value(e.body().error).unwrap_or_default(),
                    )
                }
            }
        } else {
            (body, Value::Null)
        };
        return Ok(AsyncState::Done {
            status,
            http_status,
            model: stored.model,
            finished_at_ms: stored.finished_at_ms,
            response,
            error,
        });
    }
    let queued = app.recent.contains(id, &caller.team)
        || app
            .store
            .was_accepted(id, &caller.team)
            .await
            .map_err(ApiError::StoreUnavailable)?;
    if queued {
        return Ok(AsyncState::Queued);
    }
    // Another team's request is indistinguishable from a missing one.
    Err(ApiError::RequestNotFound(id.to_string()))
}
