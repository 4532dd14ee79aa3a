//! The sink's ops listener (`[ops] listen`): `/metrics`, `/healthz`, and `/readyz` (Kafka
//! and ClickHouse reachable). Shared parts: `sluice_schemas::ops`.

use std::time::Duration;

use sluice_schemas::ops::{global, kafka_probe, serve};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;

/// How often `sluice_consumer_lag_records` is refreshed.
pub(crate) const LAG_EVERY: Duration = Duration::from_secs(5);

/// Starts the ops listener when `[ops] listen` is set.
pub(crate) async fn start(config: &Config, shutdown: &CancellationToken) -> Result<(), Error> {
    if config.ops.listen.is_none() {
        return Ok(());
    }
    let ready = global();
    let cc =
        sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, &[]);
    let topics = sluice_schemas::Topics::new(config.kafka.topic_prefix.clone());
    let probe = kafka_probe(&cc, topics.name(&sluice_schemas::Topic::Results))
        .map_err(Error::KafkaClient)?;
    ready.probe("kafka", probe);
    let clickhouse = crate::tables::client(&config.clickhouse);
    ready.probe("clickhouse", move || {
        let clickhouse = clickhouse.clone();
        async move {
            clickhouse
                .query("SELECT 1")
                .execute()
                .await
                .map_err(|e| e.to_string())
        }
    });
    let shutdown = shutdown.clone();
    serve(&config.ops, "analytics", None, ready.clone(), async move {
        shutdown.cancelled().await
    })
    .await?;
    Ok(())
}
