//! Routing strategies: the order a request tries its candidate deployments in, and why.
//! Pure: the caller reads what each candidate's stats, throttle, breaker and price say now
//! ([`Candidate`]), so the choice is tested (and benchmarked) without a clock or a network.
//!
//! - `weighted`: the first drawn by weight, the rest in config order (the default).
//! - `latency`: power of two choices: two candidates drawn at random, the one with the lower
//!   peak-EWMA latency x (calls in flight + 1) first; the rest by that score.
//! - `cost`: the cheapest for this request among those whose limits have room for it now;
//!   ties by latency; those without room after.
//! - `least-busy`: fewest calls in flight per unit of capacity (its `weight`, at least 1).
//! - `headroom`: the largest share of its rate limits (TPM/RPM) left.
//!
//! Under every strategy but `weighted` a deployment whose circuit is open goes last
//! (`weighted` keeps config order; the chain skips an open one either way, counted as a
//! fallback). Under every strategy a deployment of weight 0 is only ever a fallback. Equal
//! candidates are taken from a random rotation so ties spread the load.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Deserialize;

/// `[routing]`: the strategy of every model, unless `models` names another.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    pub strategy: Strategy,
    /// Model name -> its strategy.
    pub models: BTreeMap<String, Strategy>,
    /// How fast an idle deployment's latency average decays (stats::Stats): about how
    /// long a deployment passed over for being slow waits before it is tried again.
    #[serde(with = "sluice_schemas::config::millis")]
    pub latency_decay_ms: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            strategy: Strategy::Weighted,
            models: BTreeMap::new(),
            latency_decay_ms: Duration::from_secs(10),
        }
    }
}

/// `strategy = "..."` of `[routing]`, `[routing.models]` and `[[routes]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    #[default]
    Weighted,
    Latency,
    Cost,
    LeastBusy,
    Headroom,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Weighted => "weighted",
            Strategy::Latency => "latency",
            Strategy::Cost => "cost",
            Strategy::LeastBusy => "least-busy",
            Strategy::Headroom => "headroom",
        }
    }
}

/// What a strategy knows of one deployment, read once for one request.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Its index in the catalogue.
    pub index: usize,
    pub name: &'a str,
    pub weight: u32,
    /// The most this request can cost there, nano-USD (0: free or unpriced).
    pub cost_nanos: i64,
    /// Its decayed peak-EWMA latency in ms; `None`: not measured yet.
    pub latency_ms: Option<f64>,
    pub in_flight: u32,
    /// The share of its rate limits left now, 0 to 1 (1 without limits).
    pub headroom: f64,
    /// Its limits have room for this request now.
    pub fits: bool,
    /// Its circuit is not open.
    pub healthy: bool,
}

impl Candidate<'_> {
    /// The latency strategy's score: lower is better; unmeasured is 0 (tried soon).
    fn score(&self) -> f64 {
        self.latency_ms.unwrap_or(0.0) * f64::from(self.in_flight + 1)
    }

    fn load(&self) -> f64 {
        f64::from(self.in_flight) / f64::from(self.weight.max(1))
    }

    /// Goes after every candidate without this: an open circuit, then weight 0.
    fn demoted(&self) -> (bool, bool) {
        (!self.healthy, self.weight == 0)
    }
}

/// A request's chain and why its first deployment is first (`routing_reason`).
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    /// Catalogue indices, in the order to try them.
    pub chain: Vec<usize>,
    pub reason: String,
    /// The strategy that chose the first (`sluice_routing_decisions_total{strategy}`).
    pub strategy: Strategy,
}

