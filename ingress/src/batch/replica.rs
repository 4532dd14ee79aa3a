//! [`Batches`]: what the batch APIs of one replica share: caps, the upload gate, the
//! cancellations and drivers of this replica, its shutdown.

use std::collections::HashSet;
use std::sync::Mutex;

use super::limits;

/// What the batch APIs share across handlers and drivers of one replica.
#[derive(Default)]
pub struct Batches {
    /// The `[batch]` caps.
    pub limits: limits::BatchLimits,
    /// Large bodies (uploads, inline Anthropic batches) read at once on this replica.
    pub uploads: limits::UploadGate,
    /// Batches cancelled through this replica: their drivers stop at the next block
    /// without waiting for ClickHouse (other replicas' cancels are read from there).
    cancelled: Mutex<HashSet<String>>,
    /// Batches whose driver runs on this replica.
    driving: Mutex<HashSet<String>>,
    /// The replica's shutdown: drivers stop at their next block (another start resumes
    /// them from their checkpoint).
    shutdown: std::sync::OnceLock<tokio_util::sync::CancellationToken>,
}

impl Batches {
    pub fn new(limits: &limits::BatchLimits) -> Batches {
        Batches {
            limits: limits.clone(),
            uploads: limits::UploadGate::new(limits),
            ..Batches::default()
        }
    }

    pub(crate) fn mark_cancelled(&self, batch_id: &str) {
        if let Ok(mut c) = self.cancelled.lock() {
            c.insert(batch_id.to_string());
        }
    }

    pub(crate) fn is_cancelled(&self, batch_id: &str) -> bool {
        self.cancelled.lock().is_ok_and(|c| c.contains(batch_id))
    }

    /// Claims a batch for a driver on this replica; false if one already runs here.
    pub(crate) fn claim(&self, batch_id: &str) -> bool {
        self.driving
            .lock()
            .is_ok_and(|mut d| d.insert(batch_id.to_string()))
    }

    pub(crate) fn set_shutdown(&self, shutdown: tokio_util::sync::CancellationToken) {
        let _ = self.shutdown.set(shutdown);
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown
            .get()
            .is_some_and(tokio_util::sync::CancellationToken::is_cancelled)
    }

    pub(crate) fn release(&self, batch_id: &str) {
        if let Ok(mut d) = self.driving.lock() {
            d.remove(batch_id);
        }
    }
}
