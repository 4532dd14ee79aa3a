//! `[[budgets]]` and `[budget]`: spend limits and how reservations are held.

use std::time::Duration;

use serde::Deserialize;

use super::millis;

/// Whose spend a budget limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Team,
    Key,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Team => "team",
            Scope::Key => "key",
        }
    }
}

/// The budget's window: a UTC calendar day or month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Month,
}

/// `[[budgets]]`: a spend limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    pub scope: Scope,
    /// The team name (scope `team`) or key id (scope `key`).
    pub subject: String,
    pub period: Period,
    /// The hard cap, in USD.
    pub limit_usd: f64,
    /// Fractions of the limit whose crossing (by settled spend) raises an alert.
    #[serde(default = "default_alert_at")]
    pub alert_at: Vec<f64>,
}

fn default_alert_at() -> Vec<f64> {
    vec![0.5, 0.8, 1.0]
}

/// `[budget]`: how reservations are made and held.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetSettings {
    /// Completion tokens reserved for a request that sets no `max_tokens` /
    /// `max_completion_tokens`.
    pub default_completion_tokens: u32,
    /// A reservation whose usage never arrives is released this long after the request's
    /// deadline (covers a worker's last attempt and the usage event's way back).
    #[serde(with = "millis")]
    pub reservation_grace_ms: Duration,
    /// Most request ids remembered to ignore redelivered usage (at-least-once delivery).
    pub dedup_window: usize,
    /// Start-up fails if the ledger has not read the usage and audit topics up to their
    /// ends within this time.
    #[serde(with = "millis")]
    pub catch_up_timeout_ms: Duration,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            default_completion_tokens: 4096,
            reservation_grace_ms: Duration::from_secs(120),
            dedup_window: 500_000,
            catch_up_timeout_ms: Duration::from_secs(300),
        }
    }
}
