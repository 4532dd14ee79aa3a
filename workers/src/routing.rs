//! The model catalogue: which deployments serve a name callers use, and in what order a
//! request tries them.
//!
//! - A model's deployments (those sharing its `model`) are load-balanced: the first is
//!   chosen at random by weight, the others follow in config order as fallbacks.
//! - A route (`[[routes]]`) chains models: each model's deployments in turn.
//! - Each deployment has a circuit breaker; the processing loop skips open ones.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use crate::breaker::Breaker;
use crate::config::{Config, Deployment};
use crate::providers::Client;

/// A deployment ready to call.
#[derive(Debug)]
pub struct Target {
    pub deployment: Deployment,
    pub client: Client,
    pub breaker: Breaker,
    pub throttle: crate::throttle::DeploymentThrottle,
}

#[derive(Debug)]
pub struct Catalogue {
    targets: Vec<Target>,
    /// For each name callers use: groups of targets (one group per model), in fallback order.
    routes: HashMap<String, Vec<Vec<usize>>>,
}

impl Catalogue {
    pub fn new(config: &Config, http: &reqwest::Client) -> Catalogue {
        let breaker = &config.circuit_breaker;
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
                    deployment: d.clone(),
                }
            })
            .collect();
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            groups
                .entry(t.deployment.model.clone())
                .or_default()
                .push(i);
        }
        let mut routes: HashMap<String, Vec<Vec<usize>>> = groups
            .iter()
            .map(|(model, group)| (model.clone(), vec![group.clone()]))
            .collect();
        for route in &config.routes {
            let chain = route
                .models
                .iter()
                .filter_map(|m| groups.get(m).cloned())
                .collect();
            routes.insert(route.name.clone(), chain);
        }
        Catalogue { targets, routes }
    }

    pub fn target(&self, index: usize) -> &Target {
        &self.targets[index]
    }

    /// The deployments to try for `name`, in order, or `None` if nothing serves it.
    /// `random` drives the weighted choices (any value; different values spread load).
    pub fn chain(&self, name: &str, random: u64) -> Option<Vec<usize>> {
        let groups = self.routes.get(name)?;
        let mut chain: Vec<usize> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let weights: Vec<u32> = group
                .iter()
                .map(|&i| self.targets[i].deployment.weight)
                .collect();
            let mixed = random.rotate_left(17 * g as u32) ^ (g as u64);
            for k in weighted_order(&weights, mixed) {
                if !chain.contains(&group[k]) {
                    chain.push(group[k]);
                }
            }
        }
        Some(chain)
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

/// A random number for one request's choices.
pub fn random_for(request_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write(request_id.as_bytes());
    hasher.finish()
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
        let names = |chain: Vec<usize>| -> Vec<String> {
            chain
                .into_iter()
                .map(|i| catalogue.target(i).deployment.name.clone())
                .collect()
        };
        assert_eq!(names(catalogue.chain("gpt-4o", 5).unwrap()), ["a1", "a2"]);
        assert_eq!(
            names(catalogue.chain("smart", 5).unwrap()),
            ["a1", "a2", "c"]
        );
        // A route named after a model replaces its chain: here, a fallback to gpt-4o.
        assert_eq!(
            names(catalogue.chain("claude", 5).unwrap()),
            ["c", "a1", "a2"]
        );
        assert!(catalogue.chain("gpt-5", 5).is_none());
    }
}
