//! Worker configuration: a TOML file, then `SLUICE_<SECTION>_<KEY>` environment overrides.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

use crate::error::ConfigError;
use crate::providers::ProviderConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    /// Where each model is served. A model may have several deployments (tried in order).
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Prices per model, in USD per million tokens.
    #[serde(default)]
    pub prices: Vec<Price>,
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
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap: "127.0.0.1:19092".into(),
            topic_prefix: "sluice".into(),
            group_id: "sluice-workers".into(),
            options: BTreeMap::new(),
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
    /// The model name callers use.
    pub model: String,
    pub provider: ProviderConfig,
    /// Per-attempt timeout.
    #[serde(default = "default_timeout", with = "millis")]
    pub timeout_ms: Duration,
    /// Retries after the first attempt, on retriable failures only.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_retries() -> u32 {
    2
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    #[serde(default)]
    pub cached_input_per_million: Option<f64>,
}

impl Config {
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::Missing(path.to_path_buf()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(env_overrides())
            .extract()
            .map_err(|e| ConfigError::Invalid(Box::new(e)))?;
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
        if self.worker.max_in_flight == 0 {
            return Err(field("worker.max_in_flight".into(), "must be at least 1"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.deployments.iter().enumerate() {
            if !names.insert(d.name.as_str()) {
                return Err(field(format!("deployments[{i}].name"), "is not unique"));
            }
            d.provider
                .validate()
                .map_err(|problem| field(format!("deployments[{i}].provider"), problem))?;
        }
        for (i, p) in self.prices.iter().enumerate() {
            let prices = [
                Some(p.input_per_million),
                Some(p.output_per_million),
                p.cached_input_per_million,
            ];
            if prices
                .into_iter()
                .flatten()
                .any(|v| !v.is_finite() || v < 0.0)
            {
                return Err(field(
                    format!("prices[{i}]"),
                    "prices must be finite and not negative",
                ));
            }
        }
        Ok(())
    }
}

/// The sections env vars may override. Other `SLUICE_*` variables (another service's, or
/// the scripts' `SLUICE_STATE`) are not ours and must not trip `deny_unknown_fields`.
const ENV_SECTIONS: [&str; 2] = ["kafka", "worker"];

/// `SLUICE_KAFKA_BOOTSTRAP` -> `kafka.bootstrap`.
fn env_overrides() -> Env {
    Env::prefixed("SLUICE_")
        .filter(|k| {
            k.as_str().split_once('_').is_some_and(|(section, _)| {
                ENV_SECTIONS.iter().any(|s| s.eq_ignore_ascii_case(section))
            })
        })
        .map(|k| k.as_str().replacen('_', ".", 1).into())
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
