//! The consume loop: many requests in flight, bounded; offsets stored only up to the oldest
//! unfinished message of each partition.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sluice_schemas::{decode, Priority, Request, Topic, Topics};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::offsets::{OffsetTracker, PartitionKey};
use crate::process::Processor;
use crate::publish::{client_config, dead_letter_headers, send, Outgoing};

/// Keeps the offset tracker in step with the group's assignments.
pub struct WorkerContext {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut tracker) = self.tracker.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                for e in tpl.elements() {
                    tracing::info!(topic = e.topic(), partition = e.partition(), "assigned");
                    tracker.assign(PartitionKey {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                    });
                }
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    tracing::info!(topic = e.topic(), partition = e.partition(), "revoked");
                    tracker.revoke(&PartitionKey {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                    });
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

type WorkerConsumer = StreamConsumer<WorkerContext>;

fn consumer(
    config: &Config,
    tracker: Arc<Mutex<OffsetTracker>>,
) -> Result<WorkerConsumer, KafkaError> {
    let mut cc = client_config(&config.kafka);
    cc.set("group.id", &config.kafka.group_id)
        .set("auto.offset.reset", "earliest")
        // New per-team topics are picked up by the subscription pattern within seconds.
        .set("topic.metadata.refresh.interval.ms", "10000")
        // At-least-once: librdkafka commits only offsets this code stored, which never pass
        // an unfinished message. Applied after passthrough options on purpose.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    cc.create_with_context(WorkerContext { tracker })
}

/// Runs a worker until `shutdown`, then drains requests in flight.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), crate::WorkerError> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let consumer = Arc::new(consumer(&config, tracker.clone())?);
    let topics = Topics::new(config.kafka.topic_prefix.clone());
    let patterns: Vec<String> = Priority::ALL
        .into_iter()
        .map(|p| topics.requests_pattern(p))
        .collect();
    let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
    consumer.subscribe(&refs)?;

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(config.worker.max_in_flight)
        .build()
        .map_err(crate::WorkerError::Http)?;
    let producer = crate::publish::producer(&config.kafka)?;
    let cancellations = crate::cancel::Cancellations::default();
    let listener = crate::cancel::listener(&config.kafka).await?;
    tokio::spawn(crate::cancel::run(
        listener,
        cancellations.clone(),
        shutdown.clone(),
    ));
    let processor = Arc::new(Processor::new(
        &config,
        producer,
        http,
        cancellations,
        shutdown.clone(),
    ));
    let permits = Arc::new(Semaphore::new(config.worker.max_in_flight));
    let mut tasks = JoinSet::new();
    tracing::info!(worker = %config.worker.id, group = %config.kafka.group_id, "worker consuming");

    loop {
        while tasks.try_join_next().is_some() {}
        // Backpressure: no more messages are taken while max_in_flight are running.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m.detach(),
            Err(error) => {
                tracing::warn!(%error, "consumer error");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let key = PartitionKey {
            topic: message.topic().to_string(),
            partition: message.partition(),
        };
        let offset = message.offset();
        let generation = match tracker.lock() {
            Ok(mut t) => t.start(&key, offset),
            Err(_) => continue,
        };
        let processor = processor.clone();
        let tracker = tracker.clone();
        let consumer = consumer.clone();
        let topics = topics.clone();
        tasks.spawn(async move {
            let done = handle(&processor, &topics, message).await;
            drop(permit);
            if !done {
                return;
            }
            let next = tracker
                .lock()
                .ok()
                .and_then(|mut t| t.finish(&key, offset, generation));
            if let Some(next) = next {
                let mut tpl = TopicPartitionList::new();
                if tpl
                    .add_partition_offset(&key.topic, key.partition, Offset::Offset(next))
                    .is_ok()
                {
                    // Fails only if the partition was revoked meanwhile: then the new
                    // owner processes the message again and sinks deduplicate it.
                    let _ = consumer.store_offsets(&tpl);
                }
            }
        });
    }

    tracing::info!(in_flight = tasks.len(), "draining");
    let drained = tokio::time::timeout(config.worker.drain_timeout_ms, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            abandoned = tasks.len(),
            "drain timed out; those requests will be redelivered"
        );
        tasks.abort_all();
    }
    // Commit what is stored before leaving the group.
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(%error, "final commit");
    }
    Ok(())
}

/// Processes one message. Returns whether it is finished (its offset may be committed).
async fn handle(processor: &Processor, topics: &Topics, message: OwnedMessage) -> bool {
    let payload = message.payload().unwrap_or_default();
    match decode::<Request>(payload) {
        Ok(request) => processor.process(request).await,
        Err(error) => {
            let reason = error.to_string();
            tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "undecodable request sent to dead-letter topic");
            let dlq = topics.name(&Topic::DeadLetter);
            let headers = dead_letter_headers(
                &reason,
                message.topic(),
                message.partition(),
                message.offset(),
            );
            let key = message
                .key()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            loop {
                let sent = send(
                    &processor.producer,
                    Outgoing {
                        topic: &dlq,
                        key: &key,
                        payload,
                        partition: None,
                        headers: Some(headers.clone()),
                    },
                )
                .await;
                match sent {
                    Ok(()) => return true,
                    Err(error) => {
                        tracing::warn!(%error, "dead-letter produce failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = processor.shutdown.cancelled() => return false,
                        }
                    }
                }
            }
        }
    }
}
