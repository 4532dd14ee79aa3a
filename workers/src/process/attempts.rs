//! Every provider call, recorded on the attempts topic (`attempt.v1.avsc`, ClickHouse
//! `attempts`): a retry after a timeout, a fallback, a redelivered request each may have
//! been billed by the provider, though the team is charged once per request (usage is
//! deduplicated by request id). Sluice's spend with a provider is the sum of its attempts;
//! the reconciliation view sets it against what teams were charged.
//!
//! Before a call, a `started` record goes out and the broker's ack is awaited (bounded by
//! [`STARTED_ACK_WAIT`]): a worker killed mid-call still leaves evidence of it. (Sent in the
//! background, a SIGKILL inside the producer's linger lost it: the chaos test saw one call
//! in ~60 without its row.) After the call, the ended record (same `attempt_id`, which
//! replaces it in ClickHouse) rides on the request's result (`Result::calls`, written
//! by the sink), published before its offset is marked done.

use sluice_schemas::openai::CompletionUsage;
use sluice_schemas::{encode, now_ms, Attempt, Request, Topic};

use super::outcome::clamp;
use super::Processor;
use crate::error::ProviderError;
use crate::routing::Target;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::FutureRecord;

/// How long a call waits for its `started` record's ack before it goes out anyway.
const STARTED_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How a call ended, for its record.
pub(super) enum Ended<'a> {
    /// The provider answered and reported (or Sluice estimated) usage.
    Usage {
        usage: CompletionUsage,
        estimated: bool,
        /// `completed`, or how a stream that began ended (`stream_broken`, ...).
        outcome: &'static str,
    },
    Failed(&'a ProviderError),
    /// Sluice stopped waiting (the caller went away) before the provider answered.
    Abandoned,
}

/// Whether a failed call may have been billed: a provider that answered with an error
/// status did no work; one that timed out, broke the connection or sent something
/// unreadable may have.
fn billed(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::Status { .. }
        | ProviderError::BadRequest(_)
        | ProviderError::Unsupported(_) => "none",
        _ => "unknown",
    }
}

impl Processor {
    /// The record of a call about to be made, sent as `started` and acknowledged before the
    /// call goes out. A broker that does not ack within [`STARTED_ACK_WAIT`] does not hold
    /// the call up longer: the call proceeds, the record stays queued in the producer.
    pub(super) async fn attempt_started(
        &self,
        request: &Request,
        target: &Target,
        number: i32,
    ) -> Attempt {
        let deployment = &target.deployment;
        let prompt = request.prompt();
        let (cost, max_cost) = self.estimated_costs(&deployment.name, &deployment.model, request);
        let attempt = Attempt {
            attempt_id: format!("{}-{}", request.request_id, uuid::Uuid::now_v7().simple()),
            request_id: request.request_id.clone(),
            team: request.team.clone(),
            key_id: request.key_id.clone(),
            model: request.model.clone(),
            provider: deployment.provider.kind().into(),
            deployment: deployment.name.clone(),
            served_model: deployment.model.clone(),
            attempt: number,
            worker: self.worker_id.clone(),
            outcome: "started".into(),
            billed: "unknown".into(),
            http_status: 0,
            prompt_tokens: clamp(prompt),
            completion_tokens: 0,
            cached_tokens: 0,
            cost_nanos: cost,
            max_cost_nanos: max_cost,
            estimated: true,
            created_at_ms: request.created_at_ms,
            started_at_ms: now_ms(),
            finished_at_ms: 0,
        };
        // A replay's calls are not a team's: they stay out of the attempts table.
        if request.replay.is_some() {
            return attempt;
        }
        let topic = self.topics.name(&Topic::Attempts);
        match encode(&attempt) {
            Ok(payload) => {
                // Enqueued now, before the call goes out; its ack is awaited in the background.
                let record = FutureRecord::to(&topic)
                    .key(&attempt.request_id)
                    .payload(&payload);
                match self.prompt_producer.send_result(record) {
                    Ok(delivery) => {
                        let acked = async move {
                            if !matches!(delivery.await, Ok(OwnedDeliveryResult::Ok(_))) {
                                tracing::warn!("started attempt not recorded");
                            }
                        };
                        let mut acked = std::pin::pin!(acked);
                        if tokio::time::timeout(STARTED_ACK_WAIT, acked.as_mut())
                            .await
                            .is_err()
                        {
                            tracing::warn!("started attempt not acked in time; calling anyway");
                        }
                    }
                    Err((error, _)) => tracing::warn!(%error, "started attempt not recorded"),
                }
            }
            Err(error) => tracing::error!(%error, "attempt record not encodable"),
        }
        attempt
    }

    /// The started record, completed with how the call ended.
    pub(super) fn attempt_ended(
        &self,
        request: &Request,
        mut attempt: Attempt,
        ended: Ended<'_>,
    ) -> Attempt {
        attempt.finished_at_ms = now_ms().max(attempt.started_at_ms).max(1);
        let failed = if let Ended::Failed(error) = ended {
            Some(error)
        } else {
            None
        };
        match ended {
            Ended::Usage {
                usage,
                estimated,
                outcome,
            } => {
                let cached = usage.prompt_tokens_details.map_or(0, |d| d.cached_tokens);
                let cost = self
                    .cost_nanos(
                        &attempt.deployment,
                        &attempt.served_model,
                        usage.prompt_tokens,
                        cached,
                        usage.completion_tokens,
                    )
                    .unwrap_or(0);
                attempt.outcome = outcome.into();
                attempt.billed = if estimated { "unknown" } else { "reported" }.into();
                attempt.http_status = 200;
                attempt.prompt_tokens = clamp(usage.prompt_tokens);
                attempt.completion_tokens = clamp(usage.completion_tokens);
                attempt.cached_tokens = clamp(cached);
                attempt.cost_nanos = cost;
                attempt.max_cost_nanos = if estimated {
                    cost.max(
                        self.estimated_costs(&attempt.deployment, &attempt.served_model, request)
                            .1,
                    )
                } else {
                    cost
                };
                attempt.estimated = estimated;
            }
            Ended::Abandoned => {
                attempt.outcome = "client_disconnected".into();
            }
            Ended::Failed(error) => {
                attempt.outcome = error.kind().into();
                attempt.billed = billed(error).into();
                if let ProviderError::Status { status, .. } = error {
                    attempt.http_status = i32::from(*status);
                }
                if attempt.billed == "none" {
                    attempt.prompt_tokens = 0;
                    attempt.cost_nanos = 0;
                    attempt.max_cost_nanos = 0;
                }
            }
        }
        super::metrics::attempt(request, &attempt, failed);
        attempt
    }

    /// (the counted prompt's cost, the prompt plus the completion cap's) at the price of
    /// `deployment` of `model`.
    fn estimated_costs(&self, deployment: &str, model: &str, request: &Request) -> (i64, i64) {
        let prompt = request.prompt();
        let cap = request.completion_cap(self.default_completion_tokens);
        let cost = self
            .cost_nanos(deployment, model, prompt, 0, 0)
            .unwrap_or(0);
        let max = self
            .max_cost_nanos(deployment, model, prompt, cap)
            .unwrap_or(0);
        (cost, max)
    }
}
