//! Audit events of admission: the `accepted` event of a published request, and the one
//! builder of every `rejected` event (refused at the door, over budget, or withheld by an
//! output guardrail later).

use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use sluice_schemas::{encode, now_ms, Audit, AuditAction, Request};

use crate::error::ApiError;
use crate::kafka::send;
use crate::keys::Caller;

/// An event about `r` (the fields every action shares).
pub(crate) fn event(
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

/// What a rejection knows of a request refused before it had an id: only its caller.
pub(crate) fn of_caller(caller: &Caller) -> Audit {
    Audit {
        team: caller.team.clone(),
        key_id: caller.key_id.clone(),
        priority: sluice_schemas::Priority::Standard,
        ..Audit::default()
    }
}

/// The one builder of `rejected` events: `template` says which request (see [`event`],
/// [`of_caller`]), `error` why (status, reason and policy).
pub(crate) fn rejected(mut audit: Audit, error: &ApiError) -> Audit {
    audit.event_id = uuid::Uuid::now_v7().simple().to_string();
    audit.action = AuditAction::Rejected;
    audit.http_status = i32::from(error.status().as_u16());
    audit.reason = Some(error.audit_reason());
    audit.occurred_at_ms = now_ms();
    audit.policy = crate::audit::rejection_policy(error);
    audit
}

/// Writes audit events to the audit topic.
#[derive(Clone)]
pub struct AuditSink {
    producer: FutureProducer,
    topic: String,
    max_message_bytes: usize,
}

impl AuditSink {
    pub(crate) fn new(producer: FutureProducer, topic: String, max_message_bytes: usize) -> Self {
        AuditSink {
            producer,
            topic,
            max_message_bytes,
        }
    }

    /// Writes `audit`; one too large for Kafka is kept with the prompt's hash, not its text.
    pub(crate) async fn send(&self, audit: &Audit) -> Result<(), KafkaError> {
        let payload = match encode(audit) {
            Ok(p) => p,
            Err(error) => {
                tracing::error!(%error, "audit event not encodable");
                return Ok(());
            }
        };
        let limit = self.max_message_bytes;
        let sent = if sluice_schemas::topics::fits(limit, audit.team.len(), payload.len()) {
            send(&self.producer, &self.topic, &audit.team, &payload, None).await
        } else {
            Err(KafkaError::MessageProduction(
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
                send(&self.producer, &self.topic, &audit.team, &payload, None).await
            }
            other => other,
        }
    }

    /// Records (in the background) that `error` refused the request `template` describes.
    pub(crate) fn reject(&self, template: Audit, error: &ApiError) {
        let audit = rejected(template, error);
        let sink = self.clone();
        tokio::spawn(async move {
            if let Err(error) = sink.send(&audit).await {
                tracing::warn!(%error, "rejection audit event not written");
            }
        });
    }
}
