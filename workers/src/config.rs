//! Worker configuration: a TOML file, then `SLUICE_<SECTION>_<KEY>` environment overrides.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sluice_schemas::config::{env_overrides, ENV_PREFIX};

use crate::error::ConfigError;
use crate::providers::ProviderConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// The ops listener: `/metrics`, `/healthz`, `/readyz` (docs/operations.md).
    #[serde(default)]
    pub ops: sluice_schemas::ops::OpsConfig,
    #[serde(default)]
    pub scheduling: crate::schedule::SchedulingConfig,
    /// Where each model is served. A model may have several deployments: one is chosen
    /// by weight, the others follow as fallbacks.
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Names callers may use besides the deployed models (aliases), and fallback chains
    /// across models.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// `[[hooks]]`: pre- and post-processing hooks (crate::hooks).
    #[serde(default)]
    pub hooks: Vec<crate::hooks::HookConfig>,
    /// Where hooks may go: `allowed_hosts` (exact `host:port`) opens non-public destinations,
    /// as `[webhooks]` does for the ingress.
    #[serde(default)]
    pub hooks_outbound: sluice_schemas::outbound::OutboundConfig,
    /// `[routing]`: the strategy that orders each model's deployments (crate::strategy).
    #[serde(default)]
    pub routing: crate::strategy::RoutingConfig,
    /// `[[residency]]`: the locations a team's or key's requests may run in
    /// (crate::residency).
    #[serde(default)]
    pub residency: Vec<crate::residency::ResidencyRule>,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerConfig,
    /// Prices per model, in USD per million tokens. Every deployed model needs one (or
    /// `[pricing] free_models`): start-up fails otherwise, nothing is silently billed 0.
    #[serde(default)]
    pub prices: Vec<Price>,
    #[serde(default)]
    pub pricing: PricingConfig,
    /// Where a request that may be a redelivery is looked up before its provider is called
    /// (crate::redelivery); off without `clickhouse_url`.
    #[serde(default)]
    pub redelivery: crate::redelivery::RedeliveryConfig,
    /// `[log] format = "text" | "json"` (sluice_schemas::logging).
    #[serde(default)]
    pub log: sluice_schemas::logging::LogConfig,
    /// `[trace]`: OTLP span export, off unless `otlp_endpoint` is set (sluice_schemas::trace).
    #[serde(default)]
    pub trace: sluice_schemas::trace::TraceConfig,
    /// `[streaming]`: how stream events are coalesced into reply records.
    #[serde(default)]
    pub streaming: StreamingConfig,
}

/// `[pricing]`: the shared price file, and models deliberately billed at 0.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PricingConfig {
    /// A file of `[[prices]]` (config/prices.toml, the one the ingress reads too), relative
    /// to this config file; its prices come before the inline `[[prices]]`.
    pub file: Option<PathBuf>,
    /// Deployed models with no `[[prices]]` entry that cost nothing (a self-hosted model,
    /// a mock): their usage is recorded with cost 0.
    pub free_models: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub topic_prefix: String,
    /// One consumer group per worker pool; add replicas to scale.
    pub group_id: String,
    /// librdkafka settings passed through (applied before the ones correctness depends on).
    pub options: BTreeMap<String, String>,
    /// Largest message produced (the producer's `message.max.bytes`; the ingress creates the
    /// topics with the same `max.message.bytes`). A result too large for it, or refused by
    /// the broker as too large, is published as a small `failed` result
    /// (`result_too_large`) instead of being retried forever.
    pub max_message_bytes: usize,
    /// `[kafka.membership]`: static membership, session, cooperative or KIP-848 rebalancing.
    pub membership: crate::membership::Membership,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: "sluice".into(),
            group_id: "sluice-workers".into(),
            options: BTreeMap::new(),
            max_message_bytes: sluice_schemas::topics::MAX_MESSAGE_BYTES,
            membership: crate::membership::Membership::default(),
        }
    }
}

