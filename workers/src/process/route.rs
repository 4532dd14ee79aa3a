//! Choosing a request's chain: the deployments its model or route may reach, cut to those its
//! residency rules allow and its hints (`"sluice": {"route": ...}`) accept, ordered by the
//! strategy (crate::strategy). Why the first is first becomes the result's
//! `routing_reason`.

use std::time::Instant;

use sluice_schemas::openai::ErrorBody;
use sluice_schemas::route_hints::{Prefer, RouteHints};
use sluice_schemas::{Request, Status};

use super::chain::Chain;
use super::outcome::{failure, Outcome};
use super::Processor;
use crate::routing::stats::Kind;
use crate::routing::{random_for, Need};
use crate::strategy::{Candidate, Strategy};

/// A request's chain and why it is in that order.
pub(super) struct Routed {
    pub chain: Chain,
    pub reason: String,
}

impl Processor {
    #[expect(
        clippy::result_large_err,
        reason = "the Err is the request's Outcome, published as is"
    )]
    pub(super) fn route(&self, request: &Request, started_at_ms: i64) -> Result<Routed, Outcome> {
        let Some(set) = self.catalogue.route(&request.model) else {
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
        let allowed = self
            .residency
            .cut(&request.team, &request.key_id, set.deployments(), |i| {
                self.catalogue.target(i).deployment.location.clone()
            })
            .map_err(|rules| {
                failure(
                    Status::Failed,
                    503,
                    ErrorBody::new(
                        "service_unavailable",
                        Some("location_not_allowed"),
                        format!(
                            "No deployment of model `{}` runs where this request may run ({rules}).",
                            request.model
                        ),
                    ),
                    "location_not_allowed",
                    started_at_ms,
                )
            })?;
        let need = Need {
            kind: if request.stream {
                Kind::FirstToken
            } else {
                Kind::Answer
            },
            tokens: self.estimate(request),
        };
        let now = Instant::now();
        let prompt = request.prompt();
        let completion = request.completion_cap(self.default_completion_tokens);
        let candidate = |i: usize| {
            let d = &self.catalogue.target(i).deployment;
            let cost = self
                .max_cost_nanos(&d.name, &d.model, prompt, completion)
                .unwrap_or(0);
            self.catalogue.candidate(i, &need, cost, now)
        };
        let hints = RouteHints::of_attributes(&request.attributes);
        let allowed = hinted(&hints, allowed, &candidate, need.tokens, &request.model).map_err(
            |(status, message)| {
                let (kind, code) = match status {
                    400 => ("invalid_request_error", "route_hint_unsatisfiable"),
                    _ => ("service_unavailable", "route_hint_unsatisfiable"),
                };
                failure(
                    Status::Failed,
                    status,
                    ErrorBody::new(kind, Some(code), message).with_param("sluice.route"),
                    "route_hint_unsatisfiable",
                    started_at_ms,
                )
            },
        )?;
        let prefer = hints.prefer.map(|p| match p {
            Prefer::Cost => Strategy::Cost,
            Prefer::Latency => Strategy::Latency,
        });
        let order = self.catalogue.plan(
            set,
            |i| allowed.contains(&i),
            prefer,
            candidate,
            random_for(&request.request_id),
        );
        if let Some(&first) = order.chain.first() {
            let name = &self.catalogue.target(first).deployment.name;
            super::metrics::routed(order.strategy.as_str(), name);
        }
        let reason = match prefer {
            Some(p) => format!("hint prefer={}; {}", p.as_str(), order.reason),
            None => order.reason,
        };
        Ok(Routed {
            chain: order.chain,
            reason,
        })
    }
}

/// The deployments of `allowed` the hints accept. `Err`: the HTTP status and message when
/// none does (400 for a price no deployment meets, 503 for a latency none meets now).
fn hinted<'a>(
    hints: &RouteHints,
    allowed: Vec<usize>,
    candidate: &impl Fn(usize) -> Candidate<'a>,
    tokens: u64,
    model: &str,
) -> Result<Vec<usize>, (i32, String)> {
    let mut allowed = allowed;
    if let Some(max) = hints.max_cost_per_mtok {
        // nano-USD per token x 1e6 tokens / 1e9 nano-USD per USD.
        let per_mtok = |i: usize| candidate(i).cost_nanos as f64 / tokens.max(1) as f64 / 1000.0;
        let cheapest = allowed
            .iter()
            .map(|&i| per_mtok(i))
            .fold(f64::INFINITY, f64::min);
        allowed.retain(|&i| per_mtok(i) <= max);
        if allowed.is_empty() {
            return Err((
                400,
                format!(
                    "No deployment of `{model}` serves this request at or under max_cost_per_mtok {max} USD per million tokens; the cheapest costs {cheapest:.4}."
                ),
            ));
        }
    }
    if let Some(max) = hints.max_latency_ms {
        let measured = |i: usize| candidate(i).latency_ms;
        let fastest = allowed
            .iter()
            .filter_map(|&i| measured(i))
            .fold(f64::INFINITY, f64::min);
        allowed.retain(|&i| measured(i).is_none_or(|ms| ms <= max as f64));
        if allowed.is_empty() {
            return Err((
                503,
                format!(
                    "No deployment of `{model}` answers within max_latency_ms {max} now; the fastest measures {fastest:.0} ms. Retry later or raise the limit."
                ),
            ));
        }
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(i: usize) -> Candidate<'static> {
        // 0: $1/Mtok, 40 ms; 1: $10/Mtok, unmeasured; 2: $0.5/Mtok, 900 ms.
        let (cost_per_token, latency) =
            [(1_000, Some(40.0)), (10_000, None), (500, Some(900.0))][i];
        Candidate {
            index: i,
            name: ["a", "b", "c"][i],
            weight: 1,
            cost_nanos: cost_per_token * 100,
            latency_ms: latency,
            in_flight: 0,
            headroom: 1.0,
            fits: true,
            healthy: true,
        }
    }

    #[test]
    fn hints_narrow_the_chain_and_say_why_when_nothing_is_left() {
        let all = vec![0, 1, 2];
        let hints = |json: &str| serde_json::from_str::<RouteHints>(json).unwrap();
        assert_eq!(
            hinted(&hints("{}"), all.clone(), &candidate, 100, "m"),
            Ok(all.clone())
        );
        assert_eq!(
            hinted(
                &hints(r#"{"max_cost_per_mtok": 1}"#),
                all.clone(),
                &candidate,
                100,
                "m"
            ),
            Ok(vec![0, 2])
        );
        // Unmeasured counts as fast enough.
        assert_eq!(
            hinted(
                &hints(r#"{"max_latency_ms": 100}"#),
                all.clone(),
                &candidate,
                100,
                "m"
            ),
            Ok(vec![0, 1])
        );
        let (status, message) = hinted(
            &hints(r#"{"max_cost_per_mtok": 0.1}"#),
            all.clone(),
            &candidate,
            100,
            "m",
        )
        .unwrap_err();
        assert_eq!(status, 400);
        assert!(message.contains("the cheapest costs 0.5000"), "{message}");
        let (status, message) = hinted(
            &hints(r#"{"max_latency_ms": 10}"#),
            vec![0, 2],
            &candidate,
            100,
            "m",
        )
        .unwrap_err();
        assert_eq!(status, 503);
        assert!(message.contains("the fastest measures 40 ms"), "{message}");
    }
}
