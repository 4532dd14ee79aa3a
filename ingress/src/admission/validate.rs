//! Validation: an HTTP body (in either dialect) becomes an [`Accepted`] request, or the
//! [`ApiError`] that refuses it. Pure apart from the clock and the webhook allow-list: nothing
//! is published here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use sluice_dialect::anthropic;
use sluice_schemas::openai::ChatCompletionRequest;
use sluice_schemas::route_hints::{RouteHints, ROUTE_ATTRIBUTE};
use sluice_schemas::{now_ms, Priority, Request, Topic};

use super::tokens::count_prompt_tokens;
use super::Handles;
use crate::cache::CHAT;
use crate::error::ApiError;
use crate::guard::{Asked, Policy};
use crate::keys::Caller;

pub(crate) const PRIORITY_HEADER: &str = "x-sluice-priority";
pub(crate) const TIMEOUT_HEADER: &str = "x-sluice-timeout-ms";

/// Sluice's own options, given in the body as `"sluice": {...}` (removed before the body
/// reaches a provider) or as `x-sluice-*` headers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SluiceOptions {
    pub(super) priority: Option<String>,
    pub(super) timeout_ms: Option<u64>,
    #[serde(default)]
    pub(super) attributes: HashMap<String, String>,
    /// A prompt template, `name@version` or `name` (the latest version).
    pub(super) template: Option<String>,
    /// The template's variables.
    pub(super) variables: Option<serde_json::Map<String, Value>>,
    /// Restore masked PII in the answer (sync only); default: the team's `pii.restore`.
    pub(super) restore: Option<bool>,
    /// Async only: a URL notified (Standard Webhooks) when the request has its result.
    pub(super) webhook_url: Option<String>,
    /// Sync only: use the response cache for this request (docs/cache.md).
    pub(super) cache: Option<crate::cache::Asked>,
    /// Routing hints: narrow or steer the choice of deployment (docs/scheduling.md#routing).
    pub(super) route: Option<RouteHints>,
}

impl SluiceOptions {
    /// Takes the `sluice` field out of a body (it never reaches a provider).
    pub(super) fn take(
        fields: &mut serde_json::Map<String, Value>,
    ) -> Result<SluiceOptions, ApiError> {
        match fields.remove("sluice") {
            Some(v) => serde_json::from_value(v).map_err(|_| ApiError::InvalidParam {
                param: "sluice",
                problem: "expected an object with optional priority, timeout_ms, attributes, template, variables, restore, webhook_url, cache ({\"ttl_s\": N}) and route ({\"max_cost_per_mtok\", \"max_latency_ms\", \"prefer\": \"cost\"|\"latency\"})",
            }),
            None => Ok(SluiceOptions::default()),
        }
    }

    /// Checks the routing hints and carries them to the workers in the record's
    /// `attributes` (a caller's own value of that attribute is never kept).
    pub(super) fn route_into(
        route: Option<RouteHints>,
        attributes: &mut HashMap<String, String>,
    ) -> Result<(), ApiError> {
        attributes.remove(ROUTE_ATTRIBUTE);
        let Some(hints) = route.filter(|h| !h.is_empty()) else {
            return Ok(());
        };
        hints
            .check()
            .map_err(|(param, problem)| ApiError::InvalidParam { param, problem })?;
        let json = serde_json::to_string(&hints).map_err(ApiError::InvalidJson)?;
        attributes.insert(ROUTE_ATTRIBUTE.to_string(), json);
        Ok(())
    }

    /// A webhook only for an async request, and only to where the team may send one.
    pub(super) fn check_webhook(
        &self,
        app: &impl Handles,
        caller: &Caller,
        mode: Mode,
    ) -> Result<(), ApiError> {
        let Some(url) = &self.webhook_url else {
            return Ok(());
        };
        if !matches!(mode, Mode::Async) {
            return Err(ApiError::InvalidParam {
                param: "sluice.webhook_url",
                problem: "webhooks notify async requests; use POST /v1/requests",
            });
        }
        app.webhooks()
            .check_now(&caller.team, url)
            .map_err(ApiError::from)
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Mode {
    Sync,
    Async,
    /// A token count (`POST /v1/messages/count_tokens`): checked as a sync call would be
    /// (model, key, guardrails, templates), then only its prompt tokens are answered; never
    /// published. `max_tokens` may be left out.
    Count,
}

/// A validated request, ready to publish.
pub(crate) struct Accepted {
    pub(crate) record: Request,
    pub(crate) topic: Topic,
    /// The team's guardrail policy.
    pub(crate) policy: Arc<Policy>,
    /// Masked values to put back into a sync answer.
    pub(crate) restorer: Option<crate::guard::restore::Restorer>,
    /// The final messages' text for the input moderation check (empty: no check).
    pub(crate) moderation_input: Vec<String>,
    /// What the `accepted` audit event records of the prompt.
    pub(crate) prompt_audit: crate::audit::PromptAudit,
    /// Notified when an async request has its result (docs/batch.md#webhooks).
    pub(crate) webhook_url: Option<String>,
    /// How a sync request uses the response cache; `None`: it does not.
    pub(crate) cache: Option<crate::cache::Plan>,
}

/// The wire format of a sync endpoint. Both carry the same internal (OpenAI) request
/// through Kafka; they differ in what callers send and get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Anthropic,
    /// `POST /v1/embeddings`: OpenAI's shapes, an embeddings body instead of a chat one.
    Embeddings,
    /// `POST /v1/responses`: OpenAI's Responses API (stateless), a chat request inside.
    Responses,
}

/// An Anthropic Messages request body as the internal OpenAI chat request: parsed once,
/// then translated (`sluice_dialect::anthropic`).
/// `counting`: a token count's body, which needs no `max_tokens`.
pub(crate) fn from_anthropic(
    body: &[u8],
    counting: bool,
) -> Result<ChatCompletionRequest, ApiError> {
    let mut request = anthropic::MessagesRequest::parse(body)?;
    if counting && request.max_tokens.is_none() {
        request.max_tokens = Some(Value::from(1));
    }
    Ok(anthropic::request::to_openai(request)?)
}

/// [`validate`], on the blocking pool for a large body (JSON parsing, guard scans and token
/// counting of megabytes would stall the runtime: docs/security.md).
pub(crate) async fn checked<H: Handles>(
    app: &Arc<H>,
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
        return validate(&**app, caller, headers, body, mode, dialect);
    }
    let (app, caller, headers) = (Arc::clone(app), caller.clone(), headers.clone());
    crate::cpu::offload(move || validate(&*app, &caller, &headers, body, mode, dialect))
        .await
        .map_err(ApiError::Internal)?
}

