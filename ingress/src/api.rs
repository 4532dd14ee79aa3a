//! The HTTP API: OpenAI-compatible chat completions (sync), async submission and polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sluice_schemas::openai::{ChatCompletionRequest, Model, ModelList};
use sluice_schemas::{
    encode, now_ms, Audit, AuditAction, Priority, Request, Result as ResultRecord, Topic,
};
use tracing::Instrument;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::guard::{Asked, Output, Policy};
use crate::kafka::send;
use crate::state::AppState;
use crate::tokens::count_prompt_tokens;

pub const PRIORITY_HEADER: &str = "x-sluice-priority";
pub const TIMEOUT_HEADER: &str = "x-sluice-timeout-ms";
pub const REQUEST_ID_HEADER: &str = "x-sluice-request-id";

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.server.max_body_bytes;
    let header_limits = (
        state.config.server.max_header_count,
        state.config.server.max_header_bytes,
    );
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/messages", post(crate::anthropic::messages))
        .route("/v1/requests", post(submit))
        .route("/v1/requests/{id}", get(request_status))
        .route("/v1/models", get(models))
        .merge(crate::batch::routes())
        .route("/v1/budgets", get(crate::budget::admit::budgets))
        .merge(crate::admin::routes())
        // Key first, then the body (bounded in time and size): only for matched routes, so
        // an unknown URL is still a 404.
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::listener::intake,
        ))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let (count, bytes) = header_limits;
                async move {
                    let headers = request.headers();
                    let size: usize = headers
                        .iter()
                        .map(|(k, v)| k.as_str().len() + v.len())
                        .sum();
                    if headers.len() > count || size > bytes {
                        return ApiError::HeadersTooLarge { count, bytes }.into_response();
                    }
                    next.run(request).await
                }
            },
        ))
        .with_state(state)
}

/// Sluice's own options, given in the body as `"sluice": {...}` (removed before the body
/// reaches a provider) or as `x-sluice-*` headers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SluiceOptions {
    priority: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(default)]
    attributes: HashMap<String, String>,
    /// A prompt template, `name@version` or `name` (the latest version).
    template: Option<String>,
    /// The template's variables.
    variables: Option<serde_json::Map<String, Value>>,
    /// Restore masked PII in the answer (sync only); default: the team's `pii.restore`.
    restore: Option<bool>,
    /// Async only: a URL notified (Standard Webhooks) when the request has its result.
    webhook_url: Option<String>,
}

#[derive(Clone, Copy)]
enum Mode {
    Sync,
    Async,
}

/// A validated request, ready to publish.
struct Accepted {
    record: Request,
    topic: Topic,
    /// The team's guardrail policy.
    policy: Arc<Policy>,
    /// Masked values to put back into a sync answer.
    restorer: Option<crate::guard::restore::Restorer>,
    /// The final messages' text for the input moderation check (empty: no check).
    moderation_input: Vec<String>,
    /// What the `accepted` audit event records of the prompt.
    prompt_audit: crate::audit::PromptAudit,
    /// Notified when an async request has its result (docs/batch.md#webhooks).
    webhook_url: Option<String>,
}

/// The wire format of a sync endpoint. Both carry the same internal (OpenAI) request
/// through Kafka; they differ in what callers send and get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Anthropic,
}

impl Dialect {
    pub(crate) fn error(self, error: ApiError) -> Response {
        match self {
            Dialect::OpenAi => error.into_response(),
            Dialect::Anthropic => crate::anthropic::error_response(error),
        }
    }

    pub(crate) fn result(self, result: &ResultRecord) -> Response {
        match self {
            Dialect::OpenAi => result_response(result),
            Dialect::Anthropic => crate::anthropic::result_response(result),
        }
    }
}

