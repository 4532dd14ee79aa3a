//! Sluice model workers: a Kafka consumer group that drains request topics, calls providers
//! over HTTP, and emits result, reply, usage and audit events before marking each message
//! done. At-least-once: a crash redelivers unfinished work; sinks deduplicate by request id.

pub mod breaker;
pub mod cancel;
pub mod config;
pub mod consume;
pub mod error;
pub mod offsets;
pub mod pricing;
pub mod process;
pub mod providers;
pub mod publish;
pub mod redelivery;
pub mod routing;
pub mod schedule;
pub mod throttle;

pub use config::Config;
pub use consume::run;
pub use error::{ProviderError, WorkerError};
