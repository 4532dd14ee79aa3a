//! A sync call answered from the response cache (docs/cache.md): the stored answer, as JSON
//! or as a stream in the caller's dialect, through the same output guardrails as a live
//! one; no budget is reserved and no provider called. The hit is an event like any other:
//! its `accepted` and `completed` audit rows, a result and a usage row (`cache_hit`, cost
//! 0, what it saved) go to Kafka after the answer, or before it for a keyed request (a
//! retry finds the result).

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::response::Response;
use sluice_schemas::audit_content::AuditContent;
use sluice_schemas::{encode, now_ms, AuditAction, Result as ResultRecord, Status, Topic, Usage};

use crate::admission::{audit_event, Accepted, Dialect};
use crate::cache::{Entry, Lookup, HEADER};
use crate::guard::Output;
use crate::kafka::send;
use crate::replies::StreamGuard;
use crate::state::AppState;

/// Who answered a hit (`provider`, `worker` of its result and usage rows).
pub(crate) const CACHE: &str = "cache";

/// The stored answer for `accepted`, if its plan reads the cache and one is there.
pub(super) async fn lookup(app: &AppState, accepted: &Accepted) -> Option<Arc<Entry>> {
    let plan = accepted.cache.as_ref().filter(|p| p.read)?;
    match app.cache.get(plan).await {
        Lookup::Hit(entry) => Some(entry),
        Lookup::Miss | Lookup::Unavailable => None,
    }
}

/// Sets `x-sluice-cache` on an answer.
pub(super) fn mark(mut response: Response, value: &'static str) -> Response {
    response
        .headers_mut()
        .insert(HEADER, HeaderValue::from_static(value));
    response
}

/// Answers `accepted` with `entry`. `keyed`: the request holds an `Idempotency-Key` claim,
/// settled once the events are in Kafka.
pub(super) async fn serve(
    app: Arc<AppState>,
    accepted: &Accepted,
    entry: Arc<Entry>,
    dialect: Dialect,
    output: Output,
    ticket: Option<&crate::idempotency::Ticket>,
) -> Response {
    let result = record(accepted, &entry);
    if let Some(ticket) = ticket {
        Events::of(accepted).publish(&app, &result, &entry).await;
        super::idempotent::published(&app, Some(ticket), &Ok(())).await;
    } else {
        let (app, accepted_events) = (Arc::clone(&app), Events::of(accepted));
        let (result, entry) = (result.clone(), Arc::clone(&entry));
        tokio::spawn(async move { accepted_events.publish(&app, &result, &entry).await });
    }
    let response = if accepted.record.stream {
        let usage = super::replay::wants_usage(&accepted.record.body);
        let guard = StreamGuard::replay(super::replay::stream_events(result, usage));
        super::sse::respond(app, &accepted.record, guard, dialect, output, false, None).await
    } else {
        super::chat::finished(&app, accepted, output, result, dialect).await
    };
    mark(response, "hit")
}

/// The hit's result: the stored answer, for this request.
fn record(accepted: &Accepted, entry: &Entry) -> ResultRecord {
    let r = &accepted.record;
    let now = now_ms();
    ResultRecord {
        request_id: r.request_id.clone(),
        team: r.team.clone(),
        key_id: r.key_id.clone(),
        priority: r.priority,
        model: r.model.clone(),
        traceparent: None,
        status: Status::Completed,
        http_status: 200,
        body: entry.body.clone(),
        error_kind: None,
        provider: CACHE.into(),
        deployment: entry.deployment.clone(),
        attempts: 0,
        prompt_tokens: entry.prompt_tokens,
        completion_tokens: entry.completion_tokens,
        created_at_ms: r.created_at_ms,
        started_at_ms: now,
        finished_at_ms: now,
        worker: CACHE.into(),
        fallbacks: 0,
        routing_reason: None,
        location: None,
        replay: None,
        audit: None,
        calls: Vec::new(),
    }
}

/// What the hit's events need of the request, owned (for a background publish).
struct Events {
    record: sluice_schemas::Request,
    accepted_audit: sluice_schemas::Audit,
}

impl Events {
    fn of(accepted: &Accepted) -> Events {
        let mut accepted_audit = audit_event(&accepted.record, AuditAction::Accepted, 200, None);
        accepted.prompt_audit.fill(&mut accepted_audit);
        Events {
            record: accepted.record.clone(),
            accepted_audit,
        }
    }

    /// Audit (`accepted`, `completed`), result and usage of the hit; a failure is logged
    /// (the caller has its answer; nothing was charged).
    async fn publish(self, app: &AppState, result: &ResultRecord, entry: &Entry) {
        let r = &self.record;
        let (completion_sha256, completion_text) =
            sluice_schemas::audit_content::completion_text(&result.body)
                .map(|text| AuditContent::of_attributes(&r.attributes).record(&text))
                .unwrap_or_default();
        let completed = sluice_schemas::Audit {
            event_id: format!("{}-{}", r.request_id, Status::Completed.as_str()),
            action: AuditAction::Completed,
            reason: Some(format!("cache_hit:{}", entry.source_request_id)),
            prompt_tokens: result.prompt_tokens,
            completion_sha256,
            completion_text,
            ..audit_event(r, AuditAction::Completed, 200, None)
        };
        let usage = Usage {
            request_id: r.request_id.clone(),
            team: r.team.clone(),
            key_id: r.key_id.clone(),
            priority: r.priority,
            model: r.model.clone(),
            provider: CACHE.into(),
            deployment: entry.deployment.clone(),
            status: Status::Completed,
            prompt_tokens: result.prompt_tokens,
            completion_tokens: result.completion_tokens,
            cached_tokens: 0,
            cost_nanos: 0,
            created_at_ms: r.created_at_ms,
            latency_ms: result.finished_at_ms - r.created_at_ms,
            occurred_at_ms: result.finished_at_ms,
            estimated: false,
            cache_hit: true,
            saved_nanos: app.budgets.cost_nanos(
                &r.model,
                result.prompt_tokens,
                result.completion_tokens,
            ),
            replay: None,
        };
        let (Ok(result_bytes), Ok(usage_bytes)) = (encode(result), encode(&usage)) else {
            tracing::error!(request_id = %r.request_id, "cache hit events not encodable");
            return;
        };
        let (results, usage_topic) = (
            app.topics.name(&Topic::Results),
            app.topics.name(&Topic::Usage),
        );
        let (a, b, c, d) = tokio::join!(
            app.audits.send(&self.accepted_audit),
            app.audits.send(&completed),
            send(&app.producer, &results, &r.request_id, &result_bytes, None),
            send(
                &app.producer,
                &usage_topic,
                &r.request_id,
                &usage_bytes,
                None
            ),
        );
        for error in [a, b, c, d].into_iter().filter_map(Result::err) {
            tracing::error!(request_id = %r.request_id, %error, "cache hit event not written");
        }
    }
}
