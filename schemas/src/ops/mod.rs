//! The ops listener every service runs beside its tenant listener (features `ops` and
//! `kafka`): `GET /metrics` (Prometheus text), `/healthz` (liveness) and `/readyz`
//! (readiness, 503 with a JSON body naming what is not ready). The metric catalog is
//! docs/operations.md's (session contract: METRICS.md); the names are recorded where the
//! events happen, through the `metrics` facade.
//!
//! - [`OpsConfig`]: `[ops] listen = "host:port"` (absent: no listener, no recorder).
//! - [`serve`]: installs the Prometheus recorder (buckets per metric, global labels) and
//!   serves the ops router.
//! - [`Readiness`]: named flags and probes `/readyz` checks; [`global`] is the process's.
//! - [`spawn_lag_gauge`]: `sluice_consumer_lag_records` of a consumer's assigned partitions.
//! - [`kafka_probe`]: "Kafka reachable" (a metadata fetch with a short timeout).

mod config;
mod exporter;
mod kafka;
mod ready;
mod router;

pub use crate::kafka::logical_topic;
pub use config::OpsConfig;
pub use exporter::{buckets_for, install, BUCKETS};
pub use kafka::{kafka_probe, spawn_lag_gauge};
pub use ready::{global, Readiness, ReadyReport};
pub use router::{router, serve, OpsError};

#[cfg(test)]
mod tests;
