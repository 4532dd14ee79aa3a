//! Sluice's wire contracts, shared by ingress, workers and analytics.
//!
//! - [`records`]: the Rust types of every Kafka message (Avro records).
//! - [`codec`]: Avro single-object encoding with schema fingerprints, and a decoder that
//!   rejects garbage with an error instead of panicking.
//! - [`topics`]: every topic as an enum, with its partitioning and retention.
//! - [`openai`]: the OpenAI-compatible HTTP wire types the ingress accepts and returns;
//!   [`billable`]: which of their fields may reach a provider.
//!
//! - [`webhook`]: Standard Webhooks signing and delivery with retries.
//! - [`outbound`]: where webhooks may go (no loopback, private or link-local addresses).
//! - [`retry`]: the retry/backoff policy of every loop that retries (on `backon`).
//! - `config` (feature `config`): the services' one config loader (file, env, `millis`).
//! - `ops` (features `ops` + `kafka`): the ops listener (`/metrics`, `/healthz`, `/readyz`)
//!   and the Prometheus recorder every service installs.
//!
//! No runtime logic lives here (no Kafka clients) except webhook delivery, which the
//! ingress and analytics must do identically, and the retry policy the services share.

pub mod audit_content;
pub mod billable;
pub mod codec;
#[cfg(feature = "config")]
pub mod config;
pub mod embeddings;
pub mod error;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "logging")]
pub mod logging;
pub mod openai;
#[cfg(all(feature = "ops", feature = "kafka"))]
pub mod ops;
pub mod outbound;
pub mod pricing;
pub mod records;
pub mod replay;
pub mod retry;
pub mod route_hints;
pub mod tables;
pub mod topics;
#[cfg(feature = "logging")]
pub mod trace;
pub mod webhook;

pub use codec::{decode, encode, Record};
pub use error::CodecError;
pub use records::{
    ApiKey, Attempt, Audit, AuditAction, BudgetAlert, Cancel, Priority, ReplayTag, ReplyTo,
    Request, Result, ResultAudit, Status, StreamChunk, Usage, REQUEST_CANCELLED,
};

/// Kafka header naming what a reply-topic message holds.
pub const REPLY_KIND_HEADER: &str = "sluice.kind";
/// [`REPLY_KIND_HEADER`] value of a [`StreamChunk`].
pub const REPLY_KIND_CHUNK: &str = "chunk";
/// [`REPLY_KIND_HEADER`] value of a [`Result`].
pub const REPLY_KIND_RESULT: &str = "result";
pub use topics::{Topic, Topics};

/// Unix milliseconds as RFC 3339 in UTC: `2026-11-24T19:38:32Z`, or `…:32.125Z` with
/// `millis` (out-of-range instants give an empty string).
pub fn rfc3339(ms: i64, millis: bool) -> String {
    use time::format_description::well_known::Rfc3339;
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) else {
        return String::new();
    };
    let Ok(text) = at.format(&Rfc3339) else {
        return String::new();
    };
    match (millis, text.strip_suffix('Z')) {
        (true, Some(head)) => format!("{head}.{:03}Z", ms.rem_euclid(1000)),
        _ => text,
    }
}

/// Milliseconds since the Unix epoch, the one time unit on the wire.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
