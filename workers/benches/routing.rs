//! What choosing a request's chain costs: per strategy and number of candidate deployments,
//! the reads the worker makes for one request (its hints, its random number, each
//! candidate's price, latency average, calls in flight, throttle level and breaker) and the
//! strategy's order. Prints nanoseconds per decision; docs/scheduling.md records the figures.
//!
//! `cargo bench -p sluice-workers --bench routing`
#![expect(
    clippy::print_stdout,
    reason = "printing figures is this benchmark's job"
)]
#![expect(
    clippy::expect_used,
    reason = "a benchmark whose fixed config does not load has nothing to measure"
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use figment::providers::Format;
use sluice_schemas::pricing::{Price, PriceTable};
use sluice_schemas::route_hints::RouteHints;
use sluice_workers::routing::stats::Kind;
use sluice_workers::routing::{random_for, Catalogue, Need};
use sluice_workers::Config;

const DECISIONS: u32 = 200_000;

fn config(strategy: &str, deployments: usize) -> Config {
    let mut toml = format!("[routing]\nstrategy = \"{strategy}\"\n");
    for i in 0..deployments {
        toml.push_str(&format!(
            "[[deployments]]\nname = \"d{i}\"\nmodel = \"m\"\nlimits = {{ tokens_per_minute = 1000000, requests_per_minute = 10000 }}\nprovider = {{ type = \"openai\", base_url = \"http://127.0.0.1:1/v1\" }}\n"
        ));
    }
    toml.push_str(
        "[[prices]]\nmodel = \"m\"\ninput_per_million = 2.5\noutput_per_million = 10.0\n",
    );
    let config: Config = figment::Figment::from(figment::providers::Toml::string(&toml))
        .extract()
        .expect("bench config parses");
    config.validate().expect("bench config is valid");
    config
}

fn main() {
    let prices = PriceTable::new(&[Price {
        model: "m".into(),
        input_per_million: 2.5,
        output_per_million: 10.0,
        cached_input_per_million: None,
    }]);
    let attributes: HashMap<String, String> = HashMap::new();
    let http = reqwest::Client::new();
    println!("strategy     candidates  ns/decision");
    for strategy in ["weighted", "latency", "cost", "least-busy", "headroom"] {
        for n in [2, 4, 8] {
            let catalogue = Catalogue::new(&config(strategy, n), &http);
            let now = Instant::now();
            for i in 0..n {
                let stats = &catalogue.target(i).stats;
                stats.observe(Kind::Answer, Duration::from_millis(10 + 7 * i as u64), now);
            }
            let need = Need {
                kind: Kind::Answer,
                tokens: 1200,
            };
            let decide = |k: u32| {
                let hints = RouteHints::of_attributes(&attributes);
                let random = random_for(&format!("req_{k}"));
                let set = catalogue.route("m").expect("the model is deployed");
                let now = Instant::now();
                let order = catalogue.plan(
                    set,
                    |_| true,
                    None,
                    |i| {
                        let cost = prices.max_cost_nanos(["m"], 200, 1000).unwrap_or(0);
                        catalogue.candidate(i, &need, cost, now)
                    },
                    random,
                );
                black_box((hints, order))
            };
            for k in 0..DECISIONS / 10 {
                decide(k);
            }
            let started = Instant::now();
            for k in 0..DECISIONS {
                decide(k);
            }
            let ns = started.elapsed().as_nanos() as f64 / f64::from(DECISIONS);
            println!("{strategy:<12} {n:>10}  {ns:>11.0}");
        }
    }
}