/// Orders `candidates` by `strategy`. `random` is any number; different ones spread load.
pub fn order(strategy: Strategy, candidates: &[Candidate], random: u64) -> Order {
    if candidates.is_empty() {
        return Order {
            chain: Vec::new(),
            reason: String::new(),
            strategy,
        };
    }
    if strategy == Strategy::Weighted {
        return weighted(candidates, random);
    }
    // A random rotation, then a stable sort: equal candidates take turns.
    let n = candidates.len();
    let mut sorted: Vec<&Candidate> = (0..n)
        .map(|i| &candidates[(i + (random % n as u64) as usize) % n])
        .collect();
    let by = |a: &&Candidate, b: &&Candidate| -> Ordering {
        a.demoted().cmp(&b.demoted()).then_with(|| match strategy {
            Strategy::Cost => (!a.fits)
                .cmp(&!b.fits)
                .then(a.cost_nanos.cmp(&b.cost_nanos))
                .then(a.score().total_cmp(&b.score())),
            Strategy::LeastBusy => a
                .load()
                .total_cmp(&b.load())
                .then(a.score().total_cmp(&b.score())),
            Strategy::Headroom => b
                .headroom
                .total_cmp(&a.headroom)
                .then(a.score().total_cmp(&b.score())),
            Strategy::Latency | Strategy::Weighted => a.score().total_cmp(&b.score()),
        })
    };
    sorted.sort_by(by);
    let mut reason = String::new();
    match strategy {
        Strategy::Latency => {
            // Two choices among the candidates that share the best demotion class.
            let class = sorted[0].demoted();
            let pool = sorted.iter().take_while(|c| c.demoted() == class).count();
            if pool >= 2 {
                let a = (random >> 8) as usize % pool;
                let b = (a + 1 + (random >> 40) as usize % (pool - 1)) % pool;
                let (first, other) = if by(&sorted[b], &sorted[a]) == Ordering::Less {
                    (b, a)
                } else {
                    (a, b)
                };
                let _ = write!(
                    reason,
                    "latency: {} ({}) over {} ({}) of 2 drawn",
                    sorted[first].name,
                    latency(sorted[first]),
                    sorted[other].name,
                    latency(sorted[other]),
                );
                let chosen = sorted.remove(first);
                sorted.insert(0, chosen);
            } else {
                let _ = write!(
                    reason,
                    "latency: {} ({}), the only candidate",
                    sorted[0].name,
                    latency(sorted[0])
                );
            }
        }
        Strategy::Cost => {
            let first = sorted[0];
            let _ = write!(
                reason,
                "cost: {} at ${:.6} for this request",
                first.name,
                first.cost_nanos as f64 / 1e9
            );
            if let Some(cheaper) = sorted[1..]
                .iter()
                .filter(|c| c.cost_nanos < first.cost_nanos)
                .min_by_key(|c| c.cost_nanos)
            {
                let why = if cheaper.healthy {
                    "no headroom"
                } else {
                    "circuit open"
                };
                let _ = write!(
                    reason,
                    "; cheaper {} (${:.6}) has {why}",
                    cheaper.name,
                    cheaper.cost_nanos as f64 / 1e9
                );
            }
        }
        Strategy::LeastBusy => {
            let first = sorted[0];
            let _ = write!(
                reason,
                "least-busy: {} with {} in flight per {} of capacity",
                first.name,
                first.in_flight,
                first.weight.max(1)
            );
        }
        Strategy::Headroom => {
            let first = sorted[0];
            let _ = write!(
                reason,
                "headroom: {} with {:.0}% of its limits left",
                first.name,
                first.headroom * 100.0
            );
        }
        Strategy::Weighted => {}
    }
    Order {
        chain: sorted.iter().map(|c| c.index).collect(),
        reason,
        strategy,
    }
}

fn latency(c: &Candidate) -> String {
    match c.latency_ms {
        Some(ms) => format!("{ms:.1} ms, {} in flight", c.in_flight),
        None => "unmeasured".to_string(),
    }
}

/// The weighted draw, in config order after the first. Open circuits keep their place: the
/// chain skips them, and a skipped one counts as a fallback, as it always has.
fn weighted(candidates: &[Candidate], random: u64) -> Order {
    let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
    let order = weighted_order(&weights, random);
    let first = &candidates[order[0]];
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    Order {
        chain: order.iter().map(|&i| candidates[i].index).collect(),
        reason: format!(
            "weighted: {} drawn with weight {} of {total}",
            first.name, first.weight
        ),
        strategy: Strategy::Weighted,
    }
}

