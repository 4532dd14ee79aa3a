//! The consume side: subscribe, decode each message into its table's rows (or dead-letter
//! it), flush the batch through the writer, then commit its offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::{decode, Topic, Topics};
use tokio_util::sync::CancellationToken;
use tracing::{info, instrument, warn};

use super::batch::Batch;
use super::context::{kafka_config, SinkContext, CONSUMER_DEFAULTS, PRODUCER_DEFAULTS};
use super::dead_letter::{DeadLetters, Origin, Rejection};
use super::insert::Writer;
use super::retry::FIRST_BACKOFF;
use super::stall::{GroupView, Viewer, Watch};
use crate::config::Config;
use crate::error::Error;
use crate::tables::{AcceptedRow, ReplayResultRow, ReplayUsageRow, ResultBodyRow};

/// What a sink run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Rows inserted per table (duplicates included: ClickHouse collapses them).
    pub results: u64,
    pub usage: u64,
    pub audit: u64,
    pub budget_alerts: u64,
    pub attempts: u64,
    /// Rows of replayed and shadow requests (`replay_results`, `replay_usage`).
    pub replay_results: u64,
    pub replay_usage: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Batches written and committed.
    pub batches: u64,
    /// Messages consumed but not written when the sink stopped (ClickHouse unreachable
    /// through the shutdown timeout). Not committed: the next run consumes them again.
    pub unwritten: u64,
    /// Consumers replaced because they had stalled (`[sink] stall_timeout_ms`).
    pub consumer_replacements: u64,
}

/// Applies the migrations (as the migrator), then runs the sink and the retention job until
/// `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<SinkStats, Error> {
    crate::ops::start(&config, &shutdown).await?;
    let migrator = crate::tables::migrator_client(&config.clickhouse);
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
    ReplayResults,
    ReplayUsage,
}

/// A connected sink. [`Sink::new`] subscribes; [`Sink::run`] consumes until shutdown.
pub struct Sink {
    config: Config,
    consumer: Arc<StreamConsumer<SinkContext>>,
    topics: Vec<(String, Kind)>,
    dead_letters: DeadLetters,
    writer: Writer,
    /// Reads the group's view for the stall watch; None when it is off.
    viewer: Option<Viewer>,
}

/// For tests: stops the fetching of the partitions the sink's consumer holds now, as a
/// consumer that has stalled would. It does not keep the consumer alive: a replaced one is
/// closed as it would be otherwise.
#[doc(hidden)]
pub struct StallHandle(std::sync::Weak<StreamConsumer<SinkContext>>);

impl StallHandle {
    /// How many partitions the consumer holds (0 once it is replaced).
    pub fn assigned(&self) -> usize {
        self.0
            .upgrade()
            .and_then(|c| c.assignment().ok())
            .map_or(0, |a| a.count())
    }

