//! One message's way through: the redelivery check, what needs no provider (deadline,
//! deployment, body), the attempt chain, then the events.

use serde_json::{Map, Value};
use sluice_schemas::openai::ErrorBody;
use sluice_schemas::{now_ms, Request, Status};

use super::outcome::{caller_gone, cancelled_by_caller, failure, Outcome};
use super::route::Routed;
use super::Processor;
use tracing::Instrument;

use crate::providers::with_traceparent;
use sluice_schemas::embeddings::{is_embeddings, EmbeddingsRequest};

impl Processor {
    /// Runs the request and publishes its events. Returns false if the events could not be
    /// published before shutdown: then the message must not be marked done.
    /// `maybe_redelivered`: an earlier owner of the partition may have finished it.
    ///
    /// Its spans (sluice_schemas::trace) are children of the record's `traceparent` (the
    /// ingress's `produce` span): `queue` (creation to consumption), `process` and, in it,
    /// one `attempt` per provider call.
    pub async fn process(&self, request: Request, maybe_redelivered: bool) -> bool {
        let parent = request.traceparent.as_deref();
        sluice_schemas::trace::record_past(
            "queue",
            parent,
            sluice_schemas::trace::at_ms(request.created_at_ms),
            std::time::SystemTime::now(),
            &[("sluice.priority", request.priority.as_str())],
        );
        let span = tracing::info_span!(
            "process",
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            sluice.status = tracing::field::Empty,
            request_id = %request.request_id,
            team = %request.team,
            model = %request.model,
            trace_id = parent.and_then(sluice_schemas::trace::trace_id),
        );
        sluice_schemas::trace::set_parent(&span, parent);
        self.handle(request, maybe_redelivered)
            .instrument(span)
            .await
    }

    async fn handle(&self, request: Request, maybe_redelivered: bool) -> bool {
        let _in_flight = super::metrics::started(&request, self.default_completion_tokens);
        if maybe_redelivered {
            if self.recent.contains(&request.request_id) {
                // This process published its events; the offset was not committed yet.
                tracing::info!("redelivered request finished here before; not called again");
                return true;
            }
            if let Some(lookup) = &self.lookup {
                if lookup.already_done(&request).await {
                    // Its result, reply and usage went out before the earlier owner stopped;
                    // calling again would be billed by the provider a second time.
                    tracing::info!("redelivered request already has a result; not called again");
                    super::metrics::redelivery_skipped();
                    return true;
                }
            }
        }
        let registration = self.cancellations.register(&request.request_id);
        let (routed, body) = match self.prepare(&request) {
            Err(outcome) => (None, Err(outcome)),
            Ok((routed, body)) => (Some(routed.reason), Ok((routed.chain, body))),
        };
        let mut decisions = Vec::new();
        let mut outcome = match body {
            Err(outcome) => outcome,
            Ok(_) if registration.by_caller => cancelled_by_caller(now_ms()),
            Ok(_) if registration.token.is_cancelled() => caller_gone(now_ms()),
            Ok((chain, Body::Chat(mut body))) => match self.hooks.pre(&request, &mut body).await {
                Err(refusal) => hook_refused(refusal, &mut decisions, None),
                Ok(pre) => {
                    decisions = pre;
                    let kept = self.hooks.has_post(&request).then(|| body.clone());
                    let mut outcome = if request.stream {
                        let token = &registration.token;
                        let run = self.run_stream(&request, body, chain, token, now_ms());
                        with_traceparent(request.traceparent.as_deref(), run).await
                    } else {
                        let run = self.run(&request, body, chain);
                        with_traceparent(request.traceparent.as_deref(), run).await
                    };
                    if let Some(body) = kept.filter(|_| outcome.status == Status::Completed) {
                        let (answer, streamed) = (&mut outcome.body, request.stream);
                        match self.hooks.post(&request, &body, answer, streamed).await {
                            Ok(post) => decisions.extend(post),
                            Err(refusal) => {
                                outcome = hook_refused(refusal, &mut decisions, Some(outcome));
                            }
                        }
                    }
                    outcome
                }
            },
            Ok((chain, Body::Embeddings(embeddings))) => {
                let run = self.run_embed(&request, embeddings, chain);
                with_traceparent(request.traceparent.as_deref(), run).await
            }
        };
        // The pre and post hooks', then the per-chunk hooks' of the stream.
        decisions.append(&mut outcome.decisions);
        outcome.decisions = decisions;
        outcome.routing_reason =
            routed
                .filter(|r| !r.is_empty())
                .map(|r| match outcome.fallbacks {
                    0 => r,
                    n => format!("{r}; answered after {n} fallback(s)"),
                });
        let span = tracing::Span::current();
        span.record("sluice.status", outcome.status.as_str());
        if outcome.status != Status::Completed {
            span.record("otel.status_code", "ERROR");
        }
        // Stopped by shutdown before any answer, with time left: that is no outcome. Not
        // marked done, the message goes to the partition's next owner (a batch line
        // interrupted by a worker restart must not end `expired`).
        if outcome.status == Status::Expired
            && self.shutdown.is_cancelled()
            && now_ms() < request.deadline_ms
        {
            return false;
        }
        let published = self
            .publish(&request, outcome)
            .instrument(tracing::info_span!(
                "publish",
                otel.kind = "producer",
                messaging.system = "kafka"
            ))
            .await;
        if published {
            self.recent.finished(&request.request_id);
        }
        published
    }