/// `[streaming]`: how stream events are coalesced into reply records
/// (crate::process::coalesce).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// The longest an event is held to share a record with the next ones; 0: never.
    #[serde(with = "millis")]
    pub coalesce_ms: Duration,
    /// Held events are sent once they reach this many bytes.
    pub coalesce_bytes: usize,
    /// While fewer streams than this are live on the worker, a new stream's records go out
    /// each at once (`linger.ms = 0`); the rest share the batched producer's requests, which
    /// cost the broker and the worker less per record. 0: every stream is batched.
    pub prompt_streams: usize,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            coalesce_ms: Duration::from_millis(5),
            coalesce_bytes: 16 * 1024,
            prompt_streams: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Name of this worker in results and logs.
    pub id: String,
    /// Requests processed at once by this worker.
    pub max_in_flight: usize,
    /// How long a graceful shutdown waits for requests in flight.
    #[serde(with = "millis")]
    pub drain_timeout_ms: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: format!("worker-{}", std::process::id()),
            max_in_flight: 256,
            drain_timeout_ms: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Unique name, recorded in results and usage.
    pub name: String,
    /// The model name callers use (deployments sharing it are load-balanced).
    pub model: String,
    /// Share of this model's requests tried here first, relative to the other deployments
    /// of the model; 0 = only ever a fallback.
    #[serde(default = "default_weight")]
    pub weight: u32,
    pub provider: ProviderConfig,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout", with = "millis")]
    pub timeout_ms: Duration,
    /// Retries after the first attempt, on retriable failures only.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// The provider's quotas for this deployment; the worker waits for capacity instead of
    /// calling into a 429.
    #[serde(default)]
    pub limits: crate::throttle::Limits,
    /// Where it runs (`eu-west`, `on-prem`, ...), for `[[residency]]` rules; none: in no
    /// location a rule allows.
    #[serde(default)]
    pub location: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_retries() -> u32 {
    2
}

fn default_weight() -> u32 {
    1
}

/// A name callers use and the models it is served by, in fallback order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// An alias (`smart`, `fast`), or a deployed model's name: then this chain replaces the
    /// model's own (list the model first to keep it and add fallbacks).
    pub name: String,
    /// Deployed models, tried in order; within each, deployments are ordered by the
    /// model's strategy.
    pub models: Vec<String>,
    /// Orders all the route's deployments, of every model, as one pool by this strategy
    /// (crate::strategy) instead of model after model.
    #[serde(default)]
    pub strategy: Option<crate::strategy::Strategy>,
}

/// Takes a failing deployment out of rotation, then probes it back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures (throttling, server errors, timeouts, refused keys) that open a
    /// deployment's circuit; 0 turns circuit breaking off.
    pub failure_threshold: u32,
    /// How long an open circuit keeps the deployment out before one probe request.
    #[serde(with = "millis")]
    pub cooldown_ms: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            failure_threshold: 5,
            cooldown_ms: Duration::from_secs(30),
        }
    }
}