    /// Pauses every partition the consumer holds; returns how many.
    pub fn pause_assigned(&self) -> usize {
        let Some(consumer) = self.0.upgrade() else {
            return 0;
        };
        let assigned = consumer.assignment().unwrap_or_default();
        match consumer.pause(&assigned) {
            Ok(()) => assigned.count(),
            Err(_) => 0,
        }
    }
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
            (names.name(&Topic::ReplayResults), Kind::ReplayResults),
            (names.name(&Topic::ReplayUsage), Kind::ReplayUsage),
        ];

        let consumer = subscribe(config, &topics)?;
        let subscribed: Vec<&str> = topics.iter().map(|(t, _)| t.as_str()).collect();
        let viewer = if config.sink.stall_timeout_ms.is_zero() {
            None
        } else {
            let names = topics.iter().map(|(t, _)| t.clone()).collect();
            let client = kafka_config(config, &[]);
            Some(Viewer::new(client, &config.kafka.group_id, names).map_err(Error::KafkaClient)?)
        };

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
            consumer,
            topics,
            dead_letters: DeadLetters {
                producer,
                topic: names.name(&Topic::DeadLetter),
                max_backoff: config.sink.retry_max_backoff_ms,
            },
            writer: Writer::new(config)?,
            viewer,
        })
    }

    #[doc(hidden)]
    pub fn stall_handle(&self) -> StallHandle {
        StallHandle(Arc::downgrade(&self.consumer))
    }

    /// Consumes and writes until `shutdown` is cancelled, then flushes and commits what it
    /// has (retrying for at most `sink.shutdown_timeout_ms`).
    #[instrument(skip_all, fields(group_id = %self.config.kafka.group_id))]
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<SinkStats, Error> {
        let mut batch = Batch::default();
        let mut stats = SinkStats::default();
        let flush_interval = self.config.sink.flush_interval_ms;
        let mut watch = Watch::new(
            self.config.sink.stall_timeout_ms,
            tokio::time::Instant::now(),
        );
        let mut views = self.viewer.take().map(|viewer| viewer.spawn(watch.every()));
        let mut received_total = 0u64;
        loop {
            let flush_due = batch
                .started
                .map(|started| tokio::time::Instant::from_std(started + flush_interval));
            let mut stalled = false;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = sleep_until(flush_due) => {
                    if !self.flush(&mut batch, &mut stats, &shutdown).await {
                        break;
                    }
                    watch.busy(tokio::time::Instant::now());
                }
                view = next_view(&mut views) => {
                    stalled = watch.stalled(tokio::time::Instant::now(), received_total, view);
                    if stalled {
                        warn!(
                            behind = view.map_or(0, |v| v.behind),
                            "the sink's consumer received nothing while its group was behind \
                             and committed nothing; replacing it"
                        );
                    }
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        received_total += 1;
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
            if stalled {
                // What it holds is written and committed first, as before a rebalance.
                if !self.flush(&mut batch, &mut stats, &shutdown).await {
                    break;
                }
                self.replace_consumer(&mut batch, &mut stats);
                watch.busy(tokio::time::Instant::now());
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
        let origin = Arc::new(Origin::of(message));
        let decoded = match self.kind_of(topic) {
            Some(Kind::Results) => decode::<sluice_schemas::Result>(payload)
                .map(|mut r| {
                    // A v5 result carries its completed audit event, a v6 one its provider
                    // calls as they ended (neither was published on its own).
                    if let Some(audit) = r.completed_audit() {
                        batch.audit.push(audit.into(), &origin);
                    }
                    for call in std::mem::take(&mut r.calls) {
                        batch.attempts.push(call.into(), &origin);
                    }
                    let days = self.config.retention.completion_days;
                    batch
                        .result_bodies
                        .push(ResultBodyRow::new(&r, days), &origin);
                    batch.spans.extend(sluice_schemas::trace::start(
                        "insert",
                        r.traceparent.as_deref(),
                        &[("db.system.name", "clickhouse")],
                    ));
                    batch.results.push(r.into(), &origin);
                })
                .map_err(Rejection::from),
            Some(Kind::Usage) => decode::<sluice_schemas::Usage>(payload)
                .map(|u| batch.usage.push(u.into(), &origin))
                .map_err(Rejection::from),
            Some(Kind::Audit) => decode::<sluice_schemas::Audit>(payload)
                .map(|a| {
                    let days = self.config.retention.completion_days;
                    if let Some(accepted) = AcceptedRow::of(&a, days) {
                        batch.accepted.push(accepted, &origin);
                    }
                    batch.audit.push(a.into(), &origin);
                })
                .map_err(Rejection::from),
            Some(Kind::BudgetAlerts) => decode::<sluice_schemas::BudgetAlert>(payload)
                .map(|a| batch.budget_alerts.push(a.into(), &origin))
                .map_err(Rejection::from),
            Some(Kind::Attempts) => decode::<sluice_schemas::Attempt>(payload)
                .map(|a| batch.attempts.push(a.into(), &origin))
                .map_err(Rejection::from),
            // A replay topic holds tagged records only: an untagged one is nobody's re-run.
            Some(Kind::ReplayResults) => decode::<sluice_schemas::Result>(payload)
                .map_err(Rejection::from)
                .and_then(|r| {
                    let audit = r.completed_audit();
                    Ok((ReplayResultRow::of(r).ok_or_else(untagged)?, audit))
                })
                .map(|(row, audit)| {
                    if let Some(audit) = audit {
                        batch.audit.push(audit.into(), &origin);
                    }
                    batch.replay_results.push(row, &origin);
                }),
            Some(Kind::ReplayUsage) => decode::<sluice_schemas::Usage>(payload)
                .map_err(Rejection::from)
                .and_then(|u| ReplayUsageRow::of(u).ok_or_else(untagged))
                .map(|row| batch.replay_usage.push(row, &origin)),
            None => Err(Rejection {
                summary: "topic is not one this sink reads".into(),
                detail: format!("topic {topic} is not one this sink reads"),
            }),
        };
        if let Err(rejection) = decoded {
            if !self.dead_letters.send(&origin, &rejection, give_up).await {
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

    /// A new consumer joins the group in place of the current one, which is closed off the
    /// async threads (a stuck one may take long to leave).
    fn replace_consumer(&mut self, batch: &mut Batch, stats: &mut SinkStats) {
        let new = match subscribe(&self.config, &self.topics) {
            Ok(new) => new,
            Err(e) => {
                warn!(error = %e, "could not create a consumer to replace the stalled one");
                return;
            }
        };
        let old = std::mem::replace(&mut self.consumer, new);
        // Its partitions are revoked by the rebalance: their offsets are the new owner's. If
        // the last batch's (asynchronous) commit is lost with the old consumer, the new one
        // reads those records again, and the tables' keys absorb them.
        batch.committed.clear();
        tokio::task::spawn_blocking(move || drop(old));
        stats.consumer_replacements += 1;
        super::metrics::consumer_replaced();
    }

    fn kind_of(&self, topic: &str) -> Option<Kind> {
        self.topics
            .iter()
            .find(|(name, _)| name == topic)
            .map(|(_, kind)| *kind)
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
        if !self
            .writer
            .write_batch(batch, stats, &self.dead_letters, give_up)
            .await
        {
            return false;
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
        for span in batch.spans.drain(..) {
            span.end();
        }
        batch.committed.extend(batch.positions.drain());
        batch.rejected.clear();
        batch.messages = 0;
        batch.started = None;
        true
    }
}

/// The sink's consumer, subscribed to `topics`, with its lag gauge.
fn subscribe(
    config: &Config,
    topics: &[(String, Kind)],
) -> Result<Arc<StreamConsumer<SinkContext>>, Error> {
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
    let consumer = Arc::new(consumer);
    sluice_schemas::ops::spawn_lag_gauge(&consumer, crate::ops::LAG_EVERY);
    Ok(consumer)
}

fn untagged() -> Rejection {
    Rejection {
        summary: "a record on a replay topic without its replay tag".into(),
        detail: "the replay topics hold only records whose `replay` field is set".into(),
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

/// The group's next view from the stall watch's reader; never, when the watch is off.
async fn next_view(
    views: &mut Option<tokio::sync::watch::Receiver<Option<GroupView>>>,
) -> Option<GroupView> {
    if let Some(views) = views {
        if views.changed().await.is_ok() {
            return *views.borrow_and_update();
        }
    }
    std::future::pending().await
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
