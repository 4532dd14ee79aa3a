//! The keys topic: every replica reads all of it (assigned, no consumer group, from the
//! beginning) into its [`KeyStore`], and the admin API writes to it.
//!
//! Start-up waits until the reader has applied everything up to the high watermark seen
//! when it started, so a restarted replica never serves a key revoked before it started.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::retry;
use sluice_schemas::{decode, encode, ApiKey};
use tokio_util::sync::CancellationToken;

use super::KeyStore;
use crate::config::KafkaConfig;
use crate::error::ApiError;
use crate::kafka::{reader_config, when_ready};

/// Why the keys topic could not be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot reach Kafka or create topics")]
    Kafka(#[from] KafkaError),
    #[error("the keys topic {topic} was not read to its end within {waited:?}")]
    NotLoaded {
        topic: String,
        waited: std::time::Duration,
    },
}

/// The keys topic has one partition: one total order of key changes.
const PARTITION: i32 = 0;
/// Without new records for this long, the reader asks for its position (compaction leaves
/// gaps in offsets, so the last record read may sit below the high watermark).
const IDLE: Duration = Duration::from_millis(500);
/// How long an admin change waits for this replica to have read every earlier change.
const CATCH_UP: Duration = Duration::from_secs(5);

/// This replica's handle on the keys topic, for the admin API.
pub struct KeyLog {
    topic: String,
    /// Asks for the high watermark. Not the reader: its requests wait behind the reader's
    /// long-polling fetch on the same connection (measured: ~100 ms, `fetch.wait.max.ms`).
    watermarks: Arc<BaseConsumer>,
    /// One admin change at a time on this replica: each reads the key's latest state and
    /// writes the next one.
    write: tokio::sync::Mutex<()>,
}

/// Starts reading the keys topic into `keys`, and returns once everything written before
/// start-up has been applied (or fails after `limit`).
pub async fn start(
    kafka: &KafkaConfig,
    topic: &str,
    keys: KeyStore,
    shutdown: CancellationToken,
    limit: Duration,
) -> Result<KeyLog, LoadError> {
    // No group membership: the partition is assigned and offsets are never committed.
    let cc = reader_config(kafka, &format!("{topic}-reader"));
    let consumer: StreamConsumer = cc.create()?;
    let consumer = Arc::new(consumer);
    let watermarks: Arc<BaseConsumer> = Arc::new(cc.create()?);
    let high = when_ready("keys partition", || high_watermark(&watermarks, topic)).await?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, PARTITION, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    tokio::spawn(follow(
        Arc::clone(&consumer),
        topic.to_string(),
        keys.clone(),
        shutdown,
    ));
    let started = std::time::Instant::now();
    if !keys.wait_applied(high, limit).await {
        return Err(LoadError::NotLoaded {
            topic: topic.to_string(),
            waited: limit,
        });
    }
    tracing::info!(
        topic,
        records = high,
        elapsed_ms = started.elapsed().as_millis() as u64,
        keys = keys.list(None).len(),
        "keys loaded"
    );
    Ok(KeyLog {
        topic: topic.to_string(),
        watermarks,
        write: tokio::sync::Mutex::new(()),
    })
}

/// The partition's high watermark (librdkafka's call blocks, so off the async threads).
async fn high_watermark(consumer: &Arc<BaseConsumer>, topic: &str) -> Result<i64, KafkaError> {
    let consumer = Arc::clone(consumer);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        consumer
            .fetch_watermarks(&topic, PARTITION, Duration::from_secs(5))
            .map(|(_, high)| high)
    })
    .await
    .map_err(|_| KafkaError::Canceled)?
}

/// Applies every record of the keys topic, in order, until `shutdown`.
async fn follow(
    consumer: Arc<StreamConsumer>,
    topic: String,
    keys: KeyStore,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            // An error pauses the loop; an idle stretch (no record for IDLE) is `None`.
            m = retry::until_ok(
                || async {
                    match tokio::time::timeout(IDLE, consumer.recv()).await {
                        Ok(Ok(m)) => Ok(Some(m)),
                        Ok(Err(error)) => Err(error),
                        Err(_idle) => Ok(None),
                    }
                },
                Duration::from_millis(100),
                |error| tracing::warn!(%error, "keys consumer error"),
            ) => m,
        };
        match message {
            Some(m) => {
                match decode::<ApiKey>(m.payload().unwrap_or_default()) {
                    Ok(record) => {
                        keys.apply(record, m.offset());
                    }
                    Err(error) => {
                        tracing::warn!(offset = m.offset(), %error, "undecodable key record skipped")
                    }
                }
                keys.mark_applied(m.offset() + 1);
            }
            None => {
                let position = consumer
                    .position()
                    .ok()
                    .and_then(|tpl| tpl.find_partition(&topic, PARTITION).map(|p| p.offset()));
                if let Some(Offset::Offset(next)) = position {
                    keys.mark_applied(next);
                }
            }
        }
    }
}

impl KeyLog {
    /// Serializes admin changes on this replica and first waits until every change written
    /// before now (by any replica) has been applied here, so the change starts from the
    /// key's latest state.
    pub async fn begin(
        &self,
        keys: &KeyStore,
    ) -> Result<tokio::sync::MutexGuard<'_, ()>, ApiError> {
        let guard = self.write.lock().await;
        let started = std::time::Instant::now();
        let high = high_watermark(&self.watermarks, &self.topic)
            .await
            .map_err(ApiError::QueueUnavailable)?;
        let fetched = started.elapsed();
        let caught_up = keys.wait_applied(high, CATCH_UP).await;
        tracing::debug!(high, ?fetched, elapsed = ?started.elapsed(), "caught up with the keys topic");
        if !caught_up {
            return Err(ApiError::QueueUnavailable(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            )));
        }
        Ok(guard)
    }

    /// Writes a key's new state (acks=all, through the request producer) and applies it
    /// here at once, so this replica reads its own write.
    pub async fn write(
        &self,
        producer: &FutureProducer,
        keys: &KeyStore,
        record: ApiKey,
    ) -> Result<(), ApiError> {
        let payload = encode(&record).map_err(ApiError::Encode)?;
        let delivery = producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(&record.key_id)
                    .payload(&payload)
                    .partition(PARTITION),
                Duration::from_secs(0),
            )
            .await
            .map_err(|(e, _)| ApiError::QueueUnavailable(e))?;
        keys.apply(record, delivery.offset);
        Ok(())
    }
}
