//! Processing one request: deadline check, provider call with retries and fallback, then
//! the result, reply, usage and audit events.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use serde_json::{Map, Value};
use sluice_schemas::audit_content::AuditContent;
use sluice_schemas::openai::{CompletionUsage, ErrorBody};
use sluice_schemas::{
    encode, now_ms, Attempt, Audit, AuditAction, Request, Result as ResultRecord, Status, Topic,
    Topics, Usage,
};
use tokio_util::sync::CancellationToken;

use crate::attempts::Ended;
use crate::breaker::Admission;
use crate::cancel::Cancellations;
use crate::config::{Config, Deployment};
use crate::error::ProviderError;
use crate::pricing::PriceTable;
use crate::providers::{Completion, Provider};
use crate::publish::{send, Outgoing};
use crate::routing::{random_for, Catalogue, Target};

/// Everything a request's processing needs, shared by all tasks of a worker.
pub struct Processor {
    pub worker_id: String,
    pub topics: Topics,
    pub producer: FutureProducer,
    pub catalogue: Catalogue,
    pub prices: PriceTable,
    pub cancellations: Cancellations,
    pub shutdown: CancellationToken,
    /// Completion tokens assumed for a request without max_tokens.
    pub default_completion_tokens: u32,
    /// Finds requests that already have a result (crate::redelivery); None: off.
    pub lookup: Option<crate::redelivery::Lookup>,
    /// `[kafka] max_message_bytes`: larger results are published as `result_too_large`.
    pub max_message_bytes: usize,
}

/// The deployments to try for a request (indices into the catalogue), in order.
pub(crate) type Chain = Vec<usize>;

/// How a request ended, before it becomes events.
pub(crate) struct Outcome {
    pub status: Status,
    pub http_status: i32,
    pub body: String,
    pub error_kind: Option<&'static str>,
    pub provider: String,
    pub deployment: String,
    /// The model of the deployment that answered (prices are per served model).
    pub served_model: String,
    pub attempts: i32,
    /// Deployments passed over (failed, or skipped with an open circuit) before the last.
    pub fallbacks: i32,
    pub usage: CompletionUsage,
    /// Usage is a tiktoken estimate: the provider reported none.
    pub estimated: bool,
    pub started_at_ms: i64,
    /// Every provider call made for it, ended (crate::attempts).
    pub attempt_log: Vec<Attempt>,
}

impl Processor {
    pub fn new(
        config: &Config,
        producer: FutureProducer,
        http: reqwest::Client,
        cancellations: Cancellations,
        shutdown: CancellationToken,
    ) -> Processor {
        Processor {
            worker_id: config.worker.id.clone(),
            topics: Topics::new(config.kafka.topic_prefix.clone()),
            producer,
            catalogue: Catalogue::new(config, &http),
            prices: PriceTable::new(&config.prices),
            default_completion_tokens: config.scheduling.default_completion_tokens,
            lookup: crate::redelivery::Lookup::new(&config.redelivery, http.clone()),
            max_message_bytes: config.kafka.max_message_bytes,
            cancellations,
            shutdown,
        }
    }

    /// Runs the request and publishes its events. Returns false if the events could not be
    /// published before shutdown: then the message must not be marked done.
    /// `maybe_redelivered`: an earlier owner of the partition may have finished it.
    #[tracing::instrument(skip_all, fields(request_id = %request.request_id, team = %request.team))]
    pub async fn process(&self, request: Request, maybe_redelivered: bool) -> bool {
        if maybe_redelivered {
            if let Some(lookup) = &self.lookup {
                if lookup.already_done(&request).await {
                    // Its result, reply and usage went out before the earlier owner stopped;
                    // calling again would be billed by the provider a second time.
                    tracing::info!("redelivered request already has a result; not called again");
                    return true;
                }
            }
        }
        let registration = self.cancellations.register(&request.request_id);
        let outcome = match self.prepare(&request) {
            Err(outcome) => outcome,
            Ok(_) if registration.token.is_cancelled() => crate::stream::caller_gone(now_ms()),
            Ok((chain, body)) if request.stream => {
                self.run_stream(&request, body, chain, &registration.token, now_ms())
                    .await
            }
            Ok((chain, body)) => self.run(&request, body, chain).await,
        };
        // Stopped by shutdown before any answer, with time left: that is no outcome. Not
        // marked done, the message goes to the partition's next owner (a batch line
        // interrupted by a worker restart must not end `expired`).
        if outcome.status == Status::Expired
            && self.shutdown.is_cancelled()
            && now_ms() < request.deadline_ms
        {
            return false;
        }
        self.publish(&request, outcome).await
    }

