//! The sink's metrics (catalog: docs/operations.md): inserts per table, their latency and
//! errors, how far ClickHouse is behind, dead letters. Consumer lag: `sluice_schemas::ops`.

use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};

use super::retry::{classify, Class};
use crate::error::Error;
use crate::tables::{self, TableRow};

/// [`tables::insert`], timed: `sluice_sink_insert_duration_seconds{table}` and
/// `sluice_sink_insert_errors_total{table, kind}`.
pub(super) async fn insert<R: TableRow>(
    client: &clickhouse::Client,
    rows: &[R],
    timeout: Duration,
) -> Result<(), Error> {
    let table = R::TABLE.name();
    let started = Instant::now();
    let inserted = tables::insert(client, rows, timeout).await;
    histogram!("sluice_sink_insert_duration_seconds", "table" => table)
        .record(started.elapsed().as_secs_f64());
    if let Err(error) = &inserted {
        let kind = match classify(error) {
            Class::Transient => "transient",
            _ => "permanent",
        };
        counter!("sluice_sink_insert_errors_total", "table" => table, "kind" => kind).increment(1);
    }
    inserted
}

/// `rows` landed in `table`; the newest of their Kafka messages was produced at
/// `newest_ms` (0: unknown).
pub(super) fn inserted(table: &'static str, rows: usize, newest_ms: i64) {
    counter!("sluice_sink_rows_inserted_total", "table" => table).increment(rows as u64);
    if newest_ms > 0 {
        let lag = (sluice_schemas::now_ms() - newest_ms).max(0) as f64 / 1000.0;
        gauge!("sluice_sink_lag_seconds", "table" => table).set(lag);
    }
}

/// A message went to the dead-letter topic (`reason`: a fixed set).
pub(super) fn dead_lettered(summary: &str) {
    let reason = if summary.starts_with("ClickHouse rejected") {
        "rejected_by_clickhouse"
    } else if summary.starts_with("topic is not") {
        "unknown_topic"
    } else {
        "undecodable"
    };
    counter!("sluice_dead_letter_records_total", "service" => "analytics", "reason" => reason)
        .increment(1);
}

/// The sink replaced a consumer that had stalled (crate::sink::stall).
pub(super) fn consumer_replaced() {
    counter!("sluice_sink_consumer_replacements_total").increment(1);
}
