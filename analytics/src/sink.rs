//! The Kafka -> ClickHouse sink for results, usage and audit records.
//!
//! At-least-once, written down: a message's offset is committed only after its row is in
//! ClickHouse (or, if it cannot be decoded, after the dead-letter topic acked it). Offsets
//! are committed explicitly per partition after each batch, never automatically. ClickHouse
//! being down stalls the sink (insert retried with backoff), it never drops or skips. A
//! message consumed twice (crash before commit, rebalance) is absorbed by the tables'
//! ReplacingMergeTree keys.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use clickhouse::Client;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sluice_schemas::{decode, CodecError, Topic, Topics};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use crate::config::Config;
use crate::error::Error;
use crate::tables::{
    self, AcceptedRow, AttemptRow, AuditRow, BudgetAlertRow, ResultBodyRow, ResultRow, Table,
    TableRow, UsageRow,
};

/// Header names on dead-lettered messages.
pub const DLQ_REASON: &str = "sluice.dlq.reason";
pub const DLQ_TOPIC: &str = "sluice.dlq.topic";
pub const DLQ_PARTITION: &str = "sluice.dlq.partition";
pub const DLQ_OFFSET: &str = "sluice.dlq.offset";

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What a sink run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Rows inserted per table (duplicates included: ClickHouse collapses them).
    pub results: u64,
    pub usage: u64,
    pub audit: u64,
    pub budget_alerts: u64,
    pub attempts: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Batches written and committed.
    pub batches: u64,
    /// Messages consumed but not written when the sink stopped (ClickHouse unreachable
    /// through the shutdown timeout). Not committed: the next run consumes them again.
    pub unwritten: u64,
}

/// Applies the migrations (as the migrator), then runs the sink and the retention job until
/// `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<SinkStats, Error> {
    let migrator = tables::migrator_client(&config.clickhouse);
    crate::migrations::apply_migrations(&migrator, &config.clickhouse.database).await?;
    let retention = crate::retention::spawn(
        migrator,
        config.clickhouse.database.clone(),
        config.retention.interval_ms,
        shutdown.clone(),
    );
    let stats = Sink::new(&config)?.run(shutdown).await;
    if let Some(retention) = retention {
        retention.abort();
    }
    stats
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Results,
    Usage,
    Audit,
    BudgetAlerts,
    Attempts,
}

/// Logs librdkafka's own messages and commit failures through tracing.
pub struct SinkContext;

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Warning => warn!(facility, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => debug!(facility, message, "librdkafka"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for SinkContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Revoke(tpl) => info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => debug!(partitions = offsets.count(), "offsets committed"),
            // Not fatal: the messages are consumed again (and deduplicated) or a later
            // commit of the same partition covers them.
            Err(e) => warn!(error = %e, partitions = offsets.count(), "offset commit failed"),
        }
    }
}

/// Why a message is dead-lettered.
struct Rejection {
    /// For logs: the codec's own message, which never quotes the payload.
    summary: String,
    /// For the `sluice.dlq.reason` header: the whole error chain. Its innermost Avro error
    /// may quote decoded values, so it goes only where the payload itself goes.
    detail: String,
}

impl From<CodecError> for Rejection {
    fn from(e: CodecError) -> Rejection {
        Rejection {
            summary: e.to_string(),
            detail: error_chain(&e),
        }
    }
}

/// Messages consumed since the last flush, and how far each partition may be committed.
#[derive(Default)]
struct Batch {
    results: Vec<ResultRow>,
    /// Bodies of `results` (private), and `accepted` audit events (private).
    result_bodies: Vec<ResultBodyRow>,
    accepted: Vec<AcceptedRow>,
    usage: Vec<UsageRow>,
    audit: Vec<AuditRow>,
    budget_alerts: Vec<BudgetAlertRow>,
    attempts: Vec<AttemptRow>,
    messages: usize,
    /// `(topic, partition)` -> next offset to consume, i.e. the offset to commit.
    positions: HashMap<(String, i32), i64>,
    started: Option<Instant>,
    /// Every position committed so far, committed once more (synchronously, if the partition
    /// is still assigned) at shutdown, so no asynchronous commit is in flight when the
    /// consumer closes.
    committed: HashMap<(String, i32), i64>,
}

/// A connected sink. [`Sink::new`] subscribes; [`Sink::run`] consumes until shutdown.
pub struct Sink {
    config: Config,
    client: Client,
    /// Bound to the private database, for [`Table::Private`] rows.
    private_client: Client,
    consumer: StreamConsumer<SinkContext>,
    producer: FutureProducer<SinkContext>,
    topics: Vec<(String, Kind)>,
    dead_letter_topic: String,
    /// Budget alert webhooks (`[[alert_webhooks]]`).
    notifier: crate::alerts::Notifier,
}

