//! Kafka's part of the ops view: reachability for `/readyz`, consumer lag for `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::Offset;

use super::ready::ProbeFuture;

/// How long the readiness metadata fetch and each watermark fetch may take.
const METADATA_TIMEOUT: Duration = Duration::from_millis(1500);

/// A probe for [`super::Readiness::probe`]: a metadata fetch of `topic` on a client of its
/// own (`config`: the service's bootstrap and passthrough options, so SSL/SASL apply).
pub fn kafka_probe(
    config: &ClientConfig,
    topic: String,
) -> Result<impl Fn() -> ProbeFuture + Send + Sync + 'static, KafkaError> {
    let client: Arc<BaseConsumer> = Arc::new(config.create()?);
    Ok(move || {
        let client = client.clone();
        let topic = topic.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                client
                    .fetch_metadata(Some(&topic), METADATA_TIMEOUT)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())?
        }) as ProbeFuture
    })
}

/// Every `every`, sets `sluice_consumer_lag_records{topic, partition}` (high watermark -
/// position) for each partition `consumer` holds, and 0 for partitions it no longer holds
/// (their new owner reports them). Stops when the consumer is dropped. Nothing without an
/// installed recorder (no ops listener).
pub fn spawn_lag_gauge<X, C>(consumer: &Arc<C>, every: Duration)
where
    X: ConsumerContext + 'static,
    C: Consumer<X> + Send + Sync + 'static,
{
    if !super::exporter::installed() {
        return;
    }
    let weak = Arc::downgrade(consumer);
    tokio::spawn(async move {
        let mut held: Vec<(String, i32)> = Vec::new();
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(consumer) = weak.upgrade() else {
                return;
            };
            let lags = tokio::task::spawn_blocking(move || lags(consumer.as_ref())).await;
            let Ok(lags) = lags else { continue };
            for (topic, partition) in &held {
                if !lags.iter().any(|(t, p, _)| t == topic && p == partition) {
                    gauge(topic, *partition, 0);
                }
            }
            held = lags.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
            for (topic, partition, lag) in lags {
                gauge(&topic, partition, lag);
            }
        }
    });
}

fn gauge(topic: &str, partition: i32, lag: i64) {
    metrics::gauge!(
        "sluice_consumer_lag_records",
        "topic" => topic.to_string(),
        "partition" => partition.to_string()
    )
    .set(lag.max(0) as f64);
}

/// (topic, partition, lag) of the held partitions whose position is known.
fn lags<X: ConsumerContext, C: Consumer<X>>(consumer: &C) -> Vec<(String, i32, i64)> {
    let Ok(positions) = consumer.position() else {
        return Vec::new();
    };
    positions
        .elements()
        .iter()
        .filter_map(|e| {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), METADATA_TIMEOUT)
                .ok()?;
            let lag = match e.offset() {
                Offset::Offset(position) => high - position,
                // Nothing consumed yet since the assignment: all of it is behind.
                _ => high - low,
            };
            Some((e.topic().to_string(), e.partition(), lag))
        })
        .collect()
}
