//! Publishing an accepted request: its budget reservation, the request record and its
//! `accepted` audit event, both acked by Kafka before the caller hears "accepted".

use sluice_schemas::{encode, now_ms, AuditAction, Request};
use tracing::Instrument;

use super::audit;
use super::validate::Accepted;
use super::Handles;
use crate::error::ApiError;
use crate::kafka::send_traced;

/// Writes the request (and its audit event) to Kafka; returns once the broker acked it.
pub(crate) async fn publish(app: &impl Handles, accepted: &Accepted) -> Result<(), ApiError> {
    let r = &accepted.record;
    let payload = encode(r).map_err(ApiError::Encode)?;
    let limit = app.config().kafka.max_message_bytes;
    if !sluice_schemas::topics::fits(limit, r.team.len(), payload.len()) {
        return Err(ApiError::MessageTooLarge {
            size: payload.len(),
            limit,
        });
    }
    let mut accepted_event = audit::event(r, AuditAction::Accepted, 200, None);
    accepted.prompt_audit.fill(&mut accepted_event);
    // Budgets: hold the worst-case cost; other replicas learn it from the audit event.
    accepted_event.reserved_nanos = reserve_budget(app, r)?;
    let topic = app.topics().name(&accepted.topic);
    let partition = app.routing().partition(&accepted.topic, &r.team);
    let (sent, audited) = tokio::join!(
        send_traced(
            app.producer(),
            &topic,
            &r.team,
            &payload,
            Some(partition),
            sluice_schemas::trace::well_formed(r.traceparent.as_deref())
        ),
        app.audits().send(&accepted_event),
    );
    if sent.is_ok() {
        crate::ops::enqueued(r, app.config().budget.default_completion_tokens);
        super::shadow::mirror(app, r);
    }
    if let Err(error) = sent {
        app.budgets().release(&r.request_id);
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

/// Publishes the record under a `produce` span (`otel.kind = producer`), which the record
/// names as its `traceparent`: the worker's spans are its children. Without tracing the
/// record keeps the caller's `traceparent`, passed on as it came.
pub(crate) async fn publish_traced(
    app: &impl Handles,
    accepted: &mut Accepted,
) -> Result<(), ApiError> {
    let span = tracing::info_span!(
        "produce",
        otel.kind = "producer",
        priority = accepted.record.priority.as_str(),
        messaging.system = "kafka",
        otel.status_code = tracing::field::Empty,
    );
    if let Some(traceparent) = sluice_schemas::trace::traceparent(&span) {
        accepted.record.traceparent = Some(traceparent);
    }
    let published = publish(app, accepted).instrument(span.clone()).await;
    if published.is_err() {
        span.record("otel.status_code", "ERROR");
    }
    published
}

/// Reserves `r`'s worst-case cost under every budget of its team and key, or refuses it
/// with `budget_exceeded` (and a `rejected` audit event, written in the background).
/// Every path that publishes a request comes through here; the reservation (0 when no
/// budget applies) goes into the `accepted` audit event.
fn reserve_budget(app: &impl Handles, r: &Request) -> Result<i64, ApiError> {
    match app.budgets().admit(r, now_ms()) {
        Ok(reserved) => Ok(reserved),
        Err(exceeded) => {
            let error = ApiError::from(exceeded);
            app.audits()
                .reject(audit::event(r, AuditAction::Rejected, 0, None), &error);
            Err(error)
        }
    }
}