impl Sink {
    /// Creates the Kafka clients and subscribes. Does not touch ClickHouse (see
    /// [`crate::apply_migrations`]) and does not wait for the broker.
    pub fn new(config: &Config) -> Result<Sink, Error> {
        let names = Topics::new(config.kafka.topic_prefix.clone());
        let topics = vec![
            (names.name(&Topic::Results), Kind::Results),
            (names.name(&Topic::Usage), Kind::Usage),
            (names.name(&Topic::Audit), Kind::Audit),
            (names.name(&Topic::BudgetAlerts), Kind::BudgetAlerts),
            (names.name(&Topic::Attempts), Kind::Attempts),
        ];

        let consumer: StreamConsumer<SinkContext> = kafka_config(config, CONSUMER_DEFAULTS)
            .set("group.id", &config.kafka.group_id)
            // Offsets move only when we commit, after the rows are in ClickHouse.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A new group must read what was produced before it first joined: it is billing.
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .create_with_context(SinkContext)
            .map_err(Error::KafkaClient)?;
        let subscribed: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        consumer
            .subscribe(&subscribed)
            .map_err(Error::kafka("subscribe"))?;

        let producer: FutureProducer<SinkContext> = kafka_config(config, PRODUCER_DEFAULTS)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create_with_context(SinkContext)
            .map_err(Error::KafkaClient)?;

        info!(
            topics = ?subscribed,
            group_id = %config.kafka.group_id,
            database = %config.clickhouse.database,
            "sink subscribed"
        );
        Ok(Sink {
            config: config.clone(),
            client: tables::client(&config.clickhouse),
            private_client: tables::private_client(&config.clickhouse),
            consumer,
            producer,
            topics,
            dead_letter_topic: names.name(&Topic::DeadLetter),
            notifier: crate::alerts::Notifier::new(&config.alert_webhooks, &config.webhooks)?,
        })
    }

    /// Consumes and writes until `shutdown` is cancelled, then flushes and commits what it
    /// has (retrying for at most `sink.shutdown_timeout_ms`).
    #[instrument(skip_all, fields(group_id = %self.config.kafka.group_id))]
    pub async fn run(self, shutdown: CancellationToken) -> Result<SinkStats, Error> {
        let mut batch = Batch::default();
        let mut stats = SinkStats::default();
        let flush_interval = self.config.sink.flush_interval_ms;
        loop {
            let flush_due = batch
                .started
                .map(|started| tokio::time::Instant::from_std(started + flush_interval));
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(flush_due) => {
                    if !self.flush(&mut batch, &mut stats, &shutdown).await {
                        break;
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        if !self.take(&message, &mut batch, &mut stats, &shutdown).await {
                            break;
                        }
                    }
                    Err(e) => {
                        // librdkafka recovers from broker errors itself; do not spin on them.
                        warn!(error = %e, "Kafka consume error");
                        tokio::time::sleep(FIRST_BACKOFF).await;
                    }
                },
            }
            if batch.messages >= self.config.sink.max_batch_rows
                && !self.flush(&mut batch, &mut stats, &shutdown).await
            {
                break;
            }
        }

