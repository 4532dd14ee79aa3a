//! A finished request's events: the result (and its reply; the completed audit event rides
//! on it, [`ResultRecord::audit`]), usage and attempt records, published and acknowledged
//! before the message may be marked done.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use sluice_schemas::audit_content::AuditContent;
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::retry::{doubling, BackoffBuilder};
use sluice_schemas::{
    encode, now_ms, Request, Result as ResultRecord, ResultAudit, Status, Topic, Usage,
};

use super::outcome::{clamp, Outcome};
use super::Processor;
use sluice_schemas::kafka::with_traceparent;

use crate::publish::{send, Outgoing};

/// Publishing a finished request's events is retried until it succeeds or the worker shuts
/// down: first after 100 ms, doubling up to 5 s.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(5);

impl Processor {
    pub(super) async fn publish(&self, request: &Request, mut outcome: Outcome) -> bool {
        let outcome_attempts = std::mem::take(&mut outcome.attempt_log);
        let lane = outcome.lane;
        let finished_at_ms = now_ms();
        let cached = outcome
            .usage
            .prompt_tokens_details
            .map_or(0, |d| d.cached_tokens);
        let cost = |model: &str| {
            self.cost_nanos(
                &outcome.deployment,
                model,
                outcome.usage.prompt_tokens,
                cached,
                outcome.usage.completion_tokens,
            )
        };
        // The answering deployment's catalogue price, or the served model's price; the
        // requested name's (an alias may have one) otherwise.
        // Start-up refuses a deployed model with neither a price nor a `free_models` entry,
        // so None here is a free model, or a request no deployment answered (no usage).
        let cost_nanos = cost(&outcome.served_model)
            .or_else(|| cost(&request.model))
            .unwrap_or(0);
        let mut result = ResultRecord {
            request_id: request.request_id.clone(),
            team: request.team.clone(),
            key_id: request.key_id.clone(),
            priority: request.priority,
            model: request.model.clone(),
            // The sink's insert span is a child of this worker's `publish` span.
            traceparent: sluice_schemas::trace::traceparent(&tracing::Span::current())
                .or_else(|| request.traceparent.clone()),
            status: outcome.status,
            http_status: outcome.http_status,
            body: outcome.body,
            error_kind: outcome.error_kind.map(str::to_string),
            provider: outcome.provider.clone(),
            deployment: outcome.deployment.clone(),
            attempts: outcome.attempts,
            fallbacks: outcome.fallbacks,
            routing_reason: outcome.routing_reason.take(),
            location: self
                .catalogue
                .location(&outcome.deployment)
                .map(str::to_string),
            prompt_tokens: clamp(outcome.usage.prompt_tokens),
            completion_tokens: clamp(outcome.usage.completion_tokens),
            created_at_ms: request.created_at_ms,
            started_at_ms: outcome.started_at_ms,
            finished_at_ms,
            worker: self.worker_id.clone(),
            replay: request.replay.clone(),
            audit: None,
            calls: Vec::new(),
        };
        let mut usage = Usage {
            request_id: request.request_id.clone(),
            team: request.team.clone(),
            key_id: request.key_id.clone(),
            priority: request.priority,
            model: request.model.clone(),
            provider: outcome.provider,
            deployment: outcome.deployment,
            status: outcome.status,
            prompt_tokens: clamp(outcome.usage.prompt_tokens),
            completion_tokens: clamp(outcome.usage.completion_tokens),
            cached_tokens: clamp(cached),
            cost_nanos,
            created_at_ms: request.created_at_ms,
            latency_ms: finished_at_ms - request.created_at_ms,
            occurred_at_ms: finished_at_ms,
            estimated: outcome.estimated,
            cache_hit: false,
            saved_nanos: 0,
            replay: request.replay.clone(),
        };
        // The completed audit event rides on the result (the sink writes its row): the
        // completion's hash under the team's audit content policy (set by the ingress), whether
        // the row keeps its text, where it ran (for residency audits) and what the processing
        // hooks decided. A replayed or shadow request says so: its prompt went elsewhere.
        let content = AuditContent::of_attributes(&request.attributes);
        let completion_sha256 = match outcome.status {
            Status::Completed => sluice_schemas::audit_content::completion_text(&result.body)
                .and_then(|text| content.record(&text).0),
            Status::Failed | Status::Expired => None,
        };
        let policy = {
            let located = result.location.as_ref().map(|l| format!("location:{l}"));
            let replayed = request
                .replay
                .as_ref()
                .map(|r| format!("replay:{}", r.replay_id));
            let all: Vec<String> = replayed
                .into_iter()
                .chain(located)
                .chain(outcome.decisions)
                .collect();
            (!all.is_empty()).then(|| all.join(","))
        };
        result.audit = Some(ResultAudit {
            completion_sha256,
            keep_text: content == AuditContent::Full,
            policy,
        });
        // Every provider call of this processing, for reconciliation, rides on the result
        // too (the sink writes their rows). A replay's calls are not reconciled as a team's.
        if request.replay.is_none() {
            result.calls = outcome_attempts;
        }
        let replying = request.reply.is_some();
        let Some(mut encoded) = encode_events(&mut result, &usage, replying) else {
            // Only a schema defect gets here; nothing sensible can be published.
            tracing::error!("result events could not be encoded");
            return true;
        };
        // A result Kafka cannot take (an enormous completion) becomes a small failure now
        // rather than a publish retried forever.
        let key = request.request_id.len();
        let fits = |e: &Encoded| {
            [&e.result, &e.usage]
                .iter()
                .all(|p| sluice_schemas::topics::fits(self.max_message_bytes, key, p.len()))
        };
        let mut shrunk = false;
        if !fits(&encoded) {
            let size = encoded.result.len();
            match self.too_large(&mut result, &mut usage, size, true, replying) {
                Some(e) => encoded = e,
                None => return true,
            }
            shrunk = true;
        }
        let traceparent = result.traceparent.clone();
        let traceparent = sluice_schemas::trace::well_formed(traceparent.as_deref());
        let Encoded {
            result: mut result_bytes,
            reply: mut reply_bytes,
            usage: mut usage_bytes,
        } = encoded;
        // A replay's result and usage go to the replay topics, which no caller, no budget
        // ledger and no live table reads.
        let (results_topic, usage_topic) = match request.replay {
            Some(_) => (Topic::ReplayResults, Topic::ReplayUsage),
            None => (Topic::Results, Topic::Usage),
        };
        let results_topic = self.topics.name(&results_topic);
        let usage_topic = self.topics.name(&usage_topic);
        // The loop changes what it sends between tries and stops at shutdown only while it
        // waits, which backon's Retry cannot say: it takes its waits from the house policy.
        let mut waits = doubling(FIRST_WAIT, MAX_WAIT).build();
        loop {
            let reply = async {
                match &request.reply {
                    Some(r) => {
                        send(
                            self.reply_producer(lane),
                            Outgoing {
                                topic: &r.topic,
                                key: &request.request_id,
                                payload: &reply_bytes,
                                partition: Some(r.partition),
                                headers: with_traceparent(
                                    Some(OwnedHeaders::new().insert(Header {
                                        key: sluice_schemas::REPLY_KIND_HEADER,
                                        value: Some(sluice_schemas::REPLY_KIND_RESULT),
                                    })),
                                    traceparent,
                                ),
                            },
                        )
                        .await
                    }
                    None => Ok(()),
                }
            };
            let out = |topic, payload| Outgoing {
                topic,
                key: &request.request_id,
                payload,
                partition: None,
                headers: None,
            };
            let result_message = Outgoing {
                headers: with_traceparent(None, traceparent),
                ..out(&results_topic, &result_bytes)
            };
            let (a, b, c) = tokio::join!(
                reply,
                send(&self.producer, result_message),
                send(&self.producer, out(&usage_topic, &usage_bytes)),
            );
            match a.and(b).and(c) {
                Ok(()) => return true,
                Err(error) if crate::publish::too_large(&error) && !shrunk => {
                    // A topic with a smaller limit than ours refused it: final. Sinks keep
                    // the failure (deduplicated by request id) whatever was sent before.
                    tracing::warn!(request_id = %request.request_id, "result refused by Kafka as too large; publishing a failure instead");
                    let size = result_bytes.len();
                    let Some(e) = self.too_large(&mut result, &mut usage, size, false, replying)
                    else {
                        return true;
                    };
                    (result_bytes, reply_bytes, usage_bytes) = (e.result, e.reply, e.usage);
                    shrunk = true;
                }
                Err(error) => {
                    // Never mark the request done before its events are durable; resending
                    // is safe because every sink deduplicates by request id.
                    tracing::warn!(%error, "publishing result events failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(waits.next().unwrap_or(MAX_WAIT)) => {}
                        _ = self.shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }
}

/// The events of a finished request, encoded: the result, the caller's copy of it (without
/// the provider calls and the audit event, which only the sink reads; empty if no caller
/// waits), and usage.
struct Encoded {
    result: Vec<u8>,
    reply: Vec<u8>,
    usage: Vec<u8>,
}

fn encode_events(result: &mut ResultRecord, usage: &Usage, replying: bool) -> Option<Encoded> {
    let full = encode(result).ok()?;
    let reply = if replying {
        let calls = std::mem::take(&mut result.calls);
        let audit = result.audit.take();
        let reply = encode(result);
        (result.calls, result.audit) = (calls, audit);
        reply.ok()?
    } else {
        Vec::new()
    };
    Some(Encoded {
        result: full,
        reply,
        usage: encode(usage).ok()?,
    })
}

impl Processor {
    /// Turns a result too large for Kafka into a small `failed` one (`result_too_large`,
    /// 502): the caller learns why, nothing is retried. Usage keeps the tokens (the provider
    /// billed them); the audit row keeps the completion's hash, not its text.
    fn too_large(
        &self,
        result: &mut ResultRecord,
        usage: &mut Usage,
        size: usize,
        over_our_limit: bool,
        replying: bool,
    ) -> Option<Encoded> {
        tracing::warn!(request_id = %result.request_id, size, over_our_limit, "result too large for Kafka; published as failed");
        let limit = if over_our_limit {
            format!(" ({} bytes)", self.max_message_bytes)
        } else {
            String::new()
        };
        result.status = Status::Failed;
        result.http_status = 502;
        result.error_kind = Some("result_too_large".into());
        result.body = ErrorBody::new(
            "server_error",
            Some("result_too_large"),
            format!(
                "The provider's answer is {size} bytes, more than the queue accepts{limit}; it was not kept. Ask for less: a shorter completion (max_tokens), or fewer inputs or dimensions for embeddings."
            ),
        )
        .to_json();
        usage.status = Status::Failed;
        if let Some(audit) = &mut result.audit {
            audit.keep_text = false;
        }
        encode_events(result, usage, replying)
    }
}
