//! What the batch APIs use of the replica's shared handles: admission's, plus the batch
//! tables, this replica's drivers and the results. The ingress's `AppState` implements it,
//! so batch never names that room above it.

use super::{BatchStore, Batches};
use crate::lookup::ResultStore;

pub trait Handles: crate::admission::Handles {
    /// The batch tables (docs/batch.md).
    fn batches_store(&self) -> &BatchStore;
    /// Batch cancellations and drivers of this replica.
    fn batches(&self) -> &Batches;
    /// Results, for a batch's output and the async-request webhooks.
    fn store(&self) -> &ResultStore;
    /// `Idempotency-Key` claims (batch creation takes one).
    fn idempotency(&self) -> &crate::idempotency::Store;
}
