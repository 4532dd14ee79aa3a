//! Retention of content (docs/security.md): completions, accepted-request markers and
//! uploaded batch files live in the private database's expiring tables
//! ([`PrivateTable::EXPIRING`]), partitioned by the day their rows expire (`expires_at`,
//! set by the writer from its retention setting). This job drops every partition whose day
//! is over. ClickHouse 18.16 has no TTL, so this is how content goes there; on current
//! servers migration 0006 also sets `TTL expires_at` and this is a backstop.
//! Dropping a partition is DDL: the job runs as the migrator.

use std::time::Duration;

use clickhouse::Client;
use sluice_schemas::tables::{private_database, PrivateTable};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::Error;

/// One dropped partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub table: &'static str,
    /// The partition id: the expiry day as `YYYYMMDD`.
    pub partition: String,
}

/// Drops the partitions of `db`'s expiring private tables whose expiry day is before today
/// (UTC, the server's clock). Returns what it dropped.
pub async fn drop_expired(migrator: &Client, db: &str) -> Result<Vec<Dropped>, Error> {
    let private = private_database(db);
    let mut dropped = Vec::new();
    for table in PrivateTable::EXPIRING {
        // Partition ids are the expiry day, `toYYYYMMDD(expires_at)`.
        let partitions: Vec<String> = migrator
            .query(
                "SELECT DISTINCT partition_id FROM system.parts \
                 WHERE database = ? AND table = ? AND active \
                 AND toUInt32OrZero(partition_id) < toYYYYMMDD(today())",
            )
            .bind(&private)
            .bind(table.name())
            .fetch_all()
            .await
            .map_err(Error::clickhouse("system.parts read"))?;
        for partition in partitions {
            // The id comes from ClickHouse and is digits; checked before it goes into SQL.
            if partition.is_empty() || !partition.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            migrator
                .query_raw(&format!(
                    "ALTER TABLE {private}.{} DROP PARTITION ID '{partition}'",
                    table.name()
                ))
                .execute()
                .await
                .map_err(Error::clickhouse("drop expired partition"))?;
            dropped.push(Dropped {
                table: table.name(),
                partition,
            });
        }
    }
    if !dropped.is_empty() {
        info!(database = %private, partitions = dropped.len(), "dropped expired content");
    }
    Ok(dropped)
}

/// Runs [`drop_expired`] now and every `interval` until `shutdown`; none when `interval`
/// is zero. Failures are logged and retried at the next tick.
pub fn spawn(
    migrator: Client,
    db: String,
    interval: Duration,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    if interval.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(e) = drop_expired(&migrator, &db).await {
                warn!(error = %e, database = %db, "retention: dropping expired content failed");
            }
        }
    }))
}
