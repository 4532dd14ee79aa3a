//! The consume loop: many requests in flight, bounded; offsets stored only up to the oldest
//! unfinished message of each partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use sluice_schemas::retry::{self, BackoffBuilder};
use sluice_schemas::{decode, Priority, Request, Topic, Topics};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::offsets::{OffsetTracker, PartitionKey};
use crate::process::Processor;
use crate::publish::{dead_letter_headers, send, Outgoing};
use crate::redelivery::Horizons;
use crate::schedule::Scheduler;
use crate::throttle::TeamQuotas;

/// Keeps the offset tracker in step with the group's assignments.
pub struct WorkerContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    horizons: Horizons,
    /// `[redelivery] revoke_wait_ms`.
    revoke_wait: Duration,
}

impl ClientContext for WorkerContext {}

impl ConsumerContext for WorkerContext {
    /// Before partitions go: start nothing more of them, wait (bounded) for their running
    /// requests and commit their offsets, so the next owner does not run those again.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let keys: Vec<PartitionKey> = tpl
            .elements()
            .iter()
            .map(|e| PartitionKey {
                topic: e.topic().to_string(),
                partition: e.partition(),
            })
            .collect();
        if let Ok(mut tracker) = self.tracker.lock() {
            keys.iter().for_each(|k| tracker.begin_revoke(k));
        }
        let running = || self.tracker.lock().map_or(0, |t| t.running(&keys));
        if running() == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let wait = || {
            while running() > 0 && started.elapsed() < self.revoke_wait {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        // The callback runs inside the intake task's poll: let the runtime move the other
        // tasks (the running requests among them) off this thread while it waits.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
        let left = running();
        // Offsets of what finished are stored; commit them while the partitions are ours.
        let committed = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
        tracing::info!(
            partitions = keys.len(),
            waited_ms = started.elapsed().as_millis() as u64,
            still_running = left,
            committed = committed.is_ok(),
            "revoke: running requests waited for"
        );
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Ok(mut tracker) = self.tracker.lock() else {
            return;
        };
        match rebalance {
            Rebalance::Assign(tpl) => {
                crate::ops::assigned();
                for e in tpl.elements() {
                    tracing::info!(topic = e.topic(), partition = e.partition(), "assigned");
                    let key = PartitionKey {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                    };
                    // Records already there may have been processed by an earlier owner.
                    match consumer.fetch_watermarks(e.topic(), e.partition(), WATERMARK_TIMEOUT) {
                        Ok((_, high)) => self.horizons.assign(key.clone(), high),
                        Err(error) => {
                            tracing::warn!(topic = e.topic(), partition = e.partition(), %error, "high watermark unknown; redeliveries not checked");
                        }
                    }
                    tracker.assign(key);
                }
            }
            Rebalance::Revoke(tpl) => {
                for e in tpl.elements() {
                    tracing::info!(topic = e.topic(), partition = e.partition(), "revoked");
                    let key = PartitionKey {
                        topic: e.topic().to_string(),
                        partition: e.partition(),
                    };
                    self.horizons.revoke(&key);
                    tracker.revoke(&key);
                }
            }
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }
}

type WorkerConsumer = StreamConsumer<WorkerContext>;

/// How long a starting worker waits to apply the cancels already published (an hour's
/// worth at most: the topic's retention) before it takes requests.
const CANCELS_CATCH_UP: Duration = Duration::from_secs(10);
/// How long an assignment waits for a partition's high watermark.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(2);

fn consumer(
    config: &Config,
    class: Priority,
    tracker: Arc<Mutex<OffsetTracker>>,
    horizons: Horizons,
) -> Result<WorkerConsumer, KafkaError> {
    let revoke_wait = config.redelivery.revoke_wait_ms;
    // Membership settings are defaults: the passthrough options may change them.
    let membership = config.kafka.membership.settings(&config.worker.id);
    let mut defaults: Vec<(&str, &str)> =
        membership.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A crashed worker's (or a broker restart's) replay is what finished since the last
    // commit: 1 s of work instead of librdkafka's default 5 s.
    defaults.push(("auto.commit.interval.ms", "1000"));
    let mut cc = sluice_schemas::kafka::client_config(
        &config.kafka.bootstrap,
        &config.kafka.options,
        &defaults,
    );
    // One group per class: each class is drained, paused and resumed on its own.
    cc.set(
        "group.id",
        format!("{}-{}", config.kafka.group_id, class.as_str()),
    )
    .set("auto.offset.reset", "earliest")
    // New per-team topics are picked up by the subscription pattern within seconds.
    .set("topic.metadata.refresh.interval.ms", "10000")
    // At-least-once: librdkafka commits only offsets this code stored, which never pass
    // an unfinished message. Applied after passthrough options on purpose.
    .set("enable.auto.commit", "true")
    .set("enable.auto.offset.store", "false")
    .set("enable.partition.eof", "false");
    cc.create_with_context(WorkerContext {
        tracker,
        horizons,
        revoke_wait,
    })
}

/// A request taken from Kafka, waiting in the local scheduler.
struct Job {
    request: Request,
    key: PartitionKey,
    offset: i64,
    generation: u64,
    consumer: Arc<WorkerConsumer>,
    /// Below the partition's high watermark at assignment: maybe processed before.
    maybe_redelivered: bool,
    /// The scheduler's token estimate (prompt + completion cap).
    cost: u64,
}

/// What the intake tasks and the dispatcher share.
struct Local {
    scheduler: Mutex<Queue>,
    /// Signalled when a job is queued.
    queued: Notify,
    /// Signalled when a job leaves the queue (room for paused intakes).
    room: Notify,
    tracker: Arc<Mutex<OffsetTracker>>,
    horizons: Horizons,
}

/// The scheduler and how many of its jobs came from each partition.
struct Queue {
    scheduler: Scheduler<Job>,
    by_partition: HashMap<PartitionKey, usize>,
}

impl Queue {
    fn push(&mut self, class: Priority, team: &str, cost: u64, job: Job) -> usize {
        let n = self.by_partition.entry(job.key.clone()).or_insert(0);
        *n += 1;
        let n = *n;
        queued_gauges(class, 1.0, cost);
        self.scheduler.push(class, team, cost, job);
        n
    }