    /// Checks what needs no provider: the deadline, a deployment for the model, the body.
    #[expect(
        clippy::result_large_err,
        reason = "the Err is the request's Outcome, published as is; boxing it buys nothing on this once-per-request path"
    )]
    fn prepare(&self, request: &Request) -> Result<(Routed, Body), Outcome> {
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
        let routed = self.route(request, started_at_ms)?;
        if is_embeddings(&request.attributes) {
            return embeddings(&request.body, started_at_ms).map(|e| (routed, Body::Embeddings(e)));
        }
        match serde_json::from_str::<Map<String, Value>>(&request.body) {
            Ok(body) => match sluice_schemas::billable::check(&body) {
                Ok(()) => Ok((routed, Body::Chat(body))),
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
}

/// A hook's refusal as the request's outcome. A post refusal keeps what the answer it
/// refused used: the provider billed it.
fn hook_refused(
    refusal: crate::hooks::Refusal,
    decisions: &mut Vec<String>,
    answered: Option<Outcome>,
) -> Outcome {
    decisions.push(refusal.decision);
    let kind = match refusal.status {
        503 => "service_unavailable",
        _ => "invalid_request_error",
    };
    let body = ErrorBody::new(kind, Some(refusal.code), refusal.message);
    let refused = failure(
        Status::Failed,
        refusal.status,
        body,
        "hook_refused",
        now_ms(),
    );
    match answered {
        Some(answered) => Outcome {
            status: refused.status,
            http_status: refused.http_status,
            body: refused.body,
            error_kind: refused.error_kind,
            ..answered
        },
        None => refused,
    }
}

/// What a record asks the provider for.
enum Body {
    /// A chat completion request (OpenAI's shape; Sluice's own fields removed).
    Chat(Map<String, Value>),
    Embeddings(EmbeddingsRequest),
}

/// An embeddings record's body, held to the bounds the ingress checks: a record that breaks
/// them was not written by it, and is not sent where it could be billed.
#[expect(
    clippy::result_large_err,
    reason = "the Err is the request's Outcome, published as is"
)]
fn embeddings(body: &str, started_at_ms: i64) -> Result<EmbeddingsRequest, Outcome> {
    let refuse = |param: &str, message: String| {
        failure(
            Status::Failed,
            400,
            ErrorBody::new("invalid_request_error", Some("invalid_value"), message)
                .with_param(param),
            "bad_request",
            started_at_ms,
        )
    };
    let request: EmbeddingsRequest = serde_json::from_str(body)
        .map_err(|e| refuse("input", format!("The embeddings request is not valid: {e}")))?;
    request.check().map_err(|invalid| {
        refuse(
            invalid.param,
            format!("Invalid {}: {}.", invalid.param, invalid.problem),
        )
    })?;
    Ok(request)
}
