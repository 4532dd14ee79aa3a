//! A sync call: the provider's whole answer at once.

use std::time::Instant;

use serde_json::{Map, Value};
use sluice_schemas::{Attempt, Request, Status};
use tokio_util::sync::CancellationToken;

use super::attempts::Ended;
use super::chain::{Attempted, Call, Chain, Leg};
use super::outcome::Outcome;
use super::Processor;
use crate::providers::{Completion, Provider};

/// A sync call of the chain; the caller's disconnect does not stop it.
struct Sync;

impl Leg for Sync {
    fn cancel(&self) -> Option<&CancellationToken> {
        None
    }

    async fn call(
        &self,
        processor: &Processor,
        call: Call<'_>,
        log: &mut Vec<Attempt>,
    ) -> Attempted {
        let (request, target) = (call.request, call.target);
        let deployment = &target.deployment;
        let began = Instant::now();
        let called = target
            .client
            .complete(call.body.clone(), call.timeout)
            .await;
        log.push(processor.attempt_ended(
            request,
            call.attempt,
            match &called {
                Ok(c) => Ended::Usage {
                    usage: c.usage,
                    estimated: false,
                    outcome: "completed",
                },
                Err(error) => Ended::Failed(error),
            },
        ));
        match called {
            Ok(Completion { body, usage }) => {
                target.breaker.success();
                target
                    .throttle
                    .settle(call.estimate, u64::from(usage.total_tokens));
                tracing::debug!(deployment = %deployment.name, attempts = call.tally.attempts, elapsed_ms = began.elapsed().as_millis() as u64, "completed");
                Attempted::Answered(Outcome {
                    status: Status::Completed,
                    http_status: 200,
                    body,
                    error_kind: None,
                    provider: deployment.provider.kind().into(),
                    deployment: deployment.name.clone(),
                    served_model: deployment.model.clone(),
                    attempts: call.tally.attempts,
                    fallbacks: call.tally.fallbacks,
                    usage,
                    estimated: false,
                    started_at_ms: call.started_at_ms,
                    attempt_log: Vec::new(),
                })
            }
            Err(error) => Attempted::Failed(error),
        }
    }
}

impl Processor {
    pub(super) async fn run(
        &self,
        request: &Request,
        body: Map<String, Value>,
        chain: Chain,
    ) -> Outcome {
        self.run_chain(request, &body, chain, &Sync, sluice_schemas::now_ms())
            .await
    }
}
