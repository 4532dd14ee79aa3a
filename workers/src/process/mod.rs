//! Processing one request: deadline check, the attempt chain (provider calls with retries
//! and fallbacks, sync or streamed), then the result, reply, usage and audit events.
//!
//! Rooms, lowest first; each imports only those above it in this list:
//! `processor` (the shared state), `outcome`, `backoff`, `attempts` (call records),
//! `chain` (the one deployments x retries x deadline loop), `sync` and `stream` (the two
//! kinds of call it makes), `events` (publishing), `entry` (a message's way through).

mod attempts;
mod backoff;
mod chain;
mod coalesce;
mod entry;
mod events;
mod metrics;
mod outcome;
mod processor;
mod route;
mod stream;
mod sync;

pub use processor::Processor;