        // Shutting down: one last flush, bounded in time. What it cannot write stays
        // uncommitted and is consumed again on the next start.
        let deadline = CancellationToken::new();
        let timer = tokio::spawn({
            let deadline = deadline.clone();
            let timeout = self.config.sink.shutdown_timeout_ms;
            async move {
                tokio::time::sleep(timeout).await;
                deadline.cancel();
            }
        });
        let flushed = self.flush(&mut batch, &mut stats, &deadline).await;
        timer.abort();
        // Only partitions still ours: another member may have moved a revoked one further.
        let assigned = self.consumer.assignment().unwrap_or_default();
        batch
            .committed
            .retain(|(topic, partition), _| assigned.find_partition(topic, *partition).is_some());
        if !batch.committed.is_empty() {
            if let Err(e) = self
                .consumer
                .commit(&offsets(&batch.committed), CommitMode::Sync)
            {
                warn!(error = %e, "final offset commit failed");
            }
        }
        if flushed {
            info!(?stats, "sink stopped after a final flush");
        } else {
            stats.unwritten = batch.messages as u64;
            warn!(
                pending = batch.messages,
                ?stats,
                "sink stopped with an unwritten batch; it was not committed and will be consumed again"
            );
        }
        Ok(stats)
    }

    /// Adds one message to the batch (or dead-letters it). False if shutdown interrupted it;
    /// then the message is not in the batch and its offset is not recorded.
    async fn take(
        &self,
        message: &BorrowedMessage<'_>,
        batch: &mut Batch,
        stats: &mut SinkStats,
        give_up: &CancellationToken,
    ) -> bool {
        let topic = message.topic();
        let payload = message.payload().unwrap_or_default();
        let decoded = match self.kind_of(topic) {
            Some(Kind::Results) => decode::<sluice_schemas::Result>(payload)
                .map(|r| {
                    let days = self.config.retention.completion_days;
                    batch.result_bodies.push(ResultBodyRow::new(&r, days));
                    batch.results.push(r.into());
                })
                .map_err(Rejection::from),
            Some(Kind::Usage) => decode::<sluice_schemas::Usage>(payload)
                .map(|u| batch.usage.push(u.into()))
                .map_err(Rejection::from),
            Some(Kind::Audit) => decode::<sluice_schemas::Audit>(payload)
                .map(|a| {
                    let days = self.config.retention.completion_days;
                    batch.accepted.extend(AcceptedRow::of(&a, days));
                    batch.audit.push(a.into());
                })
                .map_err(Rejection::from),
            Some(Kind::BudgetAlerts) => decode::<sluice_schemas::BudgetAlert>(payload)
                .map(|a| batch.budget_alerts.push(a.into()))
                .map_err(Rejection::from),
            Some(Kind::Attempts) => decode::<sluice_schemas::Attempt>(payload)
                .map(|a| batch.attempts.push(a.into()))
                .map_err(Rejection::from),
            None => Err(Rejection {
                summary: "topic is not one this sink reads".into(),
                detail: format!("topic {topic} is not one this sink reads"),
            }),
        };
        if let Err(rejection) = decoded {
            if !self.dead_letter(message, &rejection, give_up).await {
                return false;
            }
            stats.dead_lettered += 1;
        }
        batch.positions.insert(
            (topic.to_owned(), message.partition()),
            message.offset() + 1,
        );
        batch.messages += 1;
        batch.started.get_or_insert_with(Instant::now);
        true
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.topics
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, kind)| *kind)
    }

    /// Sends an undecodable message, unchanged, to the dead-letter topic and waits for the
    /// ack. False if `give_up` fired first.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        rejection: &Rejection,
        give_up: &CancellationToken,
    ) -> bool {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        warn!(
            topic,
            partition,
            offset,
            reason = %rejection.summary,
            "undecodable message, dead-lettering it"
        );
        let reason = rejection.detail.as_str();
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let payload = message.payload();
        let key = message.key();
        let sent = retry(
            "dead-letter produce",
            self.config.sink.retry_max_backoff_ms,
            give_up,
            || {
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
                    FutureRecord::to(&self.dead_letter_topic).headers(headers);
                if let Some(payload) = payload {
                    record = record.payload(payload);
                }
                if let Some(key) = key {
                    record = record.key(key);
                }
                async move {
                    self.producer
                        .send(record, Timeout::After(Duration::from_secs(5)))
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| Error::kafka("dead-letter produce")(e))
                }
            },
        )
        .await;
        sent.is_some()
    }

    /// Writes the batch to ClickHouse, then commits its offsets. False if `give_up` fired
    /// before everything was written; the batch keeps what is unwritten and nothing is
    /// committed.
    async fn flush(
        &self,
        batch: &mut Batch,
        stats: &mut SinkStats,
        give_up: &CancellationToken,
    ) -> bool {
        if batch.messages == 0 {
            return true;
        }
        let started = Instant::now();
        let rows = (batch.results.len(), batch.usage.len(), batch.audit.len());
        // A table written is cleared, so a retry after a partial failure writes only the rest.
        // Private rows first: a result visible in `results` has its body for the async API.
        let mut private_rows = 0;
        let written = self
            .write(&mut batch.result_bodies, &mut private_rows, give_up)
            .await
            && self
                .write(&mut batch.accepted, &mut private_rows, give_up)
                .await
            && self
                .write(&mut batch.results, &mut stats.results, give_up)
                .await
            && self
                .write(&mut batch.usage, &mut stats.usage, give_up)
                .await
            && self
                .write(&mut batch.audit, &mut stats.audit, give_up)
                .await
            && self
                .write(&mut batch.attempts, &mut stats.attempts, give_up)
                .await;
        if !written {
            return false;
        }
        // Alerts new to ClickHouse get their webhooks, after their rows are written.
        let fresh = if self.notifier.is_active() && !batch.budget_alerts.is_empty() {
            let alerts: &Vec<BudgetAlertRow> = &batch.budget_alerts;
            let database = self.config.clickhouse.database.as_str();
            match retry(
                "budget_alerts lookup",
                self.config.sink.retry_max_backoff_ms,
                give_up,
                || self.notifier.fresh(&self.client, database, alerts),
            )
            .await
            {
                Some(fresh) => fresh,
                None => return false,
            }
        } else {
            Vec::new()
        };
        if !self
            .write(&mut batch.budget_alerts, &mut stats.budget_alerts, give_up)
            .await
        {
            return false;
        }
        for alert in fresh {
            self.notifier.deliver(alert);
        }

        let offsets = offsets(&batch.positions);
        if let Err(e) = self.consumer.commit(&offsets, CommitMode::Async) {
            // E.g. the partitions were revoked meanwhile: their new owner consumes them again.
            warn!(error = %e, partitions = offsets.count(), "offset commit failed");
        }
        stats.batches += 1;
        info!(
            messages = batch.messages,
            results = rows.0,
            usage = rows.1,
            audit = rows.2,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch written, committing its offsets"
        );
        batch.committed.extend(batch.positions.drain());
        batch.messages = 0;
        batch.started = None;
        true
    }

    async fn write<R: TableRow>(
        &self,
        rows: &mut Vec<R>,
        count: &mut u64,
        give_up: &CancellationToken,
    ) -> bool {
        if rows.is_empty() {
            return true;
        }
        let timeout = self.config.sink.insert_timeout_ms;
        let rows_ref: &Vec<R> = rows;
        let client = match R::TABLE {
            Table::Private(_) => &self.private_client,
            _ => &self.client,
        };
        let inserted = retry(
            R::TABLE.name(),
            self.config.sink.retry_max_backoff_ms,
            give_up,
            || tables::insert(client, rows_ref, timeout),
        )
        .await;
        if inserted.is_none() {
            return false;
        }
        *count += rows.len() as u64;
        rows.clear();
        true
    }
}

