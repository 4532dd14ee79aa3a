//! Feeds the ledger from Kafka: every replica reads every partition of the usage topic
//! (settled spend, from the start of the current period) and of the audit topic (`accepted`
//! events carry reservations, from the oldest deadline still possible), assigned without a
//! consumer group so each replica sees everything. Alerts go to the budget-alerts topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::retry;
use sluice_schemas::{decode, encode, now_ms, Audit, AuditAction, Topic, Topics, Usage};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::{Ledger, Period};
use crate::config::Config;
use crate::kafka::{partition_count, partition_starts, reader_config, send, when_ready};

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("budget ledger cannot read Kafka")]
    Kafka(#[from] KafkaError),
    #[error("budget ledger did not catch up with the usage and audit topics within {0:?}")]
    CatchUpTimeout(Duration),
    #[error("budget ledger stopped before catching up")]
    Stopped,
}

/// Where each partition starts and the end it must reach before the ingress serves.
struct Plan {
    tpl: TopicPartitionList,
    pending: HashMap<(String, i32), i64>,
}

/// Starts the ledger's reader and returns once it has read both topics up to the high
/// watermarks they had at start-up, so a restarted replica knows the period's spend before
/// its first admission.
pub async fn start(
    config: &Config,
    topics: &Topics,
    ledger: Arc<Mutex<Ledger>>,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> Result<(), FeedError> {
    let now = now_ms();
    let usage_from = config
        .budgets
        .iter()
        .map(|b| b.period.start_ms(now))
        .min()
        .unwrap_or_else(|| Period::Month.start_ms(now));
    let grace = config.budget.reservation_grace_ms.as_millis() as i64;
    let audit_from = now - config.deadlines.max_ms.as_millis() as i64 - grace;
    let usage_topic = topics.name(&Topic::Usage);
    let audit_topic = topics.name(&Topic::Audit);

    // No group membership: partitions are assigned, offsets never committed. Unlike the
    // reply reader, no caller waits on this stream (this replica's own admissions hold their
    // reservations at once): the broker answers a fetch when 64 KB are there or after 50 ms,
    // not once per record. Other replicas' reservations arrive up to 50 ms later, which
    // stays within the budgets' bound (requests in flight), and the broker and this client
    // do a fixed ~20 fetches a second instead of two per request (docs/benchmarks.md).
    let mut cc = reader_config(&config.kafka, &format!("{}-budget-ledger", topics.prefix()));
    cc.set("fetch.min.bytes", "65536")
        .set("fetch.wait.max.ms", "50");
    let consumer: StreamConsumer = cc.create()?;
    let mut plan = Plan {
        tpl: TopicPartitionList::new(),
        pending: HashMap::new(),
    };
    for (topic, from) in [(&usage_topic, usage_from), (&audit_topic, audit_from)] {
        plan_topic(&consumer, topic, from, &mut plan).await?;
    }
    consumer.assign(&plan.tpl)?;
    tracing::info!(
        usage_from,
        audit_from,
        partitions_to_read = plan.pending.len(),
        "budget ledger catching up"
    );

    let (caught_up_tx, caught_up_rx) = oneshot::channel();
    let feed = Feed {
        consumer,
        ledger,
        producer,
        alerts_topic: topics.name(&Topic::BudgetAlerts),
        usage_topic,
        instance: config.server.instance_id.clone(),
        grace,
        pending: plan.pending,
        caught_up: Some(caught_up_tx),
    };
    tokio::spawn(export_gauges(Arc::clone(&feed.ledger), shutdown.clone()));
    tokio::spawn(feed.run(shutdown));
    let limit = config.budget.catch_up_timeout_ms;
    match tokio::time::timeout(limit, caught_up_rx).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(FeedError::Stopped),
        Err(_) => Err(FeedError::CatchUpTimeout(limit)),
    }
}

/// Every 5 s, the budgets' limit, spend and reservations as gauges (for `/metrics`).
async fn export_gauges(ledger: Arc<Mutex<Ledger>>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(ledger) = ledger.lock() {
            ledger.export_gauges(now_ms());
        }
    }
}

