//! The attempt chain: deployments in order x retries x the deadline. One loop for sync
//! calls and streams; a [`Leg`] makes the call and says how it went.

use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::{now_ms, Attempt, Request, Status};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::backoff::backoff;
use super::outcome::{caller_gone, failure, provider_failure, Outcome};
use super::Processor;
use crate::breaker::Admission;
use crate::error::ProviderError;
use crate::routing::stats::{Kind, FAILURE_SAMPLE};
use crate::routing::Target;

/// One provider call of the chain: what differs between a sync call and a stream.
pub(super) trait Leg {
    /// The caller's disconnect (streams): checked before each attempt, awaited in waits.
    fn cancel(&self) -> Option<&CancellationToken>;

    /// Makes the call and records how it ended in `log`. An answer ends the chain: a
    /// stream that has begun sending is never retried nor spliced with another's events.
    async fn call(
        &self,
        processor: &Processor,
        call: Call<'_>,
        log: &mut Vec<Attempt>,
    ) -> Attempted;
}

/// What one call of the chain needs.
pub(super) struct Call<'a> {
    pub request: &'a Request,
    pub target: &'a Target,
    pub body: &'a Map<String, Value>,
    /// The deployment's timeout, cut to the time left before the deadline.
    pub timeout: Duration,
    /// Its `started` record, already sent (super::attempts).
    pub attempt: Attempt,
    /// The tokens taken from the deployment's throttle, settled once usage is known.
    pub estimate: u64,
    pub tally: &'a Tally,
    pub started_at_ms: i64,
}

/// How a call went.
pub(super) enum Attempted {
    /// The provider answered (or a stream began): the request's outcome.
    Answered(Outcome),
    /// No answer: retry, fall back or stop (see [`after_failure`]).
    Failed(ProviderError),
    /// The caller went away while it was under way.
    Abandoned,
}

/// Resolves when the token is cancelled; never without one.
async fn cancelled(cancel: Option<&CancellationToken>) {
    match cancel {
        Some(c) => c.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The deployments to try for a request (indices into the catalogue), in order.
pub(super) type Chain = Vec<usize>;

impl Processor {
    /// Tries the chain's deployments in order, each up to its retries, until one answers,
    /// the request fails for good, or the deadline, the caller or shutdown comes first.
    pub(super) async fn run_chain(
        &self,
        request: &Request,
        body: &Map<String, Value>,
        chain: Chain,
        leg: &impl Leg,
        started_at_ms: i64,
    ) -> Outcome {
        let cancel = leg.cancel();
        let gone = || cancel.is_some_and(CancellationToken::is_cancelled);
        let mut tally = Tally::default();
        let mut log = Vec::new();
        let mut last: Option<(ProviderError, &Target)> = None;
        'chain: for (position, &index) in chain.iter().enumerate() {
            let target = self.catalogue.target(index);
            let deployment = &target.deployment;
            let has_next = position + 1 < chain.len();
            for retry in 0..=deployment.max_retries {
                let remaining = request.deadline_ms - now_ms();
                if remaining <= 0 || gone() {
                    break 'chain;
                }
                if !tally.admit(target, position) {
                    continue 'chain;
                }
                if let Some((_, from)) = last.as_ref().filter(|_| retry == 0) {
                    super::metrics::fallback(&from.deployment.name, &deployment.name);
                }
                let estimate = self.estimate(request);
                let waiting = std::time::Instant::now();
                if !self.wait_capacity(target, estimate, request, cancel).await {
                    break 'chain;
                }
                super::metrics::throttle_wait(&deployment.name, waiting.elapsed());
                let remaining = (request.deadline_ms - now_ms()).max(1);
                let timeout = deployment
                    .timeout_ms
                    .min(Duration::from_millis(remaining as u64));
                let attempt = self.attempt_started(request, target, tally.attempts).await;
                let call = Call {
                    request,
                    target,
                    body,
                    timeout,
                    attempt,
                    estimate,
                    tally: &tally,
                    started_at_ms,
                };
                let span = tracing::info_span!(
                    "attempt",
                    otel.kind = "client",
                    otel.status_code = tracing::field::Empty,
                    deployment = %deployment.name,
                    provider = deployment.provider.kind(),
                    attempt = tally.attempts,
                    error_kind = tracing::field::Empty,
                );
                let called = Instant::now();
                let in_flight = target.stats.begin();
                let attempted = leg
                    .call(self, call, &mut log)
                    .instrument(span.clone())
                    .await;
                drop(in_flight);
                observe(target, request, &attempted, called);
                let error = match attempted {
                    Attempted::Answered(mut outcome) => {
                        outcome.attempt_log = log;
                        return outcome;
                    }
                    Attempted::Abandoned => break 'chain,
                    Attempted::Failed(error) => {
                        span.record("otel.status_code", "ERROR");
                        span.record("error_kind", error.kind());
                        error
                    }
                };
                let next = after_failure(&error, target, retry, has_next, request, tally.attempts);
                last = Some((error, target));
                match next {
                    Next::Retry(wait) => {
                        super::metrics::retry(&target.deployment.name);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = cancelled(cancel) => break 'chain,
                            _ = self.shutdown.cancelled() => break 'chain,
                        }
                    }
                    Next::Fallback => continue 'chain,
                    Next::Stop => break 'chain,
                }
            }
        }
        let mut outcome = if gone() {
            caller_gone(started_at_ms)
        } else {
            tally.end(last, &request.model, started_at_ms)
        };
        outcome.attempt_log = log;
        outcome
    }

    /// Tokens a request is expected to use: its prompt plus its completion cap (or the
    /// configured expectation).
    pub(super) fn estimate(&self, request: &Request) -> u64 {
        request.token_estimate(self.default_completion_tokens)
    }

    /// Waits until the deployment has capacity for the request. False if the deadline, the
    /// caller or shutdown came first.
    pub(super) async fn wait_capacity(
        &self,
        target: &Target,
        estimate: u64,
        request: &Request,
        cancel: Option<&CancellationToken>,
    ) -> bool {
        let remaining = Duration::from_millis((request.deadline_ms - now_ms()).max(0) as u64);
        tokio::select! {
            // Capacity first: a request draining at shutdown still runs when it can.
            biased;
            _ = target.throttle.acquire(estimate) => true,
            _ = tokio::time::sleep(remaining) => false,
            _ = self.shutdown.cancelled() => false,
            _ = cancelled(cancel) => false,
        }
    }
}

