//! What every handler shares.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use rdkafka::producer::FutureProducer;
use sluice_schemas::{now_ms, ReplyTo, Topic, Topics};

use crate::auth::KeyStore;
use crate::config::Config;
use crate::lookup::ResultStore;
use crate::replies::Waiters;
use crate::tokens::Tokenizer;

/// How long this replica remembers an accepted async request locally, covering the time
/// until the analytics sink has landed its audit row in ClickHouse.
const REMEMBER_MS: i64 = 10 * 60 * 1000;

pub struct AppState {
    pub config: Config,
    pub keys: KeyStore,
    pub models: HashMap<String, Tokenizer>,
    pub topics: Topics,
    pub team_topics: HashSet<String>,
    pub producer: FutureProducer,
    pub waiters: Waiters,
    pub reply_to: ReplyTo,
    pub store: ResultStore,
    recent: Mutex<HashMap<String, (String, i64)>>,
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
            keys: KeyStore::from_config(&config.keys),
            team_topics: config.routing.team_topics.iter().cloned().collect(),
            reply_to: ReplyTo {
                topic: topics.name(&sluice_schemas::Topic::Replies),
                partition: config.server.reply_partition,
            },
            store: ResultStore::new(&config.clickhouse),
            models,
            topics,
            producer,
            waiters,
            recent: Mutex::new(HashMap::new()),
            spread: AtomicU32::new(0),
            config,
        }
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
        let now = now_ms();
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= 100_000 {
                recent.retain(|_, (_, at)| now - *at < REMEMBER_MS);
            }
            recent.insert(request_id.to_string(), (team.to_string(), now));
        }
    }

    pub fn recently_accepted(&self, request_id: &str, team: &str) -> bool {
        let now = now_ms();
        self.recent
            .lock()
            .ok()
            .and_then(|r| r.get(request_id).cloned())
            .is_some_and(|(t, at)| t == team && now - at < REMEMBER_MS)
    }
}

/// FNV-1a: stable across builds and replicas, unlike std's randomized hasher.
fn team_hash(team: &str) -> u32 {
    team.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}
