//! The model catalogue: which deployments serve a name callers use, and in what order a
//! request tries them.
//!
//! - A model's deployments (those sharing its `model`) are ordered by the model's strategy
//!   (`[routing] strategy`, or `[routing.models]`; `weighted` by default: the first drawn at
//!   random by weight, the others following in config order as fallbacks).
//! - A route (`[[routes]]`) chains models: each model's deployments in turn; a route with a
//!   `strategy` orders all its models' deployments as one pool instead.
//! - Each deployment has a circuit breaker (the processing loop skips open ones) and
//!   [`stats::Stats`] of its latency and calls in flight.
//! - crate::strategy: the strategies themselves.

pub mod stats;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

use crate::breaker::Breaker;
use crate::config::{Config, Deployment};
use crate::providers::Client;
use crate::strategy::{self, Candidate, Order, Strategy};
use stats::{Kind, Stats};

/// A deployment ready to call.
#[derive(Debug)]
pub struct Target {
    pub deployment: Deployment,
    pub client: Client,
    pub breaker: Breaker,
    pub throttle: crate::throttle::DeploymentThrottle,
    pub stats: Stats,
}

/// The deployments a name callers use may reach.
#[derive(Debug, Clone)]
pub struct RouteSet {
    /// One group per model, in fallback order, each with its model's strategy.
    groups: Vec<(Strategy, Vec<usize>)>,
    /// A route's own strategy: all groups ordered as one pool.
    pooled: Option<Strategy>,
}

impl RouteSet {
    /// Every deployment, in fallback order, once.
    pub fn deployments(&self) -> Vec<usize> {
        let mut all: Vec<usize> = Vec::new();
        for (_, group) in &self.groups {
            for &i in group {
                if !all.contains(&i) {
                    all.push(i);
                }
            }
        }
        all
    }
}

/// What a request is routed by: what it expects to use and how its stream is measured.
pub struct Need {
    pub kind: Kind,
    /// Tokens it expects to use (prompt plus completion cap): what a throttle must fit.
    pub tokens: u64,
}

#[derive(Debug)]
pub struct Catalogue {
    targets: Vec<Target>,
    /// For each name callers use: its groups of targets.
    routes: HashMap<String, RouteSet>,
}

impl Catalogue {
    pub fn new(config: &Config, http: &reqwest::Client) -> Catalogue {
        let breaker = &config.circuit_breaker;
        let routing = &config.routing;
        let targets: Vec<Target> = config
            .deployments
            .iter()
            .map(|d| {
                let model = d.provider.model().unwrap_or(&d.model);
                Target {
                    client: Client::new(&d.provider, model, http.clone()),
                    breaker: Breaker::new(&d.name, breaker.failure_threshold, breaker.cooldown_ms),
                    throttle: crate::throttle::DeploymentThrottle::new(d.limits)
                        .for_deployment(&d.name),
                    stats: Stats::new(routing.latency_decay_ms).for_deployment(&d.name),
                    deployment: d.clone(),
                }
            })
            .collect();
        let mut groups: HashMap<String, (Strategy, Vec<usize>)> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let model = &t.deployment.model;
            let strategy = *routing.models.get(model).unwrap_or(&routing.strategy);
            groups
                .entry(model.clone())
                .or_insert_with(|| (strategy, Vec::new()))
                .1
                .push(i);
        }
        let mut routes: HashMap<String, RouteSet> = groups
            .iter()
            .map(|(model, group)| {
                let set = RouteSet {
                    groups: vec![group.clone()],
                    pooled: None,
                };
                (model.clone(), set)
            })
            .collect();
        for route in &config.routes {
            let set = RouteSet {
                groups: route
                    .models
                    .iter()
                    .filter_map(|m| groups.get(m).cloned())
                    .collect(),
                pooled: route.strategy,
            };
            routes.insert(route.name.clone(), set);
        }
        Catalogue { targets, routes }
    }

    pub fn target(&self, index: usize) -> &Target {
        &self.targets[index]
    }

    /// Where the deployment named `name` runs.
    pub fn location(&self, name: &str) -> Option<&str> {
        self.targets
            .iter()
            .find(|t| t.deployment.name == name)
            .and_then(|t| t.deployment.location.as_deref())
    }

    /// The deployments `name` may reach, or `None` if nothing serves it.
    pub fn route(&self, name: &str) -> Option<&RouteSet> {
        self.routes.get(name)
    }

    /// What the strategies know of deployment `index` now, for a request that would cost
    /// `cost_nanos` there.
    pub fn candidate(
        &self,
        index: usize,
        need: &Need,
        cost_nanos: i64,
        now: Instant,
    ) -> Candidate<'_> {
        let t = &self.targets[index];
        let (headroom, fits) = t.throttle.headroom(need.tokens);
        Candidate {
            index,
            name: &t.deployment.name,
            weight: t.deployment.weight,
            cost_nanos,
            latency_ms: t.stats.latency_ms(need.kind, now),
            in_flight: t.stats.in_flight(),
            headroom,
            fits,
            healthy: t.breaker.is_closed_or_due(now),
        }
    }

    /// The order to try `set`'s deployments that `keep` keeps, by the configured
    /// strategies, or `prefer` over all of them. `random` drives the random choices (any
    /// value; different values spread load).
    pub fn plan<'a>(
        &self,
        set: &RouteSet,
        keep: impl Fn(usize) -> bool,
        prefer: Option<Strategy>,
        candidate: impl Fn(usize) -> Candidate<'a>,
        random: u64,
    ) -> Order {
        if let Some(strategy) = prefer.or(set.pooled) {
            let pool: Vec<Candidate> = set
                .deployments()
                .into_iter()
                .filter(|&i| keep(i))
                .map(&candidate)
                .collect();
            return strategy::order(strategy, &pool, random);
        }
        let mut chain: Vec<usize> = Vec::new();
        let mut reason = String::new();
        let mut chosen_by = Strategy::Weighted;
        for (g, (strategy, group)) in set.groups.iter().enumerate() {
            let pool: Vec<Candidate> = group
                .iter()
                .copied()
                .filter(|&i| keep(i) && !chain.contains(&i))
                .map(&candidate)
                .collect();
            let mixed = random.rotate_left(17 * g as u32) ^ (g as u64);
            let order = strategy::order(*strategy, &pool, mixed);
            if reason.is_empty() {
                reason = order.reason;
                chosen_by = order.strategy;
            }
            chain.extend(order.chain);
        }
        Order {
            chain,
            reason,
            strategy: chosen_by,
        }
    }
}

