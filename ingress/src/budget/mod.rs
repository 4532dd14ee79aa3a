//! Budgets with hard caps (docs/budgets.md): per team or key, per UTC day or month.
//!
//! Every replica keeps a live ledger ([`ledger::Ledger`]) fed from Kafka ([`feed`]):
//! settled spend from the usage topic, and in-flight reservations from the audit topic's
//! `accepted` events (its own and every other replica's). A request is admitted only if,
//! for every budget that applies to it, spent + reserved + its own worst-case cost stays
//! within the limit.

mod budgets;
pub mod feed;
pub mod ledger;
mod period;
mod refusal;
mod validate;

pub use crate::config::{BudgetConfig, Period, Scope};
pub use budgets::Budgets;
pub use ledger::{Exceeded, Ledger};
pub use period::format_utc;

#[cfg(test)]
mod tests;
