//! The processor: what every request's processing shares, built once per worker.

use rdkafka::producer::FutureProducer;
use sluice_schemas::Topics;
use tokio_util::sync::CancellationToken;

use crate::cancel::Cancellations;
use crate::config::Config;
use crate::pricing::PriceTable;
use crate::routing::Catalogue;

/// Everything a request's processing needs, shared by all tasks of a worker.
pub struct Processor {
    pub worker_id: String,
    pub topics: Topics,
    pub producer: FutureProducer,
    /// For `started` attempt records only (crate::publish::attempts_producer).
    pub attempts_producer: FutureProducer,
    pub catalogue: Catalogue,
    /// `[[residency]]`: where each team's requests may run.
    pub residency: crate::residency::Residency,
    pub prices: PriceTable,
    /// Deployments priced by the catalogue, by deployment name ([`Config::catalogue_prices`]).
    pub deployment_prices: PriceTable,
    pub cancellations: Cancellations,
    pub shutdown: CancellationToken,
    /// Completion tokens assumed for a request without max_tokens.
    pub default_completion_tokens: u32,
    /// Finds requests that already have a result (crate::redelivery); None: off.
    pub lookup: Option<crate::redelivery::Lookup>,
    /// Request ids this process published the events of lately (crate::redelivery).
    pub recent: crate::redelivery::Recent,
    /// `[kafka] max_message_bytes`: larger results are published as `result_too_large`.
    pub max_message_bytes: usize,
    /// `[streaming]`: how stream events share reply records.
    pub streaming: crate::config::StreamingConfig,
    /// `[[hooks]]`: pre- and post-processing hooks (crate::hooks).
    pub hooks: crate::hooks::Hooks,
}

impl Processor {
    pub fn new(
        config: &Config,
        producer: FutureProducer,
        attempts_producer: FutureProducer,
        http: reqwest::Client,
        cancellations: Cancellations,
        shutdown: CancellationToken,
    ) -> Processor {
        Processor {
            worker_id: config.worker.id.clone(),
            topics: Topics::new(config.kafka.topic_prefix.clone()),
            producer,
            attempts_producer,
            catalogue: Catalogue::new(config, &http),
            residency: crate::residency::Residency::new(&config.residency),
            hooks: crate::hooks::Hooks::new(&config.hooks, &config.hooks_outbound),
            prices: PriceTable::new(&config.prices),
            deployment_prices: PriceTable::new(&config.catalogue_prices()),
            default_completion_tokens: config.scheduling.default_completion_tokens,
            lookup: crate::redelivery::Lookup::new(&config.redelivery, http.clone()),
            recent: crate::redelivery::Recent::new(config.redelivery.remember),
            max_message_bytes: config.kafka.max_message_bytes,
            streaming: config.streaming.clone(),
            cancellations,
            shutdown,
        }
    }
}

impl Processor {
    /// The cost of tokens served by `deployment` of `model`: the deployment's catalogue
    /// price when its model has no `[[prices]]` entry, else the model's price.
    pub(super) fn cost_nanos(
        &self,
        deployment: &str,
        model: &str,
        prompt: u32,
        cached: u32,
        completion: u32,
    ) -> Option<i64> {
        self.deployment_prices
            .cost_nanos(deployment, prompt, cached, completion)
            .or_else(|| self.prices.cost_nanos(model, prompt, cached, completion))
    }

    /// The most a request of `prompt` and `completion` tokens can cost at `deployment`.
    pub(super) fn max_cost_nanos(
        &self,
        deployment: &str,
        model: &str,
        prompt: u32,
        completion: u32,
    ) -> Option<i64> {
        self.deployment_prices
            .max_cost_nanos([deployment], prompt, completion)
            .or_else(|| self.prices.max_cost_nanos([model], prompt, completion))
    }
}
