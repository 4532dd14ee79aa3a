//! Writing a batch to ClickHouse. Transient failures are retried (see `retry`); when the
//! server rejects the data for good, the batch is split until the rejected rows are alone,
//! the rest lands, and each rejected row's message goes to the dead-letter topic with the
//! server's reason. A failed INSERT writes nothing (one block), so splitting never writes
//! a row twice; a retried one that had landed is a duplicate the tables absorb.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use clickhouse::Client;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::batch::{Batch, Rows};
use super::dead_letter::{DeadLetters, Origin, Rejection};
use super::retry::{error_chain, retry, Stopped};
use super::SinkStats;
use crate::config::Config;
use crate::tables::{self, BudgetAlertRow, Table, TableRow};

/// The ClickHouse side of the sink.
pub(super) struct Writer {
    pub client: Client,
    /// Bound to the private database, for [`Table::Private`] rows.
    pub private_client: Client,
    pub database: String,
    pub insert_timeout: Duration,
    pub max_backoff: Duration,
    /// Budget alert webhooks (`[[alert_webhooks]]`).
    pub notifier: crate::alerts::Notifier,
}

impl Writer {
    pub fn new(config: &Config) -> Result<Writer, crate::error::Error> {
        Ok(Writer {
            client: tables::client(&config.clickhouse),
            private_client: tables::private_client(&config.clickhouse),
            database: config.clickhouse.database.clone(),
            insert_timeout: config.sink.insert_timeout_ms,
            max_backoff: config.sink.retry_max_backoff_ms,
            notifier: crate::alerts::Notifier::new(&config.alert_webhooks, &config.webhooks)?,
        })
    }

    /// Writes every table of the batch (dead-lettering rows ClickHouse rejects). False if
    /// `give_up` fired before everything was written; the batch keeps what is unwritten.
    pub async fn write_batch(
        &self,
        batch: &mut Batch,
        stats: &mut SinkStats,
        dead_letters: &DeadLetters,
        give_up: &CancellationToken,
    ) -> bool {
        // A table written is cleared, so a retry after a partial failure writes only the rest.
        // Private rows first: a result visible in `results` has its body for the async API.
        let mut private_rows = 0;
        let rejected = &mut batch.rejected;
        let mut out = Out {
            dead_letters,
            rejected,
            dead_lettered: &mut stats.dead_lettered,
            give_up,
        };
        let written = self
            .write(&mut batch.result_bodies, &mut private_rows, &mut out)
            .await
            && self
                .write(&mut batch.accepted, &mut private_rows, &mut out)
                .await
            && self
                .write(&mut batch.results, &mut stats.results, &mut out)
                .await
            && self
                .write(&mut batch.usage, &mut stats.usage, &mut out)
                .await
            && self
                .write(&mut batch.audit, &mut stats.audit, &mut out)
                .await
            && self
                .write(&mut batch.attempts, &mut stats.attempts, &mut out)
                .await
            && self
                .write(
                    &mut batch.replay_results,
                    &mut stats.replay_results,
                    &mut out,
                )
                .await
            && self
                .write(&mut batch.replay_usage, &mut stats.replay_usage, &mut out)
                .await;
        if !written {
            return false;
        }
        // Alerts new to ClickHouse get their webhooks, after their rows are written.
        let fresh = if self.notifier.is_active() && !batch.budget_alerts.is_empty() {
            let alerts: &Vec<BudgetAlertRow> = &batch.budget_alerts.rows;
            let database = self.database.as_str();
            match retry("budget_alerts lookup", self.max_backoff, give_up, || {
                self.notifier.fresh(&self.client, database, alerts)
            })
            .await
            {
                Ok(fresh) => fresh,
                // A lookup is a query of our own: no data to reject, so only the signal.
                Err(_) => return false,
            }
        } else {
            Vec::new()
        };
        if !self
            .write(&mut batch.budget_alerts, &mut stats.budget_alerts, &mut out)
            .await
        {
            return false;
        }
        for alert in fresh {
            self.notifier.deliver(alert);
        }
        true
    }

    /// Inserts one table's rows; clears them when all landed or were dead-lettered.
    async fn write<R: TableRow>(
        &self,
        rows: &mut Rows<R>,
        count: &mut u64,
        out: &mut Out<'_>,
    ) -> bool {
        if rows.is_empty() {
            return true;
        }
        let client = match R::TABLE {
            Table::Private(_) => &self.private_client,
            _ => &self.client,
        };
        // Ranges of rows still to insert; the whole table's first.
        let mut pending: Vec<Range<usize>> = std::iter::once(0..rows.len()).collect();
        let mut refused: Vec<(usize, Rejection)> = Vec::new();
        while let Some(range) = pending.pop() {
            let part = &rows.rows[range.clone()];
            let inserted = retry(R::TABLE.name(), self.max_backoff, out.give_up, || {
                super::metrics::insert(client, part, self.insert_timeout)
            })
            .await;
            match inserted {
                Ok(()) => {
                    *count += range.len() as u64;
                    let newest = rows.origins[range.clone()].iter().map(|o| o.timestamp_ms);
                    super::metrics::inserted(
                        R::TABLE.name(),
                        range.len(),
                        newest.max().unwrap_or(0),
                    );
                }
                Err(Stopped::GaveUp) => return false,
                Err(Stopped::Permanent(e)) if range.len() == 1 => {
                    refused.push((
                        range.start,
                        Rejection {
                            summary: format!("ClickHouse rejected the {} row", R::TABLE.name()),
                            detail: error_chain(&e),
                        },
                    ));
                }
                Err(Stopped::Permanent(e)) => {
                    warn!(
                        table = R::TABLE.name(),
                        rows = range.len(),
                        error = %error_chain(&e),
                        "ClickHouse rejected the rows, splitting to find the bad ones"
                    );
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
            }
        }
        for (index, rejection) in &refused {
            if !out.dead_letter(&rows.origins[*index], rejection).await {
                return false;
            }
        }
        rows.clear();
        true
    }
}

/// Where rejected rows go, and what was sent already.
struct Out<'a> {
    dead_letters: &'a DeadLetters,
    rejected: &'a mut std::collections::HashSet<(String, i32, i64)>,
    dead_lettered: &'a mut u64,
    give_up: &'a CancellationToken,
}

impl Out<'_> {
    async fn dead_letter(&mut self, origin: &Arc<Origin>, rejection: &Rejection) -> bool {
        let at = (origin.topic.clone(), origin.partition, origin.offset);
        if self.rejected.contains(&at) {
            return true;
        }
        if !self
            .dead_letters
            .send(origin, rejection, self.give_up)
            .await
        {
            return false;
        }
        self.rejected.insert(at);
        *self.dead_lettered += 1;
        true
    }
}
