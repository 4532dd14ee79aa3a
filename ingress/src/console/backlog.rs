//! The backlog page's numbers: per class, what the workers' consumer groups have not yet
//! committed on each request topic (high watermark − committed offset: Kafka's own consumer
//! lag, the figure `kafka-consumer-groups --describe` prints). The workers' gauge
//! `sluice_consumer_lag_records` measures the same distance from their in-memory position.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_schemas::{Priority, Topics};

/// How long each metadata, offset and watermark fetch may take.
const TIMEOUT: Duration = Duration::from_millis(1500);

/// One topic's backlog.
#[derive(Debug, Clone)]
pub(super) struct TopicBacklog {
    pub class: Priority,
    pub topic: String,
    pub partitions: usize,
    /// Records not yet committed by the class's group.
    pub records: i64,
}

/// A client per class, each in its class's worker group (it only reads the group's
/// committed offsets: it never joins the group).
pub(super) struct Backlog {
    topics: Topics,
    clients: Vec<(Priority, BaseConsumer)>,
}

impl Backlog {
    pub(super) fn new(
        config: &crate::config::Config,
    ) -> Result<Backlog, rdkafka::error::KafkaError> {
        let mut clients = Vec::new();
        for class in Priority::ALL {
            let mut cc = sluice_schemas::kafka::client_config(
                &config.kafka.bootstrap,
                &config.kafka.options,
                &[],
            );
            cc.set(
                "group.id",
                format!("{}-{}", config.console.worker_group_id, class.as_str()),
            )
            .set("enable.auto.commit", "false");
            clients.push((class, cc.create()?));
        }
        Ok(Backlog {
            topics: Topics::new(config.kafka.topic_prefix.clone()),
            clients,
        })
    }

    /// Every request topic's backlog (blocking: call from `spawn_blocking`).
    pub(super) fn read(&self) -> Result<Vec<TopicBacklog>, rdkafka::error::KafkaError> {
        let Some((_, any)) = self.clients.first() else {
            return Ok(Vec::new());
        };
        let metadata = any.fetch_metadata(None, TIMEOUT)?;
        let mut out = Vec::new();
        for (class, client) in &self.clients {
            let mut list = TopicPartitionList::new();
            let mut topics: Vec<(&str, usize)> = Vec::new();
            for topic in metadata.topics() {
                if self.topics.priority_of(topic.name()) != Some(*class) {
                    continue;
                }
                for p in topic.partitions() {
                    list.add_partition(topic.name(), p.id());
                }
                topics.push((topic.name(), topic.partitions().len()));
            }
            if topics.is_empty() {
                continue;
            }
            let committed = client.committed_offsets(list, TIMEOUT)?;
            for (topic, partitions) in topics {
                let mut records = 0;
                for e in committed.elements_for_topic(topic) {
                    let (low, high) = client.fetch_watermarks(topic, e.partition(), TIMEOUT)?;
                    records += match e.offset() {
                        Offset::Offset(done) => (high - done).max(0),
                        // The group never committed here: all that is kept is behind.
                        _ => high - low,
                    };
                }
                out.push(TopicBacklog {
                    class: *class,
                    topic: topic.to_string(),
                    partitions,
                    records,
                });
            }
        }
        Ok(out)
    }
}