fn offsets(positions: &HashMap<(String, i32), i64>) -> TopicPartitionList {
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in positions {
        if let Err(e) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            warn!(topic, partition, error = %e, "could not list an offset to commit");
        }
    }
    offsets
}

/// Dead-letter producer defaults, which the passthrough options may change. librdkafka's
/// default message.timeout.ms (5 minutes) would stall the sink that long per failed attempt.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("message.timeout.ms", "30000"), ("linger.ms", "5")];

/// The sink buffers for `flush_interval_ms` anyway: fetching in big batches spares the broker
/// a fetch per message burst (measured: sink CPU 13% -> 3%, broker 64% -> 50% of a core at
/// 1,000 sync req/s; docs/benchmarks.md). 100 ms keeps accept -> ClickHouse near the flush
/// interval (500 ms added ~0.4 s).
const CONSUMER_DEFAULTS: &[(&str, &str)] =
    &[("fetch.min.bytes", "1000000"), ("fetch.wait.max.ms", "500")];

/// Our defaults, then bootstrap and the passthrough options, then (by the caller, after this) the settings
/// correctness depends on, so those win.
fn kafka_config(config: &Config, defaults: &[(&str, &str)]) -> ClientConfig {
    sluice_schemas::kafka::client_config(&config.kafka.bootstrap, &config.kafka.options, defaults)
}

/// Runs `op` until it succeeds, backing off exponentially up to `max_backoff`. None if
/// `give_up` fires first (an attempt in flight is dropped: for an INSERT that means aborted
/// or, if it had landed, a duplicate the tables absorb).
async fn retry<T, F, Fut>(
    operation: &'static str,
    max_backoff: Duration,
    give_up: &CancellationToken,
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut backoff = FIRST_BACKOFF.min(max_backoff);
    for attempt in 1u32.. {
        let outcome = tokio::select! {
            biased;
            () = give_up.cancelled() => return None,
            outcome = op() => outcome,
        };
        match outcome {
            Ok(value) => {
                if attempt > 1 {
                    info!(operation, attempt, "succeeded after retrying");
                }
                return Some(value);
            }
            Err(e) => {
                warn!(
                    operation,
                    attempt,
                    backoff_ms = backoff.as_millis() as u64,
                    error = %error_chain(&e),
                    "failed, retrying"
                );
                tokio::select! {
                    biased;
                    () = give_up.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
        }
    }
    None
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// An error and its sources, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn retry_gives_up_on_signal_and_backs_off() {
        let give_up = CancellationToken::new();
        let mut calls = 0;
        let ok = retry("test", Duration::from_millis(5), &give_up, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Error::ConfigField {
                        field: "x".into(),
                        problem: "fails twice",
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(ok, Some(3));

        give_up.cancel();
        let never: Option<()> = retry("test", Duration::from_millis(5), &give_up, || async {
            Err(Error::ConfigField {
                field: "x".into(),
                problem: "always fails",
            })
        })
        .await;
        assert_eq!(never, None);
    }

    #[test]
    fn error_chain_includes_sources() {
        let e = sluice_schemas::decode::<sluice_schemas::Usage>(b"\xC3\x01garbage!").unwrap_err();
        let text = error_chain(&e);
        assert!(text.contains("Usage"), "{text}");
    }
}
