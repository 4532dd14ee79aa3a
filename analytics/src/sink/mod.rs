//! The Kafka -> ClickHouse sink for results, usage and audit records.
//!
//! At-least-once, written down: a message's offset is committed only after its row is in
//! ClickHouse (or, if it cannot be written, after the dead-letter topic acked it). Offsets
//! are committed explicitly per partition after each batch, never automatically. ClickHouse
//! being down stalls the sink (insert retried with backoff), it never drops or skips. A
//! message consumed twice (crash before commit, rebalance) is absorbed by the tables'
//! ReplacingMergeTree keys.
//!
//! Rooms, top to bottom:
//! - `consume`: the [`Sink`]: subscribe, decode into the batch, flush, commit.
//! - `insert`: the batch into ClickHouse; rows the server rejects for good are isolated
//!   and dead-lettered, the rest lands.
//! - `batch`: rows per table, each beside the message it came from.
//! - `dead_letter`: the dead-letter topic ([`DLQ_REASON`] and the other headers).
//! - `retry`: the retry policy: transient or permanent, and the backoff.
//! - `context`: the Kafka clients' settings and log context.
//! - `stall`: notices a consumer that stopped receiving while its group is behind.

mod batch;
mod consume;
mod context;
mod dead_letter;
mod insert;
mod metrics;
mod retry;
mod stall;

pub use consume::{run, Sink, SinkStats, StallHandle};
pub use dead_letter::{DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC};