pub(crate) fn validate(
    app: &impl Handles,
    caller: &Caller,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    mode: Mode,
    dialect: Dialect,
) -> Result<Accepted, ApiError> {
    let body = body_of(app, body)?;
    let mut request: ChatCompletionRequest = match dialect {
        Dialect::OpenAi => serde_json::from_slice(&body).map_err(ApiError::InvalidJson)?,
        Dialect::Anthropic => from_anthropic(&body, matches!(mode, Mode::Count))?,
        Dialect::Responses => {
            let chat = sluice_dialect::responses::request::to_openai(&body)?;
            serde_json::from_value(serde_json::Value::Object(chat))
                .map_err(ApiError::InvalidJson)?
        }
        Dialect::Embeddings => {
            return super::embeddings::validate(app, caller, headers, Ok(body), mode)
        }
    };
    let options = SluiceOptions::take(&mut request.extra)?;
    options.check_webhook(app, caller, mode)?;
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
        .models()
        .get(&request.model)
        .ok_or_else(|| ApiError::UnknownModel(request.model.clone()))?;
    app.keys().check_model(caller, &request.model)?;
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
        &app.config().billing,
        app.config().budget.default_completion_tokens,
    )?;
    let (priority, timeout) = schedule(
        app,
        headers,
        options.priority.as_deref(),
        options.timeout_ms,
    )?;
    let policy_restore = matches!(mode, Mode::Sync)
        && options
            .restore
            .unwrap_or_else(|| app.guard().policy(&caller.team).restores());
    let prepared = app.guard().prepare(
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
    // A chat request, whatever the caller's attributes say.
    attributes.remove(sluice_schemas::embeddings::ENDPOINT_ATTRIBUTE);
    SluiceOptions::route_into(options.route, &mut attributes)?;
    let prompt_audit = crate::audit::PromptAudit::new(
        app.config().audit.content_for(&caller.team),
        &request.messages,
        &prepared.decisions,
        &mut attributes,
    );
    // Every completion the provider may bill (n x the cap): what budgets reserve and
    // workers throttle by.
    let max_tokens = completion_tokens.min(i32::MAX as u64) as i32;
    let body = serde_json::to_string(&request).map_err(ApiError::InvalidJson)?;
    let cache = cache_plan(options.cache, app, caller, headers, mode, CHAT, &body)?;
    let (record, topic) = seal(
        app,
        caller,
        headers,
        mode,
        Draft {
            model: request.model,
            priority,
            timeout,
            prompt_tokens,
            max_tokens,
            body,
            stream,
            attributes,
        },
    )?;
    Ok(Accepted {
        record,
        topic,
        policy: prepared.policy,
        restorer: prepared.restorer,
        moderation_input: prepared.moderation_input,
        webhook_url: options.webhook_url,
        prompt_audit,
        cache,
    })
}

/// How a request of `family` (its final `body`) uses the response cache: only a sync
/// one (an async request, a token count or a batch line never does).
pub(super) fn cache_plan(
    asked: Option<crate::cache::Asked>,
    app: &impl Handles,
    caller: &Caller,
    headers: &HeaderMap,
    mode: Mode,
    family: &str,
    body: &str,
) -> Result<Option<crate::cache::Plan>, ApiError> {
    match mode {
        Mode::Sync => crate::cache::plan(
            &app.config().cache,
            &caller.team,
            family,
            headers,
            asked,
            body,
        ),
        Mode::Async | Mode::Count if asked.is_some() => Err(ApiError::InvalidParam {
            param: "sluice.cache",
            problem: "the response cache serves sync calls; an async request always runs",
        }),
        Mode::Async | Mode::Count => Ok(None),
    }
}

