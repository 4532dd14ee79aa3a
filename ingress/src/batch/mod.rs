//! The Files and Batch APIs: OpenAI's (`/v1/files`, `/v1/batches`) and Anthropic's Message
//! Batches (`/v1/messages/batches`).
//!
//! Uploads stream into ClickHouse line by line (`store.rs`); a driver task per batch
//! (`driver.rs`) validates each line like an async request and publishes it at batch
//! priority under the request id `<batch_id>-<line_no>`, checkpointing as it goes. Results
//! land in `results` like any request's; a batch's status and counts are computed from
//! ClickHouse on every read, so any replica answers for any batch, and output files are a
//! join of the batch's lines with their results by request id, streamed as JSONL.

pub mod anthropic;
pub mod batches;
pub mod driver;
pub mod error;
pub mod files;
mod handles;
pub mod inline;
pub mod jsonl;
pub mod limits;
pub mod store;
pub mod webhooks;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::{get, post};
use axum::Router;

pub use error::BatchError;
pub use handles::Handles;
pub use store::BatchStore;

/// The routes of both batch APIs, merged into the main router.
pub fn routes<S: Handles>() -> Router<Arc<S>> {
    Router::new()
        .route("/v1/files", post(files::upload::<S>))
        .route(
            "/v1/files/{id}",
            get(files::retrieve::<S>).delete(files::delete::<S>),
        )
        .route("/v1/files/{id}/content", get(files::content::<S>))
        .route(
            "/v1/batches",
            post(batches::create::<S>).get(batches::list::<S>),
        )
        .route("/v1/batches/{id}", get(batches::retrieve::<S>))
        .route("/v1/batches/{id}/cancel", post(batches::cancel::<S>))
        .route(
            "/v1/messages/batches",
            post(anthropic::create::<S>).get(anthropic::list::<S>),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(anthropic::retrieve::<S>).delete(anthropic::delete::<S>),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(anthropic::cancel::<S>),
        )
        .route(
            "/v1/messages/batches/{id}/results",
            get(anthropic::results::<S>),
        )
}

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

/// Row versions for ReplacingMergeTree: microseconds, strictly increasing in this process.
pub(crate) fn next_version() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = (sluice_schemas::now_ms().max(0) as u64) * 1000;
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// The request id of line `line_no` of a batch. Deterministic: a driver that publishes a
/// line again after a crash reuses it, so results and usage collapse on it.
pub(crate) fn line_request_id(batch_id: &str, line_no: u32) -> String {
    format!("{batch_id}-{line_no}")
}

/// The request-id range `[from, to)` holding every line of a batch (`-` sorts just before
/// `.`), a primary-key range of `results`.
pub(crate) fn request_id_range(batch_id: &str) -> (String, String) {
    (format!("{batch_id}-"), format!("{batch_id}."))
}

/// Unix milliseconds as RFC 3339 with milliseconds (`2024-09-24T18:37:24.100Z`), for
/// Anthropic's timestamps.
pub(crate) fn rfc3339(ms: u64) -> String {
    sluice_schemas::rfc3339(ms.min(i64::MAX as u64) as i64, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_ranges() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_727_203_044_100), "2024-09-24T18:37:24.100Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        let (from, to) = request_id_range("batch_1");
        let id = line_request_id("batch_1", 99_999);
        assert!(from.as_str() <= id.as_str() && id.as_str() < to.as_str());
        assert!(!("batch_10-1" >= from.as_str() && "batch_10-1" < to.as_str()));
        let a = next_version();
        assert!(next_version() > a);
    }
}
