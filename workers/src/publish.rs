//! Producing results, usage, audit and dead letters; every send awaits the broker's ack.

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

use crate::config::KafkaConfig;

pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    sluice_schemas::kafka::client_config(&kafka.bootstrap, &kafka.options, &[])
}

pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    // Replies go to waiting sync callers: send at once.
    reliable(kafka, 1)
}

/// The producer of records someone waits for one at a time, with `linger.ms = 0`: `started`
/// attempt records, whose ack each provider call waits for (process/attempts.rs), so the
/// wait is the broker's round trip, not the batched producer's linger too; and the reply
/// records of a stream in the prompt lane (process/processor.rs `Lane`), which the caller
/// reads as they come. Each record is its own produce request: the broker and the worker
/// pay more per record (docs/benchmarks.md).
pub fn prompt_producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    reliable(kafka, 0)
}

fn reliable(kafka: &KafkaConfig, linger_ms: u32) -> Result<FutureProducer, KafkaError> {
    sluice_schemas::kafka::reliable_producer(&sluice_schemas::kafka::ProducerSettings {
        bootstrap: &kafka.bootstrap,
        options: &kafka.options,
        linger_ms,
        message_timeout: std::time::Duration::from_secs(30),
        max_message_bytes: kafka.max_message_bytes,
    })
}

pub use sluice_schemas::kafka::too_large;

pub use sluice_schemas::kafka::{send, Outgoing};

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