async fn chat_completions(
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
    let span = tracing::info_span!("chat_completions", team = %caller.team, request_id = tracing::field::Empty);
    async move {
        let accepted = match checked(&app, &caller, &headers, body, Mode::Sync, dialect).await {
            Ok(a) => a,
            Err(e) => return app.reject(&caller, e, dialect),
        };
        if let Err(e) = accepted
            .policy
            .moderate_input(&accepted.moderation_input)
            .await
        {
            return app.reject(&caller, e, dialect);
        }
        let request_id = accepted.record.request_id.clone();
        tracing::Span::current().record("request_id", request_id.as_str());
        let output = Output::new(Arc::clone(&accepted.policy), accepted.restorer.clone());
        if accepted.record.stream {
            let guard = app.waiters.register_stream(&request_id);
            if let Err(e) = app.publish(&accepted).await {
                return dialect.error(e);
            }
            return crate::stream::respond(
                Arc::clone(&app),
                &accepted.record,
                guard,
                dialect,
                output,
            )
            .await;
        }
        let mut guard = app.waiters.register(&request_id);
        if let Err(e) = app.publish(&accepted).await {
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
        match tokio::time::timeout(wait, &mut guard.receiver).await {
            Ok(Ok(mut result)) => match output.finish(&mut result).await {
                Ok(()) => dialect.result(&result),
                Err(e) => {
                    app.audit_refusal(&accepted.record, &e);
                    dialect.error(e)
                }
            },
            Ok(Err(_)) => dialect.error(ApiError::ShuttingDown),
            Err(_) => dialect.error(ApiError::SyncTimeout(wait.as_millis(), request_id)),
        }
    }
    .instrument(span)
    .await
}

async fn submit(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let caller = match app.keys.authenticate(&headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let accepted = match checked(&app, &caller, &headers, body, Mode::Async, Dialect::OpenAi).await
    {
        Ok(a) => a,
        Err(e) => return app.reject(&caller, e, Dialect::OpenAi),
    };
    if let Some(url) = &accepted.webhook_url {
        // The destination's DNS answer, for a clear 400 now (delivery checks again).
        if let Err(e) = app.webhooks.check(&caller.team, url).await {
            return app.reject(&caller, ApiError::WebhookRefused(e), Dialect::OpenAi);
        }
    }
    if let Err(e) = accepted
        .policy
        .moderate_input(&accepted.moderation_input)
        .await
    {
        return app.reject(&caller, e, Dialect::OpenAi);
    }
    if let Err(e) = app.publish(&accepted).await {
        return e.into_response();
    }
    let r = &accepted.record;
    app.remember(&r.request_id, &r.team);
    if let Some(url) = &accepted.webhook_url {
        crate::batch::webhooks::watch_request(Arc::clone(&app), r, url.clone());
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

async fn request_status(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    if let Some(stored) = app
        .store
        .result(&id, &caller.team)
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
            (Value::Null, body.get("error").cloned().unwrap_or(body))
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
                    app.send_refusal(
                        Audit {
                            event_id: String::new(),
                            request_id: id.clone(),
                            team: caller.team.clone(),
                            key_id: caller.key_id.clone(),
                            action: AuditAction::Rejected,
                            model: stored.model.clone(),
                            priority: Priority::Standard,
                            http_status: 0,
                            reason: None,
                            prompt_tokens: 0,
                            occurred_at_ms: 0,
                            ..Audit::default()
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
        return Ok(Json(json!({
            "id": id,
            "object": "sluice.request",
            "status": status,
            "model": stored.model,
            "http_status": http_status,
            "completed_at": stored.finished_at_ms / 1000,
            "response": response,
            "error": error,
        }))
        .into_response());
    }
    let queued = app.recently_accepted(&id, &caller.team)
        || app
            .store
            .was_accepted(&id, &caller.team)
            .await
            .map_err(ApiError::StoreUnavailable)?;
    if queued {
        return Ok(Json(json!({
            "id": id,
            "object": "sluice.request",
            "status": "queued",
            "response": Value::Null,
            "error": Value::Null,
        }))
        .into_response());
    }
    // Another team's request is indistinguishable from a missing one.
    Err(ApiError::RequestNotFound(id))
}

async fn models(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, ApiError> {
    let caller = app.keys.authenticate(&headers)?;
    let data = app
        .config
        .models
        .iter()
        .filter(|m| app.keys.allows_model(&caller, &m.id))
        .map(|m| Model {
            id: m.id.clone(),
            object: "model".into(),
            created: 0,
            owned_by: m.owned_by.clone(),
        })
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}

async fn not_found() -> Response {
    let body = sluice_schemas::openai::ErrorBody::new(
        "invalid_request_error",
        Some("unknown_url"),
        "Unknown request URL. See the README for the endpoints Sluice serves.",
    );
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn method_not_allowed() -> Response {
    let body = sluice_schemas::openai::ErrorBody::new(
        "invalid_request_error",
        Some("method_not_allowed"),
        "Method not allowed for this URL.",
    );
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}

/// The caller sees what the provider (or the worker, for failures) answered.
pub(crate) fn result_response(result: &ResultRecord) -> Response {
    let status = StatusCode::from_u16(result.http_status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, result.body.clone()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&result.request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    response
}

/// [`validate`], on the blocking pool for a large body (JSON parsing, guard scans and token
/// counting of megabytes would stall the runtime: docs/security.md).
async fn checked(
    app: &Arc<AppState>,
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mode: Mode,
    dialect: Dialect,
) -> Result<Accepted, ApiError> {
    if body
        .as_ref()
        .map_or(true, |b| b.len() < crate::cpu::HEAVY_BYTES)
    {
        return validate(app, caller, headers, body, mode, dialect);
    }
    let (app, caller, headers) = (Arc::clone(app), caller.clone(), headers.clone());
    crate::cpu::offload(move || validate(&app, &caller, &headers, body, mode, dialect))
        .await
        .map_err(ApiError::Internal)?
}

fn validate(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mode: Mode,
    dialect: Dialect,
) -> Result<Accepted, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: app.config.server.max_body_bytes,
            }
        } else {
            ApiError::NotJson
        }
    })?;
    let mut request: ChatCompletionRequest = match dialect {
        Dialect::OpenAi => serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?,
        Dialect::Anthropic => crate::anthropic::to_openai(&body)?,
    };
    let options: SluiceOptions = match request.extra.remove("sluice") {
        Some(v) => serde_json::from_value(v).map_err(|_| ApiError::InvalidParam {
            param: "sluice",
            problem: "expected an object with optional priority, timeout_ms, attributes, template, variables, restore and webhook_url",
        })?,
        None => SluiceOptions::default(),
    };
    if let Some(url) = &options.webhook_url {
        if matches!(mode, Mode::Sync) {
            return Err(ApiError::InvalidParam {
                param: "sluice.webhook_url",
                problem: "webhooks notify async requests; use POST /v1/requests",
            });
        }
        app.webhooks
            .check_now(&caller.team, url)
            .map_err(ApiError::WebhookRefused)?;
    }
    if options.restore == Some(true) && matches!(mode, Mode::Async) {
        return Err(ApiError::InvalidParam {
            param: "sluice.restore",
            problem: "masked values are never restored in async results: results are stored, and the mapping from placeholder to value never leaves the ingress; use POST /v1/chat/completions",
        });
    }
    if request.model.trim().is_empty() {
        return Err(ApiError::EmptyModel);
    }
    let tokenizer = *app
        .models
        .get(&request.model)
        .ok_or_else(|| ApiError::UnknownModel(request.model.clone()))?;
    app.keys.check_model(caller, &request.model)?;
    // With a template, the template's messages may be all there is.
    if request.messages.is_empty() && options.template.is_none() {
        return Err(ApiError::EmptyMessages);
    }
    let stream = request.stream == Some(true);
    if stream && matches!(mode, Mode::Async) {
        return Err(ApiError::InvalidParam {
            param: "stream",
            problem: "async requests cannot stream; use POST /v1/chat/completions",
        });
    }
    if !stream && request.extra.contains_key("stream_options") {
        return Err(ApiError::InvalidParam {
            param: "stream_options",
            problem: "stream_options is only allowed when stream is true",
        });
    }
    let completion_tokens = crate::billing::bound(
        &mut request,
        &app.config.billing,
        app.config.budget.default_completion_tokens,
    )?;
    let priority = match options
        .priority
        .as_deref()
        .or_else(|| headers.get(PRIORITY_HEADER).and_then(|v| v.to_str().ok()))
    {
        None => Priority::Standard,
        Some(p) => Priority::parse(p).ok_or_else(|| ApiError::InvalidPriority(p.to_string()))?,
    };
    let timeout = match options.timeout_ms {
        Some(ms) => Some(ms.to_string()),
        None => headers
            .get(TIMEOUT_HEADER)
            .map(|v| v.to_str().unwrap_or("").to_string()),
    };
    let max = app.config.deadlines.max_ms;
    let timeout = match timeout {
        None => app.config.deadlines.default_for(priority),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(ms) if ms > 0 && Duration::from_millis(ms) <= max => Duration::from_millis(ms),
            _ => return Err(ApiError::InvalidTimeout(raw)),
        },
    };
    let policy_restore = matches!(mode, Mode::Sync)
        && options
            .restore
            .unwrap_or_else(|| app.guard.policy(&caller.team).restores());
    let prepared = app.guard.prepare(
        &caller.team,
        &mut request.messages,
        Asked {
            template: options.template.as_deref(),
            variables: options.variables.as_ref(),
            restore: policy_restore,
        },
    )?;
    if request.messages.is_empty() {
        return Err(ApiError::EmptyMessages);
    }
    let prompt_tokens = count_prompt_tokens(tokenizer, &request.messages);
    let mut attributes = options.attributes;
    let prompt_audit = crate::audit::PromptAudit::new(
        app.config.audit.content_for(&caller.team),
        &request.messages,
        &prepared.decisions,
        &mut attributes,
    );
    let created_at_ms = now_ms();
    let request_id = format!("req_{}", uuid::Uuid::now_v7().simple());
    // Every completion the provider may bill (n x the cap): what budgets reserve and
    // workers throttle by.
    let max_tokens = Some(completion_tokens.min(i32::MAX as u64) as i32);
    let body = serde_json::to_string(&request).map_err(ApiError::InvalidJson)?;
    // The body alone already too large for Kafka: refused before any budget or moderation
    // (the encoded record is checked exactly when it is published).
    let limit = app.config.kafka.max_message_bytes;
    if !sluice_schemas::topics::fits(limit, caller.team.len(), body.len()) {
        return Err(ApiError::MessageTooLarge {
            size: body.len(),
            limit,
        });
    }
    let topic = if app.team_topics.contains(&caller.team) {
        Topic::TeamRequests(priority, caller.team.clone())
    } else {
        Topic::Requests(priority)
    };
    let reply = match mode {
        Mode::Sync => Some(app.reply_to.clone()),
        Mode::Async => None,
    };
    Ok(Accepted {
        record: Request {
            request_id,
            team: caller.team.clone(),
            key_id: caller.key_id.clone(),
            priority,
            model: request.model,
            created_at_ms,
            deadline_ms: created_at_ms + timeout.as_millis() as i64,
            traceparent: headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            reply,
            prompt_tokens: prompt_tokens.min(i32::MAX as usize) as i32,
            max_tokens,
            body,
            stream,
            attributes,
        },
        topic,
        policy: prepared.policy,
        restorer: prepared.restorer,
        moderation_input: prepared.moderation_input,
        webhook_url: options.webhook_url,
        prompt_audit,
    })
}

impl AppState {
    /// Writes the request (and its audit event) to Kafka; returns once the broker acked it.
    async fn publish(&self, accepted: &Accepted) -> Result<(), ApiError> {
        let r = &accepted.record;
        let payload = encode(r).map_err(ApiError::Encode)?;
        let limit = self.config.kafka.max_message_bytes;
        if !sluice_schemas::topics::fits(limit, r.team.len(), payload.len()) {
            return Err(ApiError::MessageTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let mut audit = audit_event(r, AuditAction::Accepted, 200, None);
        accepted.prompt_audit.fill(&mut audit);
        // Budgets: hold the worst-case cost; other replicas learn it from the audit event.
        audit.reserved_nanos = self.reserve_budget(r)?;
        let topic = self.topics.name(&accepted.topic);
        let partition = self.partition_for(&accepted.topic, &r.team);
        let (sent, audited) = tokio::join!(
            send(&self.producer, &topic, &r.team, &payload, Some(partition)),
            self.send_audit(&audit),
        );
        if let Err(error) = sent {
            self.budgets.release(&r.request_id);
            if crate::kafka::too_large(&error) {
                // The topic's own limit is smaller than ours: final, not a 503 to retry.
                return Err(ApiError::TopicRefusedSize {
                    size: payload.len(),
                });
            }
            return Err(ApiError::QueueUnavailable(error));
        }
        if let Err(error) = audited {
            tracing::error!(request_id = %r.request_id, %error, "audit event not written");
        }
        Ok(())
    }

    pub(crate) async fn send_audit(&self, audit: &Audit) -> Result<(), rdkafka::error::KafkaError> {
        let payload = match encode(audit) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "audit event not encodable");
                return Ok(());
            }
        };
        let topic = self.topics.name(&Topic::Audit);
        let limit = self.config.kafka.max_message_bytes;
        let sent = if sluice_schemas::topics::fits(limit, audit.team.len(), payload.len()) {
            send(&self.producer, &topic, &audit.team, &payload, None).await
        } else {
            Err(rdkafka::error::KafkaError::MessageProduction(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge,
            ))
        };
        match sent {
            Err(error) if crate::kafka::too_large(&error) && audit.prompt_text.is_some() => {
                // The event is kept, with the prompt's hash instead of its text.
                tracing::warn!(request_id = %audit.request_id, "audit event too large for Kafka: prompt text left out, its hash kept");
                let mut smaller = audit.clone();
                smaller.prompt_text = None;
                smaller.completion_text = None;
                let payload = encode(&smaller).unwrap_or_default();
                send(&self.producer, &topic, &audit.team, &payload, None).await
            }
            other => other,
        }
    }

    /// Answers a rejected request and records the rejection for audit (in the background).
    fn reject(self: &Arc<Self>, caller: &Caller, error: ApiError, dialect: Dialect) -> Response {
        let audit = Audit {
            event_id: uuid::Uuid::now_v7().simple().to_string(),
            request_id: String::new(),
            team: caller.team.clone(),
            key_id: caller.key_id.clone(),
            action: AuditAction::Rejected,
            model: String::new(),
            priority: Priority::Standard,
            http_status: error.status().as_u16() as i32,
            reason: Some(error.audit_reason()),
            prompt_tokens: 0,
            occurred_at_ms: now_ms(),
            policy: crate::audit::rejection_policy(&error),
            ..Audit::default()
        };
        let app = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = app.send_audit(&audit).await {
                tracing::warn!(%error, "rejection audit event not written");
            }
        });
        dialect.error(error)
    }
}

