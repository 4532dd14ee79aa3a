//! Producing results, usage, audit and dead letters; every send awaits the broker's ack.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::KafkaConfig;

pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &kafka.bootstrap);
    for (k, v) in &kafka.options {
        cc.set(k, v);
    }
    cc
}

pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    let mut cc = ClientConfig::new();
    // Replies go to waiting sync callers: send at once.
    cc.set("linger.ms", "1");
    cc.set("bootstrap.servers", &kafka.bootstrap);
    for (k, v) in &kafka.options {
        cc.set(k, v);
    }
    cc.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("message.max.bytes", kafka.max_message_bytes.to_string());
    cc.create()
}

/// Kafka refused the message as too large (librdkafka before sending, or the broker for a
/// topic with a smaller `max.message.bytes`): final, sending it again cannot succeed.
pub fn too_large(error: &KafkaError) -> bool {
    error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge)
}

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