    fn pop(&mut self, eligible: impl FnMut(&str, u64) -> bool) -> Option<Job> {
        let (class, job) = self.scheduler.pop(eligible)?;
        queued_gauges(class, -1.0, job.cost);
        if let Some(n) = self.by_partition.get_mut(&job.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_partition.remove(&job.key);
            }
        }
        Some(job)
    }

    fn queued_from(&self, key: &PartitionKey) -> usize {
        self.by_partition.get(key).copied().unwrap_or(0)
    }
}

/// `sluice_worker_queued_requests{class}` and `sluice_worker_queued_tokens{class}`: read
/// from Kafka, waiting here for a slot (the part of the backlog consumer lag no longer shows).
fn queued_gauges(class: Priority, sign: f64, cost: u64) {
    let class = class.as_str();
    metrics::gauge!("sluice_worker_queued_requests", "class" => class).increment(sign);
    metrics::gauge!("sluice_worker_queued_tokens", "class" => class).increment(sign * cost as f64);
}

/// Marks a message finished and stores the offset Kafka may now commit.
fn finish(
    tracker: &Mutex<OffsetTracker>,
    consumer: &WorkerConsumer,
    key: &PartitionKey,
    offset: i64,
    generation: u64,
) {
    let next = tracker
        .lock()
        .ok()
        .and_then(|mut t| t.finish(key, offset, generation));
    if let Some(next) = next {
        let mut tpl = TopicPartitionList::new();
        if tpl
            .add_partition_offset(&key.topic, key.partition, Offset::Offset(next))
            .is_ok()
        {
            // Fails only if the partition was revoked meanwhile: then the new owner
            // processes the message again and sinks deduplicate it.
            let _ = consumer.store_offsets(&tpl);
        }
    }
}

