//! Sluice's wire contracts, shared by ingress, workers and analytics.
//!
//! - [`records`]: the Rust types of every Kafka message (Avro records).
//! - [`codec`]: Avro single-object encoding with schema fingerprints, and a decoder that
//!   rejects garbage with an error instead of panicking.
//! - [`topics`]: every topic as an enum, with its partitioning and retention.
//! - [`openai`]: the OpenAI-compatible HTTP wire types the ingress accepts and returns.
//!
//! - [`webhook`]: Standard Webhooks signing and delivery with retries.
//!
//! No runtime logic lives here (no Kafka clients) except webhook delivery, which the
//! ingress and analytics must do identically.

pub mod audit_content;
pub mod codec;
pub mod error;
pub mod openai;
pub mod pricing;
pub mod records;
pub mod topics;
pub mod webhook;

pub use codec::{decode, encode, Record};
pub use error::CodecError;
pub use records::{
    ApiKey, Audit, AuditAction, BudgetAlert, Cancel, Priority, ReplyTo, Request, Result, Status,
    StreamChunk, Usage,
};

/// Kafka header naming what a reply-topic message holds.
pub const REPLY_KIND_HEADER: &str = "sluice.kind";
/// [`REPLY_KIND_HEADER`] value of a [`StreamChunk`].
pub const REPLY_KIND_CHUNK: &str = "chunk";
/// [`REPLY_KIND_HEADER`] value of a [`Result`].
pub const REPLY_KIND_RESULT: &str = "result";
pub use topics::{Topic, Topics};

/// Milliseconds since the Unix epoch, the one time unit on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