/// A random number for one request's choices.
pub fn random_for(request_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(request_id.as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(toml: &str) -> Config {
        use figment::providers::Format;
        let config: Config = figment::Figment::from(figment::providers::Toml::string(toml))
            .extract()
            .unwrap();
        config.validate().unwrap();
        config
    }

    #[test]
    fn routes_chain_models_and_aliases_resolve() {
        let config = config(
            r#"
[[deployments]]
name = "a1"
model = "gpt-4o"
provider = { type = "openai", base_url = "http://127.0.0.1:1/v1" }
[[deployments]]
name = "a2"
model = "gpt-4o"
weight = 0
provider = { type = "azure", endpoint = "http://127.0.0.1:1", deployment = "d" }
[[deployments]]
name = "c"
model = "claude"
provider = { type = "anthropic", base_url = "http://127.0.0.1:1" }
[[routes]]
name = "smart"
models = ["gpt-4o", "claude"]
[[routes]]
name = "claude"
models = ["claude", "gpt-4o"]
[pricing]
free_models = ["gpt-4o", "claude"]
"#,
        );
        let catalogue = Catalogue::new(&config, &reqwest::Client::new());
        assert_eq!(chain(&catalogue, "gpt-4o").unwrap(), ["a1", "a2"]);
        assert_eq!(chain(&catalogue, "smart").unwrap(), ["a1", "a2", "c"]);
        // A route named after a model replaces its chain: here, a fallback to gpt-4o.
        assert_eq!(chain(&catalogue, "claude").unwrap(), ["c", "a1", "a2"]);
        assert!(chain(&catalogue, "gpt-5").is_none());
        assert_eq!(catalogue.location("a1"), None);
    }

    /// The names `name`'s plan tries, with every candidate kept.
    fn chain(catalogue: &Catalogue, name: &str) -> Option<Vec<String>> {
        let set = catalogue.route(name)?;
        let need = Need {
            kind: Kind::Answer,
            tokens: 10,
        };
        let now = Instant::now();
        let order = catalogue.plan(
            set,
            |_| true,
            None,
            |i| catalogue.candidate(i, &need, 0, now),
            5,
        );
        Some(
            order
                .chain
                .into_iter()
                .map(|i| catalogue.target(i).deployment.name.clone())
                .collect(),
        )
    }

    #[test]
    fn a_model_strategy_orders_its_group_and_a_route_strategy_pools_every_model() {
        let config = config(
            r#"
[routing]
latency_decay_ms = 60000
[routing.models]
"gpt-4o" = "latency"
[[deployments]]
name = "slow"
model = "gpt-4o"
location = "eu-west"
provider = { type = "openai", base_url = "http://127.0.0.1:1/v1" }
[[deployments]]
name = "fast"
model = "gpt-4o"
provider = { type = "openai", base_url = "http://127.0.0.1:1/v1" }
[[deployments]]
name = "fastest"
model = "claude"
provider = { type = "anthropic", base_url = "http://127.0.0.1:1" }
[[routes]]
name = "chained"
models = ["gpt-4o", "claude"]
[[routes]]
name = "pooled"
models = ["gpt-4o", "claude"]
strategy = "latency"
[pricing]
free_models = ["gpt-4o", "claude"]
"#,
        );
        let catalogue = Catalogue::new(&config, &reqwest::Client::new());
        let now = Instant::now();
        for (i, ms) in [(0, 300), (1, 30), (2, 3)] {
            catalogue
                .target(i)
                .stats
                .observe(Kind::Answer, Duration::from_millis(ms), now);
        }
        assert_eq!(chain(&catalogue, "gpt-4o").unwrap(), ["fast", "slow"]);
        // Model after model: gpt-4o's own order, then claude.
        assert_eq!(
            chain(&catalogue, "chained").unwrap(),
            ["fast", "slow", "fastest"]
        );
        // One pool: the fastest of every model first.
        assert_eq!(chain(&catalogue, "pooled").unwrap()[0], "fastest");
        assert_eq!(catalogue.location("slow"), Some("eu-west"));
        // claude keeps the default strategy.
        assert_eq!(chain(&catalogue, "claude").unwrap(), ["fastest"]);
    }

    #[test]
    fn routing_config_names_only_deployed_models() {
        use figment::providers::Format;
        let config: Config = figment::Figment::from(figment::providers::Toml::string(
            r#"
[routing.models]
"gpt-5" = "cost"
[[deployments]]
name = "a"
model = "gpt-4o"
provider = { type = "openai", base_url = "http://127.0.0.1:1/v1" }
[pricing]
free_models = ["gpt-4o"]
"#,
        ))
        .extract()
        .unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("routing.models.gpt-5"), "{error}");
    }
}
