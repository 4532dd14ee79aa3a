//! The engine: read the request topics over the range (assigned partitions, no group, no
//! commits), keep what matches, and publish each copy, reserved against the replay's
//! budget, at the replay's rate.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{Quota, RateLimiter};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use sluice_schemas::replay::copy;
use sluice_schemas::{decode, encode, now_ms, Priority, Request, Topic, Topics};
use tokio_util::sync::CancellationToken;

use super::{Checked, Progress, State};
use crate::admission::Routing;
use crate::budget::Budgets;
use crate::config::Config;
use crate::kafka::{partition_count, partition_starts, reader_config, send};

/// The longest wait for the next record of a partition not read to its end yet.
const STALL: Duration = Duration::from_secs(30);

/// What a replay needs of the ingress: its config, a producer and how it prices requests.
pub(crate) struct Replayer {
    config: Config,
    producer: FutureProducer,
    topics: Topics,
    routing: Routing,
    /// Only for [`Budgets::max_cost_nanos`]: the live budgets' own worst-case pricing.
    pricing: Budgets,
}

impl Replayer {
    pub fn new(config: &Config, producer: FutureProducer) -> Replayer {
        Replayer {
            config: config.clone(),
            producer,
            topics: Topics::new(config.kafka.topic_prefix.clone()),
            routing: Routing::new(&config.routing),
            pricing: Budgets::new(config),
        }
    }

    /// Runs `spec` to its end, keeping `progress` current; its final state says how it ended.
    pub async fn run(
        &self,
        spec: &Checked,
        progress: &Arc<Mutex<Progress>>,
        shutdown: &CancellationToken,
    ) {
        let ended = self.scan(spec, progress, shutdown).await;
        let mut p = lock(progress);
        p.finished_at_ms = Some(now_ms());
        match ended {
            Ok(None) => p.state = State::Done,
            Ok(Some(reason)) => {
                p.state = State::Stopped;
                p.stopped_because = Some(reason);
            }
            Err(error) => {
                p.state = State::Failed;
                p.error = Some(error);
            }
        }
        tracing::info!(replay_id = %p.replay_id, state = ?p.state, replayed = p.replayed, "replay ended");
    }

    /// The request topics `spec` reads: the shared ones and every team topic of the classes
    /// (and the team) it names.
    fn request_topics(&self, spec: &Checked) -> Vec<String> {
        let classes: Vec<Priority> = match spec.priority {
            Some(p) => vec![p],
            None => Priority::ALL.to_vec(),
        };
        let teams = self.config.routing.team_topics.iter();
        let teams = teams.filter(|t| spec.team.as_ref().is_none_or(|only| only == *t));
        let mut topics: Vec<Topic> = classes.iter().map(|p| Topic::Requests(*p)).collect();
        for team in teams {
            topics.extend(
                classes
                    .iter()
                    .map(|p| Topic::TeamRequests(*p, team.clone())),
            );
        }
        topics.iter().map(|t| self.topics.name(t)).collect()
    }

    /// `Ok(None)`: the range was read to its end; `Ok(Some(reason))`: stopped early.
    async fn scan(
        &self,
        spec: &Checked,
        progress: &Arc<Mutex<Progress>>,
        shutdown: &CancellationToken,
    ) -> Result<Option<&'static str>, String> {
        let group = format!("{}-replay-{}", self.topics.prefix(), spec.replay_id);
        let consumer: StreamConsumer = reader_config(&self.config.kafka, &group)
            .create()
            .map_err(|e| format!("Kafka client: {e}"))?;
        // (topic, partition) -> the high watermark at the start: where reading stops.
        let mut pending: HashMap<(String, i32), i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for topic in self.request_topics(spec) {
            let partitions = match partition_count(&consumer, &topic) {
                Ok(n) => n,
                // A team topic nobody has written to yet: nothing to replay there.
                Err(_) => continue,
            };
            let starts = partition_starts(&consumer, &topic, partitions, spec.from_ms)
                .map_err(|e| format!("offsets of {topic}: {e}"))?;
            for (p, start, high) in starts {
                if start < high {
                    assignment
                        .add_partition_offset(&topic, p, Offset::Offset(start))
                        .map_err(|e| e.to_string())?;
                    pending.insert((topic.clone(), p), high);
                }
            }
        }
        if pending.is_empty() {
            return Ok(None);
        }
        consumer.assign(&assignment).map_err(|e| e.to_string())?;
        let rate = NonZeroU32::new(spec.rate_per_s).unwrap_or(NonZeroU32::MIN);
        let limiter = RateLimiter::direct(Quota::per_second(rate));
        let deadline = self.config.replay.deadline_ms.as_millis() as i64;
        while !pending.is_empty() {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(Some("shutdown")),
                m = tokio::time::timeout(STALL, consumer.recv()) => m,
            };
            let message = match message {
                Ok(Ok(m)) => m,
                Ok(Err(e)) => return Err(format!("reading the request topics: {e}")),
                Err(_) => return Err(format!("no record from the request topics for {STALL:?}")),
            };
            let at = (message.topic().to_string(), message.partition());
            let Some(&high) = pending.get(&at) else {
                continue; // a partition already read to its end (a prefetched record)
            };
            let past_range = message
                .timestamp()
                .to_millis()
                .is_some_and(|ms| ms >= spec.to_ms);
            if message.offset() + 1 >= high || past_range {
                pending.remove(&at);
            }
            if past_range {
                continue;
            }
            lock(progress).scanned += 1;
            let Ok(original) = decode::<Request>(message.payload().unwrap_or_default()) else {
                lock(progress).not_replayable += 1;
                continue;
            };
            if !matches(spec, &original) {
                lock(progress).not_matching += 1;
                continue;
            }
            if !self.config.replay.allows(&self.config, &original.team) {
                lock(progress).forbidden += 1;
                continue;
            }
            let now = now_ms();
            let copied = copy(
                &original,
                &spec.replay_id,
                &spec.target_model,
                now,
                now + deadline,
            );
            // A copy, an embeddings request, a body that is no object: nothing to compare.
            let Ok(replayed) = copied else {
                lock(progress).not_replayable += 1;
                continue;
            };
            let cost = self.pricing.max_cost_nanos(&replayed);
            {
                let mut p = lock(progress);
                if p.replayed >= spec.limit {
                    return Ok(Some("limit"));
                }
                if p.reserved_nanos.saturating_add(cost) > spec.budget_nanos {
                    return Ok(Some("budget"));
                }
                p.reserved_nanos += cost;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(Some("shutdown")),
                () = limiter.until_ready() => {}
            }
            if let Err(e) = self.publish(&replayed).await {
                lock(progress).reserved_nanos -= cost;
                return Err(format!("publishing a copy: {e}"));
            }
            lock(progress).replayed += 1;
        }
        Ok(None)
    }

    async fn publish(&self, copy: &Request) -> Result<(), KafkaError> {
        let payload = encode(copy).map_err(|_| KafkaError::Canceled)?;
        let (topic, partition) = self.routing.copy_destination(&self.topics, &copy.team);
        send(
            &self.producer,
            &topic,
            &copy.team,
            &payload,
            Some(partition),
        )
        .await
    }
}

/// Whether a recorded request is one `spec` asks for.
fn matches(spec: &Checked, r: &Request) -> bool {
    (spec.from_ms..spec.to_ms).contains(&r.created_at_ms)
        && spec.team.as_ref().is_none_or(|t| *t == r.team)
        && spec.model.as_ref().is_none_or(|m| *m == r.model)
        && spec.priority.is_none_or(|p| p == r.priority)
}

fn lock(progress: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
