//! The operator's side of Sluice: the Prometheus rules and alerts (deploy/prometheus/),
//! checked and unit-tested with Debian's `promtool`; the SRE dashboard
//! (docs/grafana/dashboards/json/sluice-sre.json) against the metric catalog; and a real
//! Prometheus scraping a live stack, queried with PromQL (`prometheus.rs`).
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package (.ci/run installs it;
//! `scripts/prometheus.sh install` by hand). A missing one fails these tests.

#![expect(
    clippy::expect_used,
    reason = "test helpers outside #[test] functions fail loudly"
)]

mod catalog;
#[path = "../common/mod.rs"]
#[expect(
    dead_code,
    unused_imports,
    reason = "the shared stack helpers: this suite uses a few"
)]
mod common;
mod dashboard;
mod prometheus;
mod rules;