/// Adds every partition of `topic` from the first message at or after `from_ms`.
async fn plan_topic(
    consumer: &StreamConsumer,
    topic: &str,
    from_ms: i64,
    plan: &mut Plan,
) -> Result<(), FeedError> {
    let partitions = when_ready("ledger topic", || async {
        partition_count(consumer, topic)
    })
    .await?;
    let starts = when_ready("ledger partitions", || async {
        partition_starts(consumer, topic, partitions, from_ms)
    })
    .await?;
    for (p, start, high) in starts {
        plan.tpl
            .add_partition_offset(topic, p, Offset::Offset(start))?;
        if start < high {
            plan.pending.insert((topic.to_string(), p), high);
        }
    }
    Ok(())
}

struct Feed {
    consumer: StreamConsumer,
    ledger: Arc<Mutex<Ledger>>,
    producer: FutureProducer,
    alerts_topic: String,
    usage_topic: String,
    instance: String,
    grace: i64,
    pending: HashMap<(String, i32), i64>,
    caught_up: Option<oneshot::Sender<()>>,
}

impl Feed {
    async fn run(mut self, shutdown: CancellationToken) {
        self.check_caught_up();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let m = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {
                    if let Ok(mut ledger) = self.ledger.lock() {
                        let now = now_ms();
                        ledger.expire(now);
                        ledger.prune(now);
                    }
                    continue;
                }
                m = retry::until_ok(|| self.consumer.recv(), Duration::from_millis(100), |error| {
                    tracing::warn!(%error, "budget ledger consumer error");
                }) => m,
            };
            let payload = m.payload().unwrap_or_default();
            if m.topic() == self.usage_topic {
                match decode::<Usage>(payload) {
                    Ok(usage) => self.settle(&usage),
                    Err(error) => {
                        tracing::warn!(offset = m.offset(), %error, "undecodable usage skipped by the budget ledger");
                    }
                }
            } else {
                match decode::<Audit>(payload) {
                    Ok(audit) => self.hold(&audit),
                    Err(error) => {
                        tracing::warn!(offset = m.offset(), %error, "undecodable audit event skipped by the budget ledger");
                    }
                }
            }
            if !self.pending.is_empty() {
                let key = (m.topic().to_string(), m.partition());
                if self
                    .pending
                    .get(&key)
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    self.pending.remove(&key);
                    self.check_caught_up();
                }
            }
        }
    }

    fn check_caught_up(&mut self) {
        if self.pending.is_empty() {
            if let Some(tx) = self.caught_up.take() {
                let _ = tx.send(());
            }
        }
    }

    fn settle(&self, usage: &Usage) {
        let alerts = match self.ledger.lock() {
            Ok(mut ledger) => ledger.settle(usage, now_ms(), &self.instance),
            Err(_) => return,
        };
        for alert in alerts {
            tracing::info!(alert_id = %alert.alert_id, spent_nanos = alert.spent_nanos, "budget threshold crossed");
            let payload = match encode(&alert) {
                Ok(p) => p,
                Err(error) => {
                    tracing::error!(%error, "budget alert not encodable");
                    continue;
                }
            };
            let producer = self.producer.clone();
            let topic = self.alerts_topic.clone();
            // Keyed by alert id: every replica's copy of an alert lands in one partition.
            tokio::spawn(async move {
                if let Err(error) = send(&producer, &topic, &alert.alert_id, &payload, None).await {
                    tracing::warn!(%error, alert_id = %alert.alert_id, "budget alert not written");
                }
            });
        }
    }

    fn hold(&self, audit: &Audit) {
        if audit.action != AuditAction::Accepted || audit.reserved_nanos <= 0 {
            return;
        }
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger.hold(
                &audit.request_id,
                &audit.team,
                &audit.key_id,
                audit.reserved_nanos,
                audit.occurred_at_ms,
                audit.deadline_ms.saturating_add(self.grace),
                now_ms(),
            );
        }
    }
}
