//! Sluice analytics: consumes results, usage and audit records from Kafka and writes them to
//! ClickHouse, whose schema (tables, analyst views) this crate owns as versioned migrations.
//!
//! - [`config`]: TOML + `SLUICE_<SECTION>_<KEY>` environment configuration.
//! - [`migrations`]: embedded `migrations/NNNN_name.sql`, applied once each.
//! - [`tables`]: table names, row types and the insert used by the sink.
//! - [`queries`]: embedded analyst queries (`queries/*.sql`).
//! - [`report`]: `sluice-analytics report spend|latency|errors`, aligned text tables.
//! - [`retention`]: drops expired content (completions, uploaded files) on a schedule.
//! - [`sink`]: the at-least-once Kafka -> ClickHouse sink with a dead-letter topic.

pub mod alerts;
pub mod config;
pub mod error;
pub mod migrations;
mod ops;
pub mod queries;
pub mod report;
pub mod retention;
pub mod sink;
pub mod tables;

pub use config::Config;
pub use error::Error;
pub use migrations::apply_migrations;
pub use sink::{run, Sink, SinkStats};
pub use tables::{client, find_result, find_result_body, migrator_client, private_client, Table};
