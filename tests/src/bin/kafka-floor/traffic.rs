//! What a benchmark step wrote to Kafka: high watermarks before, records read back after.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use sluice_schemas::kafka::client_config;

use crate::METADATA_TIMEOUT;

/// `{topic: {partition: high watermark}}`.
pub(crate) type Offsets = BTreeMap<String, BTreeMap<i32, i64>>;

/// Messages and bytes written to one topic.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Count {
    /// From the high watermarks.
    pub(crate) messages: u64,
    /// Key + value + header names and values: what the producers sent, without Kafka's
    /// batch and record framing. Measured on the `sampled` records read back, scaled to
    /// `messages`.
    pub(crate) bytes: u64,
    pub(crate) sampled: u64,
    /// Bytes of the sampled records.
    #[serde(skip)]
    sampled_bytes: u64,
}

/// Records read back per partition at most: the bytes of the rest are extrapolated.
const SAMPLE_PER_PARTITION: i64 = 2000;

/// Longest a topic's new records may take to read back.
const READ_LIMIT: Duration = Duration::from_secs(60);

fn consumer(bootstrap: &str, options: &BTreeMap<String, String>) -> anyhow::Result<BaseConsumer> {
    let mut cc = client_config(bootstrap, options, &[]);
    cc.set("group.id", "kafka-floor-traffic")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    cc.create().context("creating a consumer")
}

pub(crate) fn offsets(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    prefix: &str,
) -> anyhow::Result<Offsets> {
    let consumer = consumer(bootstrap, options)?;
    let metadata = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .context("reading the topics")?;
    let mut offsets = Offsets::new();
    for topic in metadata.topics() {
        if !ours(prefix, topic.name()) {
            continue;
        }
        let mut partitions = BTreeMap::new();
        for p in topic.partitions() {
            let (_, high) = consumer
                .fetch_watermarks(topic.name(), p.id(), METADATA_TIMEOUT)
                .with_context(|| format!("watermarks of {}/{}", topic.name(), p.id()))?;
            partitions.insert(p.id(), high);
        }
        offsets.insert(topic.name().to_string(), partitions);
    }
    Ok(offsets)
}

/// A deployment's topics are `<prefix>.<name>`.
fn ours(prefix: &str, topic: &str) -> bool {
    topic
        .strip_prefix(prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// The records written to each topic since `before` (a topic missing there counts from 0).
/// Messages from the high watermarks; bytes from up to `SAMPLE_PER_PARTITION` records read
/// back from each partition.
pub(crate) fn since(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    prefix: &str,
    before: &Offsets,
) -> anyhow::Result<BTreeMap<String, Count>> {
    let now = offsets(bootstrap, options, prefix)?;
    let mut counts = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    // (topic, partition) -> the offset to read up to.
    let mut until = BTreeMap::new();
    for (topic, partitions) in &now {
        counts.insert(topic.clone(), Count::default());
        for (&partition, &high) in partitions {
            let low = before
                .get(topic)
                .and_then(|p| p.get(&partition))
                .copied()
                .unwrap_or(0);
            if high > low {
                if let Some(count) = counts.get_mut(topic) {
                    count.messages += u64::try_from(high - low).unwrap_or(0);
                }
                tpl.add_partition_offset(topic, partition, Offset::Offset(low))
                    .context("partition list")?;
                until.insert(
                    (topic.clone(), partition),
                    high.min(low + SAMPLE_PER_PARTITION),
                );
            }
        }
    }
    if until.is_empty() {
        return Ok(counts);
    }
    read_sample(bootstrap, options, &tpl, until, &mut counts)?;
    for count in counts.values_mut() {
        if let Some(bytes) = (count.sampled_bytes * count.messages).checked_div(count.sampled) {
            count.bytes = bytes;
        }
    }
    Ok(counts)
}

/// Reads each assigned partition up to its `until` offset, adding to `sampled`.
fn read_sample(
    bootstrap: &str,
    options: &BTreeMap<String, String>,
    tpl: &TopicPartitionList,
    mut until: BTreeMap<(String, i32), i64>,
    counts: &mut BTreeMap<String, Count>,
) -> anyhow::Result<()> {
    let consumer = consumer(bootstrap, options)?;
    consumer.assign(tpl).context("assigning the partitions")?;
    let deadline = Instant::now() + READ_LIMIT;
    while !until.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "records of {} partitions not read back within {READ_LIMIT:?}",
            until.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.context("reading records back")?;
        let key = (message.topic().to_string(), message.partition());
        let Some(&high) = until.get(&key) else {
            continue;
        };
        if message.offset() >= high {
            until.remove(&key);
            continue;
        }
        let count = counts.entry(key.0.clone()).or_default();
        count.sampled += 1;
        count.sampled_bytes += record_bytes(&message);
        // A compacted topic may have no record at high - 1: the next one ends it too.
        if message.offset() + 1 >= high {
            until.remove(&key);
        }
    }
    Ok(())
}

fn record_bytes<M: Message>(message: &M) -> u64 {
    let mut bytes = message.key().map_or(0, <[u8]>::len) + message.payload().map_or(0, <[u8]>::len);
    if let Some(headers) = message.headers() {
        for header in headers.iter() {
            bytes += header.key.len() + header.value.map_or(0, <[u8]>::len);
        }
    }
    bytes as u64
}

#[cfg(test)]
mod tests {
    use super::ours;

    #[test]
    fn only_the_deployments_topics_count() {
        assert!(ours("bench1", "bench1.requests.interactive"));
        assert!(ours("bench1", "bench1.replies"));
        assert!(!ours("bench1", "bench12.replies"));
        assert!(!ours("bench1", "bench1-floor.hop1"));
        assert!(!ours("bench1", "other.replies"));
    }
}
