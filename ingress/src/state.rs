//! What every handler shares.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rdkafka::producer::FutureProducer;
use sluice_schemas::{now_ms, ReplyTo, Topic, Topics};

use crate::admission::tokens::Tokenizer;
use crate::config::Config;
use crate::guard::Guard;
use crate::keys::{KeyLog, KeyStore};
use crate::lookup::ResultStore;
use crate::replies::Waiters;

/// How long this replica remembers an accepted async request locally, covering the time
/// until the analytics sink has landed its audit row in ClickHouse (its flush interval, ~1 s,
/// plus slack for a slow insert).
const REMEMBER_MS: i64 = 60 * 1000;
/// At most this many remembered requests (beyond it the oldest are forgotten early; their
/// audit rows answer instead).
const REMEMBER_MAX: usize = 200_000;

/// Recently accepted async requests, oldest first, with O(1) expiry.
#[derive(Default)]
struct Recent {
    by_id: HashMap<String, (String, i64)>,
    order: std::collections::VecDeque<(String, i64)>,
}

impl Recent {
    fn insert(&mut self, request_id: &str, team: &str, now: i64) {
        // Expire from the front: amortized O(1) per accepted request.
        while let Some((id, at)) = self.order.front().cloned() {
            if now - at < REMEMBER_MS && self.order.len() < REMEMBER_MAX {
                break;
            }
            self.order.pop_front();
            if self.by_id.get(&id).is_some_and(|(_, t)| *t == at) {
                self.by_id.remove(&id);
            }
        }
        self.by_id
            .insert(request_id.to_string(), (team.to_string(), now));
        self.order.push_back((request_id.to_string(), now));
    }

    fn contains(&self, request_id: &str, team: &str, now: i64) -> bool {
        self.by_id
            .get(request_id)
            .is_some_and(|(t, at)| t == team && now - at < REMEMBER_MS)
    }
}

pub struct AppState {
    /// Where audit events go (admission's `accepted` and every `rejected`).
    pub(crate) audits: crate::admission::AuditSink,
    pub config: Config,
    pub keys: KeyStore,
    pub models: HashMap<String, Tokenizer>,
    pub topics: Topics,
    pub team_topics: HashSet<String>,
    pub producer: FutureProducer,
    pub waiters: Waiters,
    pub reply_to: ReplyTo,
    pub store: ResultStore,
    /// Guardrail policies and templates (none until [`AppState::with_guard`]).
    pub guard: Guard,
    /// The keys topic, for the admin API (none until [`AppState::with_keys`]: admin
    /// changes answer 503).
    pub key_log: Option<KeyLog>,
    /// Budgets and the live spend ledger (docs/budgets.md).
    pub budgets: crate::budget::Budgets,
    /// The batch tables (docs/batch.md).
    pub batches_store: crate::batch::BatchStore,
    /// Batch cancellations and drivers of this replica.
    pub batches: crate::batch::Batches,
    /// Batch and async-request webhooks: destinations and each team's secret.
    pub webhooks: crate::webhooks::Webhooks,
    recent: Mutex<Recent>,
    spread: AtomicU32,
}

impl AppState {
    pub fn new(config: Config, producer: FutureProducer, waiters: Waiters) -> AppState {
        let topics = Topics::new(config.kafka.topic_prefix.clone());
        let models = config
            .models
            .iter()
            .map(|m| {
                let tokenizer = m
                    .tokenizer
                    .as_deref()
                    .and_then(Tokenizer::parse)
                    .unwrap_or_else(|| Tokenizer::for_model(&m.id));
                tokenizer.warm();
                (m.id.clone(), tokenizer)
            })
            .collect();
        AppState {
            audits: crate::admission::AuditSink::new(
                producer.clone(),
                topics.name(&sluice_schemas::Topic::Audit),
                config.kafka.max_message_bytes,
            ),
            keys: KeyStore::from_config(&config.keys),
            team_topics: config.routing.team_topics.iter().cloned().collect(),
            reply_to: ReplyTo {
                topic: topics.name(&sluice_schemas::Topic::Replies),
                partition: config.server.reply_partition,
            },
            store: ResultStore::new(&config.clickhouse),
            batches_store: crate::batch::BatchStore::new(&config.clickhouse, &config.retention),
            batches: crate::batch::Batches::new(&config.batch),
            // `Config::validate` checked it; if it fails anyway, every webhook is refused.
            webhooks: crate::webhooks::Webhooks::from_config(&config.webhooks)
                .unwrap_or_else(|_| crate::webhooks::Webhooks::disabled()),
            guard: Guard::default(),
            key_log: None,
            budgets: crate::budget::Budgets::new(&config),
            models,
            topics,
            producer,
            waiters,
            recent: Mutex::new(Recent::default()),
            spread: AtomicU32::new(0),
            config,
        }
    }

    pub fn with_guard(mut self, guard: Guard) -> AppState {
        self.guard = guard;
        self
    }

    /// The live key store (seeded from `[[keys]]`, fed by the keys topic) and its topic.
    pub fn with_keys(mut self, keys: KeyStore, log: KeyLog) -> AppState {
        self.keys = keys;
        self.key_log = Some(log);
        self
    }

    /// The partition for a team's next request: round robin over the team's
    /// `partitions_per_team` consecutive partitions, starting at a stable hash of the team.
    pub fn partition_for(&self, topic: &Topic, team: &str) -> i32 {
        let partitions = topic.partitions().max(1) as u32;
        let span = self.config.routing.partitions_per_team.clamp(1, partitions);
        let turn = self.spread.fetch_add(1, Ordering::Relaxed) % span;
        ((team_hash(team) % partitions + turn) % partitions) as i32
    }

    pub fn remember(&self, request_id: &str, team: &str) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.insert(request_id, team, now_ms());
        }
    }

    pub fn recently_accepted(&self, request_id: &str, team: &str) -> bool {
        let now = now_ms();
        self.recent
            .lock()
            .is_ok_and(|r| r.contains(request_id, team, now))
    }
}

/// FNV-1a: stable across builds and replicas, unlike std's randomized hasher.
fn team_hash(team: &str) -> u32 {
    team.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_requests_expire_in_order_and_stay_bounded() {
        let mut r = Recent::default();
        r.insert("a", "t1", 0);
        r.insert("b", "t2", 10);
        assert!(r.contains("a", "t1", 20));
        assert!(!r.contains("a", "t2", 20), "another team's id is not known");
        assert!(!r.contains("a", "t1", REMEMBER_MS), "expired by time");
        r.insert("c", "t1", REMEMBER_MS + 5);
        assert_eq!(r.order.len(), 2, "a was dropped on insert");
        assert!(!r.by_id.contains_key("a"));
        for i in 0..REMEMBER_MAX + 10 {
            r.insert(&format!("x{i}"), "t", REMEMBER_MS + 6);
        }
        assert_eq!(r.order.len(), REMEMBER_MAX);
        assert_eq!(r.by_id.len(), REMEMBER_MAX);
    }
}