impl AppState {
    /// Records (in the background) that a guardrail withheld the answer of an accepted
    /// request.
    pub(crate) fn audit_refusal(self: &Arc<Self>, r: &Request, error: &ApiError) {
        self.send_refusal(audit_event(r, AuditAction::Rejected, 0, None), error);
    }

    /// [`AppState::audit_refusal`] from a template made by [`audit_event`].
    pub(crate) fn send_refusal(self: &Arc<Self>, mut audit: Audit, error: &ApiError) {
        audit.event_id = uuid::Uuid::now_v7().simple().to_string();
        audit.action = AuditAction::Rejected;
        audit.http_status = i32::from(error.status().as_u16());
        audit.reason = Some(error.audit_reason());
        audit.occurred_at_ms = now_ms();
        audit.policy = crate::audit::rejection_policy(error);
        let app = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = app.send_audit(&audit).await {
                tracing::warn!(%error, "refusal audit event not written");
            }
        });
    }
}

pub(crate) fn audit_event(
    r: &Request,
    action: AuditAction,
    status: i32,
    reason: Option<String>,
) -> Audit {
    Audit {
        event_id: uuid::Uuid::now_v7().simple().to_string(),
        request_id: r.request_id.clone(),
        team: r.team.clone(),
        key_id: r.key_id.clone(),
        action,
        model: r.model.clone(),
        priority: r.priority,
        http_status: status,
        reason,
        prompt_tokens: r.prompt_tokens,
        occurred_at_ms: now_ms(),
        deadline_ms: r.deadline_ms,
        ..Audit::default()
    }
}

pub(crate) mod lines;

#[cfg(test)]
mod fuzz;
