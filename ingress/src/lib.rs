//! Sluice ingress: accepts OpenAI-compatible requests over HTTP, authenticates and validates
//! them, counts prompt tokens, and publishes them durably to Kafka. Sync callers wait for
//! their result on a reply topic; async callers poll results from ClickHouse.

mod admission;
mod audit;
mod batch;
mod billing;
mod budget;
mod cache;
pub mod config;
mod console;
mod conversations;
mod cpu;
pub mod demo;
mod error;
#[cfg(test)]
mod fuzz;
mod guard;
mod http;
mod idempotency;
mod kafka;
mod keys;
mod listener;
mod lookup;
mod ops;
mod public_url;
pub mod replay;
mod replies;
mod state;
mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use keys::auth;
// `crate::ApiError`: the path batch/ still uses.
pub(crate) use error::ApiError;
// `crate::tokens`: the path guard's tests use.
#[cfg(test)]
use admission::tokens;
use state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(#[from] error::ConfigError),
    #[error("cannot reach Kafka or create topics")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("cannot rebuild the budget ledger")]
    Budget(#[from] budget::feed::FeedError),
    #[error(transparent)]
    Keys(#[from] keys::LoadError),
    #[error(transparent)]
    Ops(#[from] sluice_schemas::ops::OpsError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running ingress.
pub struct Ingress {
    pub addr: SocketAddr,
    /// The console's address (`[console] listen`), when it is on.
    pub console: Option<SocketAddr>,
    pub task: tokio::task::JoinHandle<()>,
}

/// Creates missing topics, starts the reply listener and serves HTTP until `shutdown`.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Ingress, StartError> {
    // Compiled before anything starts: a bad pattern or template fails start-up, naming it.
    let guard = guard::Guard::from_config(&config.guard)?;
    ops::start(&config, &shutdown).await?;
    let topics = sluice_schemas::Topics::new(config.kafka.topic_prefix.clone());
    if config.kafka.create_topics {
        let wanted = kafka::wanted_topics(&config.routing.team_topics);
        kafka::ensure_topics(&config.kafka, &topics, &wanted).await?;
    }
    let producer = kafka::producer(&config.kafka)?;
    let reply_topic = topics.name(&sluice_schemas::Topic::Replies);
    let consumer =
        replies::reply_consumer(&config.kafka, &reply_topic, config.server.reply_partition).await?;
    let waiters = replies::Waiters::default();
    tokio::spawn(replies::run(consumer, waiters.clone(), shutdown.clone()));
    // Keys before serving: a replica must not accept a key revoked before it started.
    let keys = keys::KeyStore::from_config(&config.keys);
    let key_log = keys::sync::start(
        &config.kafka,
        &topics.name(&sluice_schemas::Topic::Keys),
        keys.clone(),
        shutdown.clone(),
        std::time::Duration::from_secs(60),
    )
    .await?;
    ops::keys_loaded();

    let listen = config.server.listen.clone();
    let listener = TcpListener::bind(&listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: listen,
        source,
    })?;
    let state = Arc::new(
        AppState::new(config, producer, waiters)
            .with_guard(guard)
            .with_keys(keys, key_log),
    );
    if !state.budgets.is_empty() {
        // Serve only once this replica knows the period's spend and what is in flight.
        budget::feed::start(
            &state.config,
            &topics,
            Arc::clone(&state.budgets.ledger),
            state.producer.clone(),
            shutdown.clone(),
        )
        .await?;
    }
    state.batches.set_shutdown(shutdown.clone());
    batch::driver::resume_all(Arc::clone(&state));
    let console = console::start(Arc::clone(&state), shutdown.clone()).await?;
    let limits = state.config.listener.clone();
    let app = http::router(state);
    tracing::info!(%addr, max_connections = limits.max_connections, "ingress listening");
    let task = tokio::spawn(listener::serve(listener, app, limits, shutdown));
    Ok(Ingress {
        addr,
        console,
        task,
    })
}