    /// Checks what needs no provider: the deadline, a deployment for the model, the body.
    #[allow(clippy::result_large_err)]
    fn prepare(&self, request: &Request) -> Result<(Chain, Map<String, Value>), Outcome> {
        let started_at_ms = now_ms();
        if started_at_ms >= request.deadline_ms {
            tracing::info!(
                late_ms = started_at_ms - request.deadline_ms,
                "request expired in queue"
            );
            return Err(failure(
                Status::Expired,
                504,
                ErrorBody::new(
                    "timeout",
                    Some("deadline_exceeded"),
                    "The request expired in the queue before it reached a provider.",
                ),
                "expired",
                started_at_ms,
            ));
        }
        let Some(chain) = self
            .catalogue
            .chain(&request.model, random_for(&request.request_id))
        else {
            return Err(failure(
                Status::Failed,
                404,
                ErrorBody::new(
                    "invalid_request_error",
                    Some("model_not_found"),
                    format!("No worker deployment serves model `{}`.", request.model),
                ),
                "no_deployment",
                started_at_ms,
            ));
        };
        match serde_json::from_str::<Map<String, Value>>(&request.body) {
            Ok(body) => match sluice_schemas::billable::check(&body) {
                Ok(()) => Ok((chain, body)),
                // The ingress refuses these before publishing; a record that still has one
                // was not written by it, and is not sent where it could be billed unpriced.
                Err(refused) => Err(failure(
                    Status::Failed,
                    400,
                    ErrorBody::new(
                        "invalid_request_error",
                        Some("unsupported_parameter"),
                        format!("Unsupported parameter: {refused}"),
                    )
                    .with_param(&refused.param),
                    "bad_request",
                    started_at_ms,
                )),
            },
            Err(_) => Err(failure(
                Status::Failed,
                400,
                ErrorBody::new(
                    "invalid_request_error",
                    Some("invalid_json"),
                    "The request body is not a JSON object.",
                ),
                "bad_request",
                started_at_ms,
            )),
        }
    }

    /// Tokens a request is expected to use: its prompt plus its completion cap (or the
    /// configured expectation).
    pub(crate) fn estimate(&self, request: &Request) -> u64 {
        let completion = request
            .max_tokens
            .map_or(self.default_completion_tokens, |m| m.max(0) as u32);
        u64::from(request.prompt_tokens.max(0) as u32) + u64::from(completion)
    }

    /// Waits until the deployment has capacity for the request. False if the deadline, the
    /// caller or shutdown came first.
    pub(crate) async fn wait_capacity(
        &self,
        target: &Target,
        estimate: u64,
        request: &Request,
        cancel: Option<&CancellationToken>,
    ) -> bool {
        let remaining = Duration::from_millis((request.deadline_ms - now_ms()).max(0) as u64);
        let cancelled = async {
            match cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Capacity first: a request draining at shutdown still runs when it can.
            biased;
            _ = target.throttle.acquire(estimate) => true,
            _ = tokio::time::sleep(remaining) => false,
            _ = self.shutdown.cancelled() => false,
            _ = cancelled => false,
        }
    }

