//! A sync call: the provider's whole answer at once, a chat completion or embeddings.

use std::time::Instant;

use serde_json::{Map, Value};
use sluice_schemas::embeddings::EmbeddingsRequest;
use sluice_schemas::openai::CompletionUsage;
use sluice_schemas::{Attempt, Request, Status};
use tokio_util::sync::CancellationToken;

use super::attempts::Ended;
use super::chain::{Attempted, Call, Chain, Leg};
use super::outcome::Outcome;
use super::Processor;
use crate::error::ProviderError;
use crate::providers::Provider;

/// A sync call of the chain; the caller's disconnect does not stop it.
enum Sync<'a> {
    /// The chain's body, a chat completion request.
    Chat,
    Embed(&'a EmbeddingsRequest),
}

/// A sync answer: its body, its usage, whether the usage is Sluice's estimate.
type Answer = (String, CompletionUsage, bool);

impl Sync<'_> {
    async fn answer(&self, call: &Call<'_>) -> Result<Answer, ProviderError> {
        let client = &call.target.client;
        match self {
            Sync::Chat => {
                let c = client.complete(call.body.clone(), call.timeout).await?;
                Ok((c.body, c.usage, false))
            }
            Sync::Embed(request) => {
                let prompt = call.request.prompt();
                let e = client.embed(request, prompt, call.timeout).await?;
                Ok((e.body, e.usage, e.estimated))
            }
        }
    }
}

impl Leg for Sync<'_> {
    fn cancel(&self) -> Option<&CancellationToken> {
        None
    }

    async fn call(
        &self,
        processor: &Processor,
        call: Call<'_>,
        log: &mut Vec<Attempt>,
    ) -> Attempted {
        let began = Instant::now();
        let called = self.answer(&call).await;
        let (request, target) = (call.request, call.target);
        let deployment = &target.deployment;
        log.push(processor.attempt_ended(
            request,
            call.attempt,
            match &called {
                Ok((_, usage, estimated)) => Ended::Usage {
                    usage: *usage,
                    estimated: *estimated,
                    outcome: "completed",
                },
                Err(error) => Ended::Failed(error),
            },
        ));
        match called {
            Ok((body, usage, estimated)) => {
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
                    estimated,
                    started_at_ms: call.started_at_ms,
                    attempt_log: Vec::new(),
                    routing_reason: None,
                    decisions: Vec::new(),
                    lane: super::processor::Lane::Batched,
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
        self.run_chain(request, &body, chain, &Sync::Chat, sluice_schemas::now_ms())
            .await
    }

    pub(super) async fn run_embed(
        &self,
        request: &Request,
        embeddings: EmbeddingsRequest,
        chain: Chain,
    ) -> Outcome {
        let leg = Sync::Embed(&embeddings);
        self.run_chain(request, &Map::new(), chain, &leg, sluice_schemas::now_ms())
            .await
    }
}
