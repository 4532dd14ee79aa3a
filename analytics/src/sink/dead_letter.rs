//! The dead-letter topic: a message the sink cannot write (it does not decode, or ClickHouse
//! rejects its row for good) goes there unchanged, with where it came from and why, and
//! its offset moves on.

use std::time::Duration;

use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use sluice_schemas::CodecError;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::context::SinkContext;
use super::retry::{error_chain, retry};
use crate::error::Error;

/// Header names on dead-lettered messages.
pub const DLQ_REASON: &str = "sluice.dlq.reason";
pub const DLQ_TOPIC: &str = "sluice.dlq.topic";
pub const DLQ_PARTITION: &str = "sluice.dlq.partition";
pub const DLQ_OFFSET: &str = "sluice.dlq.offset";

/// The Kafka message a row came from, kept until the row is written: a row ClickHouse
/// rejects is dead-lettered as the message it came from.
#[derive(Debug)]
pub(super) struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message's Kafka timestamp (Unix ms; 0 unknown): the sink's lag.
    pub timestamp_ms: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
}

impl Origin {
    pub fn of(message: &BorrowedMessage<'_>) -> Origin {
        Origin {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
        }
    }
}

/// Why a message is dead-lettered.
pub(super) struct Rejection {
    /// For logs: a message that never quotes the payload.
    pub summary: String,
    /// For the `sluice.dlq.reason` header: the whole error chain. It may quote decoded
    /// values, so it goes only where the payload itself goes.
    pub detail: String,
}

impl From<CodecError> for Rejection {
    fn from(e: CodecError) -> Rejection {
        Rejection {
            summary: e.to_string(),
            detail: error_chain(&e),
        }
    }
}

/// The dead-letter producer.
pub(super) struct DeadLetters {
    pub producer: FutureProducer<SinkContext>,
    pub topic: String,
    pub max_backoff: Duration,
}

impl DeadLetters {
    /// Sends `origin`'s message, unchanged, to the dead-letter topic and waits for the ack
    /// (retrying). False if `give_up` fired first.
    pub async fn send(
        &self,
        origin: &Origin,
        rejection: &Rejection,
        give_up: &CancellationToken,
    ) -> bool {
        let (topic, partition, offset) = (origin.topic.as_str(), origin.partition, origin.offset);
        warn!(
            topic,
            partition,
            offset,
            reason = %rejection.summary,
            "message cannot be written, dead-lettering it"
        );
        let reason = rejection.detail.as_str();
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let sent = retry("dead-letter produce", self.max_backoff, give_up, || {
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: DLQ_REASON,
                    value: Some(reason),
                })
                .insert(Header {
                    key: DLQ_TOPIC,
                    value: Some(topic),
                })
                .insert(Header {
                    key: DLQ_PARTITION,
                    value: Some(&partition_text),
                })
                .insert(Header {
                    key: DLQ_OFFSET,
                    value: Some(&offset_text),
                });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers);
            if let Some(payload) = &origin.payload {
                record = record.payload(payload);
            }
            if let Some(key) = &origin.key {
                record = record.key(key);
            }
            async move {
                self.producer
                    .send(record, Timeout::After(Duration::from_secs(5)))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| Error::kafka("dead-letter produce")(e))
            }
        })
        .await;
        if sent.is_ok() {
            super::metrics::dead_lettered(&rejection.summary);
        }
        sent.is_ok()
    }
}