/// Prices live in the shared crate: the ingress prices budget reservations with them.
pub use sluice_schemas::pricing::Price;

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config: Config =
            sluice_schemas::config::load(path, env_overrides(ENV_PREFIX, &ENV_SECTIONS))?;
        config.prices = sluice_schemas::pricing::with_price_file(
            path,
            config.pricing.file.as_deref(),
            std::mem::take(&mut config.prices),
        )?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
        if self.deployments.is_empty() {
            return Err(field(
                "deployments".into(),
                "at least one deployment is needed",
            ));
        }
        self.scheduling
            .validate()
            .map_err(|problem| field("scheduling".into(), problem))?;
        if self.worker.max_in_flight == 0 {
            return Err(field("worker.max_in_flight".into(), "must be at least 1"));
        }
        let locations: Vec<Option<&str>> = self
            .deployments
            .iter()
            .map(|d| d.location.as_deref())
            .collect();
        crate::residency::validate(&self.residency, &locations)?;
        crate::hooks::validate(&self.hooks, &self.hooks_outbound)
            .map_err(|(f, problem)| field(f, problem))?;
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.deployments.iter().enumerate() {
            if d.name.trim().is_empty() {
                return Err(field(format!("deployments[{i}].name"), "must not be empty"));
            }
            if !names.insert(d.name.as_str()) {
                return Err(field(format!("deployments[{i}].name"), "is not unique"));
            }
            if d.model.trim().is_empty() {
                return Err(field(
                    format!("deployments[{i}].model"),
                    "must not be empty",
                ));
            }
            if d.timeout_ms.is_zero() {
                return Err(field(
                    format!("deployments[{i}].timeout_ms"),
                    "must be at least 1",
                ));
            }
            if d.max_retries > 10 {
                return Err(field(
                    format!("deployments[{i}].max_retries"),
                    "must be at most 10",
                ));
            }
            d.provider.validate().map_err(|invalid| {
                field(
                    format!("deployments[{i}].provider.{}", invalid.field),
                    invalid.problem,
                )
            })?;
        }
        let models: std::collections::HashSet<&str> =
            self.deployments.iter().map(|d| d.model.as_str()).collect();
        let mut routes = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if r.name.trim().is_empty() {
                return Err(field(format!("routes[{i}].name"), "must not be empty"));
            }
            if !routes.insert(r.name.as_str()) {
                return Err(field(format!("routes[{i}].name"), "is not unique"));
            }
            if r.models.is_empty() {
                return Err(field(
                    format!("routes[{i}].models"),
                    "must list at least one model",
                ));
            }
            for (j, m) in r.models.iter().enumerate() {
                if !models.contains(m.as_str()) {
                    return Err(field(
                        format!("routes[{i}].models[{j}]"),
                        "is not the model of any deployment",
                    ));
                }
            }
        }
        for model in self.routing.models.keys() {
            if !models.contains(model.as_str()) {
                return Err(field(
                    format!("routing.models.{model}"),
                    "is not the model of any deployment",
                ));
            }
        }
        if self.routing.latency_decay_ms.is_zero() {
            return Err(field(
                "routing.latency_decay_ms".into(),
                "must be at least 1",
            ));
        }
        if self.circuit_breaker.failure_threshold > 0 && self.circuit_breaker.cooldown_ms.is_zero()
        {
            return Err(field(
                "circuit_breaker.cooldown_ms".into(),
                "must be at least 1 when failure_threshold is set",
            ));
        }
        for (i, p) in self.prices.iter().enumerate() {
            if !p.is_valid() {
                return Err(field(
                    format!("prices[{i}]"),
                    "prices must be finite and not negative",
                ));
            }
        }
        self.redelivery
            .validate()
            .map_err(|problem| field("redelivery".into(), problem))?;
        self.validate_pricing()
    }

    /// Every deployed model is priced or explicitly free: a provider that bills us is never
    /// recorded as costing 0 by omission.
    /// The prices of deployments whose model has no `[[prices]]` entry and is not free: the
    /// built-in catalogue's price of what each sends to its provider (its provider `model`,
    /// else its `model`), named by the deployment. A request is billed at the price of the
    /// deployment that answered it, so a fallback to another provider costs what it costs.
    pub fn catalogue_prices(&self) -> Vec<Price> {
        let catalogue = sluice_schemas::pricing::Catalogue::builtin();
        self.deployments
            .iter()
            .filter(|d| {
                !self.prices.iter().any(|p| p.model == d.model)
                    && !self.pricing.free_models.contains(&d.model)
            })
            .filter_map(|d| {
                let sent = d.provider.model().unwrap_or(&d.model);
                catalogue.price(sent, &d.name)
            })
            .collect()
    }

    fn validate_pricing(&self) -> Result<(), ConfigError> {
        let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
        let priced: std::collections::HashSet<&str> =
            self.prices.iter().map(|p| p.model.as_str()).collect();
        let catalogued = self.catalogue_prices();
        let free = &self.pricing.free_models;
        for (i, m) in free.iter().enumerate() {
            if priced.contains(m.as_str()) {
                return Err(field(
                    format!("pricing.free_models[{i}] = \"{m}\""),
                    "also has a [[prices]] entry: a model is priced or free, not both",
                ));
            }
            if !self.deployments.iter().any(|d| &d.model == m) {
                return Err(field(
                    format!("pricing.free_models[{i}] = \"{m}\""),
                    "is not the model of any deployment",
                ));
            }
        }
        for (i, d) in self.deployments.iter().enumerate() {
            if !priced.contains(d.model.as_str())
                && !free.contains(&d.model)
                && !catalogued.iter().any(|p| p.model == d.name)
            {
                return Err(field(
                    format!("deployments[{i}].model = \"{}\"", d.model),
                    "has no price: the price catalogue does not know the model it sends; add a [[prices]] entry for this model, or list it in [pricing] free_models to bill it at 0",
                ));
            }
        }
        Ok(())
    }
}

/// The sections env vars may override. Other `SLUICE_*` variables (another service's, or
/// the scripts' `SLUICE_STATE`) are not ours and must not trip `deny_unknown_fields`.
const ENV_SECTIONS: [&str; 9] = [
    "kafka",
    "routing",
    "worker",
    "streaming",
    "ops",
    "scheduling",
    "redelivery",
    "log",
    "trace",
];

