//! The worker's ops listener (`[ops] listen`): `/metrics`, `/healthz`, and `/readyz` (Kafka
//! reachable, the consumer groups joined: partitions assigned, or none to take). Shared
//! parts: `sluice_schemas::ops`.

use std::time::Duration;

use sluice_schemas::ops::{global, kafka_probe, serve};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The readiness flag set by the first assignment.
pub(crate) const ASSIGNMENT: &str = "assignment";

/// How often `sluice_consumer_lag_records` is refreshed.
pub(crate) const LAG_EVERY: Duration = Duration::from_secs(5);

/// Starts the ops listener (when configured); the worker itself runs in `consume`.
pub(crate) async fn start(
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<(), crate::WorkerError> {
    if config.ops.listen.is_none() {
        return Ok(());
    }
    let ready = global();
    ready.expect(ASSIGNMENT);
    let cc =
        sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, &[]);
    let topics = sluice_schemas::Topics::new(config.kafka.topic_prefix.clone());
    ready.probe(
        "kafka",
        kafka_probe(&cc, topics.name(&sluice_schemas::Topic::Results))?,
    );
    let shutdown = shutdown.clone();
    serve(
        &config.ops,
        "worker",
        Some(&config.worker.id),
        ready.clone(),
        async move { shutdown.cancelled().await },
    )
    .await?;
    Ok(())
}

/// A consumer group joined (its partitions assigned).
pub(crate) fn assigned() {
    global().set(ASSIGNMENT, true);
}
