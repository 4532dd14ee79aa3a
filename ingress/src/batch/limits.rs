//! The batch APIs' caps (`[batch]`): what one team may store and keep open, what one batch
//! may hold, how many large bodies a replica reads at once, and how often a driver retries
//! a block before its lines fail for good.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::BatchError;
pub use crate::config::BatchLimits;

/// The large-body gate of one replica.
pub struct UploadGate {
    permits: Arc<Semaphore>,
}

impl UploadGate {
    pub fn new(limits: &BatchLimits) -> UploadGate {
        UploadGate {
            permits: Arc::new(Semaphore::new(limits.max_concurrent_uploads.max(1))),
        }
    }

    /// A permit to read one large body, or `TooManyUploads` at once when all are taken
    /// (never queued: a waiting body would hold its connection and its buffers).
    pub fn try_enter(&self) -> Result<OwnedSemaphorePermit, BatchError> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .map_err(|_| BatchError::TooManyUploads)
    }
}

impl Default for UploadGate {
    fn default() -> UploadGate {
        UploadGate::new(&BatchLimits::default())
    }
}
