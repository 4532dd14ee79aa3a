//! Kafka clients of the ingress: the request producer, topic provisioning, and the settings
//! the request/reply path depends on.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use sluice_schemas::kafka::ProducerSettings;
use sluice_schemas::{Topic, Topics};

use crate::config::KafkaConfig;

/// Base client settings: bootstrap, then the user's passthrough options.
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    sluice_schemas::kafka::client_config(&kafka.bootstrap, &kafka.options, &[])
}

/// A consumer that is assigned partitions and never joins a group or commits offsets
/// (reply, keys and ledger readers). `group_id` only names it to the broker. Apache Kafka
/// answers a waiting fetch as soon as data arrives, so the wait bound adds no latency; a
/// small minimum keeps messages flowing one by one.
pub fn reader_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut cc = client_config(kafka);
    cc.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.min.bytes", "1")
        .set("fetch.wait.max.ms", "100");
    cc
}

pub use sluice_schemas::kafka::when_ready;

/// The request producer. A 2xx is only returned after the broker acknowledged the write to
/// all in-sync replicas.
pub fn producer(kafka: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    sluice_schemas::kafka::reliable_producer(&ProducerSettings {
        bootstrap: &kafka.bootstrap,
        options: &kafka.options,
        // Callers wait on this path: send at once. Measured (docs/benchmarks.md): linger.ms=1
        // added ~2.5 ms to the sync p50; operators can trade latency for broker load through
        // `[kafka] options`.
        linger_ms: 0,
        message_timeout: kafka.produce_timeout_ms,
        max_message_bytes: kafka.max_message_bytes,
    })
}

pub use sluice_schemas::kafka::too_large;

/// Produces one message and waits for its acknowledgement.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    partition: Option<i32>,
) -> Result<(), KafkaError> {
    send_traced(producer, topic, key, payload, partition, None).await
}

/// As [`send`], with the `traceparent` header when there is one.
pub async fn send_traced(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
    partition: Option<i32>,
    traceparent: Option<&str>,
) -> Result<(), KafkaError> {
    let m = sluice_schemas::kafka::Outgoing {
        topic,
        key,
        payload,
        partition,
        headers: sluice_schemas::kafka::with_traceparent(None, traceparent),
    };
    sluice_schemas::kafka::send(producer, m).await
}

/// Creates every topic in `wanted` that does not exist yet (idempotent).
pub async fn ensure_topics(
    kafka: &KafkaConfig,
    topics: &Topics,
    wanted: &[Topic],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let max_message_bytes = kafka.max_message_bytes.to_string();
    let names: Vec<String> = wanted.iter().map(|t| topics.name(t)).collect();
    let new_topics: Vec<NewTopic<'_>> = wanted
        .iter()
        .zip(&names)
        .map(|(topic, name)| {
            topic.config().iter().fold(
                NewTopic::new(name, topic.partitions(), TopicReplication::Fixed(-1))
                    .set("max.message.bytes", &max_message_bytes),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new_topics, &opts).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                tracing::error!(topic = %name, error = %code, "topic creation failed");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// All topics a deployment with these per-team topics needs.
pub fn wanted_topics(team_topics: &[String]) -> Vec<Topic> {
    let mut wanted = Topics::shared();
    for team in team_topics {
        for p in sluice_schemas::Priority::ALL {
            wanted.push(Topic::TeamRequests(p, team.clone()));
        }
    }
    wanted
}

/// How long a metadata, offset or watermark query may take.
const METADATA_WAIT: Duration = Duration::from_secs(10);

/// How many partitions `topic` has; an error while it does not exist (yet).
pub(crate) fn partition_count(
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
) -> Result<i32, KafkaError> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_WAIT)?;
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if !t.partitions().is_empty() => Ok(t.partitions().len() as i32),
        _ => Err(KafkaError::MetadataFetch(
            RDKafkaErrorCode::UnknownTopicOrPartition,
        )),
    }
}

/// (partition, first offset at or after `from_ms`, high watermark) for every partition.
pub(crate) fn partition_starts(
    consumer: &rdkafka::consumer::StreamConsumer,
    topic: &str,
    partitions: i32,
    from_ms: i64,
) -> Result<Vec<(i32, i64, i64)>, KafkaError> {
    let mut times = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        times.add_partition_offset(topic, p, rdkafka::Offset::Offset(from_ms))?;
    }
    let starts = consumer.offsets_for_times(times, METADATA_WAIT)?;
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer.fetch_watermarks(topic, p, METADATA_WAIT)?;
            // No message at or after `from_ms`: nothing to read, start at the end.
            let start = match starts.find_partition(topic, p).map(|e| e.offset()) {
                Some(rdkafka::Offset::Offset(o)) => o,
                _ => high,
            };
            Ok((p, start, high))
        })
        .collect()
}

#[cfg(test)]
mod tests {

    use super::*;

    /// librdkafka is built with OpenSSL: TLS (and SASL_SSL with SCRAM) settings pass through
    /// `[kafka] options` (docs/security.md). Without it, creating the client fails with
    /// "OpenSSL not available at build time".
    #[test]
    fn tls_options_are_accepted() {
        let mut kafka = KafkaConfig {
            bootstrap: "127.0.0.1:1".into(),
            ..KafkaConfig::default()
        };
        kafka
            .options
            .insert("security.protocol".into(), "SSL".into());
        kafka.options.insert(
            "ssl.endpoint.identification.algorithm".into(),
            "https".into(),
        );
        assert!(producer(&kafka).is_ok());
        kafka
            .options
            .insert("security.protocol".into(), "SASL_SSL".into());
        kafka
            .options
            .insert("sasl.mechanism".into(), "SCRAM-SHA-512".into());
        kafka.options.insert("sasl.username".into(), "u".into());
        kafka.options.insert("sasl.password".into(), "p".into());
        assert!(producer(&kafka).is_ok());
    }
}
