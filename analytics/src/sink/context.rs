//! The sink's Kafka client set-up: librdkafka's logs and commit results through tracing,
//! and the client settings.

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::config::Config;

/// Logs librdkafka's own messages and commit failures through tracing.
pub(super) struct SinkContext;

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Warning => warn!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(partitions = offsets.count(), "offsets committed"),
            // Not fatal: the messages are consumed again (and deduplicated) or a later
            // commit of the same partition covers them.
            Err(e) => warn!(error = %e, partitions = offsets.count(), "offset commit failed"),
        }
    }
}

/// Dead-letter producer defaults, which the passthrough options may change. librdkafka's
/// default message.timeout.ms (5 minutes) would stall the sink that long per failed attempt.
pub(super) const PRODUCER_DEFAULTS: &[(&str, &str)] =
    &[("message.timeout.ms", "30000"), ("linger.ms", "5")];

/// The sink buffers for `flush_interval_ms` anyway: fetching in big batches spares the broker
/// a fetch per message burst (measured: sink CPU 13% -> 3%, broker 64% -> 50% of a core at
/// 1,000 sync req/s; docs/benchmarks.md). A 100 ms wait keeps accept -> ClickHouse near the
/// flush interval: measured against 500 ms, POST -> usage row visible p50 1.49 -> 1.24 s and
/// p99 1.62 -> 1.34 s, the sink's CPU unchanged (docs/benchmarks.md, issue 17).
pub(super) const CONSUMER_DEFAULTS: &[(&str, &str)] =
    &[("fetch.min.bytes", "1000000"), ("fetch.wait.max.ms", "100")];

/// Our defaults, then bootstrap and the passthrough options, then (by the caller, after this) the settings
/// correctness depends on, so those win.
pub(super) fn kafka_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, defaults)
}