/// What the latency strategy learns from a call: a sync answer's time (a stream's first
/// event is measured where it arrives, in super::stream); a deployment fault counts at least
/// [`FAILURE_SAMPLE`].
fn observe(target: &Target, request: &Request, attempted: &Attempted, called: Instant) {
    let kind = if request.stream {
        Kind::FirstToken
    } else {
        Kind::Answer
    };
    let now = Instant::now();
    match attempted {
        Attempted::Answered(_) if !request.stream => {
            target.stats.observe(kind, now - called, now);
        }
        Attempted::Failed(error) if error.is_deployment_fault() => {
            target
                .stats
                .observe(kind, (now - called).max(FAILURE_SAMPLE), now);
        }
        _ => {}
    }
}

/// Attempts and fallbacks of one request, and the circuit breakers it met.
#[derive(Default)]
pub(super) struct Tally {
    pub attempts: i32,
    pub fallbacks: i32,
    /// Deployments skipped because their circuit was open.
    pub skipped: i32,
}

impl Tally {
    /// Asks the target's breaker; counts the attempt if it may be called.
    pub(super) fn admit(&mut self, target: &Target, position: usize) -> bool {
        match target.breaker.admit(Instant::now()) {
            Admission::Rejected => {
                tracing::debug!(deployment = %target.deployment.name, "circuit open; skipped");
                self.skipped += 1;
                false
            }
            admission => {
                if admission == Admission::Probe {
                    tracing::info!(deployment = %target.deployment.name, "circuit half open; probing");
                }
                self.attempts += 1;
                self.fallbacks = position as i32;
                true
            }
        }
    }

    /// The outcome when no deployment answered.
    pub(super) fn end(
        &self,
        last: Option<(ProviderError, &Target)>,
        model: &str,
        started_at_ms: i64,
    ) -> Outcome {
        match last {
            Some((error, target)) => {
                let mut outcome =
                    provider_failure(error, &target.deployment, self.attempts, started_at_ms);
                outcome.fallbacks = self.fallbacks;
                outcome
            }
            None if self.skipped > 0 => {
                let mut outcome = failure(
                    Status::Failed,
                    503,
                    ErrorBody::new(
                        "service_unavailable",
                        Some("deployments_unavailable"),
                        format!("Every deployment serving `{model}` is failing and out of rotation for a cool-down; retry later."),
                    ),
                    "circuit_open",
                    started_at_ms,
                );
                outcome.fallbacks = self.skipped - 1;
                outcome
            }
            None => failure(
                Status::Expired,
                504,
                ErrorBody::new(
                    "timeout",
                    Some("deadline_exceeded"),
                    "The request reached its deadline before a provider answered.",
                ),
                "expired",
                started_at_ms,
            ),
        }
    }
}

/// What to do after a failed attempt.
pub(super) enum Next {
    /// The same deployment again, after this wait.
    Retry(Duration),
    /// The next deployment of the chain.
    Fallback,
    /// Give up: the error is the caller's answer.
    Stop,
}

/// Records the failure with the deployment's breaker and decides what comes next:
/// - a request this deployment's provider has no form of: the next deployment, if any
///   (no call was made, so its breaker hears nothing);
/// - a request error (400, 422, ...) would fail anywhere: stop, never retried;
/// - a deployment fault that retrying cannot fix (401, 403, 404): the next deployment;
/// - throttled (429) with a fallback left: the next deployment at once, rather than wait;
/// - otherwise retry with backoff (at least the provider's Retry-After), then fall back;
///   a wait that would end past the deadline is not waited.
pub(super) fn after_failure(
    error: &ProviderError,
    target: &Target,
    retry: u32,
    has_next: bool,
    request: &Request,
    attempt: i32,
) -> Next {
    let deployment = &target.deployment;
    tracing::warn!(deployment = %deployment.name, attempt, kind = error.kind(), %error, "provider call failed");
    if matches!(error, ProviderError::Unsupported(_)) {
        return if has_next { Next::Fallback } else { Next::Stop };
    }
    if !error.is_deployment_fault() {
        // The deployment answered: it is healthy, the request is not.
        target.breaker.success();
        return Next::Stop;
    }
    if target.breaker.failure(Instant::now()) {
        tracing::warn!(deployment = %deployment.name, "circuit opened");
    }
    let throttled = matches!(error, ProviderError::Status { status: 429, .. });
    if throttled {
        // Our limits did not match the provider's: back off for everyone using it.
        target.throttle.throttled(error.retry_after());
    }
    if !error.is_retriable() || retry >= deployment.max_retries || (throttled && has_next) {
        return if has_next { Next::Fallback } else { Next::Stop };
    }
    let wait = backoff(retry, error.retry_after(), &request.request_id);
    let remaining = Duration::from_millis((request.deadline_ms - now_ms()).max(0) as u64);
    if wait >= remaining {
        return if has_next { Next::Fallback } else { Next::Stop };
    }
    Next::Retry(wait)
}