/// The body, or why there is none: too large, or not readable.
pub(super) fn body_of(
    app: &impl Handles,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit: app.config().server.max_body_bytes,
            }
        } else {
            ApiError::NotJson
        }
    })
}

/// The request's class and timeout, from its `sluice` options or else its `x-sluice-*`
/// headers (the class's default timeout when neither says).
pub(super) fn schedule(
    app: &impl Handles,
    headers: &HeaderMap,
    priority: Option<&str>,
    timeout_ms: Option<u64>,
) -> Result<(Priority, Duration), ApiError> {
    let priority = match priority
        .or_else(|| headers.get(PRIORITY_HEADER).and_then(|v| v.to_str().ok()))
    {
        None => Priority::Standard,
        Some(p) => Priority::parse(p).ok_or_else(|| ApiError::InvalidPriority(p.to_string()))?,
    };
    let timeout = match timeout_ms {
        Some(ms) => Some(ms.to_string()),
        None => headers
            .get(TIMEOUT_HEADER)
            .map(|v| v.to_str().unwrap_or("").to_string()),
    };
    let max = app.config().deadlines.max_ms;
    let timeout = match timeout {
        None => app.config().deadlines.default_for(priority),
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(ms) if ms > 0 && Duration::from_millis(ms) <= max => Duration::from_millis(ms),
            _ => return Err(ApiError::InvalidTimeout(raw)),
        },
    };
    Ok((priority, timeout))
}

/// What a validated body becomes in its [`Request`] record.
pub(super) struct Draft {
    pub(super) model: String,
    pub(super) priority: Priority,
    pub(super) timeout: Duration,
    pub(super) prompt_tokens: usize,
    /// The most output tokens the provider may bill.
    pub(super) max_tokens: i32,
    /// The body the workers send (JSON).
    pub(super) body: String,
    pub(super) stream: bool,
    pub(super) attributes: HashMap<String, String>,
}

/// The record of a validated request and its topic: a new id, the deadline, the trace
/// parent, where a sync answer goes. Refused if the body alone is too large for Kafka.
pub(super) fn seal(
    app: &impl Handles,
    caller: &Caller,
    headers: &HeaderMap,
    mode: Mode,
    draft: Draft,
) -> Result<(Request, Topic), ApiError> {
    // The body alone already too large for Kafka: refused before any budget or moderation
    // (the encoded record is checked exactly when it is published).
    let limit = app.config().kafka.max_message_bytes;
    if !sluice_schemas::topics::fits(limit, caller.team.len(), draft.body.len()) {
        return Err(ApiError::MessageTooLarge {
            size: draft.body.len(),
            limit,
        });
    }
    let topic = app.routing().topic(&caller.team, draft.priority);
    let reply = match mode {
        Mode::Sync => Some(app.reply_to().clone()),
        Mode::Async | Mode::Count => None,
    };
    let created_at_ms = now_ms();
    let record = Request {
        request_id: format!("req_{}", uuid::Uuid::now_v7().simple()),
        team: caller.team.clone(),
        key_id: caller.key_id.clone(),
        priority: draft.priority,
        model: draft.model,
        created_at_ms,
        deadline_ms: created_at_ms + draft.timeout.as_millis() as i64,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        reply,
        prompt_tokens: draft.prompt_tokens.min(i32::MAX as usize) as i32,
        max_tokens: Some(draft.max_tokens),
        body: draft.body,
        stream: draft.stream,
        attributes: draft.attributes,
        replay: None,
    };
    Ok((record, topic))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_anthropic_body(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
        from_anthropic(body, false)
    }

    #[test]
    fn translation_errors_are_the_ingress_errors() {
        let err = from_anthropic_body(br#"{"model": "m", "messages": []}"#).unwrap_err();
        assert!(
            matches!(
                err,
                ApiError::InvalidParam {
                    param: "max_tokens",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "Invalid value for `max_tokens`: max_tokens is required: an integer of at least 1"
        );
        let err = from_anthropic_body(b"[1]").unwrap_err();
        assert!(matches!(err, ApiError::InvalidJson(_)), "{err}");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn a_request_is_parsed_once_into_the_openai_request() {
        let request = from_anthropic_body(
            br#"{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                 "stream": true, "sluice": {"priority": "batch"}}"#,
        )
        .unwrap();
        assert_eq!(request.model, "m");
        assert_eq!(request.max_tokens, Some(5));
        assert_eq!(request.stream, Some(true));
        assert_eq!(request.messages.len(), 1);
        assert_eq!(request.extra["sluice"]["priority"], "batch");
    }

    #[test]
    fn a_token_count_needs_no_max_tokens_but_keeps_the_callers() {
        let body = br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}]}"#;
        assert!(from_anthropic(body, false).is_err());
        assert_eq!(from_anthropic(body, true).unwrap().max_tokens, Some(1));
        let capped = br#"{"model": "m", "max_tokens": 0, "messages": []}"#;
        assert!(
            from_anthropic(capped, true).is_err(),
            "a max_tokens the caller sent is still checked"
        );
    }
}
