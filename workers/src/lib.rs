//! Sluice model workers: a Kafka consumer group that drains request topics, calls providers
//! over HTTP, and emits result, reply, usage and audit events before marking each message
//! done. At-least-once: a crash redelivers unfinished work; sinks deduplicate by request id.

mod breaker;
mod cancel;
mod config;
mod consume;
mod error;
mod hooks;
mod membership;
mod offsets;
mod ops;
mod pricing;
mod process;
mod providers;
mod publish;
mod redelivery;
mod residency;
/// Public for the routing benchmark (benches/routing.rs).
pub mod routing;
mod schedule;
pub mod strategy;
mod throttle;

pub use config::Config;
pub use error::{ProviderError, WorkerError};

/// Starts the ops listener (when configured), then runs the worker until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), WorkerError> {
    ops::start(&config, &shutdown).await?;
    consume::run(config, shutdown).await
}