/// Runs a worker until `shutdown`, then drains requests in flight.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), crate::WorkerError> {
    let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
    let horizons = Horizons::default();
    let topics = Topics::new(config.kafka.topic_prefix.clone());
    let http = crate::providers::http_client(config.worker.max_in_flight)
        .map_err(crate::WorkerError::Http)?;
    let producer = crate::publish::producer(&config.kafka)?;
    let prompt_producer = crate::publish::prompt_producer(&config.kafka)?;
    let cancellations = crate::cancel::Cancellations::default();
    let listener = crate::cancel::listener(&config.kafka).await?;
    let (caught_up, cancels_applied) = tokio::sync::oneshot::channel();
    tokio::spawn(crate::cancel::run(
        listener,
        cancellations.clone(),
        caught_up,
        shutdown.clone(),
    ));
    // A request cancelled while queued is skipped only if its cancel is applied before the
    // request is taken: read the cancels already published before taking any request.
    if tokio::time::timeout(CANCELS_CATCH_UP, cancels_applied)
        .await
        .is_err()
    {
        tracing::warn!(
            "cancels topic not read to its end in {CANCELS_CATCH_UP:?}; taking requests anyway"
        );
    }
    let processor = Arc::new(Processor::new(
        &config,
        producer,
        prompt_producer,
        http,
        cancellations,
        shutdown.clone(),
    ));
    let scheduling = &config.scheduling;
    let local = Arc::new(Local {
        scheduler: Mutex::new(Queue {
            scheduler: Scheduler::new(scheduling.policy()),
            by_partition: HashMap::new(),
        }),
        queued: Notify::new(),
        room: Notify::new(),
        tracker: tracker.clone(),
        horizons: horizons.clone(),
    });
    let quotas = TeamQuotas::new(&scheduling.team_tokens_per_minute);

    let mut intakes = JoinSet::new();
    for class in Priority::ALL {
        let consumer = Arc::new(consumer(&config, class, tracker.clone(), horizons.clone())?);
        consumer.subscribe(&[topics.requests_pattern(class).as_str()])?;
        sluice_schemas::ops::spawn_lag_gauge(&consumer, crate::ops::LAG_EVERY);
        intakes.spawn(intake(
            consumer,
            class,
            Arc::clone(&local),
            Arc::clone(&processor),
            topics.clone(),
            scheduling.max_queued_per_partition,
            scheduling.default_completion_tokens,
            shutdown.clone(),
        ));
    }
    tracing::info!(worker = %config.worker.id, group = %config.kafka.group_id, "worker consuming");

    let permits = Arc::new(Semaphore::new(config.worker.max_in_flight));
    let mut tasks = JoinSet::new();
    loop {
        while tasks.try_join_next().is_some() {}
        // No more work starts while max_in_flight requests are running.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let job = loop {
            let popped = local
                .scheduler
                .lock()
                .ok()
                .and_then(|mut s| s.pop(|team, cost| quotas.try_take(team, cost)));
            if let Some(job) = popped {
                break Some(job);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                _ = local.queued.notified() => {}
                // Teams over their quota become eligible again with time.
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        };
        let Some(job) = job else { break };
        local.room.notify_waiters();
        let current = local
            .tracker
            .lock()
            .is_ok_and(|mut t| t.dispatch(&job.key, job.generation));
        if !current {
            // Its partition was revoked (or is being revoked) while it waited: the new
            // owner runs it.
            continue;
        }
        let processor = processor.clone();
        let tracker = tracker.clone();
        tasks.spawn(async move {
            let done = processor.process(job.request, job.maybe_redelivered).await;
            drop(permit);
            if done {
                finish(
                    &tracker,
                    &job.consumer,
                    &job.key,
                    job.offset,
                    job.generation,
                );
            }
            // After the offset is stored: a revoke waiting for this one may commit now.
            if let Ok(mut t) = tracker.lock() {
                t.stopped(&job.key, job.generation);
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
    // Intakes commit what is stored before leaving their groups.
    while intakes.join_next().await.is_some() {}
    Ok(())
}

/// Takes requests of one class from Kafka into the scheduler. A partition with
/// `max_queued` requests waiting locally is paused (the consumer keeps polling, so the group
/// keeps the member) and resumed once half of them have left: a team flooding its
/// partitions stops being read ahead, while the other partitions keep flowing.
#[expect(
    clippy::too_many_arguments,
    reason = "the intake task of one priority class owns its consumer, queue, processor and limits"
)]
async fn intake(
    consumer: Arc<WorkerConsumer>,
    class: Priority,
    local: Arc<Local>,
    processor: Arc<Processor>,
    topics: Topics,
    max_queued: usize,
    default_completion: u32,
    shutdown: CancellationToken,
) {
    let mut paused: Vec<PartitionKey> = Vec::new();
    loop {
        if !paused.is_empty() {
            let queue = local.scheduler.lock();
            let (ready, still): (Vec<_>, Vec<_>) = paused.drain(..).partition(|k| {
                queue
                    .as_ref()
                    .map_or(true, |q| q.queued_from(k) <= max_queued / 2)
            });
            drop(queue);
            paused = still;
            if !ready.is_empty() {
                let _ = consumer.resume(&partition_list(&ready));
                tracing::debug!(
                    class = class.as_str(),
                    resumed = ready.len(),
                    "partitions resumed"
                );
            }
        }
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = local.room.notified(), if !paused.is_empty() => continue,
            // A wake-up can be missed between the check above and this wait: re-check.
            _ = tokio::time::sleep(Duration::from_millis(100)), if !paused.is_empty() => continue,
            m = consumer.recv() => m,
        };
        let message = match message {
            Ok(m) => m.detach(),
            Err(KafkaError::MessageConsumptionFatal(code)) => {
                // E.g. fenced: another process joined with this worker id (static membership).
                tracing::error!(
                    class = class.as_str(),
                    ?code,
                    "fatal consumer error; the worker stops"
                );
                shutdown.cancel();
                break;
            }
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
        let generation = match local.tracker.lock() {
            Ok(mut t) => t.start(&key, offset),
            Err(_) => continue,
        };
        match decode::<Request>(message.payload().unwrap_or_default()) {
            Ok(request) => {
                let estimate = request.token_estimate(default_completion);
                let team = request.team.clone();
                let job = Job {
                    request,
                    key: key.clone(),
                    offset,
                    generation,
                    consumer: Arc::clone(&consumer),
                    maybe_redelivered: local.horizons.maybe_redelivered(&key, offset),
                    cost: estimate,
                };
                let queued = local
                    .scheduler
                    .lock()
                    .map_or(0, |mut q| q.push(class, &team, estimate, job));
                local.queued.notify_one();
                if queued >= max_queued && !paused.contains(&key) {
                    // Messages already fetched may still arrive: bounded by librdkafka's
                    // fetch queue.
                    let _ = consumer.pause(&partition_list(std::slice::from_ref(&key)));
                    tracing::debug!(class = class.as_str(), topic = %key.topic, partition = key.partition, queued, "partition paused");
                    paused.push(key);
                }
            }
            Err(error) => {
                if dead_letter(&processor, &topics, &message, &error.to_string()).await {
                    finish(&local.tracker, &consumer, &key, offset, generation);
                }
            }
        }
    }
    // Commit what is stored before leaving the group.
    if let Err(error) = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        tracing::debug!(%error, "final commit");
    }
}

