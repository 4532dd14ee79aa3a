//! A worker does not call a provider again for a request that already has a result.
//!
//! At-least-once delivery: after a worker crash, a broker restart or a rebalance, the owner
//! of a partition reads again every record after the last committed offset, including
//! requests finished (result and usage published) but not committed yet. Calling the
//! provider for those again is billed twice by the provider (the team is charged once;
//! usage is deduplicated). Three defences, cheapest first:
//!
//! - On revoke the old owner waits a bounded time for the revoked partitions' running
//!   requests and commits their offsets before it lets them go (crate::consume), so the new
//!   owner does not read them again.
//! - [`Recent`]: the request ids this process finished lately. A worker that reads its own
//!   uncommitted records again (a broker restart; static membership gives it the same
//!   partitions back) skips them without asking anyone, also when the analytics sink has
//!   not flushed their results to ClickHouse yet.
//! - [`Lookup`]: ClickHouse, for records an earlier owner may have finished. Lookups are
//!   batched (one `request_id IN (...)` query for what arrives within a few milliseconds,
//!   a few queries at once), so a replay of hundreds of records costs a few queries, not
//!   hundreds. When ClickHouse cannot answer in time the provider is called (fail open,
//!   counted in the log's `failed_open_total`).
//!
//! Only records that may be redeliveries are checked, i.e. those below the partition's high
//! watermark when it was assigned ([`Horizons`]).

mod config;
mod horizons;
mod lookup;
mod recent;

pub use config::RedeliveryConfig;
pub use horizons::Horizons;
pub use lookup::Lookup;
pub use recent::Recent;

#[cfg(test)]
mod tests;
