//! What every handler shares.

use std::collections::HashMap;

use rdkafka::producer::FutureProducer;
use sluice_schemas::{ReplyTo, Topics};

use crate::admission::tokens::Tokenizer;
use crate::admission::Routing;
use crate::config::Config;
use crate::guard::Guard;
use crate::keys::{KeyLog, KeyStore};
use crate::lookup::{Recent, ResultStore};
use crate::replies::Waiters;

pub struct AppState {
    /// Where audit events go (admission's `accepted` and every `rejected`).
    pub(crate) audits: crate::admission::AuditSink,
    pub config: Config,
    pub keys: KeyStore,
    pub models: HashMap<String, Tokenizer>,
    pub topics: Topics,
    /// Which request topic and partition a team's requests go to.
    pub(crate) routing: Routing,
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
    /// Async requests accepted here lately, until their audit rows reach ClickHouse.
    pub(crate) recent: Recent,
    /// `Idempotency-Key` claims, shared by every replica (docs/idempotency.md).
    pub(crate) idempotency: crate::idempotency::Store,
    /// The response cache (docs/cache.md).
    pub(crate) cache: crate::cache::Cache,
    /// Stored conversations of the Responses API (docs/responses.md).
    pub(crate) conversations: crate::conversations::Conversations,
    /// Replays started through the admin API (docs/replay.md). They end with the process.
    pub(crate) replays: crate::replay::Registry,
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
            routing: Routing::new(&config.routing),
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
            waiters,
            recent: Recent::default(),
            idempotency: crate::idempotency::Store::new(&config.idempotency),
            cache: crate::cache::Cache::new(&config.cache),
            conversations: crate::conversations::Conversations::new(&config),
            replays: crate::replay::Registry::new(
                crate::replay::Replayer::new(&config, producer.clone()),
                config.replay.max_running,
                tokio_util::sync::CancellationToken::new(),
            ),
            producer,
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
}

impl crate::admission::Handles for AppState {
    fn config(&self) -> &Config {
        &self.config
    }
    fn keys(&self) -> &KeyStore {
        &self.keys
    }
    fn models(&self) -> &HashMap<String, Tokenizer> {
        &self.models
    }
    fn guard(&self) -> &Guard {
        &self.guard
    }
    fn budgets(&self) -> &crate::budget::Budgets {
        &self.budgets
    }
    fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.webhooks
    }
    fn audits(&self) -> &crate::admission::AuditSink {
        &self.audits
    }
    fn routing(&self) -> &Routing {
        &self.routing
    }
    fn topics(&self) -> &Topics {
        &self.topics
    }
    fn reply_to(&self) -> &ReplyTo {
        &self.reply_to
    }
    fn producer(&self) -> &FutureProducer {
        &self.producer
    }
}

impl crate::batch::Handles for AppState {
    fn batches_store(&self) -> &crate::batch::BatchStore {
        &self.batches_store
    }
    fn batches(&self) -> &crate::batch::Batches {
        &self.batches
    }
    fn store(&self) -> &ResultStore {
        &self.store
    }
    fn idempotency(&self) -> &crate::idempotency::Store {
        &self.idempotency
    }
}