/// `#[serde(with = "millis")]` of this crate's sections.
pub(crate) use sluice_schemas::config::millis;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_load_with_the_kafka_message_limit() {
        for file in ["worker.toml", "worker.compose.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config")
                .join(file);
            let config = Config::load(Some(&path)).unwrap();
            assert_eq!(
                config.kafka.max_message_bytes,
                sluice_schemas::topics::MAX_MESSAGE_BYTES,
                "{file}"
            );
        }
    }

    fn parse(toml: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-worker-cfg-{}-{}",
            std::process::id(),
            toml.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("worker.toml");
        std::fs::write(&file, toml).unwrap();
        let loaded = Config::load(Some(&file));
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    const GOOD: &str = r#"
[[deployments]]
name = "openai-gpt-4o"
model = "gpt-4o"
weight = 3
provider = { type = "openai", base_url = "https://api.openai.com/v1" }

[[deployments]]
name = "azure-gpt-4o"
model = "gpt-4o"
provider = { type = "azure", endpoint = "https://res.openai.azure.com", deployment = "gpt-4o" }

[[deployments]]
name = "claude"
model = "claude-sonnet"
timeout_ms = 90000
max_retries = 1
provider = { type = "anthropic", model = "claude-sonnet-4-5", default_max_tokens = 2048 }

[[deployments]]
name = "gemini-flash"
model = "gemini-flash"
provider = { type = "gemini", model = "gemini-2.5-flash" }

[[deployments]]
name = "local-llama"
model = "llama"
weight = 0
provider = { type = "openai_compatible", base_url = "http://127.0.0.1:8000/v1" }

[[routes]]
name = "smart"
models = ["gpt-4o", "claude-sonnet"]

[[routes]]
name = "fast"
models = ["gemini-flash", "llama"]

[circuit_breaker]
failure_threshold = 3
cooldown_ms = 10000

[[prices]]
model = "gpt-4o"
input_per_million = 2.5
output_per_million = 10.0

[[prices]]
model = "claude-sonnet"
input_per_million = 3.0
output_per_million = 15.0

[[prices]]
model = "gemini-flash"
input_per_million = 0.3
output_per_million = 2.5

[pricing]
free_models = ["llama"]
"#;

    #[test]
    fn every_provider_type_and_the_catalogue_parse() {
        let config = parse(GOOD).unwrap();
        let kinds: Vec<&str> = config
            .deployments
            .iter()
            .map(|d| d.provider.kind())
            .collect();
        assert_eq!(
            kinds,
            [
                "openai",
                "azure",
                "anthropic",
                "gemini",
                "openai_compatible"
            ]
        );
        assert_eq!(config.deployments[0].weight, 3);
        assert_eq!(config.deployments[1].weight, 1, "weight defaults to 1");
        assert_eq!(config.routes[0].models, ["gpt-4o", "claude-sonnet"]);
        assert_eq!(config.circuit_breaker.failure_threshold, 3);
        let ProviderConfig::Anthropic(anthropic) = &config.deployments[2].provider else {
            panic!("anthropic");
        };
        assert_eq!(anthropic.base_url, "https://api.anthropic.com");
        assert_eq!(anthropic.version, "2023-06-01");
    }

    /// A deployment whose model has no [[prices]] entry is priced by the catalogue, by the
    /// model it sends its provider; [[prices]] and free_models win over it.
    #[test]
    fn the_catalogue_prices_deployments_without_an_entry() {
        let toml = GOOD.replace(
            "[[prices]]\nmodel = \"gemini-flash\"\ninput_per_million = 0.3\noutput_per_million = 2.5\n",
            "",
        ) + r#"
[[deployments]]
name = "claude-fallback"
model = "gpt-4o"
weight = 0
provider = { type = "anthropic", model = "claude-haiku-4-5" }
"#;
        let config = parse(&toml).unwrap();
        let prices = config.catalogue_prices();
        let catalogued: Vec<(&str, f64, f64)> = prices
            .iter()
            .map(|p| (p.model.as_str(), p.input_per_million, p.output_per_million))
            .collect();
        // gemini-flash sends gemini-2.5-flash; gpt-4o and its Anthropic fallback keep the
        // model's [[prices]] entry; llama is free.
        assert_eq!(catalogued, [("gemini-flash", 0.3, 2.5)]);
        let unknown = toml.replace("model = \"gemini-2.5-flash\"", "model = \"gemini-9-ultra\"");
        let err = parse(&unknown).unwrap_err().to_string();
        assert!(
            err.contains("deployments[3].model = \"gemini-flash\"` has no price"),
            "{err}"
        );
    }

    #[test]
    fn the_shipped_configs_load() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
        for file in ["worker.toml", "worker.compose.toml"] {
            let config = Config::load(Some(&root.join(file))).unwrap();
            assert!(config.routes.iter().any(|r| r.name == "smart"), "{file}");
            // The prices come from config/prices.toml, the file the ingress reads too.
            assert_eq!(
                config.pricing.file.as_deref(),
                Some(Path::new("prices.toml"))
            );
            let models: Vec<&str> = config.prices.iter().map(|p| p.model.as_str()).collect();
            assert_eq!(
                models,
                [
                    "gpt-4o-mini",
                    "local-llama",
                    "claude-sonnet",
                    "gemini-flash"
                ],
                "{file}"
            );
        }
    }

    #[test]
    fn bad_configuration_is_rejected_naming_the_field() {
        let cases = [
            (
                GOOD.replace("base_url = \"http://127.0.0.1:8000/v1\"", "base_url = \"127.0.0.1:8000/v1\""),
                "`deployments[4].provider.base_url` must start with http:// or https://",
            ),
            (
                GOOD.replace("endpoint = \"https://res.openai.azure.com\"", "endpoint = \"res\""),
                "`deployments[1].provider.endpoint` must start with http:// or https://",
            ),
            (
                GOOD.replace("default_max_tokens = 2048", "default_max_tokens = 0"),
                "`deployments[2].provider.default_max_tokens` must be at least 1",
            ),
            (
                GOOD.replace("name = \"azure-gpt-4o\"", "name = \"openai-gpt-4o\""),
                "`deployments[1].name` is not unique",
            ),
            (
                GOOD.replace("models = [\"gemini-flash\", \"llama\"]", "models = [\"gemini-flash\", \"llama-3\"]"),
                "`routes[1].models[1]` is not the model of any deployment",
            ),
            (
                GOOD.replace("name = \"fast\"", "name = \"smart\""),
                "`routes[1].name` is not unique",
            ),
            (
                GOOD.replace("timeout_ms = 90000", "timeout_ms = 0"),
                "`deployments[2].timeout_ms` must be at least 1",
            ),
            (
                GOOD.replace("model = \"gemini-2.5-flash\"", "model = \"models/gemini:x\""),
                "`deployments[3].provider.model` must be a bare Gemini model name",
            ),
            (
                GOOD.replace("provider = { type = \"gemini\"", "provider = { api_key_env = \"SLUICE_TEST_UNSET_KEY_VAR\", type = \"gemini\""),
                "`deployments[3].provider.api_key_env` names an environment variable that is not set",
            ),
            // A billed model without a price never starts (it would be billed 0).
            (
                GOOD.replace("model = \"gemini-flash\"\ninput", "model = \"gemini-pro\"\ninput")
                    .replace("model = \"gemini-2.5-flash\"", "model = \"gemini-9-ultra\""),
                "`deployments[3].model = \"gemini-flash\"` has no price: the price catalogue does not know the model it sends; add a [[prices]] entry for this model, or list it in [pricing] free_models to bill it at 0",
            ),
            (
                GOOD.replace("free_models = [\"llama\"]", "free_models = []"),
                "`deployments[4].model = \"llama\"` has no price",
            ),
            (
                GOOD.replace("free_models = [\"llama\"]", "free_models = [\"llama\", \"gpt-4o\"]"),
                "`pricing.free_models[1] = \"gpt-4o\"` also has a [[prices]] entry",
            ),
            (
                GOOD.replace("free_models = [\"llama\"]", "free_models = [\"llama\", \"lama\"]"),
                "`pricing.free_models[1] = \"lama\"` is not the model of any deployment",
            ),
        ];
        for (toml, want) in cases {
            let err = parse(&toml).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?}, got {err:?}");
        }
        // Unknown keys and provider types are rejected by name too.
        let err = parse(&GOOD.replace("weight = 3", "wieght = 3")).unwrap_err();
        assert!(format!("{err:?}").contains("wieght"), "{err:?}");
        let err = parse(&GOOD.replace("type = \"gemini\"", "type = \"palm\"")).unwrap_err();
        assert!(format!("{err:?}").contains("palm"), "{err:?}");
    }
}