/// Sends an undecodable message to the dead-letter topic with the reason. Returns whether
/// it was written (then its offset may be committed).
async fn dead_letter(
    processor: &Processor,
    topics: &Topics,
    message: &OwnedMessage,
    reason: &str,
) -> bool {
    tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "undecodable request sent to dead-letter topic");
    let dlq = topics.name(&Topic::DeadLetter);
    let headers = dead_letter_headers(
        reason,
        message.topic(),
        message.partition(),
        message.offset(),
    );
    let key = message
        .key()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let mut payload = message.payload().unwrap_or_default();
    // The payload may change between tries and shutdown stops only a wait: the waits come
    // from the house policy, the loop is this one's.
    let mut waits = retry::steady(Duration::from_secs(1)).build();
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
            Err(error) if crate::publish::too_large(&error) && !payload.is_empty() => {
                // Final for this payload: the dead letter keeps its headers (where the
                // message is: topic, partition, offset, reason) without the bytes.
                tracing::warn!(
                    size = payload.len(),
                    "dead letter too large for its topic; sent without its payload"
                );
                payload = &[];
            }
            Err(error) => {
                tracing::warn!(%error, "dead-letter produce failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(1))) => {}
                    _ = processor.shutdown.cancelled() => return false,
                }
            }
        }
    }
}

fn partition_list(keys: &[PartitionKey]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for k in keys {
        tpl.add_partition(&k.topic, k.partition);
    }
    tpl
}
