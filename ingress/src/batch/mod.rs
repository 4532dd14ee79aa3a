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
mod idempotent;
mod ids;
pub mod inline;
pub mod jsonl;
pub mod limits;
mod replica;
mod routes;
pub mod store;
pub mod webhooks;

pub use error::BatchError;
pub use handles::Handles;
pub(crate) use ids::{line_request_id, next_version, request_id_range, rfc3339};
pub use replica::Batches;
pub use routes::routes;
pub use store::BatchStore;
