//! The start-up check of `[budget]`, `[[budgets]]` and `[[prices]]`.

use crate::config::Config;
use crate::config::{BudgetSettings, Scope};
use crate::error::ConfigError;

/// Start-up check of `[budget]`, with `[[budgets]]` and `[[prices]]` ([`validate`]).
impl crate::config::Section for BudgetSettings {
    fn check(&self, config: &Config) -> Result<(), ConfigError> {
        validate(config)
    }
}

/// Checks `[[budgets]]`, `[budget]` and `[[prices]]` (called by [`Config::validate`]).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    let field = |field: String, problem: &'static str| ConfigError::Field { field, problem };
    for (i, p) in config.prices.iter().enumerate() {
        if !p.is_valid() {
            return Err(field(
                format!("prices[{i}]"),
                "prices must be finite and not negative",
            ));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (i, b) in config.budgets.iter().enumerate() {
        let name = |f: &str| format!("budgets[{i}].{f}");
        if b.subject.trim().is_empty() {
            return Err(field(name("subject"), "must name a team or key id"));
        }
        if b.scope == Scope::Team && !sluice_schemas::topics::is_valid_team_name(&b.subject) {
            return Err(field(
                name("subject"),
                "team names use letters, digits, '-' and '_' (at most 64)",
            ));
        }
        if !b.limit_usd.is_finite() || b.limit_usd <= 0.0 || b.limit_usd > 1e9 {
            return Err(field(
                name("limit_usd"),
                "must be a positive number of USD (at most 1e9)",
            ));
        }
        let mut pcts = std::collections::HashSet::new();
        for f in &b.alert_at {
            if !f.is_finite() || *f <= 0.0 || *f > 1.0 {
                return Err(field(
                    name("alert_at"),
                    "thresholds are fractions of the limit in (0, 1], e.g. [0.5, 0.8, 1.0]",
                ));
            }
            if !pcts.insert((f * 100.0).round() as i32) {
                return Err(field(
                    name("alert_at"),
                    "thresholds must differ by at least one percent",
                ));
            }
        }
        if !seen.insert((b.scope, b.subject.clone(), b.period)) {
            return Err(field(
                format!("budgets[{i}]"),
                "a budget with this scope, subject and period is already configured",
            ));
        }
    }
    if !config.budgets.is_empty() && config.resolved_prices().is_empty() {
        return Err(field(
            "prices".into(),
            "budgets need prices to price reservations: [[prices]] (the same as the workers') or models the price catalogue knows",
        ));
    }
    if config.budget.default_completion_tokens == 0 {
        return Err(field(
            "budget.default_completion_tokens".into(),
            "must be at least 1",
        ));
    }
    if config.budget.dedup_window == 0 {
        return Err(field("budget.dedup_window".into(), "must be at least 1"));
    }
    Ok(())
}
