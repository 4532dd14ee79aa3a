//! What the sink holds between two flushes: rows per table, each with the message it came
//! from, and how far each partition may be committed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use super::dead_letter::Origin;
use crate::tables::{
    AcceptedRow, AttemptRow, AuditRow, BudgetAlertRow, ReplayResultRow, ReplayUsageRow,
    ResultBodyRow, ResultRow, UsageRow,
};

/// One table's rows and, beside each, the message it came from.
pub(super) struct Rows<R> {
    pub rows: Vec<R>,
    pub origins: Vec<Arc<Origin>>,
}

impl<R> Default for Rows<R> {
    fn default() -> Self {
        Rows {
            rows: Vec::new(),
            origins: Vec::new(),
        }
    }
}

impl<R> Rows<R> {
    pub fn push(&mut self, row: R, origin: &Arc<Origin>) {
        self.rows.push(row);
        self.origins.push(Arc::clone(origin));
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.origins.clear();
    }
}

/// Messages consumed since the last flush, and how far each partition may be committed.
#[derive(Default)]
pub(super) struct Batch {
    pub results: Rows<ResultRow>,
    /// Bodies of `results` (private), and `accepted` audit events (private).
    pub result_bodies: Rows<ResultBodyRow>,
    pub accepted: Rows<AcceptedRow>,
    pub usage: Rows<UsageRow>,
    pub audit: Rows<AuditRow>,
    pub budget_alerts: Rows<BudgetAlertRow>,
    pub attempts: Rows<AttemptRow>,
    pub replay_results: Rows<ReplayResultRow>,
    pub replay_usage: Rows<ReplayUsageRow>,
    pub messages: usize,
    /// `(topic, partition)` -> next offset to consume, i.e. the offset to commit.
    pub positions: HashMap<(String, i32), i64>,
    pub started: Option<Instant>,
    /// Every position committed so far, committed once more (synchronously, if the partition
    /// is still assigned) at shutdown, so no asynchronous commit is in flight when the
    /// consumer closes.
    pub committed: HashMap<(String, i32), i64>,
    /// Messages of this batch already dead-lettered because ClickHouse rejected one of
    /// their rows (a result has two rows: it is dead-lettered once).
    pub rejected: HashSet<(String, i32, i64)>,
    /// One `insert` span per traced result (sluice_schemas::trace), from its consumption to
    /// the write that stored it.
    pub spans: Vec<sluice_schemas::trace::Pending>,
}