/// Indices of `weights`: the first drawn with probability proportional to its weight
/// (`random % total` picks it), then the rest in their order. All weights 0: config order.
pub fn weighted_order(weights: &[u32], random: u64) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut first = 0;
    if total > 0 {
        let mut point = random % total;
        for (i, &w) in weights.iter().enumerate() {
            if point < u64::from(w) {
                first = i;
                break;
            }
            point -= u64::from(w);
        }
    }
    std::iter::once(first)
        .chain((0..weights.len()).filter(|&i| i != first))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_choice_follows_the_weights_and_the_rest_keep_their_order() {
        let weights = [3, 1, 0];
        let mut firsts = [0; 3];
        for r in 0..4000u64 {
            let order = weighted_order(&weights, r);
            assert_eq!(order.len(), 3);
            firsts[order[0]] += 1;
            let rest: Vec<usize> = order[1..].to_vec();
            let mut sorted = rest.clone();
            sorted.sort();
            assert_eq!(rest, sorted, "fallbacks in config order");
        }
        assert_eq!(firsts, [3000, 1000, 0], "weight 0 is never first");
        assert_eq!(weighted_order(&[0, 0], 7), vec![0, 1]);
        assert_eq!(weighted_order(&[], 7), vec![0]);
    }

    fn candidate(index: usize, name: &'static str) -> Candidate<'static> {
        Candidate {
            index,
            name,
            weight: 1,
            cost_nanos: 0,
            latency_ms: None,
            in_flight: 0,
            headroom: 1.0,
            fits: true,
            healthy: true,
        }
    }

    fn firsts(strategy: Strategy, candidates: &[Candidate]) -> Vec<usize> {
        let mut counts = vec![0; candidates.len()];
        for r in 0..1000u64 {
            let order = order(strategy, candidates, r.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            assert_eq!(order.chain.len(), candidates.len(), "every candidate kept");
            counts[order.chain[0]] += 1;
        }
        counts
    }

    #[test]
    fn latency_prefers_the_faster_and_the_less_loaded_and_spreads_unmeasured_ones() {
        let mut fast = candidate(0, "fast");
        fast.latency_ms = Some(20.0);
        let mut slow = candidate(1, "slow");
        slow.latency_ms = Some(400.0);
        assert_eq!(
            firsts(Strategy::Latency, &[fast.clone(), slow.clone()]),
            [1000, 0]
        );
        let picked = order(Strategy::Latency, &[fast.clone(), slow.clone()], 7);
        assert_eq!(
            picked.reason,
            "latency: fast (20.0 ms, 0 in flight) over slow (400.0 ms, 0 in flight) of 2 drawn"
        );
        // Loaded 30-fold, the fast one scores worse than the slow one.
        fast.in_flight = 29;
        assert_eq!(
            firsts(Strategy::Latency, &[fast.clone(), slow.clone()]),
            [0, 1000]
        );
        // Three: the worst is never first (it loses any draw), the best wins every draw it is in.
        let mut mid = candidate(2, "mid");
        mid.latency_ms = Some(100.0);
        fast.in_flight = 0;
        let counts = firsts(Strategy::Latency, &[fast, slow, mid]);
        assert_eq!(counts[1], 0, "{counts:?}");
        assert!(counts[0] > 550 && counts[2] > 250, "{counts:?}");
        // Nothing measured: the load spreads.
        let counts = firsts(Strategy::Latency, &[candidate(0, "a"), candidate(1, "b")]);
        assert!(counts[0] > 300 && counts[1] > 300, "{counts:?}");
    }

    #[test]
    fn cost_takes_the_cheapest_with_headroom_then_the_next() {
        let mut cheap = candidate(0, "cheap");
        cheap.cost_nanos = 1_000;
        let mut dear = candidate(1, "dear");
        dear.cost_nanos = 9_000;
        let both = [dear.clone(), cheap.clone()];
        let picked = order(Strategy::Cost, &both, 3);
        assert_eq!(picked.chain, [0, 1]);
        assert_eq!(picked.reason, "cost: cheap at $0.000001 for this request");
        cheap.fits = false;
        let picked = order(Strategy::Cost, &[dear.clone(), cheap.clone()], 3);
        assert_eq!(picked.chain, [1, 0], "the cheap one stays a fallback");
        assert_eq!(
            picked.reason,
            "cost: dear at $0.000009 for this request; cheaper cheap ($0.000001) has no headroom"
        );
        // Equal prices: the faster.
        cheap.fits = true;
        dear.cost_nanos = 1_000;
        dear.latency_ms = Some(5.0);
        cheap.latency_ms = Some(50.0);
        assert_eq!(firsts(Strategy::Cost, &[cheap, dear]), [0, 1000]);
    }

    #[test]
    fn least_busy_and_headroom_and_the_rules_every_strategy_keeps() {
        let mut a = candidate(0, "a");
        a.in_flight = 4;
        a.weight = 4;
        let mut b = candidate(1, "b");
        b.in_flight = 2;
        // a: 1 per unit of capacity, b: 2.
        assert_eq!(
            firsts(Strategy::LeastBusy, &[a.clone(), b.clone()]),
            [1000, 0]
        );
        a.headroom = 0.2;
        b.headroom = 0.9;
        let picked = order(Strategy::Headroom, &[a.clone(), b.clone()], 1);
        assert_eq!(picked.chain, [1, 0]);
        assert_eq!(picked.reason, "headroom: b with 90% of its limits left");
        // An open circuit goes last, and weight 0 stays a fallback, whatever the strategy.
        b.healthy = false;
        let mut spare = candidate(2, "spare");
        spare.weight = 0;
        spare.headroom = 1.0;
        for strategy in [
            Strategy::Latency,
            Strategy::Cost,
            Strategy::LeastBusy,
            Strategy::Headroom,
        ] {
            let counts = firsts(strategy, &[a.clone(), b.clone(), spare.clone()]);
            assert_eq!(counts, [1000, 0, 0], "{strategy:?}");
            let chain = order(strategy, &[a.clone(), b.clone(), spare.clone()], 9).chain;
            assert_eq!(chain.last(), Some(&1), "{strategy:?}: {chain:?}");
        }
        assert_eq!(order(Strategy::Cost, &[], 1).chain, Vec::<usize>::new());
    }
}
