//! Which records may have been delivered before: those below a partition's high watermark
//! when it was assigned.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::offsets::PartitionKey;

/// The high watermark of each assigned partition when it was assigned: offsets below it
/// may have been processed by an earlier owner.
#[derive(Debug, Clone, Default)]
pub struct Horizons(Arc<Mutex<HashMap<PartitionKey, i64>>>);

impl Horizons {
    pub fn assign(&self, key: PartitionKey, high_watermark: i64) {
        if let Ok(mut h) = self.0.lock() {
            h.insert(key, high_watermark);
        }
    }

    pub fn revoke(&self, key: &PartitionKey) {
        if let Ok(mut h) = self.0.lock() {
            h.remove(key);
        }
    }

    /// Whether the record at `offset` may have been delivered before.
    pub fn maybe_redelivered(&self, key: &PartitionKey, offset: i64) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|h| h.get(key).copied())
            .is_some_and(|horizon| offset < horizon)
    }
}
