//! The ingress's ops listener (`[ops] listen`): `/metrics`, `/healthz`, and `/readyz`
//! (Kafka and ClickHouse reachable, keys loaded). Shared parts: `sluice_schemas::ops`.

use sluice_schemas::ops::{global, kafka_probe, serve, OpsError};
use tokio_util::sync::CancellationToken;

use crate::Config;

/// The readiness flag set once the key log is read.
pub(crate) const KEYS: &str = "keys";

/// Starts the ops listener when `[ops] listen` is set (before the keys load: `/readyz` says
/// "keys" until then).
pub(crate) async fn start(config: &Config, shutdown: &CancellationToken) -> Result<(), OpsError> {
    if config.ops.listen.is_none() {
        return Ok(());
    }
    let ready = global();
    ready.expect(KEYS);
    let cc =
        sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, &[]);
    let topics = sluice_schemas::Topics::new(config.kafka.topic_prefix.clone());
    match kafka_probe(&cc, topics.name(&sluice_schemas::Topic::Keys)) {
        Ok(probe) => ready.probe("kafka", probe),
        Err(error) => tracing::warn!(%error, "no Kafka readiness probe"),
    }
    let clickhouse = config.clickhouse.client();
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
    serve(&config.ops, "ingress", None, ready.clone(), async move {
        shutdown.cancelled().await
    })
    .await?;
    Ok(())
}

/// Keys are loaded: the ingress may serve.
pub(crate) fn keys_loaded() {
    global().set(KEYS, true);
}
