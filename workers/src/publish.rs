//! Producing results, usage, audit and dead letters; every send awaits the broker's ack.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;

pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    sluice_schemas::kafka::client_config(&kafka.bootstrap, &kafka.options, &[])
}

pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    sluice_schemas::kafka::reliable_producer(&sluice_schemas::kafka::ProducerSettings {
        bootstrap: &kafka.bootstrap,
        options: &kafka.options,
        // Replies go to waiting sync callers: send at once.
        linger_ms: 1,
        message_timeout: std::time::Duration::from_secs(30),
        max_message_bytes: kafka.max_message_bytes,
    })
}

pub use sluice_schemas::kafka::too_large;

/// One message to produce.
pub struct Outgoing<'a> {
    pub topic: &'a str,
    pub key: &'a str,
    pub payload: &'a [u8],
    pub partition: Option<i32>,
    pub headers: Option<OwnedHeaders>,
}

pub async fn send(producer: &FutureProducer, m: Outgoing<'_>) -> Result<(), KafkaError> {
    let mut record = FutureRecord::to(m.topic).key(m.key).payload(m.payload);
    if let Some(p) = m.partition {
        record = record.partition(p);
    }
    if let Some(h) = m.headers {
        record = record.headers(h);
    }
    producer
        .send(record, Duration::from_secs(0))
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

pub fn dead_letter_headers(reason: &str, topic: &str, partition: i32, offset: i64) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: "sluice.dlq.reason",
            value: Some(reason),
        })
        .insert(Header {
            key: "sluice.dlq.topic",
            value: Some(topic),
        })
        .insert(Header {
            key: "sluice.dlq.partition",
            value: Some(&partition),
        })
        .insert(Header {
            key: "sluice.dlq.offset",
            value: Some(&offset),
        })
}
