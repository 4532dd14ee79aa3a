//! The processor: what every request's processing shares, built once per worker.

use std::sync::atomic::{AtomicUsize, Ordering};

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
    /// The batched producer (`linger.ms = 1`): everything not named below.
    pub producer: FutureProducer,
    /// The producer that sends each record at once (crate::publish::prompt_producer): for
    /// `started` attempt records, and the reply records of a [`Lane::Prompt`] stream.
    pub prompt_producer: FutureProducer,
    /// Streams being forwarded now, which pick a new stream's [`Lane`].
    pub lanes: Lanes,
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
        prompt_producer: FutureProducer,
        http: reqwest::Client,
        cancellations: Cancellations,
        shutdown: CancellationToken,
    ) -> Processor {
        Processor {
            worker_id: config.worker.id.clone(),
            topics: Topics::new(config.kafka.topic_prefix.clone()),
            producer,
            prompt_producer,
            lanes: Lanes::new(config.streaming.prompt_streams),
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

/// Which producer a request's reply records go on. A stream's chunks and its end go on the
/// same one, which keeps them in order on their partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Batched with other records (`Processor::producer`).
    Batched,
    /// Each record at once (`Processor::prompt_producer`).
    Prompt,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Batched => "batched",
            Lane::Prompt => "prompt",
        }
    }
}

/// Picks a new stream's lane: prompt while fewer than `[streaming] prompt_streams` others
/// are live, so an answer streamed alone is not held by a linger, and many at once share
/// produce requests, which cost the broker and the worker less per record.
pub struct Lanes {
    live: AtomicUsize,
    prompt_streams: usize,
}

impl Lanes {
    pub fn new(prompt_streams: usize) -> Lanes {
        Lanes {
            live: AtomicUsize::new(0),
            prompt_streams,
        }
    }

    /// Counts a stream as live until the returned guard is dropped.
    pub fn start(&self) -> LiveStream<'_> {
        let others = self.live.fetch_add(1, Ordering::Relaxed);
        let lane = if others < self.prompt_streams {
            Lane::Prompt
        } else {
            Lane::Batched
        };
        LiveStream {
            live: &self.live,
            lane,
        }
    }
}

/// A stream counted in [`Lanes`] until it is dropped.
pub struct LiveStream<'a> {
    live: &'a AtomicUsize,
    pub lane: Lane,
}

impl Drop for LiveStream<'_> {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Processor {
    /// The producer of `lane`'s reply records.
    pub(super) fn reply_producer(&self, lane: Lane) -> &FutureProducer {
        match lane {
            Lane::Batched => &self.producer,
            Lane::Prompt => &self.prompt_producer,
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_prompt_until_enough_are_live_and_again_once_they_end() {
        let lanes = Lanes::new(2);
        let first = lanes.start();
        let second = lanes.start();
        let third = lanes.start();
        assert_eq!(
            [first.lane, second.lane, third.lane],
            [Lane::Prompt, Lane::Prompt, Lane::Batched]
        );
        drop(third);
        assert_eq!(lanes.start().lane, Lane::Batched, "two are still live");
        drop(first);
        let fourth = lanes.start();
        assert_eq!(
            fourth.lane,
            Lane::Prompt,
            "a stream that ended frees its place"
        );
        assert_eq!(lanes.start().lane, Lane::Batched);
        drop((second, fourth));
        assert_eq!(
            lanes.start().lane,
            Lane::Prompt,
            "a dropped guard is no longer live"
        );
    }

    #[test]
    fn zero_prompt_streams_batches_every_stream() {
        let lanes = Lanes::new(0);
        assert_eq!(lanes.start().lane, Lane::Batched);
    }
}