    async fn run(&self, request: &Request, body: Map<String, Value>, chain: Chain) -> Outcome {
        let started_at_ms = now_ms();
        let mut tally = Tally::default();
        let mut log = Vec::new();
        let mut last: Option<(ProviderError, &Target)> = None;
        'chain: for (position, &index) in chain.iter().enumerate() {
            let target = self.catalogue.target(index);
            let deployment = &target.deployment;
            let has_next = position + 1 < chain.len();
            for retry in 0..=deployment.max_retries {
                let remaining = request.deadline_ms - now_ms();
                if remaining <= 0 {
                    break 'chain;
                }
                if !tally.admit(target, position) {
                    continue 'chain;
                }
                let estimate = self.estimate(request);
                if !self.wait_capacity(target, estimate, request, None).await {
                    break 'chain;
                }
                let remaining = (request.deadline_ms - now_ms()).max(1);
                let timeout = deployment
                    .timeout_ms
                    .min(Duration::from_millis(remaining as u64));
                let began = Instant::now();
                let attempt = self.attempt_started(request, target, tally.attempts);
                let called = target.client.complete(body.clone(), timeout).await;
                log.push(self.attempt_ended(
                    request,
                    attempt,
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
                            .settle(estimate, u64::from(usage.total_tokens));
                        tracing::debug!(deployment = %deployment.name, attempts = tally.attempts, elapsed_ms = began.elapsed().as_millis() as u64, "completed");
                        return Outcome {
                            status: Status::Completed,
                            http_status: 200,
                            body,
                            error_kind: None,
                            provider: deployment.provider.kind().into(),
                            deployment: deployment.name.clone(),
                            served_model: deployment.model.clone(),
                            attempts: tally.attempts,
                            fallbacks: tally.fallbacks,
                            usage,
                            estimated: false,
                            started_at_ms,
                            attempt_log: log,
                        };
                    }
                    Err(error) => {
                        let next =
                            after_failure(&error, target, retry, has_next, request, tally.attempts);
                        last = Some((error, target));
                        match next {
                            Next::Retry(wait) => {
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = self.shutdown.cancelled() => break 'chain,
                                }
                            }
                            Next::Fallback => continue 'chain,
                            Next::Stop => break 'chain,
                        }
                    }
                }
            }
        }
        let mut outcome = tally.end(last, &request.model, started_at_ms);
        outcome.attempt_log = log;
        outcome
    }

    async fn publish(&self, request: &Request, mut outcome: Outcome) -> bool {
        let outcome_attempts = std::mem::take(&mut outcome.attempt_log);
        let finished_at_ms = now_ms();
        let cached = outcome
            .usage
            .prompt_tokens_details
            .map_or(0, |d| d.cached_tokens);
        let cost = |model: &str| {
            self.prices.cost_nanos(
                model,
                outcome.usage.prompt_tokens,
                cached,
                outcome.usage.completion_tokens,
            )
        };
        // The served model's price; the requested name's (an alias may have one) otherwise.
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
            traceparent: request.traceparent.clone(),
            status: outcome.status,
            http_status: outcome.http_status,
            body: outcome.body,
            error_kind: outcome.error_kind.map(str::to_string),
            provider: outcome.provider.clone(),
            deployment: outcome.deployment.clone(),
            attempts: outcome.attempts,
            fallbacks: outcome.fallbacks,
            prompt_tokens: clamp(outcome.usage.prompt_tokens),
            completion_tokens: clamp(outcome.usage.completion_tokens),
            created_at_ms: request.created_at_ms,
            started_at_ms: outcome.started_at_ms,
            finished_at_ms,
            worker: self.worker_id.clone(),
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
        };
        // The completion under the team's audit content policy (set by the ingress).
        let (completion_sha256, completion_text) = match outcome.status {
            Status::Completed => sluice_schemas::audit_content::completion_text(&result.body)
                .map(|text| AuditContent::of_attributes(&request.attributes).record(&text))
                .unwrap_or_default(),
            Status::Failed | Status::Expired => (None, None),
        };
        let mut audit = Audit {
            event_id: format!("{}-{}", request.request_id, outcome.status.as_str()),
            request_id: request.request_id.clone(),
            team: request.team.clone(),
            key_id: request.key_id.clone(),
            action: match outcome.status {
                Status::Completed => AuditAction::Completed,
                Status::Failed => AuditAction::Failed,
                Status::Expired => AuditAction::Expired,
            },
            model: request.model.clone(),
            priority: request.priority,
            http_status: outcome.http_status,
            reason: result.error_kind.clone(),
            prompt_tokens: clamp(outcome.usage.prompt_tokens),
            occurred_at_ms: finished_at_ms,
            completion_sha256,
            completion_text,
            ..Audit::default()
        };
        let Some(mut encoded) = encode_events(&result, &usage, &audit) else {
            // Only a schema defect gets here; nothing sensible can be published.
            tracing::error!("result events could not be encoded");
            return true;
        };
        // A result Kafka cannot take (an enormous completion) becomes a small failure now
        // rather than a publish retried forever.
        let key = request.request_id.len();
        let fits = |e: &Encoded| {
            [&e.result, &e.usage, &e.audit]
                .iter()
                .all(|p| sluice_schemas::topics::fits(self.max_message_bytes, key, p.len()))
        };
        let mut shrunk = false;
        if !fits(&encoded) {
            let size = encoded.result.len();
            match self.too_large(&mut result, &mut usage, &mut audit, size, true) {
                Some(e) => encoded = e,
                None => return true,
            }
            shrunk = true;
        }
        let Encoded {
            result: mut result_bytes,
            usage: mut usage_bytes,
            audit: mut audit_bytes,
        } = encoded;
        let attempts = crate::attempts::encoded(&outcome_attempts);
        let attempts_topic = self.topics.name(&Topic::Attempts);
        let results_topic = self.topics.name(&Topic::Results);
        let usage_topic = self.topics.name(&Topic::Usage);
        let audit_topic = self.topics.name(&Topic::Audit);
        let mut delay = Duration::from_millis(100);
        loop {
            let reply = async {
                match &request.reply {
                    Some(r) => {
                        send(
                            &self.producer,
                            Outgoing {
                                topic: &r.topic,
                                key: &request.request_id,
                                payload: &result_bytes,
                                partition: Some(r.partition),
                                headers: Some(OwnedHeaders::new().insert(Header {
                                    key: sluice_schemas::REPLY_KIND_HEADER,
                                    value: Some(sluice_schemas::REPLY_KIND_RESULT),
                                })),
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
            // Every provider call of this processing, for reconciliation.
            let calls = futures::future::join_all(attempts.iter().map(|(key, payload)| {
                send(
                    &self.producer,
                    Outgoing {
                        topic: &attempts_topic,
                        key,
                        payload,
                        partition: None,
                        headers: None,
                    },
                )
            }));
            let (a, b, c, d, e) = tokio::join!(
                reply,
                send(&self.producer, out(&results_topic, &result_bytes)),
                send(&self.producer, out(&usage_topic, &usage_bytes)),
                send(&self.producer, out(&audit_topic, &audit_bytes)),
                calls,
            );
            let e: Result<(), _> = e.into_iter().collect();
            match a.and(b).and(c).and(d).and(e) {
                Ok(()) => return true,
                Err(error) if crate::publish::too_large(&error) && !shrunk => {
                    // A topic with a smaller limit than ours refused it: final. Sinks keep
                    // the failure (deduplicated by request id) whatever was sent before.
                    tracing::warn!(request_id = %request.request_id, "result refused by Kafka as too large; publishing a failure instead");
                    let size = result_bytes.len();
                    let Some(e) = self.too_large(&mut result, &mut usage, &mut audit, size, false)
                    else {
                        return true;
                    };
                    (result_bytes, usage_bytes, audit_bytes) = (e.result, e.usage, e.audit);
                    shrunk = true;
                }
                Err(error) => {
                    // Never mark the request done before its events are durable; resending
                    // is safe because every sink deduplicates by request id.
                    tracing::warn!(%error, "publishing result events failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// The three events of a finished request, encoded.
struct Encoded {
    result: Vec<u8>,
    usage: Vec<u8>,
    audit: Vec<u8>,
}

fn encode_events(result: &ResultRecord, usage: &Usage, audit: &Audit) -> Option<Encoded> {
    Some(Encoded {
        result: encode(result).ok()?,
        usage: encode(usage).ok()?,
        audit: encode(audit).ok()?,
    })
}

impl Processor {
    /// Turns a result too large for Kafka into a small `failed` one (`result_too_large`,
    /// 502): the caller learns why, nothing is retried. Usage keeps the tokens (the provider
    /// billed them); the audit event keeps the completion's hash, not its text.
    fn too_large(
        &self,
        result: &mut ResultRecord,
        usage: &mut Usage,
        audit: &mut Audit,
        size: usize,
        over_our_limit: bool,
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
                "The provider's answer is {size} bytes, more than the queue accepts{limit}; it was not kept. Ask for a shorter completion (max_tokens)."
            ),
        )
        .to_json();
        usage.status = Status::Failed;
        audit.action = AuditAction::Failed;
        audit.event_id = format!("{}-{}", result.request_id, Status::Failed.as_str());
        audit.http_status = 502;
        audit.reason = result.error_kind.clone();
        audit.completion_text = None;
        encode_events(result, usage, audit)
    }
}

fn clamp(n: u32) -> i32 {
    n.min(i32::MAX as u32) as i32
}

pub(crate) fn failure(
    status: Status,
    http_status: i32,
    body: ErrorBody,
    kind: &'static str,
    started_at_ms: i64,
) -> Outcome {
    Outcome {
        status,
        http_status,
        body: body.to_json(),
        error_kind: Some(kind),
        provider: String::new(),
        deployment: String::new(),
        served_model: String::new(),
        attempts: 0,
        fallbacks: 0,
        usage: CompletionUsage::default(),
        estimated: false,
        started_at_ms,
        attempt_log: Vec::new(),
    }
}

pub(crate) fn provider_failure(
    error: ProviderError,
    deployment: &Deployment,
    attempts: i32,
    started_at_ms: i64,
) -> Outcome {
    let kind = error.kind();
    let (http_status, body) = match error {
        // The provider's own error body is already in the caller's (OpenAI) shape.
        ProviderError::Status { status, body, .. }
            if serde_json::from_str::<ErrorBody>(&body).is_ok() =>
        {
            (status as i32, body)
        }
        ProviderError::Status { status, .. } => (
            status as i32,
            ErrorBody::new(
                "upstream_error",
                Some(kind),
                format!("The provider answered HTTP {status}."),
            )
            .to_json(),
        ),
        ProviderError::Timeout(_) => (
            504,
            ErrorBody::new(
                "timeout",
                Some(kind),
                "The provider did not answer in time.",
            )
            .to_json(),
        ),
        other => (
            502,
            ErrorBody::new("upstream_error", Some(kind), other.to_string()).to_json(),
        ),
    };
    Outcome {
        status: Status::Failed,
        http_status,
        body,
        error_kind: Some(kind),
        provider: deployment.provider.kind().into(),
        deployment: deployment.name.clone(),
        served_model: deployment.model.clone(),
        attempts,
        fallbacks: 0,
        usage: CompletionUsage::default(),
        estimated: false,
        started_at_ms,
        attempt_log: Vec::new(),
    }
}

/// Attempts and fallbacks of one request, and the circuit breakers it met.
#[derive(Default)]
pub(crate) struct Tally {
    pub attempts: i32,
    pub fallbacks: i32,
    /// Deployments skipped because their circuit was open.
    pub skipped: i32,
}

impl Tally {
    /// Asks the target's breaker; counts the attempt if it may be called.
    pub(crate) fn admit(&mut self, target: &Target, position: usize) -> bool {
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
    pub(crate) fn end(
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
pub(crate) enum Next {
    /// The same deployment again, after this wait.
    Retry(Duration),
    /// The next deployment of the chain.
    Fallback,
    /// Give up: the error is the caller's answer.
    Stop,
}

/// Records the failure with the deployment's breaker and decides what comes next:
/// - a request error (400, 422, ...) would fail anywhere: stop, never retried;
/// - a deployment fault that retrying cannot fix (401, 403, 404): the next deployment;
/// - throttled (429) with a fallback left: the next deployment at once, rather than wait;
/// - otherwise retry with backoff (at least the provider's Retry-After), then fall back;
///   a wait that would end past the deadline is not waited.
pub(crate) fn after_failure(
    error: &ProviderError,
    target: &Target,
    retry: u32,
    has_next: bool,
    request: &Request,
    attempt: i32,
) -> Next {
    let deployment = &target.deployment;
    tracing::warn!(deployment = %deployment.name, attempt, kind = error.kind(), %error, "provider call failed");
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

/// Exponential backoff with full jitter, at least what the provider asked for.
pub(crate) fn backoff(retry: u32, retry_after: Option<Duration>, seed: &str) -> Duration {
    let base = Duration::from_millis(200) * 2u32.saturating_pow(retry.min(6));
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(seed.as_bytes());
    hasher.write_u32(retry);
    let jittered = base.mul_f64((hasher.finish() % 1000) as f64 / 1000.0);
    match retry_after {
        Some(asked) => asked.max(jittered),
        None => jittered,
    }
    .min(Duration::from_secs(60))
}
