//! The worker's metrics (catalog: docs/operations.md): what a taken request and each
//! provider attempt record. No request ids in labels: priority, team, deployment, model.

use metrics::{counter, gauge, histogram};
use sluice_schemas::{now_ms, Attempt, Request};

use crate::ProviderError;

/// A request being processed: `sluice_worker_in_flight{class}` counts it until dropped.
pub(super) struct InFlight(&'static str);

/// A request left the queue: time in queue, dequeued tokens, one more in flight.
pub(super) fn started(request: &Request, default_completion: u32) -> InFlight {
    let class = request.priority.as_str();
    let queued = (now_ms() - request.created_at_ms).max(0) as f64 / 1000.0;
    histogram!("sluice_time_in_queue_seconds", "class" => class).record(queued);
    counter!("sluice_dequeued_tokens_total", "class" => class)
        .increment(request.token_estimate(default_completion));
    gauge!("sluice_worker_in_flight", "class" => class).increment(1.0);
    InFlight(class)
}

impl Drop for InFlight {
    fn drop(&mut self) {
        gauge!("sluice_worker_in_flight", "class" => self.0).decrement(1.0);
    }
}

/// OpenTelemetry's `gen_ai.provider.name` of a provider kind.
fn provider_name(kind: &str) -> &'static str {
    match kind {
        "openai" => "openai",
        "anthropic" => "anthropic",
        "gemini" => "gcp.gemini",
        "azure" => "azure.ai.openai",
        "openai_compatible" => "openai_compatible",
        _ => "other",
    }
}

/// One ended provider attempt: GenAI duration and token histograms, the provider's answer.
pub(super) fn attempt(request: &Request, attempt: &Attempt, error: Option<&ProviderError>) {
    if attempt.outcome == "client_disconnected" {
        return;
    }
    let provider = provider_name(&attempt.provider);
    let model = attempt.served_model.clone();
    let seconds = (attempt.finished_at_ms - attempt.started_at_ms).max(0) as f64 / 1000.0;
    let status = match error {
        None => "200".to_string(),
        Some(ProviderError::Status { status, .. }) => status.to_string(),
        Some(ProviderError::Timeout(_)) => "timeout".to_string(),
        Some(_) => "error".to_string(),
    };
    counter!("sluice_provider_responses_total", "deployment" => attempt.deployment.clone(), "status" => status.clone())
        .increment(1);
    match error {
        Some(error) => histogram!(
            "gen_ai_server_request_duration_seconds",
            "gen_ai_operation_name" => "chat",
            "gen_ai_provider_name" => provider,
            "gen_ai_request_model" => model,
            "error_type" => error.kind()
        )
        .record(seconds),
        None => {
            histogram!(
                "gen_ai_server_request_duration_seconds",
                "gen_ai_operation_name" => "chat",
                "gen_ai_provider_name" => provider,
                "gen_ai_request_model" => model.clone()
            )
            .record(seconds);
            let priority = request.priority.as_str();
            for (kind, tokens) in [
                ("input", attempt.prompt_tokens),
                ("output", attempt.completion_tokens),
            ] {
                histogram!(
                    "gen_ai_client_token_usage",
                    "gen_ai_token_type" => kind,
                    "gen_ai_operation_name" => "chat",
                    "gen_ai_provider_name" => provider,
                    "gen_ai_request_model" => model.clone(),
                    "team" => request.team.clone(),
                    "priority" => priority
                )
                .record(f64::from(tokens.max(0)));
            }
            if attempt.completion_tokens > 0 {
                histogram!(
                    "gen_ai_server_time_per_output_token_seconds",
                    "gen_ai_operation_name" => "chat",
                    "gen_ai_provider_name" => provider,
                    "gen_ai_request_model" => model
                )
                .record(seconds / f64::from(attempt.completion_tokens));
            }
        }
    }
}

/// A streamed answer started (the provider's SSE response began): time since the attempt
/// started, the worker's view of `gen_ai.server.time_to_first_token`.
pub(super) fn first_token(attempt: &Attempt) {
    let seconds = (now_ms() - attempt.started_at_ms).max(0) as f64 / 1000.0;
    histogram!(
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_operation_name" => "chat",
        "gen_ai_provider_name" => provider_name(&attempt.provider),
        "gen_ai_request_model" => attempt.served_model.clone()
    )
    .record(seconds);
}

/// A failed attempt is tried again on the same deployment.
pub(super) fn retry(deployment: &str) {
    counter!("sluice_provider_retries_total", "deployment" => deployment.to_string()).increment(1);
}

/// The request moves on from deployment `from` to `to`.
pub(super) fn fallback(from: &str, to: &str) {
    counter!("sluice_fallbacks_total", "from" => from.to_string(), "to" => to.to_string())
        .increment(1);
}

/// A redelivered request that already has its result: not called again.
pub(super) fn redelivery_skipped() {
    counter!("sluice_redelivery_skipped_total").increment(1);
}

/// How long a call waited for its deployment's throttle.
pub(super) fn throttle_wait(deployment: &str, waited: std::time::Duration) {
    histogram!("sluice_throttle_wait_seconds", "deployment" => deployment.to_string())
        .record(waited.as_secs_f64());
}

/// One reply record of a stream, holding `1 + more` events (crate::process::coalesce), sent
/// on `lane`'s producer.
pub(super) fn stream_record(more: usize, lane: super::processor::Lane) {
    counter!("sluice_stream_records_total", "lane" => lane.as_str()).increment(1);
    counter!("sluice_stream_events_total").increment(1 + more as u64);
}

/// The deployment a request's chain starts with, and the strategy that put it first.
pub(super) fn routed(strategy: &'static str, deployment: &str) {
    counter!("sluice_routing_decisions_total", "strategy" => strategy, "deployment" => deployment.to_string())
        .increment(1);
}
