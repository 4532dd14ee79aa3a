//! `[replay]` and `[[shadows]]`: re-running recorded requests against another model, and
//! mirroring a share of live traffic to one (docs/replay.md).

use std::time::Duration;

use serde::Deserialize;

use super::millis;
use super::Config;
use crate::error::ConfigError;

/// `[replay]`: what every replay and shadow is held to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// Teams whose requests are never replayed nor shadowed. A team whose `[audit]` content
    /// policy is `none` (keep no prompts) is treated as listed here.
    pub forbidden_teams: Vec<String>,
    /// The fastest one replay may publish, requests per second (a replay's own rate is
    /// capped by it).
    pub max_rate_per_s: u32,
    /// The largest budget one replay may have, USD.
    pub max_budget_usd: f64,
    /// How long a replayed or shadow request may wait for a worker before it expires.
    #[serde(with = "millis")]
    pub deadline_ms: Duration,
    /// Replays one ingress runs at a time through the admin API.
    pub max_running: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            forbidden_teams: Vec::new(),
            max_rate_per_s: 50,
            max_budget_usd: 100.0,
            deadline_ms: Duration::from_secs(3600),
            max_running: 2,
        }
    }
}

/// `[[shadows]]`: a share of one model's live requests, copied to a candidate model at
/// batch priority after the original is accepted. The caller never waits for the copy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Its name; its copies' replay id is `shadow-<name>`.
    pub name: String,
    /// The live model whose requests are copied.
    pub model: String,
    /// The candidate model the copies ask for (one of `[[models]]`).
    pub target_model: String,
    /// The share of the model's requests copied, 0 to 100 (the same requests on every
    /// replica).
    pub percent: f64,
    /// Only these teams' requests; every team's when empty.
    #[serde(default)]
    pub teams: Vec<String>,
}

impl ReplayConfig {
    /// Whether `team`'s requests may be replayed or shadowed.
    pub fn allows(&self, config: &Config, team: &str) -> bool {
        !self.forbidden_teams.iter().any(|t| t == team)
            && config.audit.content_for(team) != sluice_schemas::audit_content::AuditContent::None
    }

    pub(super) fn validate(&self, config: &Config) -> Result<(), ConfigError> {
        let field = |field: String, problem| Err(ConfigError::Field { field, problem });
        if self.max_rate_per_s == 0 || self.max_running == 0 || self.deadline_ms.is_zero() {
            return field(
                "replay.max_rate_per_s/max_running/deadline_ms".into(),
                "must be more than 0",
            );
        }
        if !(self.max_budget_usd.is_finite() && self.max_budget_usd >= 0.0) {
            return field(
                "replay.max_budget_usd".into(),
                "must be a number of USD, 0 or more",
            );
        }
        let mut names = std::collections::HashSet::new();
        for s in &config.shadows {
            let at = |key: &str| format!("shadows[{}].{key}", s.name);
            if !sluice_schemas::replay::valid_id(&s.name) || !names.insert(s.name.as_str()) {
                return field(
                    at("name"),
                    "must be unique, 1 to 48 of a-z, 0-9, '_' and '-'",
                );
            }
            if !(s.percent > 0.0 && s.percent <= 100.0) {
                return field(at("percent"), "must be more than 0 and at most 100");
            }
            for model in [&s.model, &s.target_model] {
                if !config.models.iter().any(|m| &m.id == model) {
                    return field(at("model/target_model"), "must be one of [[models]]");
                }
            }
            if s.model == s.target_model {
                return field(at("target_model"), "must differ from model");
            }
        }
        Ok(())
    }
}
